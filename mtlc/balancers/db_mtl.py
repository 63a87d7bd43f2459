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

from mtlc.balancers.gradient import GradientBalancer, needs_losses

EPS = 1e-8


class DBMTL(GradientBalancer):
    allows_representation = False

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
        self.register_buffer("buffer", torch.zeros(len(self.tasks), 0))
        self.register_buffer("db_step", torch.zeros((), dtype=torch.float64))
        self._steps = 0  # the host copy of `db_step`: k is needed on the host, unread

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        saved = state_dict.get(prefix + "buffer")
        if saved is not None and saved.shape != self.buffer.shape:
            self.buffer = torch.zeros_like(saved, device=self.buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._steps = int(self.db_step)

    def head_weights(self, losses: Tensor) -> Tensor:
        return 1.0 / (losses + EPS)

    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        losses = needs_losses("db_mtl", losses)
        if J.shape[0] != len(self.tasks):
            raise ValueError("db_mtl needs every task's loss at every step")
        if self.buffer.shape != J.shape:
            self.buffer = torch.zeros_like(J)
        with torch.no_grad():
            self.db_step += 1
            self._steps += 1
            k = float(self._steps)
            log_grads = J / (losses.reshape(-1, 1).to(J.dtype) + EPS)
            beta = self.beta / k**self.beta_sigma
            buf = log_grads + beta * (self.buffer.to(J.dtype) - log_grads)
            self.buffer = buf
            norms = buf.norm(dim=1)
            alpha = norms.max() / (norms + EPS)
            self._step_weights = alpha.detach()
            return alpha @ buf
