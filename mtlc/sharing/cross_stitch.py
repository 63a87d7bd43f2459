"""Cross-stitch units (Misra et al., CVPR 2016).

After a stage that every task runs in its own copy, task t continues with
`x̃_t = Σ_s α[t, s] · x_s`: a full T×T mix (not one combination shared by all tasks),
per channel (α of shape [T, T, C], the survey's code) or one scalar per task pair.
α starts at `init[0]` on the diagonal and `init[1]` elsewhere (0.9 / 0.1 by default,
as the survey's code), so training starts close to independent columns.

The mix is written as T·T fused multiply-adds on the task features rather than one
broadcast product over a stacked [T, T, N, C, ...] tensor: the broadcast form
materialises T² feature maps and was about 4× slower forward+backward on CPU.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from mtlc.compiler.emitter import Emitter
from mtlc.compiler.fused_ops import Fused, register


class CrossStitch(nn.Module):
    """Mixes T same-shaped task features with a learned [T, T(, C)] matrix α."""

    def __init__(
        self,
        tasks: int,
        channels: int,
        init: tuple[float, float],
        granularity: str,
        lr_mult: float = 1.0,
    ):
        super().__init__()
        own, other = init
        alpha = torch.full((tasks, tasks), float(other)).fill_diagonal_(float(own))
        if granularity == "channel":
            alpha = alpha.unsqueeze(-1).repeat(1, 1, channels)
        self.alpha = nn.Parameter(alpha)
        self.lr_mult = lr_mult  # read by the trainer to build parameter groups

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # α[t, s] broadcast over the dims after the channel dim (none for vectors [N, F]).
        extra = xs[0].dim() - 2
        alpha = self.alpha.reshape(*self.alpha.shape[:2], -1, *([1] * extra))
        mixed = []
        for t in range(len(xs)):
            out = alpha[t, 0] * xs[0]
            for s in range(1, len(xs)):
                out = torch.addcmul(out, alpha[t, s], xs[s])
            mixed.append(out)
        return tuple(mixed)


def emit(em: Emitter, unit: str) -> dict[str, fx.Node]:
    """One cross-stitch module over the unit's task columns; each task reads its own row."""
    attrs = em.attrs(unit)
    tasks, opts = attrs["tasks"], attrs["options"]
    columns = em.streams(unit)
    xs = tuple(columns[t] for t in tasks)
    stage = attrs["stage"]
    name = f"encoder.{stage}." + (
        "cross_stitch"
        if attrs["owner"] is None
        else f"cross_stitch_{attrs['owner'].replace('+', '_')}"
    )
    module = CrossStitch(
        len(tasks), attrs["shape"][0], tuple(opts["init"]), opts["granularity"], opts["lr_mult"]
    )
    mixed = em.call_module(name, module, xs, block=unit, kind="unit", owner=attrs["owner"])
    return {t: em.getitem(mixed, i, block=unit, kind="unit", owner=t) for i, t in enumerate(tasks)}


@register(CrossStitch)
class FusedCrossStitch(Fused):
    """The unit on stacked columns `[N, T·C, ...]`: `x̃[n,t,c] = Σ_s α[t,s,c] · x[n,s,c]`, one einsum.

    The same sum as `CrossStitch.forward`, with the task axis of the stacked value as
    the contracted index (α of a scalar unit is broadcast over channels).
    """

    modes = frozenset({"mix"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (unit,) = self.members
        tasks = unit.alpha.shape[0]
        alpha = unit.alpha
        stacked = x.reshape(x.shape[0], tasks, -1, *x.shape[2:])
        if alpha.dim() == 2:
            alpha = alpha.unsqueeze(-1).expand(tasks, tasks, stacked.shape[2])
        mixed = torch.einsum("tsc,nsc...->ntc...", alpha, stacked)
        return mixed.reshape(x.shape)
