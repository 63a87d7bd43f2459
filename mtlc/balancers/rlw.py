"""RLW: random loss weighting (Lin, Ye, Xu, Shi, Zhang & Kwok, TMLR 2022, "Reasonable
Effectiveness of Random Weighting").

Each step draws ``λ ~ N(0, I_T)`` and trains on ``Σ_t softmax(λ)_t L_t``: weights on the
simplex, fresh every step. The paper's Normal-softmax variant, as in LibMTL; the weights sum
to 1 (not T). The draw uses torch's global RNG, which the trainer seeds and checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer


class RLW(Balancer):
    level = "loss"

    def __init__(self, tasks: Sequence[str], kinds: Mapping[str, str]) -> None:
        super().__init__(tasks, kinds)
        n = len(self.tasks)
        self.register_buffer("last", torch.full((n,), 1.0 / n, dtype=torch.float64))
        self._last = [1.0 / n] * n  # the host copy of `last`: drawn on the host, read there

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._last = self.last.tolist()

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        names = self.present(losses)
        w = torch.softmax(torch.randn(len(names)), dim=0)
        with torch.no_grad():
            self._last = [0.0] * len(self.tasks)
            for t, v in zip(names, w.tolist()):
                self._last[self.index(t)] = v
            for i, v in enumerate(self._last):
                self.last[i] = v  # fills on the device: nothing waits
        return sum(float(v) * losses[t].reshape(()) for t, v in zip(names, w))

    def weights(self) -> dict[str, float]:
        return {t: self._last[i] for i, t in enumerate(self.tasks)}
