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

from mtlc.balancers.gradient import GradientBalancer, needs_losses


class MoCo(GradientBalancer):
    allows_representation = False

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
        self.register_buffer("y", torch.zeros(n, 0))
        self.register_buffer("lambd", torch.full((n,), 1.0 / n, dtype=torch.float64))
        self.register_buffer("moco_step", torch.zeros((), dtype=torch.float64))
        self._steps = 0  # the host copy of `moco_step`: k is needed on the host, unread

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # y is created at the first step with the target's size; take the saved one's shape.
        saved = state_dict.get(prefix + "y")
        if saved is not None and saved.shape != self.y.shape:
            self.y = torch.zeros_like(saved, device=self.y.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._steps = int(self.moco_step)

    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        losses = needs_losses("moco", losses)
        n = J.shape[0]
        if n != len(self.tasks):
            raise ValueError("moco needs every task's loss at every step")
        if self.y.shape != J.shape:
            self.y = torch.zeros_like(J)
        with torch.no_grad():
            self.moco_step += 1
            self._steps += 1
            k = float(self._steps)
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
