"""``mtlc sweep --seeds N``: every grid point trained with N seeds, reported as mean ± std.

The seeds are one more grid axis, ``train.seed = s, s+1, …, s+N−1`` (s = the spec's seed),
so each (point, seed) is an ordinary run folder that a second sweep reuses. The rows of one
point are then folded into one: every metric and Δm become the mean over the seeds (the
sample standard deviation beside it), and the best/Pareto marks are decided on the means.
The single-task baselines are trained once, with the spec's own seed, and every seed's Δm
is measured against them.

The plot (``sweep.png``, matplotlib optional) shows Δm mean ± std per point when there are
baselines, else each output task's first metric.
"""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlc.atomic import write_bytes
from mtlc.errors import Location, SpecError

if TYPE_CHECKING:
    from mtlc.train.sweep_results import SweepRow

SEED_KEY = "train.seed"


def seed_axis(
    grid: list[tuple[str, list[str]]], first: int, seeds: int
) -> list[tuple[str, list[str]]]:
    """The grid with the seeds as its last axis (``--seeds 1`` leaves it as it is)."""
    if seeds <= 1:
        return grid
    if SEED_KEY in [k for k, _ in grid]:
        raise SpecError(
            "--seeds already varies train.seed; drop one of them", SEED_KEY, Location("--seeds")
        )
    return [*grid, (SEED_KEY, [str(first + k) for k in range(seeds)])]


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    good = [v for v in values if v is not None and math.isfinite(v)]
    if not good:
        return None, None
    mean = statistics.fmean(good)
    return mean, (statistics.stdev(good) if len(good) > 1 else 0.0)


def fold_seeds(rows: list[SweepRow], keys: list[str]) -> tuple[list[SweepRow], list[str]]:
    """One row per grid point: means in ``metrics``/``delta_m``, spreads in ``spread``."""
    if SEED_KEY not in keys:
        return rows, keys
    kept = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple[str, ...], list[SweepRow]] = {}
    for r in rows:
        groups.setdefault(tuple(r.values[k] for k in kept), []).append(r)
    folded = []
    for i, members in enumerate(groups.values(), 1):
        first = members[0]
        metrics: dict[str, dict[str, float]] = {}
        spread: dict[str, float] = {}
        names = {(t, k) for m in members for t, ks in m.metrics.items() for k in ks}
        for t, k in sorted(names):
            mean, std = _stats([m.metrics.get(t, {}).get(k) for m in members])
            if mean is not None:
                metrics.setdefault(t, {})[k] = mean
                spread[f"{t}.{k}"] = std
        delta, delta_std = _stats([m.delta_m for m in members])
        statuses = sorted({m.status for m in members})
        row = type(first)(
            point=f"{i:02d}_" + first.point.split("_", 1)[1].rsplit("_seed=", 1)[0],
            run_dir=first.run_dir.parent,
            values={k: first.values[k] for k in kept},
            metrics=metrics,
            delta_m=delta,
            status="completed" if statuses == ["completed"] else "/".join(statuses),
        )
        row.spread = spread  # type: ignore[attr-defined]
        row.delta_std = delta_std  # type: ignore[attr-defined]
        row.seeds = len(members)  # type: ignore[attr-defined]
        folded.append(row)
    return folded, kept


def write_plot(path: Path, rows: list[SweepRow], columns: list[tuple[str, str]]) -> str:
    """``sweep.png``: Δm (or each task's first metric) per point, with the seed spread."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'mtlc[plots]')"
    labels = [" ".join(r.values.values()) or r.point for r in rows]
    if any(r.delta_m is not None for r in rows):
        series = [("Δm % vs single-task", [r.delta_m for r in rows], "delta_std", None)]
    else:
        firsts: dict[str, str] = {}
        for t, k in columns:
            firsts.setdefault(t, k)
        series = [
            (f"{t} {k}", [r.metrics.get(t, {}).get(k) for r in rows], None, f"{t}.{k}")
            for t, k in firsts.items()
        ]
    fig, axes = plt.subplots(
        len(series),
        1,
        figsize=(max(6, 0.6 * len(rows) + 2), 3 * len(series)),
        dpi=100,
        squeeze=False,
    )
    for ax, (title, values, std_attr, key) in zip(axes[:, 0], series):
        ys = [float("nan") if v is None else v for v in values]
        errs = []
        for r in rows:
            s = getattr(r, std_attr, None) if std_attr else getattr(r, "spread", {}).get(key)
            errs.append(0.0 if s is None else s)
        colors = ["tab:green" if (y > 0 and std_attr) else "tab:blue" for y in ys]
        ax.bar(range(len(rows)), ys, yerr=errs, color=colors, capsize=3)
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right")
        ax.set_ylabel(title)
        if std_attr:
            ax.axhline(0, color="black", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return f"plot written to {path}"


def spread_header(columns: list[tuple[str, str]], with_delta: bool) -> list[str]:
    return (
        [f"{t}.{k}_std" for t, k in columns] + (["delta_m_std"] if with_delta else []) + ["seeds"]
    )


def csv_extra(
    row: SweepRow, columns: list[tuple[str, str]], with_delta: bool, num: Any
) -> list[Any]:
    """The spread columns of a folded row: one std per metric, Δm's std, the seed count."""
    spread = getattr(row, "spread", {})
    out = [num(spread.get(f"{t}.{k}")) for t, k in columns]
    if with_delta:
        out.append(num(getattr(row, "delta_std", None)))
    return [*out, getattr(row, "seeds", 1)]
