"""IMTL-L: impartial multi-task learning, loss part (Liu et al., ICLR 2021).

``L = Σ_t (e^{s_t} L_t − s_t)`` with learned ``s_t`` (init 0): at the optimum over s_t,
``e^{s_t} L_t = 1``, so every scaled loss is driven to the same value, whatever its unit.
The ``s_t`` are the parameter ``scales`` (trained by the run's optimizer, as uncertainty's).
LibMTL's form; no options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer


class IMTLL(Balancer):
    level = "loss"

    def __init__(self, tasks: Sequence[str], kinds: Mapping[str, str]) -> None:
        super().__init__(tasks, kinds)
        self.scales = torch.nn.Parameter(torch.zeros(len(self.tasks)))

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        names = self.present(losses)
        total = 0.0
        for t in names:
            loss = losses[t].reshape(())
            s = self.scales[self.index(t)].to(loss.device)
            total = total + torch.exp(s) * loss - s
        return total

    def log_tensors(self) -> tuple[Tensor, ...]:
        return (self.scales,)

    def log_values(self, values: list) -> tuple[dict[str, float], dict[str, float]]:
        (s,) = values
        return {t: math.exp(s[i]) for i, t in enumerate(self.tasks)}, {}
