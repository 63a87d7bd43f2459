"""Task losses: ``name(pred, target, **options) -> scalar tensor``.

Each returns the mean over the valid elements of the batch. When a batch has no valid
element at all the loss is zero but still connected to the graph (like ``pred.sum() * 0``),
so a backward pass (and a gradient-level balancer) sees a zero gradient instead of NaN.
The masked means are computed as ``sum / max(count, 1)``, without a host-device sync.

A loss that averages over only some elements (ignored pixels) returns
:func:`masked_mean`, which carries its ``count`` along as the mean's *normaliser*. Means
of different batches (or of the processes' shares of one batch) then combine exactly,
``Σ count·mean / Σ count``: that is how N processes get the loss of the global batch, and
validation the loss of the whole split. A loss that returns a plain mean (every element
counts) is weighted by its number of samples. A new loss stays one function and one line
in :mod:`mtlc.registry`; if it masks, it returns ``masked_mean(total, count)``.

Conventions shared with :mod:`mtlc.metrics`:

- segmentation ignores targets equal to ``ignore_index`` (default -1, the MTAN release);
- ``ignore_zero=True`` on the regression losses drops pixels whose target is 0 in every
  channel (the NYUv2 depth convention: 0 = no measurement);
- ``cosine`` counts pixels whose target vector has a non-zero norm.

A target may omit a singleton channel dimension (``[N, H, W]`` for a ``[N, 1, H, W]``
prediction); it is reshaped to the prediction's shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bce", "cosine", "cross_entropy", "l1", "masked_mean", "mse", "normaliser", "smooth_l1"]


def masked_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / max(count, 1)``: the mean over ``count`` valid elements, which it carries.

    The returned tensor's ``normaliser`` attribute is ``count`` (the number of elements
    the mean is over, a tensor on the loss's device: reading it needs no sync).
    """
    mean = total / count.clamp_min(1)
    mean.normaliser = count  # type: ignore[attr-defined]
    return mean


def normaliser(loss: torch.Tensor) -> torch.Tensor | None:
    """The count a loss's mean is over (:func:`masked_mean`), or None for a plain mean."""
    return getattr(loss, "normaliser", None)


def _zero(pred: torch.Tensor) -> torch.Tensor:
    return pred.sum() * 0.0


def _match(pred: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """``target`` in ``pred``'s shape (adding or dropping singleton dims only)."""
    if target.shape == pred.shape:
        return target
    squeeze_p = [s for s in pred.shape if s != 1]
    squeeze_t = [s for s in target.shape if s != 1]
    if squeeze_p == squeeze_t and target.numel() == pred.numel():
        return target.reshape(pred.shape)
    raise ValueError(
        f"loss {name!r}: prediction shape {tuple(pred.shape)} does not match "
        f"target shape {tuple(target.shape)}."
    )


def _valid_pixels(target: torch.Tensor) -> torch.Tensor:
    """Mask (target's shape) of elements whose pixel is non-zero in some channel."""
    if target.dim() >= 2:
        return (target != 0).any(dim=1, keepdim=True).expand_as(target)
    return target != 0


def cross_entropy(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Softmax cross-entropy; ``pred`` [N, K, ...] logits, ``target`` [N, ...] class ids."""
    if target.dim() == pred.dim() and target.shape[1] == 1:
        target = target.squeeze(1)
    target = target.long()
    if target.shape != pred.shape[:1] + pred.shape[2:]:
        raise ValueError(
            f"loss 'cross_entropy': logits {tuple(pred.shape)} need targets of shape "
            f"{tuple(pred.shape[:1] + pred.shape[2:])}, got {tuple(target.shape)}."
        )
    count = (target != ignore_index).sum()
    total = F.cross_entropy(
        pred, target, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="sum"
    )
    return masked_mean(total, count)


def bce(
    pred: torch.Tensor, target: torch.Tensor, *, pos_weight: float | None = None
) -> torch.Tensor:
    """Binary cross-entropy on logits against targets in {0, 1} (or soft targets in [0, 1])."""
    target = _match(pred, target, "bce").to(pred.dtype)
    if pred.numel() == 0:
        return _zero(pred)
    weight = (
        None
        if pos_weight is None
        else torch.tensor(pos_weight, dtype=pred.dtype, device=pred.device)
    )
    return F.binary_cross_entropy_with_logits(pred, target, pos_weight=weight)


def _regression(
    pred: torch.Tensor, target: torch.Tensor, name: str, ignore_zero: bool, elementwise
) -> torch.Tensor:
    target = _match(pred, target, name).to(pred.dtype)
    if not ignore_zero:
        if pred.numel() == 0:
            return _zero(pred)
        return elementwise(pred, target).mean()
    mask = _valid_pixels(target)
    per = torch.where(mask, elementwise(pred, target), pred.new_zeros(()))
    return masked_mean(per.sum(), mask.sum())


def l1(pred: torch.Tensor, target: torch.Tensor, *, ignore_zero: bool = False) -> torch.Tensor:
    """Mean absolute error over valid elements."""
    return _regression(pred, target, "l1", ignore_zero, lambda p, t: (p - t).abs())


def mse(pred: torch.Tensor, target: torch.Tensor, *, ignore_zero: bool = False) -> torch.Tensor:
    """Mean squared error over valid elements."""
    return _regression(pred, target, "mse", ignore_zero, lambda p, t: (p - t).square())


def smooth_l1(
    pred: torch.Tensor, target: torch.Tensor, *, beta: float = 1.0, ignore_zero: bool = False
) -> torch.Tensor:
    """Huber-style smooth L1 (PyTorch's definition, with ``beta``) over valid elements."""
    return _regression(
        pred,
        target,
        "smooth_l1",
        ignore_zero,
        lambda p, t: F.smooth_l1_loss(p, t, reduction="none", beta=beta),
    )


def cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 − cos(pred, target)`` along dim 1, averaged over pixels whose target norm is > 0.

    Both vectors are L2-normalised first (targets are normally unit already), so the loss
    lies in [0, 2] per pixel.
    """
    target = _match(pred, target, "cosine").to(pred.dtype)
    if pred.dim() < 2:
        raise ValueError(
            f"loss 'cosine': needs vectors along dim 1, got shape {tuple(pred.shape)}."
        )
    valid = target.norm(dim=1) > 0
    cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(dim=1)
    per = torch.where(valid, 1.0 - cos, pred.new_zeros(()))
    return masked_mean(per.sum(), valid.sum())
