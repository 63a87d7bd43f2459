"""The metric interface, the registry lookup and DTP's KPI mapping.

:class:`Metric` is what every metric implements (``reset`` / ``update`` / ``compute``,
``merge`` for multi-process validation); :func:`metric_class` and :func:`build_metric`
find a metric by its registry name in :data:`mtlc.registry.METRICS`; :func:`kpi` maps a
value into (0, 1) by the metric's ``kind``. The conventions (units, valid elements) are
in :mod:`mtlc.metrics`.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, ClassVar

import torch

KPI_EPS = 1e-4


class Metric:
    """Base class: option handling and the common interface."""

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    kind: ClassVar[str] = "share"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        for key in options:
            if key not in self.defaults:
                close = difflib.get_close_matches(key, list(self.defaults), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                valid = ", ".join(sorted(self.defaults)) or "none"
                raise ValueError(
                    f"metric {self.name!r}: unknown option {key!r}{hint}; valid options: {valid}."
                )
        self.options = {**self.defaults, **options}
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError

    def merge(self, other: Metric) -> None:
        """Add the totals ``other`` accumulated over other samples of the split.

        What a multi-process validation needs: every state is a total, so tensors
        (confusion matrices) and numbers (sums, counts) add, lists (the angles kept for
        the median) concatenate, and None (nothing seen yet) is the empty total.
        """
        for key, mine in vars(self).items():
            theirs = getattr(other, key)
            if key == "options" or theirs is None:
                continue
            if mine is None:
                setattr(self, key, theirs)
            elif isinstance(mine, list):
                mine.extend(theirs)
            else:
                setattr(self, key, mine + theirs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def metric_class(name: str) -> type[Metric]:
    """The class registered under ``name`` in :data:`mtlc.registry.METRICS`."""
    from mtlc import registry

    if name not in registry.METRICS:
        lower = {known.lower(): known for known in registry.METRICS}
        close = difflib.get_close_matches(str(name).lower(), list(lower), n=1)
        hint = f" (did you mean {lower[close[0]]!r}?)" if close else ""
        raise ValueError(f"unknown metric {name!r}{hint}; known: {', '.join(registry.METRICS)}.")
    return registry.resolve(registry.METRICS, name)


def build_metric(name: str, **options: Any) -> Metric:
    """A fresh metric object for the registry name ``name``."""
    return metric_class(name)(**options)


def kpi(metric_name: str, value: float) -> float:
    """Map a metric value into (0, 1), higher = better, for DTP's key performance indicators.

    Shares (mIoU, accuracies, delta1, within_*) are used as they are; errors e (abs/rel
    error, RMSE) become ``1 / (1 + e)``; angle errors in degrees become ``1 − angle / 180``.
    The result is clamped to [1e-4, 1 − 1e-4] so that ``log κ`` stays finite.
    """
    kind = metric_class(metric_name).kind
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"kpi: metric {metric_name!r} has no value (NaN).")
    if kind == "share":
        k = value
    elif kind == "error":
        k = 1.0 / (1.0 + max(value, 0.0))
    elif kind == "angle":
        k = 1.0 - value / 180.0
    else:  # pragma: no cover - a new metric kind must be handled here
        raise ValueError(f"kpi: metric {metric_name!r} has unknown kind {kind!r}.")
    return min(max(k, KPI_EPS), 1.0 - KPI_EPS)
