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

Drawn as every column into one concat bar, then a 1×1 conv per task. `viz
--checkpoint` shows per (target, source) pair the mean |diagonal| of that source's C×C
block of the target's 1×1 conv: the conv starts as init·I per block, so its diagonal
says how much of each task's own channels the target still takes in (Gao et al.
inspect the same blocks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from mtlc.sharing.point import StagePoint
from mtlc.spec.base import Pair, StageSharing
from mtlc.viz.dot import COLUMN_WIDTH, html_label

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

    from mtlc.compiler.emitter import Emitter
    from mtlc.layers.vocab import Shape
    from mtlc.topology.stage import StageBuild
    from mtlc.viz.drawing import DrawingKit as Drawer
    from mtlc.viz.learned import Readout


class NDDR(StageSharing):
    """Gao et al. 2019: own copy per task, then concat + 1x1 conv + BN + ReLU per task."""

    layout: ClassVar = "per_task"
    type: Literal["nddr"]
    init: Pair = (0.9, 0.1)
    bn_momentum: float = Field(0.05, gt=0, le=1)
    lr_mult: float = Field(1.0, gt=0)


def diagonal_init(weight: torch.Tensor, task: int, tasks: int, init: tuple[float, float]) -> None:
    """Set a [C, T·C(, 1, 1)] reduction weight to init[1]·I per block, init[0]·I on `task`'s."""
    import torch

    channels = weight.shape[0]
    own, other = init
    eye = torch.eye(channels, dtype=weight.dtype)
    blocks = [eye * (own if s == task else other) for s in range(tasks)]
    with torch.no_grad():
        weight.copy_(torch.cat(blocks, dim=1).reshape(weight.shape))


def _reduction(shape: tuple[int, ...], tasks: int) -> tuple[nn.Module, nn.Module]:
    from torch import nn

    channels = shape[0]
    if len(shape) == 3:
        return nn.Conv2d(tasks * channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
    return nn.Linear(tasks * channels, channels, bias=False), nn.BatchNorm1d(channels)


class NDDRPoint(StagePoint):
    Options = NDDR
    mixes = True

    def build(self, stage: StageBuild) -> Shape:
        shape = stage.add_copies()
        if len(shape) not in (1, 3):
            raise stage.error(
                stage.where,
                f"nddr needs feature maps [C, H, W] or vectors [F]; stage '{stage.stage}' outputs {list(shape)}",
            )
        stage.add_mixing_units(shape)
        return shape

    def emit(self, em: Emitter, unit: str) -> dict[str, fx.Node]:
        """A shared concat node, then per task its own 1×1 conv → BN → ReLU (owner: the task)."""
        import torch
        from torch import nn

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
            x = em.call_module(
                f"{prefix}.reduce", reduce, (stacked,), block=unit, kind="unit", owner=t
            )
            x = em.call_module(f"{prefix}.bn", norm, (x,), block=unit, kind="unit", owner=t)
            out[t] = em.call_module(
                f"{prefix}.relu", nn.ReLU(), (x,), block=unit, kind="unit", owner=t
            )
        return out

    def draw(self, d: Drawer, u: str) -> None:
        a = d.g.nodes[u]
        tasks = a["tasks"]
        c = a["shape"][0]
        init = a["options"]["init"]
        title, detail, *cost = d.cluster(
            u, f"NDDR · {a['stage']}", f"init {init[0]:g}·I / {init[1]:g}·I"
        )
        # the title rides on the concat bar: nothing else on that row for edges to cross
        concat = f"concat  {len(tasks)}×{c} = {len(tasks) * c} ch"
        extra = " · ".join([detail[1]] + [x[1] for x in cost])
        d.part(
            f"{u}#concat",
            None,
            html_label([("b", f"{title[1]}  ·  {concat}"), ("s", extra)]),
            width=d.width(tasks),
            height=0.25,
            fillcolor="#444444",
            fontcolor="white",
            style="filled",
        )
        strengths = d.notes.learned.get(u)
        for i, t in enumerate(tasks):
            lines = [("b", "1×1 conv · BN · ReLU"), ("s", f"{len(tasks) * c} → {c}")]
            if strengths:  # per source block, in the source's colour
                weights = " ".join(d.weight(s, w) for s, w in zip(tasks, strengths[i]))
                lines.append(("html", weights))
            d.part(f"{u}#{t}", t, html_label(lines), width=COLUMN_WIDTH)
            d.dot.edge(f"{u}#concat", f"{u}#{t}", **d.edge_style((t,)))
        d.dot.close()

    def draw_edges(self, d: Drawer, u: str) -> set[tuple[str, str]]:
        for src, ts in d.in_edges(u).items():
            d.edge(src, f"{u}#concat", ts)
        return d.part_edges_out(u)

    def learned(self, readout: Readout, unit: str) -> list[list[float]] | None:
        from torch import nn

        tasks = list(readout.topology.graph.nodes[unit]["tasks"])
        rows: dict[str, list[float]] = {}
        for name, owner, module in readout.modules(unit):
            if owner not in tasks or not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            w = readout.state[f"{name}.weight"].float()
            c = w.shape[0]
            if w.shape[1] != len(tasks) * c:
                continue
            w = w.reshape(c, len(tasks), c)  # [out, source, in]
            rows[owner] = [w[:, s, :].diagonal().abs().mean().item() for s in range(len(tasks))]
        return [rows[t] for t in tasks] if len(rows) == len(tasks) else None


__all__ = ["NDDR", "NDDRPoint", "diagonal_init"]
