"""Aligned-MTL: independent component alignment (Senushkin, Patakin, Kuznetsov &
Konushin, CVPR 2023).

Make the task gradients orthogonal with equal norms before combining: with ``G = J Jᵀ =
V Λ Vᵀ`` (rank r), the balance transform ``B = √λ_min · V Λ^{-1/2} Vᵀ`` makes ``Bᵀ J`` have
condition number 1, and the update is ``d = Jᵀ B w``. ``scale_mode`` picks the eigenvalue
that sets the step: ``min`` (paper), ``median``, ``rmse`` (mean, the original code).

Engine: TorchJD's ``AlignedMTLWeighting``. Scaling: TorchJD uses the mean preference
``w = 1/T``; the authors' code and LibMTL use ``w = 1`` (``α = B.sum(0)``), T times larger.
mtlc follows the paper's code and LibMTL (``w = 1``), so that with orthogonal equal-norm
gradients Aligned-MTL steps like the sum of losses, the scale every other mtlc default uses
(fixed weights 1, PCGrad, ConFIG); learning rates tuned for one carry over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.gradient import GramianMethod


class AlignedMTL(GramianMethod):
    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        wrt: str = "parameters",
        scale_mode: str = "min",
    ) -> None:
        super().__init__(tasks, kinds, wrt=wrt)
        self.scale_mode = scale_mode

    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        from torchjd.aggregation import AlignedMTLWeighting

        ones = torch.ones(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return AlignedMTLWeighting(pref_vector=ones, scale_mode=self.scale_mode)(gram)
