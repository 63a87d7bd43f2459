"""Grid search: ``mtlc sweep SPEC --grid balancer.weights.seg=0.5,1,2 --grid ...``.

One training per point of the grid's Cartesian product. Each point is the spec with the
point's values applied as ``--set`` overrides (after the user's own), so a grid path is
validated exactly like an override, and every point is checked before the first one
trains: a typo fails at once, not after an hour. Points train into
``<out>/<NN>_<values>/`` run folders; a sweep that is run again reuses finished points
and resumes stopped ones (``--force`` starts them over).

The table ranks the points on the final validation metrics of the output tasks:

* **best** (``*``): the highest Δm when baselines exist (``--baselines`` trains them once,
  from the spec *without* the grid's values, into ``<out>/baselines/``); otherwise the
  lowest mean rank (rank the points on every metric, average within a task, then over
  tasks), so no metric's scale decides.
* **Pareto** (``P``): no other point is at least as good on every metric and better on one.

The same table is written as CSV (``<out>/sweep.csv`` unless ``--csv`` says otherwise).
The ranking, the CSV and the table are :mod:`mtlc.train.sweep_results`.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from pathlib import Path
from typing import Any

from mtlc.atomic import check_output, make_folder, write_text
from mtlc.errors import Location, MtlcError, SpecError
from mtlc.spec import Spec, load_spec
from mtlc.train import runfolder
from mtlc.train.sweep_results import SweepResult, SweepRow, mark_best, write_csv

CSV = "sweep.csv"
MARKER = ".mtlc-sweep"
PLOT = "sweep.png"
POINT = re.compile(r"^\d{2,}_")  # a point's run folder (point_name)


def split_values(text: str) -> list[str]:
    """Split ``0.5,1,[0.9, 0.1]`` on top-level commas (flow lists and dicts stay whole)."""
    out, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    out.append(current.strip())
    return out


def parse_grid(items: list[str] | tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """``["a.b=1,2", ...]`` → ``[("a.b", ["1", "2"]), ...]``; errors name the --grid item."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        where = Location(f"--grid {item}")
        if not sep or not key.strip():
            raise SpecError("expected KEY.PATH=V1,V2,...", "", where)
        parts = split_values(values)
        if any(not v for v in parts):
            raise SpecError("empty value in the list of values", key.strip(), where)
        if key.strip() in [k for k, _ in grid]:
            raise SpecError(
                "this path is given twice; list all its values in one --grid", key.strip(), where
            )
        grid.append((key.strip(), parts))
    if not grid:
        raise SpecError(
            "a sweep needs at least one --grid KEY=V1,V2,...", "", Location("mtlc sweep")
        )
    return grid


def grid_points(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in grid])]


def point_name(index: int, values: dict[str, str]) -> str:
    words = "_".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())
    return f"{index:02d}_" + (re.sub(r"[^A-Za-z0-9.=_-]+", "-", words).strip("-") or "point")


def check_points(
    spec: str | Path, overrides: list[str], grid: list[tuple[str, list[str]]]
) -> list[Spec]:
    """Validate every point before any trains; a bad grid value is reported as ``--grid``.

    A point is checked as far as it can be without its data: the spec, its topology and
    its balancer (whose options, such as a negative weight, only the balancer knows).
    """
    from mtlc.topology import build_topology
    from mtlc.train.setup import run_balancer

    specs = []
    items = {k: f"{k}={','.join(v)}" for k, v in grid}
    for values in grid_points(grid):
        point = [f"{k}={v}" for k, v in values.items()]
        try:
            loaded = load_spec(spec, overrides + point)
            run_balancer(loaded, build_topology(loaded))
            specs.append(loaded)
        except SpecError as exc:
            text = str(exc.location)
            for k, v in values.items():
                if text == f"--set {k}={v}":
                    raise SpecError(exc.message, exc.path, Location(f"--grid {items[k]}")) from None
            raise
    return specs


def sweep(
    spec: str | Path,
    grid_items: list[str] | tuple[str, ...],
    *,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
    csv_path: str | Path | None = None,
    baselines: bool = False,
    seeds: int = 1,
    force: bool = False,
    device: str = "auto",
    allow_import: frozenset[str] | tuple[str, ...] = frozenset(),
    console: Any = None,
    progress: bool = True,
    jobs: int = 1,
) -> SweepResult:
    """Train every grid point (reusing finished ones) and rank them (module docstring).

    ``jobs`` > 1 trains that many points at once, each in a process of its own
    (:mod:`mtlc.train.sweep_jobs`).

    A sweep that cannot start leaves nothing behind: not even the folder it would have
    made.
    """
    from mtlc.devices import resolve_device
    from mtlc.train.errors import Interrupted
    from mtlc.train.sweep_seeds import seed_axis

    overrides = list(overrides)
    grid = parse_grid(grid_items)
    base = load_spec(spec, overrides)
    grid = seed_axis(grid, base.train.seed, seeds)
    specs = check_points(spec, overrides, grid)
    points = grid_points(grid)
    torch_device = resolve_device(device)
    out_dir = Path(out) if out is not None else runfolder.default_run_dir(base.name + "-sweep")
    path = Path(csv_path) if csv_path is not None else out_dir / CSV
    check_folder(out_dir)
    check_output(path)  # found now, not after every point has trained
    created = not out_dir.exists()
    make_folder(out_dir)
    try:
        if not (out_dir / MARKER).is_file():
            write_text(out_dir / MARKER, '{"format": "mtlc-sweep-folder", "version": 1}\n')
        return _train_points(
            base,
            specs,
            points,
            grid,
            out_dir,
            path,
            baselines=baselines,
            seeds=seeds,
            force=force,
            device=torch_device,
            allow_import=allow_import,
            console=console,
            progress=progress,
            jobs=jobs,
        )
    except MtlcError as exc:
        if created and not isinstance(exc, Interrupted):
            _remove_if_unused(out_dir)
        raise


def check_folder(out_dir: Path) -> None:
    """Raise unless ``out_dir`` is new, empty, or a sweep folder mtlc made (runfolder.scan)."""
    from mtlc.atomic import OutputError

    try:
        check_output(out_dir, folder=True)
    except OutputError as exc:
        raise runfolder.RunFolderError(str(exc)) from None
    if not out_dir.is_dir():
        return
    own = runfolder.scan(out_dir, (CSV, MARKER, PLOT), (runfolder.BASELINES,), POINT)
    if own and MARKER not in own:
        raise runfolder.RunFolderError(
            f"{out_dir}: holds {', '.join(own)} but mtlc did not create this sweep folder "
            f"(no {MARKER} in it); choose a new or empty folder for --out"
        )


def _remove_if_unused(out_dir: Path) -> None:
    """Remove a sweep folder this call created when nothing but its marker is in it."""
    with contextlib.suppress(OSError):
        if [p.name for p in out_dir.iterdir()] in ([], [MARKER]):
            (out_dir / MARKER).unlink(missing_ok=True)
            out_dir.rmdir()


def _train_points(
    base: Spec,
    specs: list[Spec],
    points: list[dict[str, str]],
    grid: list[tuple[str, list[str]]],
    out_dir: Path,
    path: Path,
    *,
    baselines: bool,
    seeds: int,
    force: bool,
    device: Any,
    allow_import: frozenset[str] | tuple[str, ...],
    console: Any,
    progress: bool,
    jobs: int = 1,
) -> SweepResult:
    """Train (or reuse) every point of the grid in ``out_dir``, then rank them."""
    from rich.markup import escape

    from mtlc.train.baselines import baseline_metrics, baseline_tasks
    from mtlc.train.errors import Diverged
    from mtlc.train.run import train
    from mtlc.train.state import check_resumable

    torch_device = device
    found = None
    if baselines:
        found = baseline_metrics(
            base, out_dir, device=torch_device, allow_import=allow_import, console=console
        )
    trained: dict[int, dict[str, Any]] = {}
    if jobs > 1:
        from mtlc.train.sweep_jobs import train_in_parallel

        folders = [out_dir / point_name(i, v) for i, v in enumerate(points, 1)]
        trained = train_in_parallel(
            specs, folders, jobs, force, str(torch_device), allow_import, found, console
        )
    rows = []
    for i, (values, point_spec) in enumerate(zip(points, specs), 1):
        name = point_name(i, values)
        run_dir = out_dir / name
        shown = "  ".join(f"{k}={v}" for k, v in values.items())
        summary = trained.get(i) or (
            None
            if force
            else runfolder.completed_summary(run_dir, point_spec.model_dump(mode="json"))
        )
        if summary is None:
            if console is not None:
                console.print(
                    f"[bold]point {i}/{len(points)}[/]: {escape(shown)} → {escape(str(run_dir))}",
                    soft_wrap=True,
                )
            resume = not force and (run_dir / runfolder.LAST).is_file()
            if resume:
                check_resumable(point_spec, run_dir)
            try:
                summary = train(
                    point_spec,
                    out=run_dir,
                    resume=resume,
                    force=force,
                    device=str(torch_device),
                    allow_import=allow_import,
                    baselines=found or False,
                    console=console,
                    progress=progress,
                ).summary
            except Diverged as exc:  # one bad point (a huge weight) must not end the sweep
                if console is not None:
                    console.print(f"[red]point {i} diverged:[/] {escape(str(exc))}", soft_wrap=True)
                summary = runfolder.read_summary(run_dir)
        elif console is not None and i not in trained:
            console.print(
                f"point {i}/{len(points)}: {shown} (finished earlier, reused)",
                markup=False,
                soft_wrap=True,
            )
        metrics = (summary.get("final") or {}).get("metrics", {})
        metrics = {t: m for t, m in metrics.items() if t in base.outputs}
        row = SweepRow(name, run_dir, values, metrics, status=summary.get("status", "?"))
        if found:
            from mtlc.train.best import safe_delta_m

            row.delta_m = safe_delta_m(metrics, {t: found[t] for t in baseline_tasks(base)})
        rows.append(row)

    from mtlc.train.sweep_seeds import fold_seeds, write_plot

    columns = [(t, k) for t in base.outputs for k in base.tasks[t].metrics]
    rows, keys = fold_seeds(rows, [k for k, _ in grid])
    mark_best(rows, columns, bool(found))
    write_csv(path, rows, keys, columns, with_delta=bool(found), spread=seeds > 1)
    note = write_plot(out_dir / PLOT, rows, columns)
    return SweepResult(rows, keys, columns, path, found, seeds=seeds, plot_note=note)
