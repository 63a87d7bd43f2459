"""`mtlc export`: the command line of mtlc.export.

Exit codes: 0 written and verified; 1 the written file did not match the eager model
(nothing is left at -o); 2 bad input (spec, task, checkpoint, output path, an op the
exporter refuses), reported in one line, nothing written.
"""

from __future__ import annotations

from pathlib import Path

import click

from mtlc.clitools import allow_import_option, console, guarded, set_option


def _from_run(run: str, spec: str | None, checkpoint: str | None) -> tuple[str, str]:
    """The spec and best checkpoint of a run folder (each unless given explicitly)."""
    from mtlc.errors import MtlcError
    from mtlc.train.runfolder import BEST, SPEC

    folder = Path(run)
    if not folder.is_dir():
        raise MtlcError(f"{run}: no such run folder")
    spec = spec or str(folder / SPEC)
    checkpoint = checkpoint or str(folder / BEST)
    for path, what in ((spec, "spec"), (checkpoint, "best checkpoint")):
        if not Path(path).is_file():
            raise MtlcError(f"{run}: a run folder without its {what} ({Path(path).name})")
    return spec, checkpoint


@click.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The file to write: NAME.pt2 (torch.export) or NAME.onnx (ONNX).",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    help="Weights to export (a checkpoint of SPEC).",
)
@click.option(
    "--run",
    "run",
    type=click.Path(file_okay=False),
    help="A run folder: its spec.yaml and best.pt (instead of SPEC and --checkpoint).",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    help="Serve only this task (repeatable); default: every output of the spec.",
)
@click.option(
    "--dynamic-batch/--no-dynamic-batch",
    default=True,
    show_default=True,
    help="Accept any batch size, or exactly --batch.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="The fixed batch size with --no-dynamic-batch.",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="Weights, input and outputs in this precision.",
)
@click.option("--force", is_flag=True, help="Overwrite the -o file if it exists.")
@set_option
@allow_import_option
@guarded
def export(
    spec: str | None,
    output: str,
    checkpoint: str | None,
    run: str | None,
    tasks: tuple[str, ...],
    dynamic_batch: bool,
    batch: int,
    dtype: str,
    force: bool,
    overrides: tuple[str, ...],
    allow_import: tuple[str, ...],
) -> None:
    """Write SPEC's model for serving: all outputs or --task ones, verified after writing.

    Only what the chosen tasks depend on is kept (the serve-alone graph of `mtlc
    profile`); auxiliary tasks and intermediate predictions are never exported. Batch
    norm is folded into the convolution before it, dropout removed. The written file
    is loaded back (torch.export.load, onnxruntime) and compared with the eager model.
    """
    from mtlc.errors import MtlcError
    from mtlc.export.pipeline import export as run_export
    from mtlc.profile.report import nbytes, si

    if run is not None:
        spec, checkpoint = _from_run(run, spec, checkpoint)
    if spec is None:
        raise MtlcError("give a SPEC or --run FOLDER")
    err = console(stderr=True)
    result = run_export(
        spec,
        output,
        checkpoint=checkpoint,
        tasks=tasks,
        dynamic_batch=dynamic_batch,
        dtype=dtype,
        batch=batch,
        overrides=overrides,
        force=force,
        warn=lambda m: err.print(f"warning: {m}"),
    )
    r = result.rewrites
    batch_text = "any batch" if result.dynamic_batch else f"batch {batch}"
    click.echo(
        f"wrote {result.path} ({result.format}, {nbytes(result.size_bytes)}): "
        f"{', '.join(result.tasks)} of '{result.spec}' · input {result.input_name} "
        f"[{batch_text}, {', '.join(map(str, result.input_shape))}] {result.dtype}"
    )
    click.echo(
        f"parameters {result.params:,} ({result.params_pruned:,} before folding "
        f"{len(r.folded)} batch norms into convolutions; {len(r.kept_bn)} kept, "
        f"{len(r.dropout)} dropout removed) · FLOPs per sample {si(result.flops)}"
    )
    if result.check is not None:
        click.echo(f"verified against the eager model: {result.check.line()}")
    for note in result.notes:
        click.echo(f"note: {note}")
