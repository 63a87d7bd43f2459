"""Parameters and FLOPs per topology node, rolled up from `mtlc.profile`'s node costs.

Every fx node carries the topology node it implements (`meta["mtlc"]["block"]`), so the
profile's per-node costs roll up to the box that draws them, and the numbers in a
drawing or a diff are the ones `mtlc profile` prints: the supervised graph (auxiliary
tasks and intermediate predictions included), FLOPs for one image at 2 per multiply-add,
and "serving t alone" as the graph pruned to t's prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtlc.compiler import Compiled, compile_spec
from mtlc.spec import Spec


@dataclass
class Costs:
    """What `mtlc viz` draws and `mtlc diff` compares, for one compiled spec."""

    params: dict[str, int]  # topology node -> parameters it owns
    flops: dict[str, int]  # topology node -> FLOPs, batch 1
    task_params: dict[str, int]  # task -> parameters serving it alone
    task_flops: dict[str, int]
    total_params: int
    shared_params: int  # used by two or more tasks
    total_flops: int


def compile_meta(spec: Spec) -> Compiled:
    """Compile without allocating weights: structure, counts and shapes need none."""
    with torch.device("meta"):
        return compile_spec(spec)


def measure(compiled: Compiled) -> Costs:
    """Per-block and per-task parameters and FLOPs of a spec compiled on the meta device."""
    from mtlc.profile.counting import count

    spec = compiled.spec
    g = count(compiled.supervised, {spec.input_name: (1, *spec.input_shape)})
    params: dict[str, int] = {}
    flops: dict[str, int] = {}
    for n in g.nodes:
        if n.block is not None:
            params[n.block] = params.get(n.block, 0) + n.params
            flops[n.block] = flops.get(n.block, 0) + n.flops
    weights = [s for s in g.state if not s.buffer]
    task_params, task_flops = {}, {}
    for t in g.tasks:
        needed = g.depends[t]
        task_flops[t] = sum(n.flops for n in g.nodes if n.name in needed)
        task_params[t] = sum(s.numel for s in weights if any(u in needed for u in s.users))
    return Costs(
        params=params,
        flops=flops,
        task_params=task_params,
        task_flops=task_flops,
        total_params=sum(s.numel for s in weights),
        shared_params=sum(s.numel for s in weights if len(s.tasks) >= 2),
        total_flops=sum(n.flops for n in g.nodes),
    )
