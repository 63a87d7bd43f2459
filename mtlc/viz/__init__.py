"""Drawing specs (`mtlc viz`) and comparing them (`mtlc diff`).

`draw(spec, "t.svg")` writes the task-sharing topology (or, with `level="ops"`, the fx
graph) in the format the suffix names. Importing this package imports no torch, so the
CLI stays instant; the drawing code loads when a drawing is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["dot_source", "draw"]


def dot_source(
    spec: Any,
    *,
    level: str = "topology",
    cost: bool = False,
    checkpoint: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> str:
    """The DOT source of a spec's drawing (path, dict or Spec).

    Parameter counts are always shown; `cost` adds FLOPs; `checkpoint` annotates what a
    trained run learned (each sharing point's `learned` readout, uncertainty σ).
    """
    return _sources(spec, level, cost, checkpoint, overrides)[1][0]


def _sources(
    spec: Any,
    level: str,
    cost: bool,
    checkpoint: str | Path | None,
    overrides: list[str] | tuple[str, ...],
) -> tuple[str, list[str]]:
    """The spec's name and its drawing's layouts, most constrained first (`render.to_bytes`)."""
    from mtlc.spec import load_spec
    from mtlc.viz.costs import compile_meta, measure

    loaded = load_spec(spec, overrides)
    compiled = compile_meta(loaded)
    if level == "ops":
        from mtlc.viz.ops_view import ops_dot

        return loaded.name, [ops_dot(compiled)]
    if level != "topology":
        raise ValueError(f"unknown level {level!r}")
    from mtlc.viz.topology_view import Notes, topology_sources

    c = measure(compiled)
    notes = Notes(
        params=c.params,
        flops=c.flops if cost else None,
        task_params=c.task_params,
        task_flops=c.task_flops if cost else None,
        total_params=c.total_params,
        shared_params=c.shared_params,
        total_flops=c.total_flops if cost else None,
    )
    if checkpoint is not None:
        from mtlc.checkpoint import load_checkpoint
        from mtlc.viz.learned import learned

        found = learned(compiled, load_checkpoint(checkpoint), str(checkpoint))
        notes.learned, notes.samples, notes.sigma = (
            found["learned"],
            found["samples"],
            found["sigma"],
        )
    return loaded.name, topology_sources(compiled.topology, notes)


def draw(
    spec: Any,
    path: str | Path,
    *,
    level: str = "topology",
    cost: bool = False,
    checkpoint: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Path:
    """Write a spec's drawing to `path` (svg, png, pdf, dot or html, by suffix).

    The suffix and the path (`mtlc.atomic.check_output`: not a link, not too long, a
    writable folder) are checked before anything is compiled, and the file is written
    whole or not at all. The options are those of `dot_source`.
    """
    from mtlc.viz.render import check_path, write

    check_path(path)
    name, sources = _sources(spec, level, cost, checkpoint, overrides)
    return write(sources, path, title=name)
