"""Evaluation metrics, accumulated over a whole split.

Every metric is a small stateful object: ``update(pred, target)`` once per batch with the
raw head output (logits for classification), ``compute()`` at the end of the split,
``reset()`` before the next one. Totals (confusion matrices, sums, counts, all angles for
the median) are accumulated, so a value is the split's value, never a mean of per-batch
values. Class attributes: ``name`` (the registry name), ``higher_is_better``, and ``kind``
(``"share"``, ``"error"`` or ``"angle"``) which :func:`kpi` uses.

Units: every share-type metric (``miou``, ``pixel_acc``, ``accuracy``, ``delta1``,
``within_11.25``, ``within_22.5``, ``within_30``) is a fraction in [0, 1], not a
percentage (the normal-estimation literature reports the ``within_*`` ones in %: multiply
by 100 to compare). Angles are in degrees. ``compute()`` returns NaN when nothing valid
was seen.

Valid elements:

- ``miou``, ``pixel_acc``, ``accuracy``: targets equal to ``ignore_index`` (default -1)
  are skipped. ``miou`` averages the IoU over the classes that occur in the prediction or
  the target somewhere in the split; a class absent from both is left out of the mean.
- ``abs_err``, ``rel_err``, ``rmse``, ``delta1``: with ``ignore_zero=True`` (the default,
  the NYUv2 convention used by MTAN: depth 0 = no measurement) a pixel whose target is 0 in
  every channel is skipped. The same metrics work on vector regression targets (``[N, 1]``,
  ``[N, D]``); there, a target that happens to be exactly 0.0 is skipped too, which for
  continuous targets is a measure-zero event; pass ``ignore_zero=False`` to keep zeros.
  ``rel_err`` (``|p − t| / |t|``) always skips ``t == 0``; ``delta1`` counts a pixel as
  within when ``p > 0``, ``t > 0`` and ``max(p/t, t/p) < 1.25``.
- ``angle_*`` and ``within_*``: pixels whose target vector has norm > 0; both vectors are
  normalised along dim 1 first. ``angle_median`` keeps every valid angle of the split (as
  float32) and returns the exact median (the mean of the two middle values for an even
  count); on full NYUv2 that is a few hundred MB.

Layout: :mod:`mtlc.metrics.base` (the :class:`Metric` interface, the registry lookup
:func:`metric_class` / :func:`build_metric`, and :func:`kpi`),
:mod:`mtlc.metrics.classification` (``miou``, ``pixel_acc``, ``accuracy``) and
:mod:`mtlc.metrics.regression` (depth / vector errors and normal angles). Every public
name is re-exported here, so ``from mtlc.metrics import ...`` works for all of them. The
registry (:data:`mtlc.registry.METRICS`) names each metric's own module: a new metric is
its class (in one of these files, or a new one) plus one registry line.
"""

from __future__ import annotations

from mtlc.metrics.base import KPI_EPS, Metric, build_metric, kpi, metric_class
from mtlc.metrics.classification import Accuracy, MeanIoU, PixelAccuracy
from mtlc.metrics.regression import (
    RMSE,
    AbsError,
    AngleMean,
    AngleMedian,
    Delta1,
    RelError,
    Within11,
    Within22,
    Within30,
)

__all__ = [
    "KPI_EPS",
    "AbsError",
    "Accuracy",
    "AngleMean",
    "AngleMedian",
    "Delta1",
    "MeanIoU",
    "Metric",
    "PixelAccuracy",
    "RMSE",
    "RelError",
    "Within11",
    "Within22",
    "Within30",
    "build_metric",
    "kpi",
    "metric_class",
]
