"""Pattern-affinitive propagation (PAP-Net, Zhang et al., CVPR 2019).

PAP-Net has no official code anywhere; this is built from the paper (and mtlc's design
notes), not ported. Every task, auxiliary ones included, has initial features F_i (the
topology's `decoder/<task>/features`, deep-supervised through `decoder/<task>/initial`).
Then, at 1/`downsample` resolution (the matrix is HW × HW, so full resolution would
cost memory quadratic in the pixels):

1. per task i, a pixel affinity `M_i = softmax(F_iᵀ F_i / √C)` over HW × HW, each row a
   distribution (rows sum to 1): which pixels look alike *for task i*;
2. per target task j, a learned cross-task combination `M̂_j = Σ_i α_ij M_i`, with
   α_·j = softmax over the source tasks of learned logits. The logits start at 1 for j's
   own affinity and 0 for the others, so each task first trusts its own patterns
   (with three sources its own weight starts at e/(e+2) ≈ 0.58) and learns how much to
   borrow. The logits are registered parameters: a public re-implementation kept them as
   plain tensors, so they never trained;
3. diffusion `X ← β·M̂_j X + (1−β)·X₀` for `iterations` steps, X₀ = F_j downsampled
   (pixels as rows), β fixed at `beta` or, with `learn_beta`, σ(b) with b a parameter
   starting at logit(beta);
4. X is upsampled back (bilinear) and added to F_j, which the final head reads.

Downsampling is adaptive average pooling to ⌈H/d⌉ × ⌈W/d⌉, which equals d × d average
pooling when d divides the size and never shrinks a map to nothing. Auxiliary tasks
contribute their affinity but get no propagation: they end at their initial prediction.

Drawn as per task an affinity matrix, exchanged across tasks into each diffusion.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from mtlc.layers.vocab import MAX_SIZE
from mtlc.sharing.point import DecoderPoint, torch_modules
from mtlc.spec.base import MAX_ITERATIONS, Count, DecoderBase
from mtlc.viz.dot import COLUMN_WIDTH, CROSS_WIDTH, OWN_WIDTH, html_label

if TYPE_CHECKING:
    from torch import fx

    from mtlc.compiler.emitter import Emitter
    from mtlc.viz.drawing import DrawingKit as Drawer


class Affinity(DecoderBase):
    """Zhang et al. 2019 (PAP-Net): pattern-affinitive propagation across tasks."""

    type: Literal["affinity"]
    downsample: Count(MAX_SIZE) = Field(
        2, description="the affinity is computed at 1/downsample resolution"
    )
    iterations: Count(MAX_ITERATIONS) = 3
    beta: float = Field(0.05, gt=0, lt=1)
    learn_beta: bool = False


@torch_modules(__name__)
def modules() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    def pixel_affinity(low: torch.Tensor) -> torch.Tensor:
        """`softmax(XᵀX / √C)` of a [N, C, h, w] map: a [N, hw, hw] matrix whose rows sum to 1."""
        x = low.flatten(2)  # [N, C, P]
        scores = torch.bmm(x.transpose(1, 2), x) / math.sqrt(x.shape[1])
        return torch.softmax(scores, dim=-1)

    class PixelAffinity(nn.Module):
        """One task's pixel affinity; a module so the graph names whose affinity it is."""

        def forward(self, low: torch.Tensor) -> torch.Tensor:
            return pixel_affinity(low)

    class Propagation(nn.Module):
        """For one target task: combine the tasks' affinities, diffuse, upsample, add back."""

        def __init__(self, sources: int, own: int, beta: float, learn_beta: bool, iterations: int):
            super().__init__()
            logits = torch.zeros(sources)
            logits[own] = 1.0
            self.logits = nn.Parameter(logits)
            self.iterations = iterations
            if learn_beta:
                self.beta_logit = nn.Parameter(torch.tensor(math.log(beta / (1 - beta))))
            else:
                self.beta_logit = None
                self.beta = beta

        def weights(self) -> torch.Tensor:
            """α_·j: the share of each source task's affinity in this task's combination."""
            return torch.softmax(self.logits, dim=0)

        def forward(
            self, features: torch.Tensor, low: torch.Tensor, *affinities: torch.Tensor
        ) -> torch.Tensor:
            alpha = self.weights()
            combined = (alpha.view(-1, 1, 1, 1) * torch.stack(affinities)).sum(0)  # [N, P, P]
            beta = self.beta if self.beta_logit is None else torch.sigmoid(self.beta_logit)
            x0 = low.flatten(2).transpose(1, 2)  # [N, P, C]: one row per pixel
            x = x0
            for _ in range(self.iterations):
                x = beta * torch.bmm(combined, x) + (1 - beta) * x0
            x = x.transpose(1, 2).reshape(low.shape)
            up = F.interpolate(x, size=features.shape[-2:], mode="bilinear", align_corners=False)
            return features + up

    return {
        "pixel_affinity": pixel_affinity,
        "PixelAffinity": PixelAffinity,
        "Propagation": Propagation,
    }


class AffinityPoint(DecoderPoint):
    Options = Affinity

    def emit(self, em: Emitter, unit: str) -> dict[str, fx.Node]:
        import torch.nn.functional as F

        m = modules()
        attrs = em.attrs(unit)
        spec, opts = em.topology.spec, attrs["options"]
        features = em.streams(unit)
        tasks = list(attrs["tasks"])
        _, h, w = attrs["shape"]
        d = opts["downsample"]
        size = (math.ceil(h / d), math.ceil(w / d))
        lows: dict[str, fx.Node] = {}
        affinities: list[fx.Node] = []
        for i in tasks:
            lows[i] = em.call_function(
                F.adaptive_avg_pool2d, (features[i], size), block=unit, kind="unit", owner=i
            )
            affinities.append(
                em.call_module(
                    f"decoder.affinity.{i}.affinity",
                    m.PixelAffinity(),
                    (lows[i],),
                    block=unit,
                    kind="unit",
                    owner=i,
                )
            )
        refined: dict[str, fx.Node] = {}
        for own, j in enumerate(tasks):
            if spec.tasks[j].auxiliary:
                continue
            module = m.Propagation(
                len(tasks), own, opts["beta"], opts["learn_beta"], opts["iterations"]
            )
            refined[j] = em.call_module(
                f"decoder.affinity.{j}.propagate",
                module,
                (features[j], lows[j], *affinities),
                block=unit,
                kind="unit",
                owner=j,
            )
        return refined

    def draw(self, d: Drawer, u: str) -> dict[str, str]:
        a = d.g.nodes[u]
        o = a["options"]
        title = d.cluster(
            u,
            "PAP-Net affinity propagation",
            f"at 1/{o['downsample']} · {o['iterations']} iterations · β {o['beta']:g}",
        )
        mats = {t: f"{u}#affinity/{t}" for t in a["tasks"]}
        for t, p in mats.items():
            label = html_label([("b", f"affinity M · {t}"), ("s", "softmax(FᵀF/√C)")])
            d.part(p, t, label, shape="box3d")
        for t in d.main(a["tasks"]):
            label = html_label([("b", f"diffusion · {t}"), ("s", "βΣαM·X + (1−β)F")])
            d.part(f"{u}#{t}", t, label, width=COLUMN_WIDTH)
        d.title(u, title, mats[d.by_column(mats)[-1]])
        d.dot.close()
        return mats

    def draw_edges(self, d: Drawer, u: str) -> set[tuple[str, str]]:
        a = d.g.nodes[u]
        source_of = d.source_of(u)
        for s in a["tasks"]:
            d.edge(source_of[s], f"{u}#affinity/{s}", (s,))
        for t in d.main(a["tasks"]):
            d.edge(source_of[t], f"{u}#{t}", (t,))
            for s in a["tasks"]:
                width = OWN_WIDTH if s == t else CROSS_WIDTH
                d.edge(f"{u}#affinity/{s}", f"{u}#{t}", (s,), penwidth=width)
        return d.part_edges_out(u)
