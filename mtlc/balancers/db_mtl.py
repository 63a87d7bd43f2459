"""DB-MTL: dual-balancing multi-task learning (Lin, Ye, Xu, Shi, Zhang & Lin, 2023;
arXiv 2308.12029), mtlc's own code (TorchJD has none).

Two balances. *Loss scale*: each task trains on ``log(L_t + ε)``, whose gradient is
``g_t / (L_t + ε)``, so tasks are on a common relative scale. *Gradient magnitude*: an EMA
``ĝ_t ← (1 − β_k) ĝ_t^{new} + β_k ĝ_t`` (``β_k = β / k^{β_σ}``) of those gradients, then
every task's tracked gradient is scaled to the largest norm:
``d = Σ_t (max_s ‖ĝ_s‖ / ‖ĝ_t‖) ĝ_t``. Defaults (LibMTL, the authors' own code): β 0.9,
β_σ 0, ε 1e-8.

The issue lists DB-MTL with the loss-level methods, but its second balance needs the
per-task gradients, so it is a gradient-level balancer here (on the shared parameters only:
the EMA has their size). As in the authors' code, task-specific parameters also train on
``log(L_t + ε)``: their gradient is ``∇L_t / (L_t + ε)`` (:meth:`DBMTL.head_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.gradient import RunningGradients

EPS = 1e-8


class DBMTL(RunningGradients):
    state_buffer, step_buffer = "buffer", "db_step"

    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        wrt: str = "parameters",
        beta: float = 0.9,
        beta_sigma: float = 0.0,
    ) -> None:
        super().__init__(tasks, kinds, wrt=wrt)
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)

    def head_weights(self, losses: Tensor) -> Tensor:
        return 1.0 / (losses + EPS)

    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        losses, k = self.start_step("db_mtl", J, losses)
        with torch.no_grad():
            log_grads = J / (losses.reshape(-1, 1).to(J.dtype) + EPS)
            beta = self.beta / k**self.beta_sigma
            buf = log_grads + beta * (self.buffer.to(J.dtype) - log_grads)
            self.buffer = buf
            norms = buf.norm(dim=1)
            alpha = norms.max() / (norms + EPS)
            self._step_weights = alpha.detach()
            return alpha @ buf
