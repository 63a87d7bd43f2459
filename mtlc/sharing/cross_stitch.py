"""Cross-stitch units (Misra et al., CVPR 2016).

After a stage that every task runs in its own copy, task t continues with
`x̃_t = Σ_s α[t, s] · x_s`: a full T×T mix (not one combination shared by all tasks),
per channel (α of shape [T, T, C], the survey's code) or one scalar per task pair.
α starts at `init[0]` on the diagonal and `init[1]` elsewhere (0.9 / 0.1 by default,
as the survey's code), so training starts close to independent columns.

The mix is written as T·T fused multiply-adds on the task features rather than one
broadcast product over a stacked [T, T, N, C, ...] tensor: the broadcast form
materialises T² feature maps and was about 4× slower forward+backward on CPU.

Drawn as per task a mixing node Σα fed by every column it mixes (T² edges, weighted by
α when a checkpoint says what was learned; the values are written on the Σα, one line
per source in its colour, where converging edge labels would not be). `viz
--checkpoint` reads α as the [T, T] matrix (target, source), averaged over channels
when α is per channel, which is what Misra et al. plot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from mtlc.sharing.point import StagePoint, torch_modules
from mtlc.spec.base import Pair, StageSharing
from mtlc.viz.dot import html_label

if TYPE_CHECKING:
    from torch import fx

    from mtlc.compiler.emitter import Emitter
    from mtlc.viz.drawing import DrawingKit as Drawer
    from mtlc.viz.learned import Readout


class CrossStitch(StageSharing):
    """Misra et al. 2016: own copy per task, then a learned linear mix of the columns."""

    layout: ClassVar = "per_task"
    type: Literal["cross_stitch"]
    init: Pair = (0.9, 0.1)
    granularity: Literal["channel", "scalar"] = "channel"
    lr_mult: float = Field(1.0, gt=0, description="learning-rate multiplier for the mixing weights")


@torch_modules(__name__)
def modules() -> dict[str, Any]:
    import torch
    from torch import nn

    from mtlc.compiler.fused_ops import Fused, register

    class CrossStitchUnit(nn.Module):
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

    @register(CrossStitchUnit)
    class FusedCrossStitch(Fused):
        """The unit on stacked columns `[N, T·C, ...]`: `x̃[n,t,c] = Σ_s α[t,s,c] · x[n,s,c]`, one einsum.

        The same sum as `CrossStitchUnit.forward`, with the task axis of the stacked value
        as the contracted index (α of a scalar unit is broadcast over channels).
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

    return {"CrossStitchUnit": CrossStitchUnit, "FusedCrossStitch": FusedCrossStitch}


class CrossStitchPoint(StagePoint):
    Options = CrossStitch
    mixes = True

    def emit(self, em: Emitter, unit: str) -> dict[str, fx.Node]:
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
        module = modules().CrossStitchUnit(
            len(tasks), attrs["shape"][0], tuple(opts["init"]), opts["granularity"], opts["lr_mult"]
        )
        mixed = em.call_module(name, module, xs, block=unit, kind="unit", owner=attrs["owner"])
        return {
            t: em.getitem(mixed, i, block=unit, kind="unit", owner=t) for i, t in enumerate(tasks)
        }

    def draw(self, d: Drawer, u: str) -> None:
        a = d.g.nodes[u]
        init, gran = a["options"]["init"], a["options"]["granularity"]
        title = d.cluster(
            u,
            f"cross-stitch · {a['stage']}",
            f"α {len(a['tasks'])}×{len(a['tasks'])}"
            + (f"×{a['shape'][0]}" if gran == "channel" else "")
            + f", init {init[0]:g}/{init[1]:g}",
        )
        tasks = list(a["tasks"])
        alpha = d.notes.learned.get(u)
        for i, t in enumerate(tasks):
            if alpha:  # what t learned to take from each column, in that column's colour
                d.part(f"{u}#{t}", t, _alpha_label(d, tasks, alpha[i]), style="rounded,filled")
            else:
                label = html_label([("b", "Σα")])
                d.part(f"{u}#{t}", t, label, shape="circle", width=0.55, fixedsize="true")
        d.title(u, title, f"{u}#{d.by_column(tasks)[-1]}")
        d.dot.close()

    def draw_edges(self, d: Drawer, u: str) -> set[tuple[str, str]]:
        a = d.g.nodes[u]
        alpha = d.notes.learned.get(u)
        tasks = list(a["tasks"])
        for src, ts in d.in_edges(u).items():
            for s in ts:
                for t in tasks:
                    extra: dict[str, object] = {}
                    if alpha:  # the value itself is on the Σα box (`_alpha_label`)
                        w = alpha[tasks.index(t)][tasks.index(s)]
                        extra = {"penwidth": 0.4 + 4 * min(abs(w), 1.5)}
                    d.edge(src, f"{u}#{t}", (s,), **extra)
        return d.part_edges_out(u)

    def learned(self, readout: Readout, unit: str) -> list[list[float]] | None:
        for name, _, module in readout.modules(unit):
            for pname, _ in module.named_parameters():
                if pname.split(".")[-1] == "alpha":
                    alpha = readout.state[f"{name}.{pname}"].float()
                    if alpha.dim() > 2:
                        alpha = alpha.flatten(2).mean(-1)
                    return alpha.tolist()
        return None


def _alpha_label(d: Drawer, sources: list[str], row: list[float]) -> str:
    """Σα over its learned weights, one line per source task in the source's colour.

    On the box, not on the T² edges: labels of edges that converge on one node
    overlap, and a reader could not tell which number belongs to which edge.
    """
    return html_label([("b", "Σα")] + [("html", d.weight(s, w)) for s, w in zip(sources, row)])
