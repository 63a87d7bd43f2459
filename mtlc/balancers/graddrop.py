"""GradDrop: gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai &
Anguelov, NeurIPS 2020).

Per coordinate, the positive-sign purity ``P = ½ (1 + Σ_t g_t / Σ_t |g_t|)``; draw
``U ~ U(0, 1)``; keep the positive components where ``P > U`` and the negative ones where
``P < U``: ``d = Σ_t (ℓ_t + (1 − ℓ_t) M_t) ⊙ g_t``, ``ℓ_t`` = ``leak`` (0 = pure GradDrop).

Engine: TorchJD's ``GradDrop`` (lines 10–15 of the paper's Algorithm 1, f = identity). The
paper applies it at the shared activations; mtlc's default is the shared parameters
(``wrt: representation`` is the paper's placement). The draw uses torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.gradient import GradientBalancer, needs_jacobian_locally


class GradDrop(GradientBalancer):
    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        wrt: str = "parameters",
        leak: float = 0.0,
    ) -> None:
        super().__init__(tasks, kinds, wrt=wrt)
        self.leak = float(leak)

    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        needs_jacobian_locally(self)
        from torchjd.aggregation import GradDrop as Engine

        leak = torch.full((J.shape[0],), self.leak, dtype=J.dtype, device=J.device)
        return Engine(leak=leak)(J)
