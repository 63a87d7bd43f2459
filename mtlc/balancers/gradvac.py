"""GradVac: gradient vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021).

PCGrad only acts when two gradients conflict (cosine < 0); GradVac also pulls them
towards the similarity the pair usually has. For each task i and each other task j (in a
random order), with ``φ_ij`` the cosine of the current ``g_i^PC`` and ``g_j`` and ``φ̂_ij``
an EMA target: if ``φ_ij < φ̂_ij``,

    g_i^PC ← g_i^PC + ‖g_i^PC‖ (φ̂_ij √(1−φ_ij²) − φ_ij √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²)) · g_j

then ``φ̂_ij ← (1−β) φ̂_ij + β φ_ij``. The update is ``Σ_i g_i^PC`` (the sum, as PCGrad).

Engine: TorchJD's ``GradVacWeighting`` (the same rule written on the Gramian). Options:
``beta`` (0.5, the default of LibMTL and TorchJD). The targets φ̂ start at 0 (as in both)
and live in the buffer ``phi`` [T, T], so they are checkpointed and resume is exact. mtlc
applies it to the whole shared block at once (LibMTL's ``group_type: 0``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.gradient import GramianMethod


class GradVac(GramianMethod):
    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        wrt: str = "parameters",
        beta: float = 0.5,
    ) -> None:
        super().__init__(tasks, kinds, wrt=wrt)
        self.beta = float(beta)
        n = len(self.tasks)
        self.register_buffer("phi", torch.zeros(n, n, dtype=torch.float64))

    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        from torchjd.aggregation import GradVacWeighting

        engine = GradVacWeighting(beta=self.beta)
        n = gram.shape[0]
        # The present tasks' block of φ̂ (all tasks in the usual case).
        phi = self.phi[:n, :n].detach().to("cpu", torch.float64).clone()
        engine._phi_t, engine._state_key = phi, (n, gram.dtype)
        weights = engine(gram)
        with torch.no_grad():
            self.phi[:n, :n] = phi.to(self.phi.device)
        return weights
