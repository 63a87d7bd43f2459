"""Task attention over a shared trunk (Liu et al., CVPR 2019, MTAN).

The stage runs once, shared by every task (the trunk feature u_j). Each task t keeps
its own attended feature `p_t = a_t ⊙ u_j`, with the soft mask

    a_t = σ(BN(Conv1×1(ReLU(BN(Conv1×1(input))))))        (values in [0, 1])

whose inside has `hidden` channels (default: the stage's C). At the first attention
stage of a run the input is u_j alone; from the second on it is `[u_j, p̃_t]`, where
p̃_t is the task's previous attended feature passed through a refinement block
(3×3 conv–BN–ReLU, C_{j-1} → C_j, one module shared by all tasks, as MTAN's
`encoder_block_att`) and max-pooled down to u_j's size. So each task's masks form a
chain through the encoder while the trunk's weights stay shared.

The topology gives each stage one unit per task (role "gate": mask and gating) and,
from the second attention stage on, one unit for the shared refinement (role
"refine"), called once per task; `emit` writes whichever of the two it is given.

Pooling is by an integer factor k per axis such that pooling p̃_t's H×W by k gives
exactly u_j's (as `maxpool(k)` in the trunk would); any other change of size (growing,
or a stride that rounds differently) is a located error naming the stage.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from mtlc.compiler.emitter import Emitter
from mtlc.topology.build import mtan_pool


class AttentionMask(nn.Sequential):
    """MTAN's attention layer: 1×1 conv → BN → ReLU → 1×1 conv → BN → sigmoid."""

    def __init__(self, cin: int, hidden: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, cout, 1),
            nn.BatchNorm2d(cout),
            nn.Sigmoid(),
        )


class Refine(nn.Sequential):
    """MTAN's shared refinement between attention stages: 3×3 conv–BN–ReLU, max-pool if it shrinks."""

    def __init__(self, cin: int, cout: int, pool: tuple[int, int]):
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        super().__init__(*layers, *([nn.MaxPool2d(pool)] if pool != (1, 1) else []))


def emit(em: Emitter, unit: str) -> dict[str, fx.Node]:
    """The stage's shared refinement (role "refine") or one task's gate (role "gate")."""
    if em.attrs(unit)["role"] == "refine":
        return _refine(em, unit)
    return _gate(em, unit)


def _refine(em: Emitter, unit: str) -> dict[str, fx.Node]:
    """Each task's previous attended feature through the one `Refine` module of the stage.

    The calls are labelled with the refinement node and no owner, so the module's weights
    are rolled up once, under it, while each call's cost still follows its own task.
    """
    attrs = em.attrs(unit)
    stage, shape = attrs["stage"], attrs["shape"]
    name = f"encoder.{stage}.refine"
    refined: dict[str, fx.Node] = {}
    for src, values in em.inputs(unit).items():
        before = em.attrs(src)["shape"]
        for task, p in values.items():
            module = None
            if not em.has_module(name):
                # the topology checked that an integer pooling factor exists
                module = Refine(before[0], shape[0], mtan_pool(before, shape))
            refined[task] = em.call_module(name, module, (p,), block=unit, kind="unit", owner=None)
    return refined


def _gate(em: Emitter, unit: str) -> dict[str, fx.Node]:
    """Task t's mask over the trunk feature (with its refined previous feature) and its gating."""
    attrs = em.attrs(unit)
    (task,) = attrs["tasks"]
    stage, shape = attrs["stage"], attrs["shape"]
    u: fx.Node | None = None
    refined: fx.Node | None = None
    for src, values in em.inputs(unit).items():
        if em.attrs(src)["kind"] == "unit":
            refined = values[task]
        else:
            u = values[task]
    assert u is not None, f"attention unit {unit} has no trunk input"

    mask_in = u
    if refined is not None:
        mask_in = em.call_function(
            torch.cat, ((u, refined),), {"dim": 1}, block=unit, kind="unit", owner=task
        )
    channels = shape[0]
    hidden = attrs["options"].get("hidden") or channels
    mask = em.call_module(
        f"encoder.{stage}.attention.{task}",
        AttentionMask(channels * (1 if refined is None else 2), hidden, channels),
        (mask_in,),
        block=unit,
        kind="unit",
        owner=task,
    )
    return {task: em.call_function(torch.mul, (mask, u), block=unit, kind="unit", owner=task)}
