"""Parameter ownership read off the node labels: which tasks use which weights.

A parameter is *shared* when the predictions of two or more tasks depend on it (its
module's node label has ≥ 2 tasks), and belongs to its task otherwise. Everything
that reports parameters (build, profile, viz, the trainer's shared-parameter set)
reads these labels rather than guessing from module names.
"""

from __future__ import annotations

from collections import defaultdict

from torch import fx, nn


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
    """The parameters that two or more tasks depend on (MGDA's W_sh)."""
    params = dict(gm.named_parameters())
    return [params[name] for name, tasks in parameter_tasks(gm).items() if len(tasks) >= 2]


def count_parameters(gm: fx.GraphModule) -> dict:
    """`{"total", "shared", "tasks": {task: n}, "blocks": {block: n}}` for a GraphModule."""
    params = dict(gm.named_parameters())
    tasks: dict[str, int] = {t: 0 for t in gm.meta.get("mtlc", {}).get("tasks", [])}
    blocks: dict[str, int] = defaultdict(int)
    shared = 0
    labels = module_labels(gm)
    for name, used_by in parameter_tasks(gm).items():
        n = params[name].numel()
        blocks[_block_of(labels, name)] += n
        if len(used_by) >= 2:
            shared += n
        elif used_by:
            tasks[used_by[0]] = tasks.get(used_by[0], 0) + n
    return {
        "total": sum(p.numel() for p in params.values()),
        "shared": shared,
        "tasks": tasks,
        "blocks": dict(blocks),
    }


def _block_of(labels: dict[str, dict], param: str) -> str:
    """The block of the called module that owns `param` (it may sit in a nested submodule)."""
    best = max((t for t in labels if param.startswith(t + ".")), key=len)
    return labels[best]["block"]
