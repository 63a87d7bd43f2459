"""DualProj: the mean gradient projected onto the dual cone of the task gradients
(the GEM projection of Lopez-Paz & Ranzato, NeurIPS 2017, as an aggregator in Quinton &
Rey 2024).

``d = argmin_{v : J v ≥ 0} ‖v − ḡ‖²`` with ``ḡ = (1/T) Σ_t g_t``: the closest direction to
the mean that does not increase any task's loss to first order.

Engine: TorchJD's ``DualProjWeighting`` (quadprog; the ``mtlc[balancers]`` extra). mtlc
follows TorchJD: the mean (preference 1/T), not the sum. No options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from mtlc.balancers.gradient import GramianMethod, require


class DualProj(GramianMethod):
    def __init__(
        self, tasks: Sequence[str], kinds: Mapping[str, str], *, wrt: str = "parameters"
    ) -> None:
        require("dualproj", ("quadprog", "qpsolvers"))
        super().__init__(tasks, kinds, wrt=wrt)

    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        from torchjd.aggregation import DualProjWeighting

        return DualProjWeighting()(gram)
