"""`mtlc build`, `mtlc schema` and `mtlc list`: the commands of the spec and compiler layers."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from mtlc.clitools import allow_import_option, console, fail, guarded, set_option


def _fmt(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def build_report(
    spec_path: str,
    overrides: tuple[str, ...] = (),
    *,
    fuse: bool = False,
    device: str | None = None,
) -> tuple[dict, object]:
    """Compile a spec and collect what `mtlc build` shows (also its --json output).

    Counts come from the unfused graph (one node per layer and task); with `fuse` the
    returned `Compiled.model` is the fused one (what `--code` and `-o` show).
    """
    from mtlc.compiler import compile_spec
    from mtlc.compiler.labels import count_parameters
    from mtlc.profile import summarize

    compiled = compile_spec(spec_path, overrides, fuse=fuse, device=device)
    topo = compiled.topology
    plain_model, plain_supervised = compiled.plain
    params = count_parameters(plain_supervised)
    report = {
        "name": topo.spec.name,
        "tasks": list(topo.tasks),
        "outputs": {t: list(topo.graph.nodes[f"output/{t}"]["shape"]) for t in topo.outputs},
        "auxiliary": [t for t in topo.tasks if t not in topo.outputs],
        "params": {k: params[k] for k in ("total", "shared", "tasks")},
        "blocks": params["blocks"],
        "owners": params["owners"],
    }
    cost = summarize(
        dataclasses.replace(compiled, model=plain_model, supervised=plain_supervised), batch=1
    )
    report["flops"], report["macs"] = cost["flops"], cost["macs"]
    return report, compiled


TABLE_ONLY = ("blocks", "owners")  # what the table reads and --json does not print


def _table(report: dict, compiled) -> object:
    """Stages × (shared, each task): every parameter counted once, in the column of the
    tasks that use it, so each column sums to its total in the last row.

    A block serving several tasks (a hard stage, a cross-stitch or NDDR unit) is named
    in `shared`; a task's own block in its column. The number under them is what that
    column owns in the row: a cross-stitch column's own stage is shared (the unit mixes
    it into the other tasks), an NDDR unit's 1×1 conv belongs to its task.
    """
    from rich.table import Table

    topo = compiled.topology
    g = topo.graph
    tasks = list(topo.tasks)
    table = Table(
        title=f"{report['name']}: stages × tasks (output shape; parameters, each counted once)",
        show_lines=True,
    )
    table.add_column("stage", style="bold", overflow="fold")
    table.add_column("shared", justify="right", overflow="fold")
    for t in tasks:
        label = t + (" (aux)" if t in report["auxiliary"] else "")
        table.add_column(label, justify="right", overflow="fold")

    rows: dict[str, list[str]] = {}
    for node, d in g.nodes(data=True):
        if d["kind"] in ("block", "unit", "predictor", "head"):
            row = d["stage"] or "head"
            if d["kind"] == "unit":
                row = f"{row} ⨯ {d['type']}"
            elif d["kind"] == "predictor":
                row = "decoder initial"
            rows.setdefault(row, []).append(node)
    columns = ["shared", *tasks]
    totals = dict.fromkeys(columns, 0)
    for row, nodes in rows.items():
        lines: dict[str, list[str]] = {c: [] for c in columns}
        owned = dict.fromkeys(columns, 0)
        for node in nodes:
            d = g.nodes[node]
            served = list(d["tasks"])
            column = served[0] if len(served) == 1 else "shared"
            shape = "×".join(map(str, d.get("out_shape") or d.get("shape")))
            who = node.split("/", 1)[1]
            if d["kind"] == "unit" and who.startswith(d["type"] + "/"):
                who = who[len(d["type"]) + 1 :]  # the row already names the unit's type
            elif who.startswith(f"{column}/"):
                who = who[len(column) + 1 :]  # and the column its task
            lines[column].append(f"{who} {shape}")
            for owner, n in report["owners"].get(node, {}).items():
                owned[owner] += n
        cells = []
        for c in columns:
            totals[c] += owned[c]
            if owned[c]:
                text = [*lines[c], _fmt(owned[c])]
            elif lines[c]:  # a block whose weights are all counted elsewhere
                text = [*lines[c], "in shared" if c != "shared" else "per task"]
            else:
                text = []
            cells.append("\n".join(text))
        table.add_row(row, *cells)
    table.add_row("total", *[f"{totals[c]:,}" for c in columns], style="bold")
    return table


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--code", is_flag=True, help="Print the generated GraphModule code.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Save the compiled model (torch.save: a pickle that needs mtlc to load; for "
    "deployment use `mtlc export`, which writes .pt2 or .onnx).",
)
@click.option("--force", is_flag=True, help="Overwrite the -o file if it exists.")
@click.option(
    "--no-fuse",
    "no_fuse",
    is_flag=True,
    help="Keep per-task copies unfused in --code and -o (as train.fuse: false).",
)
@click.option(
    "--device",
    "device",
    default=None,
    help="Device type the fusion targets (default: cuda when present, else cpu).",
)
@allow_import_option
@guarded
def build(
    spec: str,
    overrides: tuple[str, ...],
    as_json: bool,
    code: bool,
    output: str | None,
    force: bool,
    no_fuse: bool,
    device: str | None,
    allow_import: tuple[str, ...],
) -> None:
    """Validate and compile SPEC; print its stages, shapes and parameters."""
    if output:
        from mtlc.atomic import check_output

        check_output(output)
        if Path(output).exists() and not force:
            fail(f"{output}: exists; pass --force to overwrite it")
    report, compiled = build_report(spec, overrides, fuse=not no_fuse, device=device)
    if output:
        _save_model(compiled.model, Path(output))
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k not in TABLE_ONLY}, indent=2))
        return
    if code:
        click.echo(compiled.model.code)
        return
    out = console()
    out.print(_table(report, compiled))
    out.print(
        "each parameter is counted once: 'shared' when two or more tasks' outputs depend on "
        "it (a cross-stitch or NDDR column's own stage too), else in its task's column"
    )
    p = report["params"]
    out.print(
        f"parameters: total {p['total']:,} · shared {p['shared']:,} · "
        + " · ".join(f"{t} {n:,}" for t, n in p["tasks"].items())
    )
    f = report["flops"]
    out.print(
        f"forward FLOPs per sample (2 per multiply-add): total {_fmt(f['total'])} · shared {_fmt(f['shared'])} · "
        + " · ".join(f"{t} {_fmt(n)}" for t, n in f["tasks"].items())
    )
    out.print(
        "outputs: "
        + ", ".join(f"{t} {v}" for t, v in report["outputs"].items())
        + (
            f"; auxiliary (trained only): {', '.join(report['auxiliary'])}"
            if report["auxiliary"]
            else ""
        )
    )
    if output:
        out.print(
            f"saved the model to {output} (load it with torch.load(path, weights_only=False)); "
            "to deploy, `mtlc export` writes a .pt2 or .onnx file that runs without mtlc"
        )


def _save_model(model, path: Path) -> None:
    import torch

    from mtlc.atomic import atomic_open, make_folder

    make_folder(path.parent)
    with atomic_open(path, "wb") as fh:
        torch.save(model, fh)


SCHEMA_FILE = Path(__file__).parent / "spec" / "schema.json"


def schema_document() -> dict:
    """The JSON Schema of the spec format, generated from the pydantic models.

    Sharing entries also accept a bare type name (`s1: hard`). `mtlc schema` prints a
    copy kept in the package (`make schema` regenerates it; a test keeps it in step),
    since building the models takes pydantic longer than a command should.
    """
    from mtlc.spec.schema import spec_model

    doc = spec_model().model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "mtlc spec, format 1"

    def or_type_name(union: dict) -> list[dict]:
        """A discriminated union, plus the bare type names `_typed` also accepts."""
        types = sorted(
            doc["$defs"][m["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["const"]
            for m in union["oneOf"]
        )
        return [{"enum": types}, union]

    sharing = doc["$defs"]["Encoder"]["properties"]["sharing"]
    sharing["additionalProperties"] = {"anyOf": or_type_name(sharing["additionalProperties"])}
    balancer = doc["properties"]["balancer"]
    union = {k: balancer.pop(k) for k in ("discriminator", "oneOf")}
    balancer["anyOf"] = or_type_name(union)
    decoder = doc["properties"]["decoder"]
    decoder["anyOf"] = or_type_name(decoder["anyOf"][0]) + decoder["anyOf"][1:]
    return doc


def schema_text() -> str:
    return json.dumps(schema_document(), indent=2) + "\n"


@click.command()
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout."
)
@guarded
def schema(output: str | None) -> None:
    """Print the JSON Schema of the spec format (for editors: `# yaml-language-server: $schema=...`)."""
    text = SCHEMA_FILE.read_text(encoding="utf-8")
    if output:
        from mtlc.atomic import check_output, make_folder, write_text

        check_output(output)
        make_folder(Path(output).parent)
        write_text(output, text)
    else:
        sys.stdout.write(text)


def names() -> dict[str, list[str]]:
    """Everything a spec can name, by kind."""
    from typing import get_args

    from mtlc import registry
    from mtlc.layers.vocab import LAYERS
    from mtlc.spec import schema as s

    def types(union) -> list[str]:
        members = get_args(get_args(union)[0])
        return [get_args(m.model_fields["type"].annotation)[0] for m in members]

    return {
        "layers": list(LAYERS),
        "sharing": list(registry.SHARING),
        "decoders": list(registry.DECODERS),
        "losses": list(registry.LOSSES),
        "metrics": list(registry.METRICS),
        "balancers": types(s.Balancer),
        "datasets": list(registry.DATASETS),
    }


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_names(as_json: bool) -> None:
    """List the layers, sharing types, decoders, losses, metrics, balancers and data sets."""
    found = names()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    from rich.table import Table

    from mtlc.layers.vocab import LAYERS, REQUIRED

    out = console()
    for kind, items in found.items():
        if kind == "layers":
            table = Table(title="layers", show_header=True)
            table.add_column("layer")
            table.add_column("arguments (defaults)")
            table.add_column("what it does")
            for name in items:
                spec = LAYERS[name]
                args = ", ".join(
                    k if v is REQUIRED else f"{k}={v!r}" for k, v in spec.params.items()
                )
                table.add_row(name, args, spec.doc)
            out.print(table)
        else:
            out.print(f"[bold]{kind}[/bold]: {', '.join(items)}")
