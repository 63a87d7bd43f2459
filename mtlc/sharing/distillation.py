"""Multi-modal distillation (PAD-Net, Xu et al., CVPR 2018).

Every task, auxiliary ones included, first makes initial features F_k and an initial
prediction (the topology's `decoder/<task>/features` and `decoder/<task>/initial`
blocks; the initial predictions are deep-supervised, which is what makes F_k
task-specific). The distillation then passes messages between them:

    F_k^o = F_k + Σ_{l≠k} σ(W_kl F_l) ⊙ F_l,     W_kl a 3×3 conv (C → C)

and the final head of every non-auxiliary task k reads F_k^o. The gate is computed
from the *source* task's features (the paper's formula; the survey's code gates a conv
of F_l instead, with the gate also from F_l). Auxiliary tasks are sources only: they
end at their initial prediction, so no message is computed *for* them.

One gate module per (target, source) pair, named `decoder.distillation.<k>.from_<l>`
and labelled with owner k, so profile and viz charge each message to the task that
receives it.

Drawn as initial predictions, then distillation edges between the tasks' features:
per target task one node `F°`, its own residual thick, each gated message thin and
⊙-headed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from mtlc.sharing.point import DecoderPoint, torch_modules
from mtlc.spec.base import DecoderBase
from mtlc.viz.dot import COLUMN_WIDTH, CROSS_WIDTH, OWN_WIDTH, html_label

if TYPE_CHECKING:
    from torch import fx

    from mtlc.compiler.emitter import Emitter
    from mtlc.viz.drawing import DrawingKit as Drawer


class Distillation(DecoderBase):
    """Xu et al. 2018 (PAD-Net): multi-modal distillation between initial task features."""

    type: Literal["distillation"]


@torch_modules(__name__)
def modules() -> dict[str, Any]:
    import torch
    from torch import nn

    class DistillationGate(nn.Module):
        """The message `σ(W F_l) ⊙ F_l` that source task l sends to one target task."""

        def __init__(self, channels: int):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, source: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.conv(source)) * source

    return {"DistillationGate": DistillationGate}


class DistillationPoint(DecoderPoint):
    Options = Distillation

    def emit(self, em: Emitter, unit: str) -> dict[str, fx.Node]:
        import operator

        attrs = em.attrs(unit)
        spec = em.topology.spec
        features = em.streams(unit)
        tasks = list(attrs["tasks"])
        channels = attrs["shape"][0]
        refined: dict[str, fx.Node] = {}
        for k in tasks:
            if spec.tasks[k].auxiliary:
                continue
            out = features[k]
            for src in tasks:
                if src == k:
                    continue
                message = em.call_module(
                    f"decoder.distillation.{k}.from_{src}",
                    modules().DistillationGate(channels),
                    (features[src],),
                    block=unit,
                    kind="unit",
                    owner=k,
                )
                out = em.call_function(
                    operator.add, (out, message), block=unit, kind="unit", owner=k
                )
            refined[k] = out
        return refined

    def draw(self, d: Drawer, u: str) -> dict[str, str]:
        a = d.g.nodes[u]
        title = d.cluster(u, "PAD-Net distillation", "Fᵏ + Σ σ(W Fˡ) ⊙ Fˡ")
        parts = {t: f"{u}#{t}" for t in d.main(a["tasks"])}
        for t, p in parts.items():
            d.part(p, t, html_label([("b", f"F° · {t}"), ("s", "distilled")]), width=COLUMN_WIDTH)
        d.title(u, title, parts[d.by_column(parts)[-1]])
        d.dot.close()
        return parts

    def draw_edges(self, d: Drawer, u: str) -> set[tuple[str, str]]:
        a = d.g.nodes[u]
        source_of = d.source_of(u)
        for t in d.main(a["tasks"]):
            for s in a["tasks"]:
                # the residual F_t thick, each gated message σ(W F_s) ⊙ F_s thin, ⊙-headed
                own = s == t
                d.edge(
                    source_of[s],
                    f"{u}#{t}",
                    (s,),
                    arrowhead="normal" if own else "odot",
                    penwidth=OWN_WIDTH if own else CROSS_WIDTH,
                )
        return d.part_edges_out(u)
