"""topology → torch.fx.Graph → GraphModule, node by node.

We write the graph ourselves rather than trace a hand-written forward: each
topology block becomes a run of labelled fx nodes, so the generated `.code` reads
like the spec, and profile/viz can attribute every op to its stage and tasks.

One graph is built with every prediction the trainer supervises (auxiliary tasks,
PAD-Net initial predictions, JTRL steps, and the shared representation for MGDA-UB);
the final model is the same graph with only the main tasks as outputs, dead code
removed. Both GraphModules hold the *same* module objects, so training one trains the
other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from torch import fx

from mtlc.compiler.columns import freeze_stages, load_task_inits
from mtlc.compiler.emitter import Emitter, module_prefix
from mtlc.compiler.labels import SHARED_KEY, task_sets
from mtlc.compiler.reload import new_graph
from mtlc.compiler.weights import load_backbone_weights
from mtlc.sharing.point import unit_point
from mtlc.spec import Spec, load_spec
from mtlc.spec.load import spec_error
from mtlc.topology import Topology, build_topology


@dataclass
class Compiled:
    """The final model, the supervised model (same modules) and the topology they came from.

    With fusion on (`compile_spec(..., fuse=True)`), `model` and `supervised` are the fused
    graphs and `unfused` holds the pair as the spec says them, one node per layer and
    task (what profile and viz attribute to tasks); the four share every module.
    """

    model: fx.GraphModule
    supervised: fx.GraphModule
    topology: Topology
    unfused: tuple[fx.GraphModule, fx.GraphModule] | None = None

    @property
    def plain(self) -> tuple[fx.GraphModule, fx.GraphModule]:
        """(model, supervised) with one labelled node per layer and task, fused or not."""
        return self.unfused or (self.model, self.supervised)

    @property
    def spec(self) -> Spec:
        return self.topology.spec


def _class_name(spec: Spec) -> str:
    words = "".join(c if c.isalnum() else " " for c in spec.name).split()
    return "".join(w[:1].upper() + w[1:] for w in words) or "MTLModel"


def _emit_block(em: Emitter, block: str) -> None:
    attrs = em.attrs(block)
    kind = attrs["kind"]
    g = em.topology.graph
    if kind == "input":
        x = em.graph.placeholder(attrs["name"])
        x.meta["mtlc"] = {"block": block, "stage": None, "kind": "input", "owner": None}
        em.values[block] = dict.fromkeys(attrs["tasks"], x)
        return
    if kind in ("output", "loss"):
        return
    if kind == "unit":
        em.values[block] = unit_point(attrs).emit(em, block)
        return
    (src,) = list(g.predecessors(block))
    members = attrs["tasks"]
    x = em.values[src][members[0]]
    if attrs.get("traced") is not None:
        piece = em.topology.traced.pieces[attrs["stage"]]
        x = em.inline(
            piece,
            em.topology.traced.module,
            x,
            module_prefix(block, attrs),
            block=block,
            owner=attrs["owner"],
        )
        em.values[block] = dict.fromkeys(members, x)
        return
    x, shape = em.layers(
        module_prefix(block, attrs),
        attrs["layers"],
        x,
        attrs["in_shape"],
        block=block,
        kind="layer" if kind == "block" else kind,
        owner=attrs["owner"],
    )
    if attrs.get("resize") and tuple(shape[1:]) != tuple(attrs["out_shape"][1:]):
        x = em.resize(x, attrs["out_shape"][1:], block=block, owner=attrs["owner"])
    em.values[block] = dict.fromkeys(members, x)


def _value_of(em: Emitter, key: str, node: str) -> fx.Node:
    """The fx node for prediction `key` (`task` or `task:tag`) coming out of `node`."""
    values = em.values[node]
    return values[key] if key in values else values[key.split(":")[0]]


def _label_tasks(graph: fx.Graph, outputs: dict[str, fx.Node]) -> None:
    """Add `tasks` to every node's label: the tasks whose predictions depend on it."""
    _, tasks = task_sets(graph, outputs)
    for n in graph.nodes:
        if "mtlc" in n.meta:
            n.meta["mtlc"]["tasks"] = tasks[n]


def _out_of_memory(spec: Spec, attrs: dict, block: str, exc: Exception) -> Exception:
    """A located error for weights too large to allocate; any other error unchanged.

    Shape inference accepts any size a layer can compute, so `conv(100000000)` passes
    validation and fails only when its weight tensor is allocated here.
    """
    if not isinstance(exc, MemoryError) and "can't allocate memory" not in str(exc):
        return exc
    size = re.search(r"allocate (\d+) bytes", str(exc))
    need = f" ({int(size.group(1)) / 2**30:.1f} GiB for one tensor)" if size else ""
    return spec_error(
        spec, spec_path(attrs), f"not enough memory for the weights of '{block}'{need}"
    )


def spec_path(attrs: dict[str, Any]) -> tuple:
    """The spec key path of the block a topology node (or an fx node's label) comes from."""
    if attrs["kind"] == "head":
        return ("tasks", attrs["owner"], "head")
    if attrs["stage"] == "decoder":
        return ("decoder",)
    return ("encoder", "sharing" if attrs["kind"] == "unit" else "stages", attrs["stage"])


def default_device() -> str:
    """The device type a model compiled without one is fused for: CUDA when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compile_spec(
    spec: Spec | str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    fuse: bool = False,
    device: str | None = None,
) -> Compiled:
    """Compile a spec into its final and supervised GraphModules (sharing modules).

    `fuse=True` runs the column fusion pass (`mtlc.compiler.fuse`) for `device` (a device
    type, default `default_device()`) unless the spec's `train.fuse` is false.
    """
    spec = load_spec(spec, overrides)
    topo = spec._topology or build_topology(spec)
    em = Emitter(topo)
    for block in nx.topological_sort(topo.graph):
        try:
            _emit_block(em, block)
        except (MemoryError, RuntimeError) as exc:
            raise _out_of_memory(spec, em.attrs(block), block, exc) from None

    keys = sorted(topo.predictions, key=lambda k: (":" in k, topo.tasks.index(k.split(":")[0])))
    supervised_out = {k: _value_of(em, k, topo.predictions[k]) for k in keys}
    if topo.shared_repr is not None:
        supervised_out[SHARED_KEY] = em.values[topo.shared_repr][topo.tasks[0]]
    _label_tasks(em.graph, supervised_out)
    full = em.graph
    final = new_graph()
    remap: dict[fx.Node, fx.Node] = {}
    final.graph_copy(full, remap)
    final.output({t: remap[supervised_out[t]] for t in topo.outputs})
    full.output(supervised_out)
    name = _class_name(spec)
    supervised = fx.GraphModule(em.root, full, class_name=name + "Supervised")
    model = fx.GraphModule(em.root, final, class_name=name)
    model.graph.eliminate_dead_code()
    model.delete_all_unused_submodules()
    model.recompile()
    # the copy shares label dicts with the supervised graph; the final model's own labels
    # name only the tasks it outputs (no auxiliary tasks)
    for node in model.graph.nodes:
        if "mtlc" in node.meta:
            node.meta["mtlc"] = dict(node.meta["mtlc"])
    _label_tasks(model.graph, next(n for n in model.graph.nodes if n.op == "output").args[0])
    if not any(p.is_meta for p in supervised.parameters()):
        # compiled on the meta device (profile, viz costs), no weights are read: they
        # change no cost; `mtlc build` and training compile for real and check the files
        load_backbone_weights(supervised, topo)
        load_task_inits(supervised, topo)
    freeze_stages(supervised, topo)
    for gm in (model, supervised):
        gm.graph.lint()
        gm.meta["mtlc"] = {
            "spec": spec.name,
            "tasks": list(topo.tasks),
            "outputs": list(topo.outputs),
        }
    if fuse and (spec.train is None or spec.train.fuse):
        from mtlc.compiler.fuse import fuse as fuse_columns

        where = device or default_device()
        return Compiled(
            fuse_columns(model, where), fuse_columns(supervised, where), topo, (model, supervised)
        )
    return Compiled(model, supervised, topo)


def compile(
    spec: Spec | str | Path | dict[str, Any],
    *,
    supervision: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    fuse: bool = True,
    device: str | None = None,
) -> fx.GraphModule:
    """A spec's model as a `torch.fx.GraphModule` whose forward returns `{task: prediction}`.

    With `supervision=True` the module instead returns every supervised prediction from
    one forward: all tasks (auxiliary ones included), the intermediate predictions under
    `task:tag` keys (`seg:initial`, `depth:step2`) and the shared representation under
    `@shared` when the tasks have one.

    Per-task copies of equal shape run fused (one grouped op on stacked activations,
    `mtlc.compiler.fuse`) for `device` (a device type; default CUDA when present, else
    CPU) unless `fuse=False` or the spec's `train.fuse: false`; the state dict, parameter
    names and outputs are the unfused model's either way.
    """
    compiled = compile_spec(spec, overrides, fuse=fuse, device=device)
    return compiled.supervised if supervision else compiled.model
