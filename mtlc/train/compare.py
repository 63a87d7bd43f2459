"""Δm of finished runs from their summaries: ``mtlc compare RUN... --baseline RUN...``.

Each run's ``summary.json`` holds its validation metrics at the last epoch (``final``)
and at the best checkpoint (``best``). Baselines come from ``--baseline`` run folders
(single-task runs, or any run: each contributes the tasks it has), merged by task; a
run trained with ``--baselines`` recorded its own and is used when none are given.
Δm is the survey's (higher is better; mtlc.delta).

Δm only means something between runs measured on the same validation data: runs and
baselines whose ``train.data`` sections (read from each folder's ``spec.yaml``) differ
are refused, naming the two folders and the first key that differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlc.errors import MtlcError
from mtlc.train.runfolder import SPEC, read_summary

AT = ("final", "best")


class CompareError(MtlcError):
    """Runs that cannot be compared as asked (missing metrics or baselines)."""


@dataclass
class Compared:
    run: str
    delta_m: float
    per_task: dict[str, float]
    metrics: dict[str, dict[str, float]]


@dataclass
class Comparison:
    baselines: dict[str, dict[str, float]]
    rows: list[Compared] = field(default_factory=list)


def run_metrics(summary: dict[str, Any], at: str, where: str) -> dict[str, dict[str, float]]:
    """The validation metrics of a summary's output tasks at ``final`` or ``best``."""
    if at not in AT:
        raise CompareError(f"--at {at}: expected one of {', '.join(AT)}")
    entry = summary.get(at)
    if not entry or not entry.get("metrics"):
        raise CompareError(
            f"{where}: the run has no {at} validation metrics (did it finish an epoch?)"
        )
    outputs = summary.get("outputs") or list(entry["metrics"])
    return {t: dict(m) for t, m in entry["metrics"].items() if t in outputs and m}


def run_data(folder: str | Path) -> dict[str, Any] | None:
    """The ``train.data`` section a run folder's spec.yaml records, or None if it has none."""
    import yaml

    file = Path(folder) / SPEC
    if not file.is_file() or file.is_symlink():
        return None
    try:
        spec = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise CompareError(f"{file}: cannot read the spec the run was trained on") from None
    train = spec.get("train") if isinstance(spec, dict) else None
    data = train.get("data") if isinstance(train, dict) else None
    return data if isinstance(data, dict) else None


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for key in list(a) + [k for k in b if k not in a]:
        if a.get(key) != b.get(key):
            return f"train.data.{key}: {a.get(key)!r} vs {b.get(key)!r}"
    return "train.data"


def check_same_data(folders: list[str | Path]) -> None:
    """Raise CompareError when two of the run folders were trained on different data."""
    seen: tuple[str | Path, dict[str, Any]] | None = None
    for folder in folders:
        data = run_data(folder)
        if data is None:
            continue
        if seen is not None and data != seen[1]:
            raise CompareError(
                f"{seen[0]} and {folder} were trained on different data "
                f"({_first_difference(seen[1], data)}); Δm compares runs on the same "
                "validation data only"
            )
        seen = seen or (folder, data)


def merge_baselines(folders: list[Path], at: str) -> dict[str, dict[str, float]]:
    """Task → metrics over several baseline runs; a task given twice is an error."""
    merged: dict[str, dict[str, float]] = {}
    source: dict[str, Path] = {}
    for folder in folders:
        for t, metrics in run_metrics(read_summary(folder), at, str(folder)).items():
            if t in merged:
                raise CompareError(
                    f"task '{t}' has a baseline in both {source[t]} and {folder}: pass one"
                )
            merged[t], source[t] = metrics, folder
    return merged


def compare_runs(
    runs: list[str | Path], baselines: list[str | Path] = (), *, at: str = "final"
) -> Comparison:
    """Δm of each run against the baselines (each run's own when none are given)."""
    from mtlc.delta import delta_m, delta_m_per_task

    if not runs:
        raise CompareError("give at least one run folder")
    check_same_data([*baselines, *runs])
    shared = merge_baselines([Path(b) for b in baselines], at) if baselines else None
    result = Comparison(baselines=shared or {})
    for run in runs:
        summary = read_summary(run)
        metrics = run_metrics(summary, at, str(run))
        base = shared if shared is not None else summary.get("baselines")
        if not base:
            raise CompareError(
                f"{run}: no baselines: pass --baseline RUN... or train it with --baselines"
            )
        missing = [t for t in metrics if t not in base]
        if missing:
            raise CompareError(
                f"{run}: no baseline for task(s) {', '.join(missing)}; "
                f"the baselines cover {', '.join(base) or 'nothing'}"
            )
        try:
            picked = {t: {k: metrics[t][k] for k in base[t]} for t in metrics}
            per_task = delta_m_per_task(picked, {t: base[t] for t in metrics})
            total = delta_m(picked, {t: base[t] for t in metrics})
        except KeyError as exc:
            raise CompareError(
                f"{run}: metric {exc} is in the baseline but not in the run"
            ) from None
        except ValueError as exc:
            raise CompareError(f"{run}: {exc}") from None
        except TypeError:  # a metric saved as null: it was NaN or infinite
            raise CompareError(
                f"{run}: a metric it or its baseline needs is not a number (null in "
                "summary.json: the run diverged?)"
            ) from None
        if shared is None:
            for t in metrics:
                result.baselines.setdefault(t, base[t])
        result.rows.append(Compared(str(run), total, per_task, picked))
    return result


def comparison_table(comparison: Comparison) -> Any:
    """A rich table, one column per run (tables of many metrics stay narrow that way)."""
    from rich.table import Table

    table = Table(title="Δm: the survey's convention, % vs single-task, higher is better")
    for name in ("task", "metric", "baseline"):
        table.add_column(name, justify="right" if name == "baseline" else "left")
    for row in comparison.rows:
        table.add_column(row.run, justify="right")
    for t, metrics in comparison.baselines.items():
        for k, b in metrics.items():
            cells = [
                f"{row.metrics[t][k]:.4f}" if k in row.metrics.get(t, {}) else "-"
                for row in comparison.rows
            ]
            table.add_row(t if k == next(iter(metrics)) else "", k, f"{b:.4f}", *cells)
        cells = [f"{row.per_task[t]:+.2f}" if t in row.per_task else "-" for row in comparison.rows]
        table.add_row("", f"Δ {t} %", "", *cells, end_section=True)
    table.add_row(
        "all", "Δm %", "", *[f"{row.delta_m:+.2f}" for row in comparison.rows], style="bold"
    )
    return table
