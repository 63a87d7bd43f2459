"""GLS: geometric loss strategy (Chennupati, Sistu, Yogamani & Rawashdeh, CVPR-W 2019).

``L = (Π_t L_t)^{1/T}``: the geometric mean of the task losses. Its gradient weights task t
by ``L / (T·L_t)``, so a task whose loss is small is not drowned by one whose loss is large
(scale-invariant: multiplying L_t by k multiplies L by a constant). Computed as
``exp(mean_t log L_t)`` for stability; needs positive losses (a loss ≤ 0 is clamped to
1e-12 inside the log, so a zero loss makes the total 0 rather than NaN). No options.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer

FLOOR = 1e-12


class GLS(Balancer):
    level = "loss"

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        names = self.present(losses)
        stacked = torch.stack([losses[t].reshape(()) for t in names])
        total = torch.exp(torch.log(stacked.clamp(min=FLOOR)).mean())
        with torch.no_grad():  # on the device: the log reads it later (Balancer.step_log)
            n = len(self.tasks)
            last = torch.empty(n, dtype=torch.float64, device=stacked.device)
            derivative = total / (len(names) * stacked.clamp(min=FLOOR))
            self.store_per_task(last, derivative, names, absent=1.0 / n)
            self._last = last
        return total

    def log_tensors(self) -> tuple[Tensor, ...]:
        """``∂L/∂L_t = L/(T·L_t)`` at the last step (1/T before the first, and for a task
        without a loss in it)."""
        last = getattr(self, "_last", None)
        return (
            last
            if last is not None
            else torch.full((len(self.tasks),), 1.0 / len(self.tasks), dtype=torch.float64),
        )
