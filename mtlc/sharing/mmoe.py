"""Multi-gate mixture-of-experts (Ma et al., KDD 2018, MMoE), and the gate every
mixture point (`cgc`, `ple`) uses.

E experts f_1 … f_E (each a copy of the stage's layers, or its own layer list) read the
input x every task shares; task t has its own softmax gate over them and reads

    y_t = Σ_e g_t(x)_e · f_e(x),     g_t(x) = softmax(W_t · v(x))          (paper eq. 5–6)

`v(x)` is what a gate looks at: x itself for a vector [F], and for a feature map
[C, H, W] (or any [C, ...]) its global average over every axis after the channel axis,
so a gate stays a C → E linear map whatever the resolution (the paper only has vectors;
pooling is the usual lift to maps, as in squeeze-and-excitation). With `top_k = k` the
gate is sparse (Shazeer et al. 2017): the k largest logits are kept, the others set to
−∞, and the softmax runs over the k kept, so the other experts get weight 0 exactly.
With one expert the gate is 1 and MMoE is hard sharing of that expert.

The topology (mtlc.topology.experts) makes the experts blocks and each gate a unit
whose `reads` is the gate's input and `experts` the blocks it mixes; `emit` writes one
gate: its `Gate` module (labelled with the gate's owner, so its weights count for that
task) and the weighted sum.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from mtlc.compiler.emitter import Emitter


class Gate(nn.Module):
    """softmax(W · v(x) + b) over E experts, optionally over the k largest logits only."""

    def __init__(self, features: int, experts: int, top_k: int | None = None):
        super().__init__()
        self.linear = nn.Linear(features, experts)
        self.top_k = top_k if top_k is not None and top_k < experts else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x if x.dim() == 2 else x.flatten(2).mean(-1)
        logits = self.linear(v)
        if self.top_k is not None:
            kept = logits.topk(self.top_k, dim=-1).indices
            sparse = torch.full_like(logits, float("-inf"))
            logits = sparse.scatter(-1, kept, logits.gather(-1, kept))
        return torch.softmax(logits, dim=-1)


def gated_sum(weights: torch.Tensor, *experts: torch.Tensor) -> torch.Tensor:
    """Σ_e weights[:, e] · experts[e], the weights broadcast over each expert's feature axes."""
    extra = [1] * (experts[0].dim() - 1)
    out = weights[:, 0].reshape(-1, *extra) * experts[0]
    for e in range(1, len(experts)):
        out = torch.addcmul(out, weights[:, e].reshape(-1, *extra), experts[e])
    return out


def emit(em: Emitter, unit: str) -> dict[str, fx.Node]:
    """One gate: its weights over the unit's experts, then their weighted sum."""
    attrs = em.attrs(unit)
    owner = attrs["owner"]
    inputs = em.inputs(unit)
    x = next(iter(inputs[attrs["reads"]].values()))
    experts = tuple(next(iter(inputs[e].values())) for e in attrs["experts"])
    stage = attrs["stage"]
    gate = Gate(attrs["in_shape"][0], len(experts), attrs["options"].get("top_k"))
    name = f"encoder.{stage}.gate_{owner or 'shared'}"
    weights = em.call_module(name, gate, (x,), block=unit, kind="unit", owner=owner)
    out = em.call_function(gated_sum, (weights, *experts), block=unit, kind="unit", owner=owner)
    return dict.fromkeys(attrs["tasks"], out)
