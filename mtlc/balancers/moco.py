"""MoCo: multi-objective gradient correction (Fernando, Shen, Liu, Chaudhury, Murugesan &
Chen, ICLR 2023), mtlc's own code (TorchJD has no MoCo).

MGDA's weights are biased when computed from stochastic gradients; MoCo tracks the
gradients with a moving average ``y`` and takes a projected-gradient step on the weights:

    y_t ← y_t − β_k (y_t − ĝ_t)                 (ĝ_t = g_t/‖g_t‖ · L_t, LibMTL's scaling)
    λ ← softmax(λ − γ_k (Y Yᵀ + ρ I) λ)
    d = Yᵀ λ,        β_k = β / k^{β_σ},  γ_k = γ / k^{γ_σ}   (k = 1, 2, … the step)

The paper projects λ onto the simplex; mtlc follows LibMTL, the reference multi-task
implementation, which uses a softmax (it also keeps λ on the simplex) and rescales each
gradient to the length of its loss. Defaults are LibMTL's: β 0.5, β_σ 0.5, γ 0.1, γ_σ 0.5,
ρ 0. The state (``y`` of shape [T, P], λ, k) is in buffers, so resume is exact; because ``y``
has the size of the target, MoCo works on the shared parameters only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.gradient import RunningGradients


class MoCo(RunningGradients):
    state_buffer, step_buffer = "y", "moco_step"

    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        wrt: str = "parameters",
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        super().__init__(tasks, kinds, wrt=wrt)
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma, self.rho = float(gamma), float(gamma_sigma), float(rho)
        n = len(self.tasks)
        self.register_buffer("lambd", torch.full((n,), 1.0 / n, dtype=torch.float64))

    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        losses, k = self.start_step("moco", J, losses)
        n = J.shape[0]
        with torch.no_grad():
            norms = J.norm(dim=1, keepdim=True)
            grads = J / (norms + 1e-8) * losses.reshape(-1, 1).to(J.dtype)
            y = self.y.to(J.dtype)
            y -= (self.beta / k**self.beta_sigma) * (y - grads)
            self.y = y
            lam = self.lambd.to(J.device, J.dtype)
            reg = y @ y.T + self.rho * torch.eye(n, dtype=J.dtype, device=J.device)
            lam = torch.softmax(lam - (self.gamma / k**self.gamma_sigma) * (reg @ lam), dim=-1)
            self.lambd.copy_(lam.to(self.lambd.dtype))
            self._step_weights = lam.detach()
            return y.T @ lam
