"""Cost of every fx node of a compiled model, measured on meta tensors.

The graph is run node by node (an `fx.Interpreter`) on `meta` inputs, so shapes flow
but no weight or activation is ever allocated: a 10⁹-parameter spec costs the same
to profile as a toy. Each node runs under its own `FlopCounterMode`, so every FLOP is
attributed to exactly one node and the sum over nodes is FlopCounterMode's count of
the whole forward. That convention (2 FLOPs per multiply–add) counts only
matmul-like ops; everything else (norms, activations, pooling, resizing, the
element-wise products of sharing units, softmax) goes into `other_ops`, one per
element of the op's largest tensor, so no work is silently dropped.

Which tasks a node serves is recomputed here from the graph being measured (a node
serves task t when t's output depends on it), because the final model's nodes carry
the supervised graph's labels, auxiliary tasks included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from mtlc.compiler.labels import output_keys, task_sets
from mtlc.compiler.prune import ancestors

# Ops that only move, copy or create data: no arithmetic, so they add no `other_ops`.
_MOVES = {
    torch.ops.aten.cat,
    torch.ops.aten.stack,
    torch.ops.aten.clone,
    torch.ops.aten.copy_,
    torch.ops.aten._to_copy,
    torch.ops.aten._unsafe_view,
    torch.ops.aten.lift_fresh_copy,
    torch.ops.aten.constant_pad_nd,
    torch.ops.aten.index_select,
    torch.ops.aten.gather,
}


@dataclass
class NodeCost:
    """What one fx node costs in a forward of the measured batch."""

    name: str
    op: str
    layer: str  # module class or function name: what `--by layer` groups by
    block: str | None
    stage: str | None
    kind: str | None
    owner: str | None
    tasks: tuple[str, ...]
    shape: tuple[int, ...] | None  # of its first tensor output, batch dim included
    flops: int = 0
    other_ops: int = 0
    out_bytes: int = 0  # bytes of new activation storage (views and aliases add none)
    params: int = 0  # elements of the parameters first used at this node
    buffers: int = 0

    @property
    def macs(self) -> int:
        return self.flops // 2


@dataclass
class StateCost:
    """One parameter or buffer, with the tasks of every node that reads it."""

    name: str
    numel: int
    nbytes: int
    buffer: bool
    trainable: bool
    tasks: tuple[str, ...]
    users: tuple[str, ...]  # the nodes reading it, first one first; none when unused


@dataclass
class GraphCost:
    """Per-node and per-tensor costs of one graph, plus what the liveness pass found."""

    nodes: list[NodeCost]
    state: list[StateCost]
    tasks: list[str]
    outputs: dict[str, str]  # output key → name of the node producing it
    depends: dict[str, set[str]]  # output key → the nodes it needs (the graph pruned to it)
    inputs: dict[str, tuple[int, ...]]
    peak_bytes: int = 0
    peak_node: str | None = None

    def node(self, name: str) -> NodeCost:
        return next(n for n in self.nodes if n.name == name)


class _ElementOps(TorchDispatchMode):
    """Counts the work FlopCounterMode leaves out: one op per element of the largest tensor.

    Entered *outside* FlopCounterMode, so it sees the ops FlopCounterMode finally runs
    (after its decompositions) and skips exactly the ones FlopCounterMode counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry or packet in _MOVES or func.is_view:
            return out
        ins = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if ins and outs:  # creation ops (no tensor input) do no arithmetic
            self.count += max(t.numel() for t in ins + outs)
        return out


def _storage(t: torch.Tensor) -> int:
    return StorageWeakRef(t.untyped_storage()).cdata


def _layer_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return str(node.target)
    return "input" if node.op == "placeholder" else node.op


def _state_of(gm: fx.GraphModule, node: fx.Node) -> Iterable[tuple[str, torch.Tensor, bool]]:
    """(qualified name, tensor, is_buffer) of the weights a node reads directly."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        for name, p in module.named_parameters():
            yield f"{node.target}.{name}", p, False
        for name, b in module.named_buffers():
            yield f"{node.target}.{name}", b, True
    elif node.op == "get_attr":
        *path, leaf = str(node.target).split(".")
        owner = gm.get_submodule(".".join(path))
        value = getattr(owner, leaf)
        if isinstance(value, nn.Module):
            for name, p in value.named_parameters():
                yield f"{node.target}.{name}", p, False
            for name, b in value.named_buffers():
                yield f"{node.target}.{name}", b, True
        elif isinstance(value, torch.Tensor):
            yield str(node.target), value, leaf in owner._buffers


def _weights(gm: fx.GraphModule) -> Iterable[tuple[str, torch.Tensor, bool]]:
    """Every parameter and buffer once, non-persistent buffers included."""
    for name, p in gm.named_parameters():
        yield name, p, False
    for name, b in gm.named_buffers():
        yield name, b, True


class _Counter(fx.Interpreter):
    """Runs the graph one node at a time, each under its own FlopCounterMode."""

    def __init__(self, gm: fx.GraphModule, tasks: dict[fx.Node, tuple[str, ...]]):
        # Keep every value alive: storage identities must stay unique for the liveness pass.
        super().__init__(gm, garbage_collect_values=False)
        self.tasks = tasks
        self.costs: list[NodeCost] = []
        self.storages: dict[fx.Node, list[int]] = {}
        self.sizes: dict[int, int] = {}
        self.producer: dict[int, int] = {}
        self.weights: set[int] = {_storage(t) for _, t, _ in _weights(gm)}

    def run_node(self, n: fx.Node) -> Any:
        others = _ElementOps()
        with others, FlopCounterMode(display=False) as flops:
            value = super().run_node(n)
        label = n.meta.get("mtlc", {})
        tensors = [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]
        cost = NodeCost(
            name=n.name,
            op=n.op,
            layer=_layer_name(self.module, n),
            block=label.get("block"),
            stage=label.get("stage"),
            kind=label.get("kind"),
            owner=label.get("owner"),
            tasks=self.tasks.get(n, ()),
            shape=tuple(tensors[0].shape) if tensors else None,
            flops=flops.get_total_flops(),
            other_ops=others.count,
        )
        keys = []
        for t in tensors:
            key = _storage(t)
            if key in self.weights:
                continue
            keys.append(key)
            if key not in self.producer:
                self.producer[key] = len(self.costs)
                self.sizes[key] = t.untyped_storage().nbytes()
                cost.out_bytes += self.sizes[key]
        self.storages[n] = keys
        self.costs.append(cost)
        return value


def _liveness(counter: _Counter, graph: fx.Graph) -> tuple[int, str | None]:
    """Peak bytes of activations alive at once, and the node where it is reached.

    A storage is live from the node that creates it until its last reader; the graph's
    outputs stay live to the end. Temporaries inside one module are not visible at node
    granularity, so this is a lower bound on what a framework without fusion allocates.
    """
    index = {n: i for i, n in enumerate(graph.nodes)}
    last: dict[int, int] = dict(counter.producer)
    for n in graph.nodes:
        for src in n.all_input_nodes:
            for key in counter.storages.get(src, ()):
                last[key] = max(last[key], index[n])
    delta = [0] * (len(index) + 1)
    for key, start in counter.producer.items():
        delta[start] += counter.sizes[key]
        delta[last[key] + 1] -= counter.sizes[key]
    live, peak, at = 0, 0, None
    names = [n.name for n in graph.nodes]
    for i, d in enumerate(delta[:-1]):
        live += d
        if live > peak:
            peak, at = live, names[i]
    return peak, at


def count(
    gm: fx.GraphModule, inputs: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float32
) -> GraphCost:
    """Measure `gm` (parameters on `meta`) on meta inputs of the given shapes (batch included).

    Runs in eval mode under `no_grad`: the counts are those of an inference forward
    (dropout off, batch norm reading its running statistics).
    """
    order, tasks = task_sets(gm.graph)
    counter = _Counter(gm, tasks)
    args = [torch.empty(shape, dtype=dtype, device="meta") for shape in inputs.values()]
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            counter.run(*args)
    finally:
        for m, training in modes.items():
            m.training = training
    peak, at = _liveness(counter, gm.graph)

    names = {n: n.name for n in gm.graph.nodes}
    nodes_of = {c.name: c for c in counter.costs}
    seen: dict[int, StateCost] = {}
    for n in gm.graph.nodes:
        for qualname, t, is_buffer in _state_of(gm, n):
            entry = seen.get(id(t))
            if entry is None:
                seen[id(t)] = StateCost(
                    qualname,
                    t.numel(),
                    t.numel() * t.element_size(),
                    is_buffer,
                    not is_buffer and t.requires_grad,
                    tasks[n],
                    (n.name,),
                )
                cost = nodes_of[n.name]
                if is_buffer:
                    cost.buffers += t.numel()
                else:
                    cost.params += t.numel()
            else:
                entry.tasks = tuple(x for x in order if x in entry.tasks or x in tasks[n])
                entry.users += (n.name,)
    # Weights no node reads still occupy memory: keep them, attributed to no task.
    for qualname, t, is_buffer in _weights(gm):
        if id(t) not in seen:
            seen[id(t)] = StateCost(
                qualname,
                t.numel(),
                t.numel() * t.element_size(),
                is_buffer,
                not is_buffer and t.requires_grad,
                (),
                (),
            )
    outputs = {k: names[v] for k, v in output_keys(gm.graph).items()}
    return GraphCost(
        [c for c in counter.costs if c.op != "output"],
        list(seen.values()),
        order,
        outputs,
        {k: ancestors(gm, k) for k in outputs},
        dict(inputs),
        peak,
        at,
    )


__all__ = [
    "GraphCost",
    "NodeCost",
    "StateCost",
    "count",
]
