"""Δm: how much a multi-task model gains over single-task baselines, in percent.

Two conventions are in use and must never be mixed in one table:

- :func:`delta_m` — the survey's Δ_MTL (Vandenhende et al., "Multi-Task Learning for Dense
  Prediction Tasks: A Survey", TPAMI 2021; also Maninis et al. 2019)::

      Δm = (1/T) Σ_t (1/K_t) Σ_k (−1)^{l_k} (M_tk − B_tk) / B_tk × 100

  with l_k = 1 where lower is better for metric k. **Higher is better**: positive means
  the multi-task model beats its single-task baselines. Each task weighs the same
  whatever its number of metrics. :func:`delta_m_per_task` gives the inner averages.

- :func:`delta_m_flat` — the convention of CAGrad (Liu et al. 2021), Nash-MTL (Navon
  et al. 2022) and FAMO (Liu et al. 2023)::

      Δm% = (1/K) Σ_k (−1)^{δ_k} (M_k − B_k) / B_k × 100

  with δ_k = 1 where *higher* is better, over all K metrics of all tasks at once (no
  per-task averaging). The sign is flipped: **lower is better**, negative = a gain.

(LibMTL's Δp is a third variant, measured against the first epoch unless told otherwise;
it is not provided here.)

``results`` and ``baselines`` map task -> metric -> value and must name the same tasks and
metrics. ``higher_is_better`` maps metric names to booleans and defaults to each metric
class's ``higher_is_better`` attribute (looked up in :data:`mtlc.registry.METRICS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["delta_m", "delta_m_flat", "delta_m_per_task"]


def _direction(metric: str, higher_is_better: Mapping[str, bool] | None) -> bool:
    if higher_is_better is not None and metric in higher_is_better:
        return bool(higher_is_better[metric])
    from mtlc import registry

    if metric not in registry.METRICS:
        raise ValueError(
            f"Δm: metric {metric!r} is not a registered metric; say whether higher is better "
            "for it in higher_is_better."
        )
    return bool(registry.resolve(registry.METRICS, metric).higher_is_better)


def _relative_gains(
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool] | None,
) -> dict[str, dict[str, float]]:
    """task -> metric -> signed relative gain in % (positive = better than the baseline)."""
    for task in baselines:
        if task not in results:
            raise ValueError(f"Δm: task {task!r} has a baseline but no result.")
    if not results:
        raise ValueError("Δm: no tasks given.")
    gains: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        if task not in baselines:
            raise ValueError(f"Δm: task {task!r} has a result but no baseline.")
        base = baselines[task]
        for metric in base:
            if metric not in metrics:
                raise ValueError(
                    f"Δm: metric {metric!r} of task {task!r} has a baseline but no result."
                )
        if not metrics:
            raise ValueError(f"Δm: task {task!r} has no metrics.")
        gains[task] = {}
        for metric, value in metrics.items():
            if metric not in base:
                raise ValueError(
                    f"Δm: metric {metric!r} of task {task!r} has a result but no baseline."
                )
            m, b = float(value), float(base[metric])
            if not (math.isfinite(m) and math.isfinite(b)):
                raise ValueError(
                    f"Δm: metric {metric!r} of task {task!r} is not finite ({m}, {b})."
                )
            if b == 0:
                raise ValueError(
                    f"Δm: the baseline of metric {metric!r} of task {task!r} is 0; "
                    "the relative change is undefined."
                )
            sign = 1.0 if _direction(metric, higher_is_better) else -1.0
            gains[task][metric] = sign * (m - b) / b * 100.0
    return gains


def delta_m_per_task(
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool] | None = None,
) -> dict[str, float]:
    """Per task, ``(1/K_t) Σ_k (−1)^{l_k} (M_tk − B_tk)/B_tk × 100`` (higher is better)."""
    gains = _relative_gains(results, baselines, higher_is_better)
    return {task: sum(g.values()) / len(g) for task, g in gains.items()}


def delta_m(
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """The survey's Δm in % (higher is better): the mean over tasks of :func:`delta_m_per_task`."""
    per_task = delta_m_per_task(results, baselines, higher_is_better)
    return sum(per_task.values()) / len(per_task)


def delta_m_flat(
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """CAGrad/Nash-MTL/FAMO Δm in % (lower is better): minus the mean gain over all metrics."""
    gains = _relative_gains(results, baselines, higher_is_better)
    flat = [g for task in gains.values() for g in task.values()]
    return -sum(flat) / len(flat)
