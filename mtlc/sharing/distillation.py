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
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from mtlc.compiler.emitter import Emitter


class DistillationGate(nn.Module):
    """The message `σ(W F_l) ⊙ F_l` that source task l sends to one target task."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(source)) * source


def emit(em: Emitter, unit: str) -> dict[str, fx.Node]:
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
                DistillationGate(channels),
                (features[src],),
                block=unit,
                kind="unit",
                owner=k,
            )
            out = em.call_function(operator.add, (out, message), block=unit, kind="unit", owner=k)
        refined[k] = out
    return refined
