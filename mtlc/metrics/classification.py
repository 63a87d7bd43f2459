"""Classification metrics over class scores: ``miou``, ``pixel_acc``, ``accuracy``.

Each is accumulated over the whole split (a confusion matrix, or correct / total counts);
targets equal to ``ignore_index`` are skipped (see :mod:`mtlc.metrics` for the rules).
"""

from __future__ import annotations

import math

import torch

from mtlc.metrics.base import Metric


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
