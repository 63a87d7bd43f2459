"""Which epoch is best.pt: Δm against single-task baselines, else the mean-rank vote.

When the run has baselines (``--baselines``, or a ``baselines/`` folder from an earlier
run), the epoch with the highest Δm is best. Without them, a new epoch replaces the best
one when it wins the mean-rank comparison with it: per task, the share of its metrics
that improved minus the share that got worse, averaged over the tasks, is positive (a
task without metrics votes with its validation loss; :func:`pairwise_score`). The first
epoch is the first best.
"""

from __future__ import annotations

import math
from typing import Any

from mtlc.spec import Spec


def best_reference(
    spec: Spec, metrics: dict[str, dict[str, float]], val_loss: dict[str, float]
) -> dict[str, dict[str, float]]:
    """What best.pt compares between epochs: each output task's metrics, else its val loss."""
    out = {}
    for t in spec.outputs:
        values = {k: v for k, v in metrics.get(t, {}).items() if math.isfinite(v)}
        out[t] = values or {"loss": val_loss[t]}
    return out


def safe_delta_m(
    results: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]]
) -> float | None:
    """Δm (the survey's sign), or None when a value it needs is missing or not finite."""
    from mtlc.delta import delta_m

    try:
        shared = {t: {k: results[t][k] for k in b} for t, b in baselines.items()}
        return delta_m(shared, baselines)
    except (KeyError, ValueError, ZeroDivisionError):
        return None


def pairwise_score(new: dict[str, dict[str, float]], old: dict[str, dict[str, float]]) -> float:
    """Mean over tasks of (share of metrics that improved − share that got worse), in [−1, 1].

    It is the mean-rank comparison of two epochs: unlike a relative change it needs no
    non-zero reference and no common scale, so a metric at 0 (no pixel within 11.25°
    yet) or a tiny error cannot dominate the decision.
    """
    from mtlc.metrics import metric_class

    scores = []
    for t, metrics in old.items():
        votes = []
        for k, before in metrics.items():
            after = new.get(t, {}).get(k)
            if after is None or not (math.isfinite(after) and math.isfinite(before)):
                continue
            higher = k != "loss" and metric_class(k).higher_is_better
            votes.append(
                (after > before) - (after < before)
                if higher
                else (after < before) - (after > before)
            )
        if votes:
            scores.append(sum(votes) / len(votes))
    return sum(scores) / len(scores) if scores else 0.0


def is_better(new: dict[str, Any], best: dict[str, Any] | None, baselines: dict | None) -> bool:
    """The rule for best.pt (module docstring): Δm against baselines, else the mean rank."""
    if best is None:
        return True
    if baselines:
        a, b = new.get("delta_m"), best.get("delta_m")
        return a is not None and (b is None or a > b)
    return pairwise_score(new["reference"], best["reference"]) > 0
