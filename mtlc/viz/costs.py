"""Parameters and FLOPs per topology node, read off the compiled fx graph.

Every fx node carries the topology node it implements (`meta["mtlc"]["block"]`), so an
op's parameters and FLOPs roll up to the box that draws it, and "serving task t alone"
is the set of fx nodes t's prediction depends on (the graph pruned to t's output).
We compile on the meta device: structure, parameter counts, shapes and FLOPs need no
memory and no arithmetic, so a 30 M-parameter spec costs a drawing well under a second.

FLOPs are `torch.utils.flop_counter` FLOPs: 2 per multiply-add, counted for matmul-like
ops only (convolutions, linear, bmm, attention), for one image (batch 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from mtlc.compiler import Compiled, compile_spec
from mtlc.errors import MtlcError
from mtlc.spec import Spec


@dataclass
class Costs:
    """What `mtlc viz` and `mtlc diff` print and draw, for one compiled spec."""

    compiled: Compiled
    params: dict[str, int]  # topology node -> parameters it owns
    task_params: dict[str, int]  # task -> parameters serving it alone
    total_params: int
    shared_params: int  # used by two or more tasks
    flops: dict[str, int] | None = None  # topology node -> FLOPs, batch 1
    task_flops: dict[str, int] | None = None
    total_flops: int | None = None


def compile_meta(spec: Spec) -> Compiled:
    """Compile without allocating weights; fall back to the CPU for a module meta cannot build."""
    try:
        with torch.device("meta"):
            return compile_spec(spec)
    except MtlcError:
        raise
    except (NotImplementedError, RuntimeError):
        return compile_spec(spec)


def _params_of(gm: fx.GraphModule, node: fx.Node) -> list[nn.Parameter]:
    if node.op == "call_module":
        return list(gm.get_submodule(node.target).parameters())
    if node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return [obj] if isinstance(obj, nn.Parameter) else []
    return []


def _depends(graph: fx.Graph) -> dict[str, set[fx.Node]]:
    """Task -> the fx nodes its (final) prediction depends on."""
    (out,) = [n for n in graph.nodes if n.op == "output"]
    result = out.args[0]
    deps: dict[str, set[fx.Node]] = {}
    for key, node in result.items():
        if ":" in key or key.startswith("@"):
            continue
        seen: set[fx.Node] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(n.all_input_nodes)
        deps[key] = seen
    return deps


class _Probe(ShapeProp):
    """ShapeProp that also records the FLOPs each node adds to a running FlopCounterMode."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode):
        super().__init__(gm)
        self.counter = counter
        self.node_flops: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node):
        before = self.counter.get_total_flops()
        result = super().run_node(n)
        self.node_flops[n] = self.counter.get_total_flops() - before
        return result


def probe(compiled: Compiled) -> dict[fx.Node, int]:
    """Run the supervised graph once on a zero image: shapes into `node.meta`, FLOPs returned."""
    gm = compiled.supervised
    shape = compiled.topology.spec.input_shape
    device = next((t.device for t in gm.state_dict().values()), torch.device("meta"))
    x = torch.zeros((1, *shape), device=device)
    was_training = gm.training
    gm.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            p = _Probe(gm, counter)
            p.propagate(x)
    finally:
        gm.train(was_training)
    return p.node_flops


def measure(spec: Spec, *, flops: bool = False, compiled: Compiled | None = None) -> Costs:
    """Per-block and per-task parameters (and FLOPs when asked) of a spec."""
    compiled = compiled or compile_meta(spec)
    gm = compiled.supervised
    owner: dict[int, str] = {}
    sizes: dict[int, int] = {}
    node_params: dict[fx.Node, list[int]] = {}
    for node in gm.graph.nodes:
        block = node.meta.get("mtlc", {}).get("block")
        ids = []
        for p in _params_of(gm, node):
            ids.append(id(p))
            sizes[id(p)] = p.numel()
            if block is not None:
                owner.setdefault(id(p), block)
        node_params[node] = ids
    params: dict[str, int] = {}
    for pid, block in owner.items():
        params[block] = params.get(block, 0) + sizes[pid]
    deps = _depends(gm.graph)
    used_by: dict[int, int] = {}
    task_params = {}
    for t, nodes in deps.items():
        ids = {pid for n in nodes for pid in node_params.get(n, [])}
        task_params[t] = sum(sizes[pid] for pid in ids)
        for pid in ids:
            used_by[pid] = used_by.get(pid, 0) + 1
    costs = Costs(
        compiled=compiled,
        params=params,
        task_params=task_params,
        total_params=sum(sizes.values()),
        shared_params=sum(sizes[pid] for pid, k in used_by.items() if k > 1),
    )
    if flops:
        node_flops = probe(compiled)
        per_block: dict[str, int] = {}
        for node, f in node_flops.items():
            block = node.meta.get("mtlc", {}).get("block")
            if block is not None:
                per_block[block] = per_block.get(block, 0) + f
        costs.flops = per_block
        costs.task_flops = {t: sum(node_flops.get(n, 0) for n in nodes) for t, nodes in deps.items()}
        costs.total_flops = sum(node_flops.values())
    return costs
