"""NDDR units (Gao et al., CVPR 2019, NDDR-CNN).

After a stage that every task runs in its own copy, the T task features are
concatenated on channels in a fixed order (the unit's task order) and each task t
reduces them back to its own width: `x̃_t = ReLU(BN(Conv1x1(concat_s x_s)))`, the
conv having no bias and `T·C → C` channels. The conv starts as `init[1]·[I … I]` with
`init[0]·I` on task t's own block (0.9 / 0.1 by default, the paper's setting), so a
unit starts close to independent columns; BN uses the paper's momentum 0.05 unless
`bn_momentum` says otherwise. Written from the paper; public code was read for facts only.

Vector features [F] (after `flatten`/`linear`) take the same unit with a
`Linear(T·F, F, bias=False)` and a 1-D batch norm: a 1×1 conv is a linear map on
channels, so this is the same operator on a feature map of size 1×1.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from mtlc.compiler.emitter import Emitter


def diagonal_init(weight: torch.Tensor, task: int, tasks: int, init: tuple[float, float]) -> None:
    """Set a [C, T·C(, 1, 1)] reduction weight to init[1]·I per block, init[0]·I on `task`'s."""
    channels = weight.shape[0]
    own, other = init
    eye = torch.eye(channels, dtype=weight.dtype)
    blocks = [eye * (own if s == task else other) for s in range(tasks)]
    with torch.no_grad():
        weight.copy_(torch.cat(blocks, dim=1).reshape(weight.shape))


def _reduction(shape: tuple[int, ...], tasks: int) -> tuple[nn.Module, nn.Module]:
    channels = shape[0]
    if len(shape) == 3:
        return nn.Conv2d(tasks * channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
    return nn.Linear(tasks * channels, channels, bias=False), nn.BatchNorm1d(channels)


def emit(em: Emitter, unit: str) -> dict[str, fx.Node]:
    """A shared concat node, then per task its own 1×1 conv → BN → ReLU (owner: the task)."""
    attrs = em.attrs(unit)
    tasks, opts, shape, stage = attrs["tasks"], attrs["options"], attrs["shape"], attrs["stage"]
    columns = em.streams(unit)
    stacked = em.call_function(
        torch.cat,
        (tuple(columns[t] for t in tasks),),
        {"dim": 1},
        block=unit,
        kind="unit",
        owner=attrs["owner"],
    )
    out: dict[str, fx.Node] = {}
    for i, t in enumerate(tasks):
        reduce, norm = _reduction(shape, len(tasks))
        diagonal_init(reduce.weight, i, len(tasks), tuple(opts["init"]))
        reduce.lr_mult = opts["lr_mult"]  # read by the trainer to build parameter groups
        norm.momentum = opts["bn_momentum"]
        prefix = f"encoder.{stage}.nddr.{t}"
        x = em.call_module(f"{prefix}.reduce", reduce, (stacked,), block=unit, kind="unit", owner=t)
        x = em.call_module(f"{prefix}.bn", norm, (x,), block=unit, kind="unit", owner=t)
        out[t] = em.call_module(f"{prefix}.relu", nn.ReLU(), (x,), block=unit, kind="unit", owner=t)
    return out
