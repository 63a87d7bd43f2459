"""Δm in the survey's convention and in the CAGrad/Nash-MTL/FAMO one."""

from __future__ import annotations

import pytest

from mtlc.delta import delta_m, delta_m_flat, delta_m_per_task

BASELINES = {
    "seg": {"miou": 0.40, "pixel_acc": 0.80},
    "depth": {"abs_err": 0.50},
}
RESULTS = {
    "seg": {"miou": 0.42, "pixel_acc": 0.76},
    "depth": {"abs_err": 0.45},
}
# By hand, (M - B) / B x 100 with the sign flipped where lower is better:
#   seg.miou       (0.42 - 0.40) / 0.40 x 100 = +5      (higher is better)
#   seg.pixel_acc  (0.76 - 0.80) / 0.80 x 100 = -5      (higher is better)
#   depth.abs_err  -(0.45 - 0.50) / 0.50 x 100 = +10    (lower is better)
# per task: seg = (5 - 5) / 2 = 0, depth = 10
# survey Δm = (0 + 10) / 2 = +5        (higher is better)
# flat Δm   = -(5 - 5 + 10) / 3 = -3.333...  (lower is better; every metric weighs 1/3)


def test_delta_m_by_hand():
    assert delta_m_per_task(RESULTS, BASELINES) == pytest.approx({"seg": 0.0, "depth": 10.0})
    assert delta_m(RESULTS, BASELINES) == pytest.approx(5.0)
    assert delta_m_flat(RESULTS, BASELINES) == pytest.approx(-10.0 / 3)


def test_sign_conventions():
    better = {"seg": {"miou": 0.5, "pixel_acc": 0.9}, "depth": {"abs_err": 0.4}}
    worse = {"seg": {"miou": 0.3, "pixel_acc": 0.7}, "depth": {"abs_err": 0.6}}
    assert delta_m(better, BASELINES) > 0 > delta_m(worse, BASELINES)
    assert delta_m_flat(better, BASELINES) < 0 < delta_m_flat(worse, BASELINES)
    assert delta_m(BASELINES, BASELINES) == 0.0


def test_explicit_higher_is_better_overrides_and_unknown_metrics():
    res = {"t": {"score": 12.0}}
    base = {"t": {"score": 10.0}}
    assert delta_m(res, base, {"score": True}) == pytest.approx(20.0)
    assert delta_m(res, base, {"score": False}) == pytest.approx(-20.0)
    with pytest.raises(ValueError, match="'score' is not a registered metric"):
        delta_m(res, base)
    # overriding a registered metric's direction
    assert delta_m(RESULTS, BASELINES, {"abs_err": True}) == pytest.approx((0 - 10) / 2)


def test_missing_tasks_metrics_and_zero_baselines():
    with pytest.raises(ValueError, match="task 'depth' has a baseline but no result"):
        delta_m({"seg": RESULTS["seg"]}, BASELINES)
    with pytest.raises(ValueError, match="task 'normal' has a result but no baseline"):
        delta_m({**RESULTS, "normal": {"angle_mean": 20.0}}, BASELINES)
    with pytest.raises(ValueError, match="metric 'pixel_acc' of task 'seg' has a baseline"):
        delta_m({"seg": {"miou": 0.4}, "depth": RESULTS["depth"]}, BASELINES)
    with pytest.raises(ValueError, match="metric 'rmse' of task 'depth' has a result"):
        delta_m_flat({"seg": RESULTS["seg"], "depth": {"abs_err": 0.4, "rmse": 1.0}}, BASELINES)
    with pytest.raises(ValueError, match="baseline of metric 'miou' of task 'seg' is 0"):
        delta_m(RESULTS, {"seg": {"miou": 0.0, "pixel_acc": 0.8}, "depth": {"abs_err": 0.5}})
