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
"""

from __future__ import annotations

import difflib
import math
from typing import Any, ClassVar

import torch

__all__ = [
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
]

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


def _labels(pred: torch.Tensor, target: torch.Tensor, metric: str, num_classes: int | None):
    """Predicted class ids (argmax of logits over dim 1) and targets, both [M] flattened."""
    if target.dim() == pred.dim() and pred.shape[1] != 1 and target.shape[1] == 1:
        target = target.squeeze(1)
    if not pred.is_floating_point() and pred.shape == target.shape:
        if num_classes is None:
            raise ValueError(f"metric {metric!r}: class-id predictions need num_classes.")
        return pred.reshape(-1).long(), target.reshape(-1).long(), num_classes
    if pred.dim() < 2:
        raise ValueError(
            f"metric {metric!r}: expected logits [N, K, ...], got {tuple(pred.shape)}."
        )
    if target.shape != pred.shape[:1] + pred.shape[2:]:
        raise ValueError(
            f"metric {metric!r}: logits {tuple(pred.shape)} need targets of shape "
            f"{tuple(pred.shape[:1] + pred.shape[2:])}, got {tuple(target.shape)}."
        )
    k = pred.shape[1] if num_classes is None else num_classes
    return pred.argmax(dim=1).reshape(-1), target.reshape(-1).long(), k


class MeanIoU(Metric):
    """Mean intersection-over-union from a confusion matrix accumulated over the split."""

    name = "miou"
    higher_is_better = True
    defaults = {"ignore_index": -1, "num_classes": None}

    def reset(self) -> None:
        self.confusion: torch.Tensor | None = None  # [K, K], rows = target, cols = prediction

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, t, k = _labels(pred.detach(), target, self.name, self.options["num_classes"])
        valid = t != self.options["ignore_index"]
        p, t = p[valid], t[valid]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
            raise ValueError(
                f"metric 'miou': target class ids must lie in [0, {k - 1}] or equal "
                f"ignore_index={self.options['ignore_index']}; got {int(t.min())}..{int(t.max())}."
            )
        counts = torch.bincount(t * k + p, minlength=k * k).reshape(k, k).cpu()
        if self.confusion is None:
            self.confusion = torch.zeros(k, k, dtype=torch.int64)
        elif self.confusion.shape[0] != k:
            raise ValueError(f"metric 'miou': {k} classes now, {self.confusion.shape[0]} before.")
        self.confusion += counts

    def per_class(self) -> torch.Tensor:
        """IoU per class (NaN for classes absent from both prediction and target)."""
        if self.confusion is None:
            return torch.empty(0, dtype=torch.float64)
        cm = self.confusion.double()
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.tensor(math.nan))

    def compute(self) -> float:
        iou = self.per_class()
        present = ~iou.isnan()
        return float(iou[present].mean()) if bool(present.any()) else math.nan


class PixelAccuracy(Metric):
    """Share of non-ignored pixels whose argmax class equals the target."""

    name = "pixel_acc"
    higher_is_better = True
    defaults = {"ignore_index": -1, "num_classes": None}

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, t, _ = _labels(pred.detach(), target, self.name, self.options["num_classes"])
        valid = t != self.options["ignore_index"]
        self.correct += int((p[valid] == t[valid]).sum())
        self.total += int(valid.sum())

    def compute(self) -> float:
        return self.correct / self.total if self.total else math.nan


class Accuracy(PixelAccuracy):
    """Classification accuracy: argmax over dim 1, or ``logit > 0`` for one logit channel.

    A single channel (``pred`` [N], [N, 1] or [N, 1, ...]) is a binary classifier: the
    prediction is 1 where sigmoid(logit) > 0.5, compared with {0, 1} targets.
    """

    name = "accuracy"

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.detach()
        if pred.dim() == 1 or pred.shape[1] == 1:
            p = (pred > 0).reshape(-1).long()
            t = target.reshape(-1)
            if t.numel() != p.numel():
                raise ValueError(
                    f"metric 'accuracy': {tuple(pred.shape)} logits vs {tuple(target.shape)} targets."
                )
            t = t.round().long() if t.is_floating_point() else t.long()
            valid = t != self.options["ignore_index"]
            self.correct += int((p[valid] == t[valid]).sum())
            self.total += int(valid.sum())
        else:
            super().update(pred, target)


def _regression_pairs(
    pred: torch.Tensor, target: torch.Tensor, metric: str, ignore_zero: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (pred, target) over valid elements, as float64."""
    pred = pred.detach()
    if target.shape != pred.shape:
        if target.numel() != pred.numel():
            raise ValueError(
                f"metric {metric!r}: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}."
            )
        target = target.reshape(pred.shape)
    pred, target = pred.double(), target.double()
    if ignore_zero:
        if target.dim() >= 2:
            mask = (target != 0).any(dim=1, keepdim=True).expand_as(target)
        else:
            mask = target != 0
        return pred[mask], target[mask]
    return pred.reshape(-1), target.reshape(-1)


class _SumMetric(Metric):
    """Sum of a per-element quantity over valid elements, divided by their count."""

    higher_is_better = False
    kind = "error"
    defaults = {"ignore_zero": True}

    def reset(self) -> None:
        self.sum = 0.0
        self.count = 0

    def _values(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, t = _regression_pairs(pred, target, self.name, self.options["ignore_zero"])
        values = self._values(p, t)
        self.sum += float(values.sum())
        self.count += values.numel()

    def compute(self) -> float:
        return self.sum / self.count if self.count else math.nan


class AbsError(_SumMetric):
    """Mean absolute error ``|p − t|`` over valid elements."""

    name = "abs_err"

    def _values(self, p, t):
        return (p - t).abs()


class RelError(_SumMetric):
    """Mean relative error ``|p − t| / |t|`` over valid elements (``t == 0`` is skipped)."""

    name = "rel_err"

    def _values(self, p, t):
        nz = t != 0
        return (p[nz] - t[nz]).abs() / t[nz].abs()


class RMSE(_SumMetric):
    """Root mean squared error over valid elements."""

    name = "rmse"

    def _values(self, p, t):
        return (p - t).square()

    def compute(self) -> float:
        return math.sqrt(self.sum / self.count) if self.count else math.nan


class Delta1(_SumMetric):
    """Share of valid elements with ``max(p/t, t/p) < 1.25`` (``p, t > 0``)."""

    name = "delta1"
    higher_is_better = True
    kind = "share"

    def _values(self, p, t):
        positive = (p > 0) & (t > 0)
        ratio = torch.maximum(p / t, t / p)
        return (positive & (ratio < 1.25)).double()


def _angles(pred: torch.Tensor, target: torch.Tensor, metric: str) -> torch.Tensor:
    """Angles in degrees between pred and target vectors (dim 1) where the target is non-zero."""
    pred = pred.detach()
    if pred.shape != target.shape or pred.dim() < 2:
        raise ValueError(
            f"metric {metric!r}: expected vectors [N, 3, ...] of one shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}."
        )
    pred, target = pred.double(), target.double()
    valid = target.norm(dim=1) > 0
    cos = (
        torch.nn.functional.normalize(pred, dim=1) * torch.nn.functional.normalize(target, dim=1)
    ).sum(1)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))[valid]


class AngleMean(_SumMetric):
    """Mean angle (degrees) between predicted and target normals."""

    name = "angle_mean"
    kind = "angle"
    defaults = {}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        a = _angles(pred, target, self.name)
        self.sum += float(a.sum())
        self.count += a.numel()


class AngleMedian(Metric):
    """Exact median angle (degrees) over all valid pixels of the split."""

    name = "angle_median"
    higher_is_better = False
    kind = "angle"
    defaults = {}

    def reset(self) -> None:
        self.angles: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.angles.append(_angles(pred, target, self.name).float().cpu())

    def compute(self) -> float:
        if not self.angles:
            return math.nan
        a = torch.cat(self.angles)
        n = a.numel()
        if n == 0:
            return math.nan
        if n % 2:
            return float(a.kthvalue(n // 2 + 1).values)
        lo = a.kthvalue(n // 2).values.double()
        hi = a.kthvalue(n // 2 + 1).values.double()
        return float((lo + hi) / 2)


class _Within(_SumMetric):
    """Share of valid pixels whose angle error is below ``threshold`` degrees."""

    threshold: ClassVar[float] = 0.0
    higher_is_better = True
    kind = "share"
    defaults = {}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        a = _angles(pred, target, self.name)
        self.sum += float((a < self.threshold).sum())
        self.count += a.numel()


class Within11(_Within):
    name = "within_11.25"
    threshold = 11.25


class Within22(_Within):
    name = "within_22.5"
    threshold = 22.5


class Within30(_Within):
    name = "within_30"
    threshold = 30.0


# --- helpers -----------------------------------------------------------------------------


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
