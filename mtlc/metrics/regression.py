"""Dense regression metrics: depth / vector errors and surface-normal angles.

``abs_err``, ``rel_err``, ``rmse`` and ``delta1`` compare values element by element
(zeros skipped by default, the NYUv2 convention); ``angle_mean``, ``angle_median`` and
``within_*`` compare unit vectors along dim 1, in degrees. All are totals over the split
(see :mod:`mtlc.metrics` for units and valid elements).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from mtlc.metrics.base import Metric


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
