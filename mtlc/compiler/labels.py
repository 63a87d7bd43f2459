"""Parameter ownership read off the node labels: which tasks use which weights.

A parameter is *shared* when the predictions of two or more tasks depend on it (its
module's node label has ≥ 2 tasks), and belongs to its task otherwise. Everything
that reports parameters (build, profile, viz, the trainer's shared-parameter set)
reads these labels rather than guessing from module names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from torch import fx, nn

SHARED_KEY = "@shared"  # the supervised output holding the shared representation (not a task)


def output_keys(graph: fx.Graph) -> dict[str, fx.Node]:
    """A compiled graph's outputs as `{key: node}` (the compiler always returns a dict)."""
    value = next(n for n in graph.nodes if n.op == "output").args[0]
    if not isinstance(value, dict):
        raise ValueError("expected a graph whose forward returns {task: tensor}")
    return dict(value)


def task_sets(
    graph: fx.Graph, outputs: Mapping[str, fx.Node] | None = None
) -> tuple[list[str], dict[fx.Node, tuple[str, ...]]]:
    """Task order, and for each node the tasks whose predictions depend on it.

    `task:tag` outputs (intermediate predictions) count for their task; the shared
    representation `@shared` counts for none, it is only a handle on a node every task
    already reads. `outputs` defaults to the graph's own output node.
    """
    keys = dict(outputs) if outputs is not None else output_keys(graph)
    order: list[str] = []
    for key in keys:
        task = key.split(":")[0]
        if key != SHARED_KEY and task not in order:
            order.append(task)
    users: dict[fx.Node, set[str]] = {n: set() for n in graph.nodes}
    for key, node in keys.items():
        if key == SHARED_KEY:
            continue
        task = key.split(":")[0]
        stack = [node]
        while stack:
            n = stack.pop()
            if task not in users[n]:
                users[n].add(task)
                stack.extend(n.all_input_nodes)
    return order, {n: tuple(t for t in order if t in users[n]) for n in graph.nodes}


def module_labels(gm: fx.GraphModule) -> dict[str, dict]:
    """Label of each called module (qualified name → node label).

    A module called more than once (MTAN's refinement, once per task; a JTRL predictor,
    once per step) is used by the union of its calls' tasks.
    """
    order = gm.meta.get("mtlc", {}).get("tasks", [])
    labels: dict[str, dict] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module" or "mtlc" not in n.meta:
            continue
        if n.target in labels:
            tasks = set(labels[n.target]["tasks"]) | set(n.meta["mtlc"]["tasks"])
            labels[n.target] = {**labels[n.target], "tasks": tuple(sorted(tasks, key=order.index))}
        else:
            labels[n.target] = n.meta["mtlc"]
    return labels


def parameter_tasks(gm: fx.GraphModule) -> dict[str, tuple[str, ...]]:
    """Tasks using each parameter, by its state-dict name (parameters only, no buffers)."""
    out: dict[str, tuple[str, ...]] = {}
    for target, label in module_labels(gm).items():
        module: nn.Module = gm.get_submodule(target)
        for name, _ in module.named_parameters():
            out[f"{target}.{name}"] = label["tasks"]
    return out


def shared_parameters(gm: fx.GraphModule) -> list[nn.Parameter]:
    """Parameters of the modules whose graph nodes serve two or more tasks.

    These are the parameters every task's gradient reaches, the ``W_sh`` of MGDA: the
    shared encoder stages, and also cross-stitch/NDDR units and the per-task columns
    feeding them, since a unit mixes each column into every task. Order follows the
    graph, so the list is the same every time a spec is compiled.
    """
    seen: set[int] = set()
    params: list[nn.Parameter] = []

    def add(p: Any) -> None:
        if isinstance(p, nn.Parameter) and p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)

    for node in gm.graph.nodes:
        label = node.meta.get("mtlc")
        if label is None or len(label.get("tasks", ())) < 2:
            continue
        if node.op == "call_module":
            for p in gm.get_submodule(node.target).parameters():
                add(p)
        elif node.op == "get_attr":
            *parent, leaf = node.target.split(".")
            add(getattr(gm.get_submodule(".".join(parent)), leaf))
    return params


def count_parameters(gm: fx.GraphModule) -> dict:
    """`{"total", "shared", "tasks": {task: n}, "blocks": {block: n}, "owners": {block:
    {owner: n}}}` for a GraphModule.

    `owners` splits each block's parameters between `"shared"` and the one task using
    them, so a table can show every parameter once: an NDDR unit's 1×1 convs belong to
    their tasks, its concat to none, and a cross-stitch column's stage is shared (the
    unit mixes it into the other tasks). Summed over blocks, the owners give `shared`
    and `tasks`.
    """
    params = dict(gm.named_parameters())
    tasks: dict[str, int] = {t: 0 for t in gm.meta.get("mtlc", {}).get("tasks", [])}
    blocks: dict[str, int] = defaultdict(int)
    owners: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    shared = 0
    labels = module_labels(gm)
    for name, used_by in parameter_tasks(gm).items():
        n = params[name].numel()
        block = _block_of(labels, name)
        blocks[block] += n
        if len(used_by) >= 2:
            shared += n
            owners[block]["shared"] += n
        elif used_by:
            tasks[used_by[0]] = tasks.get(used_by[0], 0) + n
            owners[block][used_by[0]] += n
    return {
        "total": sum(p.numel() for p in params.values()),
        "shared": shared,
        "tasks": tasks,
        "blocks": dict(blocks),
        "owners": {b: dict(o) for b, o in owners.items()},
    }


def _block_of(labels: dict[str, dict], param: str) -> str:
    """The block of the called module that owns `param` (it may sit in a nested submodule)."""
    best = max((t for t in labels if param.startswith(t + ".")), key=len)
    return labels[best]["block"]
