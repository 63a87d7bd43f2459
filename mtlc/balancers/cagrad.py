"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

Maximise the worst task's improvement within a ball around the mean gradient ``g₀``:
``max_d min_t g_t·d`` s.t. ``‖d − g₀‖ ≤ c‖g₀‖``. Its dual gives
``w* = argmin_{w ∈ Δ} g_wᵀ g₀ + c‖g₀‖ ‖g_w‖`` (``g_w = Σ w_t g_t``) and
``d = g₀ + (c‖g₀‖/‖g_w‖) g_w``.

Engine: TorchJD's ``CAGradWeighting`` (the dual solved by cvxpy/Clarabel on the Gramian;
the ``mtlc[balancers]`` extra). Defaults: ``c = 0.4`` (the paper's NYUv2 setting; LibMTL
defaults to 0.5). Scaling: TorchJD returns ``d`` unscaled (``rescale: 0``); the official code
and LibMTL divide by ``1 + c²`` (``rescale: 1``, their default) or ``1 + c`` (2). mtlc follows
the official code, default ``rescale: 1``, so the step stays comparable to the mean gradient.

If the solver fails, mtlc does what the official code (scipy ``minimize`` from ``w = 1/T``,
its result used unchecked) ends up with when it cannot move: ``w = 1/T``, i.e.
``d = (1 + c) g₀``, and logs it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.gradient import GramianMethod, WarnOnce, require


class CAGrad(GramianMethod):
    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        wrt: str = "parameters",
        c: float = 0.4,
        rescale: int = 1,
    ) -> None:
        require("cagrad", ("cvxpy", "clarabel"))
        super().__init__(tasks, kinds, wrt=wrt)
        self.c, self.rescale = float(c), int(rescale)
        self.fallback = WarnOnce("cagrad: the solver failed; using w = 1/T for this step")

    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        from torchjd.aggregation import CAGradWeighting

        n = gram.shape[0]
        try:
            weights = CAGradWeighting(c=self.c)(gram)
            if not torch.isfinite(weights).all():
                raise ValueError("non-finite weights")
        except Exception as exc:  # cvxpy's SolverError, a None solution, …
            self.fallback(type(exc).__name__)
            g0_sq = gram.sum() / n**2
            weights = torch.full((n,), (1.0 + self.c) / n, dtype=gram.dtype, device=gram.device)
            if g0_sq <= 0:
                weights.zero_()
        divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return weights / divisor
