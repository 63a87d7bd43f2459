"""`mtlc viz` and `mtlc diff`.

Only click and mtlc.clitools are imported here; torch, networkx and graphviz load when
a command runs, so `mtlc --help` stays instant.
"""

from __future__ import annotations

import click

from mtlc.clitools import allow_import_option, fail, guarded, set_option


@click.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="File to write; the suffix picks the format: .svg .png .pdf .dot .html",
)
@click.option(
    "--level",
    type=click.Choice(["topology", "ops"]),
    default="topology",
    show_default=True,
    help="topology: blocks, sharing units and heads; ops: the fx graph, shapes on edges.",
)
@click.option("--cost", is_flag=True, help="Show FLOPs (2 per multiply-add, batch 1) per box.")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    help="A checkpoint of this spec: show learned cross-stitch α, NDDR strengths, uncertainty σ.",
)
@allow_import_option
@set_option
@guarded
def viz(
    spec: str,
    output: str,
    level: str,
    cost: bool,
    checkpoint: str | None,
    allow_import: tuple[str, ...],
    overrides: tuple[str, ...],
) -> None:
    """Draw SPEC's task-sharing topology: one column per task, one row per stage.

    Every sharing point has its paper's shape (cross-stitch mixing nodes, NDDR concat and
    1×1 convs, MTAN gates, PAD-Net distillation, PAP-Net affinities, JTRL turns) and
    every box its parameter count. Without graphviz installed only .dot can be written.
    With --checkpoint, mixture-of-experts gates show their mean weights on the spec's
    validation split; when that split cannot be loaded they are left out, with a note.
    """
    import warnings

    from mtlc.viz import draw
    from mtlc.viz.gates import GateWeightsSkipped
    from mtlc.viz.render import GraphvizMissing

    if checkpoint is not None and level != "topology":
        raise click.UsageError("--checkpoint annotates the topology view; drop --level ops")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GateWeightsSkipped)
            path = draw(
                spec, output, level=level, cost=cost, checkpoint=checkpoint, overrides=overrides
            )
    except GraphvizMissing as exc:
        fail(str(exc), code=1)
    for w in caught:
        if issubclass(w.category, GateWeightsSkipped):
            click.echo(f"note: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    click.echo(f"wrote {path}")


@click.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Also draw both topologies in one picture: added green, removed red, changed amber.",
)
@click.option(
    "--exit-code", is_flag=True, help="Exit with 1 when there are differences (like git diff)."
)
@set_option
@guarded
def diff(
    a: str,
    b: str | None,
    as_json: bool,
    output: str | None,
    exit_code: bool,
    overrides: tuple[str, ...],
) -> None:
    """What changed from spec A to spec B: keys, blocks and units, params and FLOPs.

    --set applies to B, and B defaults to A: `mtlc diff a.yaml --set encoder.sharing.s2=nddr`
    shows what that override changes.
    """
    import json

    from mtlc.spec import load_spec
    from mtlc.viz.diff import compare
    from mtlc.viz.render import GraphvizMissing, check_path, write

    if output is not None:
        check_path(output)
    result = compare(load_spec(a), load_spec(b or a, overrides), a, b or a)
    if output is not None:
        try:
            write(result.dot(), output, title=f"{result.a_name} → {result.b_name}")
        except GraphvizMissing as exc:
            fail(str(exc), code=1)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(result.text(), nl=False)
        if output is not None:
            click.echo(f"wrote {output}")
    if exit_code and not result.identical:
        raise SystemExit(1)
