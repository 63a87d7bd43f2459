"""Fixed linear weighting, ``Σ_t w_t L_t``.

Kept deliberately plain: the MTL survey (Vandenhende et al. 2021) found a
grid-searched linear weighting hard to beat, and ``mtlc sweep`` builds on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from mtlc.balancers.base import Balancer, BalancerError


class Fixed(Balancer):
    """``weights`` maps task → weight; tasks left out weigh 1 (the spec default is all 1)."""

    level = "loss"

    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(tasks, kinds)
        if weights is None:
            weights = {}
        # A scalar would silently rescale every task alike; only a mapping means something.
        if not isinstance(weights, Mapping):
            raise BalancerError(
                f"balancer option 'weights' must be a mapping, got {weights!r}", ("weights",)
            )
        self._weights = self.per_task("weights", weights, 1.0, lambda v: v >= 0, "a number ≥ 0")

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        names = self.present(losses)
        return sum(self._weights[t] * losses[t].reshape(()) for t in names)

    def weights(self) -> dict[str, float]:
        return dict(self._weights)
