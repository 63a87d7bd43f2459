"""DWA: dynamic weight average (Liu, Johns & Davison, CVPR 2019, MTAN).

``w_t = T·exp(r_t / τ) / Σ_s exp(r_s / τ)`` with ``r_t = L̄_t(e−1) / L̄_t(e−2)`` the ratio of
task t's mean training loss over the last two epochs: a task whose loss falls slowly gets
more weight. ``τ`` is ``temperature`` (2, the paper's value); the first two epochs use
``w = 1``. The weights sum to T, as in the paper and LibMTL.

State (all buffers, so resume is exact even mid-epoch): the running sum and count of this
epoch's losses, the last two epoch means and the number of finished epochs. The trainer
calls :meth:`end_epoch` at the end of each epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer


class DWA(Balancer):
    level = "loss"

    def __init__(
        self, tasks: Sequence[str], kinds: Mapping[str, str], *, temperature: float = 2.0
    ) -> None:
        super().__init__(tasks, kinds)
        self.temperature = float(temperature)
        n = len(self.tasks)
        self.register_buffer("epoch_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("history", torch.ones(2, n, dtype=torch.float64))  # [e−2, e−1]
        self.register_buffer("epochs", torch.zeros((), dtype=torch.float64))

    def current(self) -> Tensor:
        """The weights, on the buffers' device (computed there: nothing is read back)."""
        n = len(self.tasks)
        ratio = self.history[1] / self.history[0].clamp(min=1e-12)
        weighted = n * torch.softmax(ratio / self.temperature, dim=0)
        return torch.where(self.epochs < 2, torch.ones_like(weighted), weighted)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        names = self.present(losses)
        w = self.current()
        with torch.no_grad():
            for t in names:
                i = self.index(t)
                self.epoch_sum[i] += losses[t].detach().reshape(()).to(self.epoch_sum.device)
                self.epoch_count[i] += 1
        return sum(
            w[self.index(t)].to(losses[t].device, losses[t].dtype) * losses[t].reshape(())
            for t in names
        )

    def end_epoch(self) -> None:
        with torch.no_grad():
            mean = torch.where(
                self.epoch_count > 0,
                self.epoch_sum / self.epoch_count.clamp(min=1),
                self.history[1],
            )
            self.history[0] = self.history[1].clone()
            self.history[1] = mean
            self.epochs += 1
            self.epoch_sum.zero_()
            self.epoch_count.zero_()

    def log_tensors(self) -> tuple[Tensor, ...]:
        return (self.current(),)
