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

On a ResNet (`split`, the default for a named backbone's stages) the paper's form is
used: the mask reads u_b, the output of the stage's blocks but the last, and gates u_t,
the output of the last block: `p_t = a_t([u_b, p̃_t]) ⊙ u_t`.

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
    refined: fx.Node | None = None
    inputs = em.inputs(unit)
    for src, values in inputs.items():
        if em.attrs(src)["kind"] == "unit":
            refined = values[task]
    # u_b (what the mask reads) and u_t (what it gates): the same trunk feature unless
    # the stage is split MTAN-on-ResNet style (blocks but the last / the last block)
    u = inputs[attrs["reads"]][task]
    u_t = inputs[attrs["gates"]][task]

    mask_in = u
    if refined is not None:
        mask_in = em.call_function(
            torch.cat, ((u, refined),), {"dim": 1}, block=unit, kind="unit", owner=task
        )
    channels = shape[0]
    hidden = attrs["options"].get("hidden") or channels
    u_b = em.attrs(attrs["reads"])["out_shape"][0]
    mask = em.call_module(
        f"encoder.{stage}.attention.{task}",
        AttentionMask(u_b + (0 if refined is None else channels), hidden, channels),
        (mask_in,),
        block=unit,
        kind="unit",
        owner=task,
    )
    return {task: em.call_function(torch.mul, (mask, u_t), block=unit, kind="unit", owner=task)}
