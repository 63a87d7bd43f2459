"""PCGrad: gradient surgery (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020).

For each task i, in a random order over the other tasks j: if ``g_i^PC · g_j < 0``,
project the conflicting component away, ``g_i^PC ← g_i^PC − (g_i^PC·g_j / ‖g_j‖²) g_j``;
the update is ``Σ_i g_i^PC``. No options.

Engine: TorchJD's ``PCGradWeighting`` (the projections as weights on the Gramian). Its
scaling is the paper's and LibMTL's: the *sum* of the projected gradients, so with no
conflict PCGrad equals the fixed balancer's sum of losses. The random order uses torch's
global RNG, which the trainer seeds and checkpoints.
"""

from __future__ import annotations

from torch import Tensor

from mtlc.balancers.gradient import GramianMethod


class PCGrad(GramianMethod):
    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        from torchjd.aggregation import PCGradWeighting

        return PCGradWeighting()(gram)
