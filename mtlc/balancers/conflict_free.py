"""ConFIG: conflict-free gradients (Liu, Chu & Thuerey, ICLR 2025; arXiv 2408.11104).

The direction is the one whose cosine with every unit task gradient is equal,
``ĝ = normalise(U⁺ 1)`` with ``U`` the matrix of unit rows ``g_t/‖g_t‖`` (``U⁺`` its
pseudo-inverse), and its length is the sum of the projections, ``d = (Σ_t g_t·ĝ) ĝ``.

Engine: TorchJD's ``ConFIG`` (adapted from the official code; preference = ones, so the
length is the *sum* of the projections, as in the paper and LibMTL's equal-weight default).
It needs J itself (not only its Gramian). No options.
"""

from __future__ import annotations

from torch import Tensor

from mtlc.balancers.gradient import GradientBalancer, needs_jacobian_locally


class ConFIG(GradientBalancer):
    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        needs_jacobian_locally(self)
        from torchjd.aggregation import ConFIG as Engine

        return Engine()(J)
