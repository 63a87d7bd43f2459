"""`mtlc train`, `mtlc eval`, `mtlc sweep` and `mtlc compare`.

Only click and mtlc.clitools are imported at module level: `mtlc --help` loads this
module to list the commands and must stay free of torch. Exit codes: 0 done; 2 the
command could not start (bad spec, data folder, --grid path, missing checkpoint, a run
folder that exists), with nothing written or lost; 1 the training diverged (a NaN or inf
loss; the last good checkpoint is kept); 130 stopped by Ctrl-C after saving ``last.pt``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mtlc.clitools import allow_import_option, console, guarded, set_option

device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when available), cpu, cuda or cuda:N.",
)


def _run_options(fn: Any) -> Any:
    """Options shared by train and sweep."""
    for option in reversed(
        [
            click.option("--epochs", type=click.IntRange(min=1), help="Override train.epochs."),
            click.option("--seed", type=int, help="Override train.seed."),
            device_option,
            click.option(
                "--force",
                is_flag=True,
                help="Start over in an existing run folder (its baselines/ are kept).",
            ),
            allow_import_option,
            click.option(
                "--baselines",
                is_flag=True,
                help="Train each task alone once (cached in the run folder) and report Δm.",
            ),
            set_option,
        ]
    ):
        fn = option(fn)
    return fn


def _extra(overrides: tuple[str, ...], epochs: int | None, seed: int | None) -> list[str]:
    extra = list(overrides)
    if epochs is not None:
        extra.append(f"train.epochs={epochs}")
    if seed is not None:
        extra.append(f"train.seed={seed}")
    return extra


def _stopped(exc: Exception) -> None:
    """Report a run that ended early: exit 130 for Ctrl-C, 1 for a diverged loss."""
    from mtlc.train.errors import Interrupted

    code = 130 if isinstance(exc, Interrupted) else 1
    if os.environ.get("RANK", "0") != "0":
        sys.exit(code)  # one of several processes: rank 0 says why
    if isinstance(exc, Interrupted):
        click.echo(f"interrupted: {exc}", err=True)
        sys.exit(130)
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default runs/<name>).")
@click.option("--resume", is_flag=True, help="Continue the stopped run in the run folder.")
@click.option("--tensorboard", is_flag=True, help="Also log to <run>/tensorboard.")
@click.option(
    "--no-fuse", "no_fuse", is_flag=True, help="Run per-task copies unfused (train.fuse=false)."
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train in N processes on this machine (torchrun; one GPU each on CUDA); "
    "train.batch_size is the global batch.",
)
@_run_options
@guarded
def train(
    spec: str,
    out: str | None,
    resume: bool,
    tensorboard: bool,
    no_fuse: bool,
    nproc: int | None,
    epochs: int | None,
    seed: int | None,
    device: str,
    force: bool,
    allow_import: tuple[str, ...],
    baselines: bool,
    overrides: tuple[str, ...],
) -> None:
    """Train SPEC on its data with its balancer, into a run folder.

    The folder gets the resolved spec, metrics.jsonl, last.pt and best.pt, summary.json
    and plots. Ctrl-C saves and stops (exit 130); --resume continues exactly where it
    stopped. With --nproc N (or under torchrun) the processes share every batch.
    """
    from mtlc.train.errors import Diverged, Interrupted
    from mtlc.train.run import train as run

    if nproc is not None:
        _launch(
            nproc,
            spec,
            out,
            resume,
            tensorboard,
            epochs,
            seed,
            device,
            force,
            allow_import,
            baselines,
            overrides,
        )
    out_console = console()
    try:
        result = run(
            spec,
            overrides=_extra(overrides, epochs, seed) + (["train.fuse=false"] if no_fuse else []),
            out=out,
            resume=resume,
            force=force,
            device=device,
            allow_import=frozenset(allow_import),
            tensorboard=tensorboard,
            baselines=baselines,
            console=out_console,
        )
    except (Diverged, Interrupted) as exc:
        _stopped(exc)
    if os.environ.get("RANK", "0") != "0":
        return  # one of several processes: rank 0 reports
    if result.note:
        out_console.print(result.note, markup=False, soft_wrap=True)
    print_summary(out_console, result.summary, result.run_dir)


def _launch(
    nproc: int,
    spec: str,
    out: str | None,
    resume: bool,
    tensorboard: bool,
    epochs: int | None,
    seed: int | None,
    device: str,
    force: bool,
    allow_import: tuple[str, ...],
    baselines: bool,
    overrides: tuple[str, ...],
) -> None:
    """`--nproc N`: check everything, start N processes with torchrun, exit with their code."""
    from mtlc.train.launch import check_launch, launch, worker_argv

    if "RANK" in os.environ:
        raise click.UsageError("--nproc inside torchrun: torchrun already started the processes")
    run_dir = check_launch(
        spec,
        nproc,
        overrides=_extra(overrides, epochs, seed),
        out=out,
        resume=resume,
        force=force,
        device=device,
        allow_import=frozenset(allow_import),
        tensorboard=tensorboard,
        baselines=baselines,
    )
    sys.exit(launch(nproc, worker_argv(sys.argv[1:]), run_dir))  # rank 0 printed the summary


def print_summary(out: Any, summary: dict[str, Any], run_dir: Any) -> None:
    """The closing lines of `mtlc train`: final metrics, best epoch, Δm, where things are."""
    from rich.table import Table

    final, best = summary.get("final"), summary.get("best")
    if final is None:
        out.print(f"no epoch finished; run folder: {run_dir}", markup=False, soft_wrap=True)
        return
    table = Table(title=f"{summary['name']}: final validation metrics (epoch {final['epoch']})")
    for name in ("task", "metric", "final", f"best (epoch {best['epoch']})"):
        table.add_column(name, justify="left" if name in ("task", "metric") else "right")
    for t, metrics in final["metrics"].items():
        for i, (k, v) in enumerate(metrics.items()):
            table.add_row(
                t if i == 0 else "",
                k,
                f"{v:.4f}",
                f"{best['metrics'][t][k]:.4f}",
                end_section=i == len(metrics) - 1,
            )
    out.print(table)
    if final.get("delta_m") is not None:
        out.print(
            f"Δm vs single-task baselines (survey's sign, higher is better): final "
            f"{final['delta_m']:+.2f}%, best {best['delta_m']:+.2f}%"
        )
    speed = summary.get("train_samples_per_s")
    if speed:
        out.print(
            f"training: {summary['steps']} steps, {speed:.0f} samples/s on {summary['device']}"
        )
    out.print(f"run folder: {run_dir}  ({summary.get('plots', '')})", markup=False, soft_wrap=True)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False),
    help="A last.pt or best.pt written by mtlc train.",
)
@device_option
@allow_import_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@set_option
@guarded
def evaluate(
    spec: str,
    checkpoint: str,
    device: str,
    allow_import: tuple[str, ...],
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Report a checkpoint's metrics on SPEC's validation split."""
    import json

    from rich.table import Table

    from mtlc.train.run import evaluate as run
    from mtlc.train.runfolder import finite

    result = run(
        spec, checkpoint, overrides=overrides, device=device, allow_import=frozenset(allow_import)
    )
    if as_json:
        click.echo(json.dumps(finite(result), indent=2))
        return
    table = Table(title=f"{checkpoint} (epoch {result['epoch']}): validation split")
    for name in ("task", "val loss", "metric", "value"):
        table.add_column(name, justify="right" if name in ("val loss", "value") else "left")
    for t, loss in result["val_loss"].items():
        metrics = list(result["metrics"].get(t, {}).items()) or [("", None)]
        for i, (k, v) in enumerate(metrics):
            table.add_row(
                t if i == 0 else "",
                f"{loss:.4f}" if i == 0 else "",
                k,
                "" if v is None else f"{v:.4f}",
                end_section=i == len(metrics) - 1,
            )
    console().print(table)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--grid",
    "grid",
    multiple=True,
    required=True,
    metavar="KEY=V1,V2,...",
    help="A spec path and its values, e.g. balancer.weights.seg=0.5,1,2 (repeatable).",
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Sweep folder (default runs/<name>-sweep)."
)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Where to write the CSV.")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train every point with this many seeds (train.seed, +1, …); report mean ± std.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train this many points at once, each in a process of its own.",
)
@_run_options
@guarded
def sweep(
    spec: str,
    grid: tuple[str, ...],
    out: str | None,
    csv_path: str | None,
    seeds: int,
    jobs: int,
    epochs: int | None,
    seed: int | None,
    device: str,
    force: bool,
    allow_import: tuple[str, ...],
    baselines: bool,
    overrides: tuple[str, ...],
) -> None:
    """Train SPEC once per point of a grid and rank the points (best *, Pareto-optimal P)."""
    from mtlc.train.errors import Diverged, Interrupted
    from mtlc.train.sweep import sweep as run
    from mtlc.train.sweep_results import sweep_table

    out_console = console()
    try:
        result = run(
            spec,
            grid,
            overrides=_extra(overrides, epochs, seed),
            out=out,
            csv_path=csv_path,
            baselines=baselines,
            seeds=seeds,
            force=force,
            device=device,
            allow_import=frozenset(allow_import),
            console=out_console,
            jobs=jobs,
        )
    except (Diverged, Interrupted) as exc:
        _stopped(exc)
    out_console.print(sweep_table(result))
    out_console.print(f"table written to {result.csv_path}", markup=False, soft_wrap=True)
    out_console.print(result.plot_note, markup=False, soft_wrap=True)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A single-task run folder (repeatable; tasks are merged).",
)
@click.option(
    "--at",
    type=click.Choice(["final", "best"]),
    default="final",
    show_default=True,
    help="Compare the last epoch's metrics or the best checkpoint's.",
)
@guarded
def compare(runs: tuple[str, ...], baselines: tuple[str, ...], at: str) -> None:
    """Δm of RUN folders against single-task baseline runs (the survey's sign)."""
    from mtlc.train.compare import compare_runs, comparison_table

    console().print(comparison_table(compare_runs(list(runs), list(baselines), at=at)))
