"""Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

``L = Σ_t c_t·exp(−s_t)·L_t + s_t/2`` with the learned ``s_t = log σ_t²``.
Everyone parameterises by ``s`` rather than σ because it is unconstrained and
``exp(−s)`` never divides by zero. ``c_t = 1/2`` for regression (Gaussian
likelihood: ``L/(2σ²)``) and 1 for classification (the scaled-softmax form
``L/σ²``); the ``s_t/2`` regulariser is ``log σ`` in both. The total can go
negative once some σ_t < 1: that is expected, not a bug.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer, BalancerError, is_number


class Uncertainty(Balancer):
    """``init`` is the initial ``s_t`` (0 here and in the paper; −0.5 in mtan/LibMTL).

    The ``s_t`` live in one parameter vector ``log_vars`` (declaration order of the
    tasks), so the trainer must put ``balancer.parameters()`` in its optimizer.
    """

    level = "loss"

    def __init__(
        self, tasks: Sequence[str], kinds: Mapping[str, str], *, init: float = 0.0
    ) -> None:
        super().__init__(tasks, kinds)
        if not is_number(init) or not math.isfinite(init):
            raise BalancerError(
                f"balancer option 'init' must be a finite number, got {init!r}", ("init",)
            )
        self.log_vars = torch.nn.Parameter(torch.full((len(self.tasks),), float(init)))
        self._c = {t: 1.0 if self.kinds[t] == "classification" else 0.5 for t in self.tasks}

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        names = self.present(losses)
        total = 0.0
        for t in names:
            loss = losses[t].reshape(())
            # .to() keeps the graph, so the s_t learn even if the trainer left them on the CPU.
            s = self.log_vars[self.index(t)].to(loss.device)
            total = total + self._c[t] * torch.exp(-s) * loss + s / 2
        return total

    def log_tensors(self) -> tuple[Tensor, ...]:
        return (self.log_vars,)

    def log_values(self, values: list) -> tuple[dict[str, float], dict[str, float]]:
        """Weights: the effective weight ``c_t·exp(−s_t)`` of each loss; extra: the
        ``s_t`` and ``σ_t = exp(s_t / 2)``, the learned task noise."""
        (s,) = values
        weights = {t: self._c[t] * _exp(-s[i]) for i, t in enumerate(self.tasks)}
        extra = {f"s_{t}": s[i] for i, t in enumerate(self.tasks)}
        extra.update({f"sigma_{t}": _exp(s[i] / 2) for i, t in enumerate(self.tasks)})
        return weights, extra

    def sigmas(self) -> dict[str, float]:
        """σ_t = exp(s_t / 2), the learned task noise."""
        s = self.log_vars.detach().cpu().tolist()
        return {t: _exp(s[i] / 2) for i, t in enumerate(self.tasks)}


def _exp(x: float) -> float:
    """exp that overflows to inf, as the tensor op does: a diverging s_t is then reported
    by the trainer's non-finite check (naming the task and step), not as a traceback."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
