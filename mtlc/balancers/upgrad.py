"""UPGrad: unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024).

Each task gradient is projected onto the dual cone of all rows of J (the set of directions
that do not increase any task's loss to first order), ``π_J(g_i) = Jᵀ w_i`` with
``w_i = argmin_{v ≥ e_i} vᵀ G v`` (G = J Jᵀ), and the projections are averaged:
``d = (1/T) Σ_i π_J(g_i)``. So ``J d ≥ 0``: no task gets worse to first order.

Engine: TorchJD's ``UPGradWeighting`` with its quadprog dual-cone projector (needs the
``mtlc[balancers]`` extra). mtlc follows the paper and TorchJD: the *mean* of the
projections (preference vector 1/T); LibMTL's port uses the same mean. No options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from mtlc.balancers.gradient import GramianMethod, require


class UPGrad(GramianMethod):
    def __init__(
        self, tasks: Sequence[str], kinds: Mapping[str, str], *, wrt: str = "parameters"
    ) -> None:
        require("upgrad", ("quadprog", "qpsolvers"))
        super().__init__(tasks, kinds, wrt=wrt)

    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        from torchjd.aggregation import UPGradWeighting

        return UPGradWeighting()(gram)
