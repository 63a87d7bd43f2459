"""Losses and split-level metrics against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlc import losses, metrics, registry

# --- losses ------------------------------------------------------------------------------


def test_registry_names_resolve():
    for name in registry.LOSSES:
        assert callable(registry.resolve(registry.LOSSES, name))
    for name, path in registry.METRICS.items():
        cls = registry.resolve(registry.METRICS, name)
        assert cls.name == name, path
        assert isinstance(cls.higher_is_better, bool)


def test_cross_entropy_ignores_ignore_index():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    target = torch.tensor([0, 1, -1])
    # by hand: -log softmax = log(1 + e^{-2}) and log(1 + e^{-1}); the third is ignored
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert losses.cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # with another ignore value the third row counts, and its logits badly miss class 1
    with_third = losses.cross_entropy(logits, torch.tensor([0, 1, 1]), ignore_index=255)
    assert with_third.item() > expected


def test_cross_entropy_dense_and_smoothing_match_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, generator=g)
    target = torch.randint(-1, 4, (2, 3, 3), generator=g)
    ours = losses.cross_entropy(logits, target, label_smoothing=0.1)
    ref = F.cross_entropy(logits, target, ignore_index=-1, label_smoothing=0.1)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    # a [N, 1, H, W] target is accepted too
    assert losses.cross_entropy(logits, target.unsqueeze(1)).item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=-1).item(), rel=1e-6
    )


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = losses.cross_entropy(logits, torch.full((2, 4, 4), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    for fn in (losses.l1, losses.mse, losses.smooth_l1):
        out = fn(pred, torch.zeros(2, 1, 4, 4), ignore_zero=True)
        assert out.item() == 0.0 and out.requires_grad
    normal = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = losses.cosine(normal, torch.zeros(2, 3, 4, 4))
    assert out.item() == 0.0
    out.backward()
    assert torch.count_nonzero(normal.grad) == 0


def test_bce_matches_direct_formula():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    target = torch.tensor([[1.0, 0.0, 1.0]])

    def term(x, y, w=1.0):
        s = 1 / (1 + math.exp(-x))
        return -(w * y * math.log(s) + (1 - y) * math.log(1 - s))

    expected = sum(term(x, y) for x, y in [(0.0, 1.0), (2.0, 0.0), (-1.0, 1.0)]) / 3
    assert losses.bce(logits, target).item() == pytest.approx(expected, rel=1e-6)
    weighted = sum(term(x, y, 3.0) for x, y in [(0.0, 1.0), (2.0, 0.0), (-1.0, 1.0)]) / 3
    assert losses.bce(logits, target, pos_weight=3.0).item() == pytest.approx(weighted, rel=1e-6)
    # [N, H, W] target for a [N, 1, H, W] prediction
    assert losses.bce(torch.zeros(2, 1, 2, 2), torch.ones(2, 2, 2)).item() == pytest.approx(
        math.log(2)
    )


def test_regression_losses_and_ignore_zero():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]
    target = torch.tensor([[[[0.0, 1.0], [5.0, 4.0]]]])
    # all four pixels: |1| + |1| + |2| + 0 = 4 -> 1.0; without the zero pixel: 3 / 3 = 1.0
    assert losses.l1(pred, target).item() == pytest.approx(1.0)
    # mse: (1 + 1 + 4 + 0) / 4 = 1.5; ignoring the zero target: (1 + 4 + 0) / 3
    assert losses.mse(pred, target).item() == pytest.approx(1.5)
    assert losses.mse(pred, target, ignore_zero=True).item() == pytest.approx(5 / 3)
    # smooth_l1 (beta=1): 0.5 for |d| = 1, |d| - 0.5 = 1.5 for |d| = 2, 0 for 0
    assert losses.smooth_l1(pred, target).item() == pytest.approx((0.5 + 0.5 + 1.5) / 4)
    assert losses.smooth_l1(pred, target, ignore_zero=True).item() == pytest.approx(2.0 / 3)
    assert losses.smooth_l1(pred, target, beta=4.0).item() == pytest.approx(
        (0.125 + 0.125 + 0.5) / 4
    )
    # the zero pixel is excluded only when the target is zero in every channel
    p2 = torch.zeros(1, 2, 1, 2)
    t2 = torch.tensor([[[[0.0, 0.0]], [[2.0, 0.0]]]])  # pixel 0 valid (one channel non-zero)
    assert losses.l1(p2, t2, ignore_zero=True).item() == pytest.approx(2.0 / 2)  # 2 elems of px 0
    # [N, H, W] targets for [N, 1, H, W] predictions
    assert losses.l1(pred, target[:, 0]).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not match"):
        losses.l1(pred, torch.zeros(1, 3, 2, 2))


def test_cosine_on_hand_picked_vectors():
    # columns: same direction (scaled), 90 degrees, opposite, invalid (zero target)
    pred = torch.tensor([[[2.0, 1.0, -1.0, 5.0], [0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 5.0]]])
    target = torch.tensor([[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    # 1 - cos: 0, 1, 2 over three valid pixels -> 1.0
    assert losses.cosine(pred, target).item() == pytest.approx(1.0)
    # 45 degrees: 1 - cos 45
    p = torch.tensor([[1.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0]])
    assert losses.cosine(p, t).item() == pytest.approx(1 - math.sqrt(0.5), rel=1e-6)


# --- metrics -----------------------------------------------------------------------------


def _onehot_logits(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Logits whose argmax is ``labels`` ([N, ...] -> [N, K, ...])."""
    return F.one_hot(labels, k).movedim(-1, 1).float()


def test_miou_accumulates_a_confusion_matrix_over_the_split():
    # Batch 1 (target -> prediction): 0->0, 0->0, 1->0, 1->1
    # Batch 2: 1->1, 2->2, 2->1, -1->2 (ignored)
    # Split confusion (rows target, cols pred): [[2,0,0],[1,2,0],[0,1,1]]
    #   IoU0 = 2/(2+1)     = 2/3
    #   IoU1 = 2/(3+3-2)   = 1/2
    #   IoU2 = 1/(1+2-1)   = 1/2        mIoU = (2/3 + 1/2 + 1/2) / 3 = 5/9
    t1, p1 = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1])
    t2, p2 = torch.tensor([1, 2, 2, -1]), torch.tensor([1, 2, 1, 2])
    m = metrics.MeanIoU()
    m.update(_onehot_logits(p1, 3), t1)
    m.update(_onehot_logits(p2, 3), t2)
    assert torch.equal(m.confusion, torch.tensor([[2, 0, 0], [1, 2, 0], [0, 1, 1]]))
    assert m.compute() == pytest.approx(5 / 9)
    # Per batch: batch 1 has classes {0, 1}: IoU0 = 2/3, IoU1 = 1/2 -> 7/12;
    # batch 2 has {1, 2}: IoU1 = 1/2, IoU2 = 1/2 -> 1/2. Their mean 13/24 != 5/9.
    per_batch = []
    for p, t in [(p1, t1), (p2, t2)]:
        b = metrics.MeanIoU()
        b.update(_onehot_logits(p, 3), t)
        per_batch.append(b.compute())
    assert per_batch == pytest.approx([7 / 12, 1 / 2])
    assert sum(per_batch) / 2 == pytest.approx(13 / 24)
    assert abs(m.compute() - sum(per_batch) / 2) > 0.01
    m.reset()
    assert math.isnan(m.compute())


def test_miou_leaves_out_classes_absent_everywhere_and_checks_ids():
    m = metrics.MeanIoU()
    m.update(_onehot_logits(torch.tensor([[0, 1], [1, 1]]), 4), torch.tensor([[0, 1], [0, 1]]))
    # classes 2 and 3 never occur: IoU0 = 1/2, IoU1 = 2/3
    assert m.compute() == pytest.approx((1 / 2 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="target class ids"):
        m.update(torch.zeros(1, 4, 2), torch.tensor([[0, 7]]))


def test_pixel_accuracy_and_accuracy():
    pa = metrics.PixelAccuracy()
    pa.update(_onehot_logits(torch.tensor([0, 1, 1]), 2), torch.tensor([0, 0, -1]))
    pa.update(_onehot_logits(torch.tensor([1]), 2), torch.tensor([1]))
    assert pa.compute() == pytest.approx(2 / 3)  # 3 valid pixels, 2 right
    acc = metrics.Accuracy()
    acc.update(torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0]]), torch.tensor([1, 2]))
    assert acc.compute() == pytest.approx(0.5)
    binary = metrics.Accuracy()
    binary.update(
        torch.tensor([[1.5], [-0.5], [0.2], [-3.0]]), torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    )
    assert binary.compute() == pytest.approx(0.5)


def test_depth_metrics_ignore_zero_targets():
    pred = torch.tensor([[[[1.0, 2.0], [4.0, 9.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [5.0, 8.0]]]])
    # valid: (2,1), (4,5), (9,8)
    ab = metrics.AbsError()
    ab.update(pred, target)
    assert ab.compute() == pytest.approx((1 + 1 + 1) / 3)
    rel = metrics.RelError()
    rel.update(pred, target)
    assert rel.compute() == pytest.approx((1 / 1 + 1 / 5 + 1 / 8) / 3)
    rmse = metrics.RMSE()
    rmse.update(pred, target)
    assert rmse.compute() == pytest.approx(1.0)
    d1 = metrics.Delta1()
    d1.update(pred, target)
    # ratios: 2, 1.25 (not < 1.25), 1.125 -> 1 of 3
    assert d1.compute() == pytest.approx(1 / 3)
    keep = metrics.AbsError(ignore_zero=False)
    keep.update(pred, target)
    assert keep.compute() == pytest.approx((1 + 1 + 1 + 1) / 4)


def test_regression_metrics_accumulate_over_batches():
    # vector targets as in `correlated`: RMSE over the split, not the mean of batch RMSEs
    r = metrics.RMSE()
    r.update(torch.tensor([[1.0], [1.0]]), torch.tensor([[0.5], [1.5]]))  # sq err 0.25, 0.25
    r.update(torch.tensor([[3.0]]), torch.tensor([[1.0]]))  # sq err 4
    assert r.compute() == pytest.approx(math.sqrt((0.25 + 0.25 + 4) / 3))
    a = metrics.AbsError()
    a.update(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]))
    a.update(torch.tensor([5.0]), torch.tensor([1.0]))
    assert a.compute() == pytest.approx((1 + 0 + 4) / 3)


def _vectors(angles_deg):
    """[1, 3, n] unit vectors in the x-y plane at the given angles from +x."""
    a = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    return torch.stack([a.cos(), a.sin(), torch.zeros_like(a)]).unsqueeze(0).float()


def test_angle_metrics_on_hand_picked_vectors():
    target = _vectors([0.0, 0.0, 0.0, 0.0])
    pred = _vectors([0.0, 90.0, 45.0, 20.0]) * torch.tensor([1.0, 3.0, 0.5, 2.0])  # any norm
    mean, med = metrics.AngleMean(), metrics.AngleMedian()
    w11, w22, w30 = metrics.Within11(), metrics.Within22(), metrics.Within30()
    for m in (mean, med, w11, w22, w30):
        m.update(pred, target)
    assert mean.compute() == pytest.approx((0 + 90 + 45 + 20) / 4, abs=1e-3)
    assert med.compute() == pytest.approx((20 + 45) / 2, abs=1e-3)  # even count: mid-mean
    assert w11.compute() == pytest.approx(1 / 4)
    assert w22.compute() == pytest.approx(2 / 4)
    assert w30.compute() == pytest.approx(2 / 4)
    # a pixel with a zero target is not counted
    mean.update(_vectors([180.0]), torch.zeros(1, 3, 1))
    assert mean.compute() == pytest.approx(38.75, abs=1e-3)


def test_angle_median_is_exact_over_the_split():
    angles = [5.0, 80.0, 10.0, 33.0, 60.0, 1.0, 17.0]
    med = metrics.AngleMedian()
    for chunk in (angles[:2], angles[2:3], angles[3:]):
        med.update(_vectors(chunk), _vectors([0.0] * len(chunk)))
    assert med.compute() == pytest.approx(17.0, abs=1e-3)  # sorted: 1 5 10 [17] 33 60 80
    # dense [N, 3, H, W] layout works the same
    dense = metrics.AngleMedian()
    dense.update(_vectors(angles[:4]).reshape(1, 3, 2, 2), _vectors([0.0] * 4).reshape(1, 3, 2, 2))
    assert dense.compute() == pytest.approx((10 + 33) / 2, abs=1e-3)


def test_higher_is_better_flags_and_kpi():
    higher = {"miou", "pixel_acc", "accuracy", "delta1", "within_11.25", "within_22.5", "within_30"}
    for name in registry.METRICS:
        assert metrics.build_metric(name).higher_is_better == (name in higher), name
    assert metrics.kpi("miou", 0.4) == pytest.approx(0.4)
    assert metrics.kpi("abs_err", 0.25) == pytest.approx(0.8)
    assert metrics.kpi("angle_mean", 45.0) == pytest.approx(0.75)
    assert metrics.kpi("accuracy", 1.0) == pytest.approx(1 - 1e-4)
    assert metrics.kpi("pixel_acc", 0.0) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="did you mean 'miou'"):
        metrics.build_metric("mIoU")
    with pytest.raises(ValueError, match="unknown option 'ignore_zeros'.*'ignore_zero'"):
        metrics.build_metric("abs_err", ignore_zeros=True)
