"""What a sweep found: its rows, their ranking, the CSV and the console table.

:mod:`mtlc.train.sweep` trains the grid's points; this module ranks them (the mean rank
over every metric, the Pareto front, the best point by Δm when baselines exist) and writes
the result out. Kept apart so the ranking rules can be read and tested without training.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlc.atomic import make_folder, write_bytes


@dataclass
class SweepRow:
    point: str
    run_dir: Path
    values: dict[str, str]
    metrics: dict[str, dict[str, float]]
    delta_m: float | None = None
    best: bool = False
    pareto: bool = False
    status: str = "completed"


@dataclass
class SweepResult:
    rows: list[SweepRow]
    keys: list[str]
    columns: list[tuple[str, str]]
    csv_path: Path
    baselines: dict[str, dict[str, float]] | None = None
    seeds: int = 1
    plot_note: str = ""


def ranks(values: list[float], higher_is_better: bool) -> list[float]:
    """1 = best; ties share their mean rank; NaN ranks last."""
    key = [(-v if higher_is_better else v) if math.isfinite(v) else math.inf for v in values]
    order = sorted(range(len(key)), key=lambda i: key[i])
    out = [0.0] * len(key)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and key[order[j + 1]] == key[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def mean_ranks(rows: list[SweepRow], columns: list[tuple[str, str]]) -> list[float]:
    """Per point: metric ranks averaged within each task, then over the tasks."""
    from mtlc.metrics import metric_class

    per_task: dict[str, list[list[float]]] = {}
    for t, k in columns:
        values = [r.metrics.get(t, {}).get(k, math.nan) for r in rows]
        per_task.setdefault(t, []).append(ranks(values, metric_class(k).higher_is_better))
    task_means = [[sum(c) / len(c) for c in zip(*cols)] for cols in per_task.values()]
    return [sum(c) / len(c) for c in zip(*task_means)]


def pareto_front(rows: list[SweepRow], columns: list[tuple[str, str]]) -> list[bool]:
    """True for points no other point dominates (NaN counts as the worst value)."""
    from mtlc.metrics import metric_class

    def signed(r: SweepRow) -> list[float]:
        out = []
        for t, k in columns:
            v = r.metrics.get(t, {}).get(k, math.nan)
            if not math.isfinite(v):
                out.append(-math.inf)
            else:
                out.append(v if metric_class(k).higher_is_better else -v)
        return out

    points = [signed(r) for r in rows]
    front = []
    for i, p in enumerate(points):
        dominated = any(
            all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
            for j, q in enumerate(points)
            if j != i
        )
        front.append(not dominated)
    return front


def mark_best(rows: list[SweepRow], columns: list[tuple[str, str]], by_delta: bool) -> None:
    if not rows:
        return
    if by_delta and any(r.delta_m is not None for r in rows):
        best = max(
            (i for i, r in enumerate(rows) if r.delta_m is not None), key=lambda i: rows[i].delta_m
        )
    elif columns:
        mr = mean_ranks(rows, columns)
        best = min(range(len(rows)), key=lambda i: mr[i])
    else:
        best = None
    if best is not None:
        rows[best].best = True
    if columns:
        for row, on_front in zip(rows, pareto_front(rows, columns)):
            row.pareto = on_front


def write_csv(
    path: Path,
    rows: list[SweepRow],
    keys: list[str],
    columns: list[tuple[str, str]],
    *,
    with_delta: bool,
    spread: bool = False,
) -> None:
    """One line per point; with ``spread`` (``--seeds``) the metrics are seed means, and a
    ``…_std`` column per metric and ``seeds`` follow (:mod:`mtlc.train.sweep_seeds`)."""
    from mtlc.train.sweep_seeds import csv_extra, spread_header

    header = ["point", "run", *keys, *[f"{t}.{k}" for t, k in columns]]
    header += ["delta_m"] if with_delta else []
    header += spread_header(columns, with_delta) if spread else []
    header += ["best", "pareto", "status"]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    for r in rows:
        line = [r.point, str(r.run_dir), *[r.values[k] for k in keys]]
        line += [_num(r.metrics.get(t, {}).get(k)) for t, k in columns]
        line += [_num(r.delta_m)] if with_delta else []
        line += csv_extra(r, columns, with_delta, _num) if spread else []
        line += [int(r.best), int(r.pareto), r.status]
        writer.writerow(line)
    # the runs are kept when this fails: run the sweep again (with another --csv)
    make_folder(path.parent)
    write_bytes(path, buffer.getvalue().encode("utf-8"))


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return repr(float(value))


def sweep_table(result: SweepResult) -> Any:
    """The points with each task's first metric, Δm and the marks (every metric: the CSV)."""
    from rich.table import Table

    title = "sweep: final validation metrics (all of them in the CSV)"
    if result.seeds > 1:
        title += f"; mean ± std over {result.seeds} seeds"
    if result.baselines:
        title += "; Δm % vs single-task (higher is better)"
    table = Table(title=title + ";  * best  P Pareto-optimal")
    table.add_column("point")
    for k in result.keys:
        table.add_column(k.split(".")[-1], justify="right")
    shown = []
    for t, k in result.columns:
        if t not in [s for s, _ in shown]:
            shown.append((t, k))
            table.add_column(f"{t} {k}", justify="right")
    if result.baselines:
        table.add_column("Δm %", justify="right")
    table.add_column("", justify="left")
    for r in result.rows:
        cells = [r.values[k] for k in result.keys]
        spread = getattr(r, "spread", {})
        cells += [_cell(r.metrics.get(t, {}).get(k), spread.get(f"{t}.{k}")) for t, k in shown]
        if result.baselines:
            cells.append(_cell(r.delta_m, getattr(r, "delta_std", None), "+.2f"))
        marks = ("*" if r.best else "") + ("P" if r.pareto else "")
        if r.status != "completed":
            marks += f" {r.status}"
        table.add_row(r.point, *cells, marks, style="bold" if r.best else None)
    return table


def _cell(value: float | None, std: float | None = None, fmt: str = ".4f") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:{fmt}}" + ("" if std is None else f" ± {abs(std):{fmt.lstrip('+')}}")
