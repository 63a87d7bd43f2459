"""`mtlc profile`: what a spec costs, per task and shared, or several specs side by side.

Only click and mtlc.clitools are imported here; torch and the counting code load when
the command runs, so listing the commands (`mtlc --help`) stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mtlc.clitools import console, guarded, set_option
from mtlc.profile import BY


def _check_by(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from mtlc.errors import unknown

    if value is not None and value not in BY:
        raise click.BadParameter(unknown("grouping", value, BY), ctx, param)
    return value


def _baseline_index(specs: list[str], baseline: str | None) -> int | None:
    """Where `--baseline` is among the SPECs, or None when it is another file."""
    if baseline is None:
        return 0
    wanted = Path(baseline).resolve()
    for i, spec in enumerate(specs):
        if Path(spec).resolve() == wanted:
            return i
    return None


@click.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batch size the FLOPs, memory and latency are for.",
)
@click.option(
    "--by",
    callback=_check_by,
    metavar="task|stage|node|layer",
    help="Break the cost down by task (default), stage, fx node or layer type.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list for several specs).")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the --by rows of every spec to this CSV file (exact numbers).",
)
@click.option("--latency", is_flag=True, help="Also time forward and forward+backward.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where --latency runs (auto: CUDA when present).",
)
@click.option(
    "--iters",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="Timed iterations per measurement for --latency (after 3 warm-up ones).",
)
@click.option(
    "--no-fuse",
    "no_fuse",
    is_flag=True,
    help="Time the unfused graph for --latency (as `mtlc train --no-fuse`).",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False),
    help="The spec the comparison's ratios are to (default: the first SPEC; "
    "profiled too when it is not one of them).",
)
@set_option
@guarded
def profile(
    specs: tuple[str, ...],
    batch: int,
    by: str | None,
    as_json: bool,
    csv_path: str | None,
    latency: bool,
    device: str,
    iters: int,
    no_fuse: bool,
    baseline: str | None,
    overrides: tuple[str, ...],
) -> None:
    """FLOPs, MACs, parameters and memory of SPEC, shared vs per task; several SPECs compared.

    FLOPs count 2 per multiply-add (torch.utils.flop_counter); MACs, what fvcore and
    ptflops report, are half of that. Counting runs on the meta device: no weights are
    allocated, whatever the model's size.
    """
    from mtlc.devices import resolve_device
    from mtlc.profile.comparison import comparison
    from mtlc.profile.latency import measure
    from mtlc.profile.report import (
        CONVENTION,
        graph_words,
        profile_spec,
        summary_lines,
        table,
        write_csv,
    )

    if csv_path:
        from mtlc.atomic import check_output

        check_output(csv_path)  # a bad --csv path costs nothing: found before profiling
    paths = list(specs)
    base = _baseline_index(paths, baseline)
    if base is None:
        paths.insert(0, baseline)
        base = 0
    if latency:
        resolve_device(device)  # a missing CUDA is reported before any work is done
    profiles = [profile_spec(p, batch=batch, overrides=overrides) for p in paths]
    if latency:
        for path, p in zip(paths, profiles):
            p.latency = measure(
                path, batch=batch, device=device, overrides=overrides, iters=iters, fuse=not no_fuse
            )

    out = console()
    if csv_path:
        write_csv(csv_path, profiles, by or "task")
        console(stderr=True).print(f"wrote the by-{by or 'task'} rows to {csv_path}")
    if as_json:
        data = [p.to_json(by) for p in profiles]
        click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return
    if len(profiles) == 1:
        out.print(table(profiles[0], by or "task"))
        for line in summary_lines(profiles[0]):
            out.print(line)
        return
    out.print(comparison(profiles, base))
    if by is not None:
        for p in profiles:
            out.print(table(p, by))
    if latency:
        lat = profiles[0].latency
        out.print(
            f"latency on {lat['device']} of the {graph_words(lat)}: median of "
            f"{lat['iterations']} after {lat['warmup']} "
            "warm-up iterations (--json gives the spread)"
        )
    out.print(CONVENTION + ".")
