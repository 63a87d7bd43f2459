"""`export()`: spec (+ checkpoint) → one verified serving file, never a partial one.

The steps, each in its own module: choose the tasks and prune the graph to them
(select), rewrite it for inference (rewrite), trace it with the format's exporter
(writers), write it to a temporary file, load that file back and compare it with the
eager model (verify), and only then move it to the output path (mtlc.atomic). A
refused op is reported at its node and spec block (locate).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtlc.atomic import OutputError, atomic_path, check_output
from mtlc.errors import MtlcError, SpecError
from mtlc.export.rewrite import Rewrites, for_inference
from mtlc.export.select import choose_tasks, serving_graph
from mtlc.export.verify import DTYPES, Check, compare
from mtlc.export.writers import Format, format_of, has_onnxruntime, need_onnx


class ExportMismatch(MtlcError):
    """The written file does not compute what the eager model computes (exit 1)."""

    exit_code = 1

    def __init__(self, check: Check, path: Path):
        self.check = check
        super().__init__(
            f"the export does not match the eager model: {check.line()} ({path} not written)"
        )


@dataclass
class ExportResult:
    """What was written and how it was checked."""

    path: Path
    format: str
    spec: str
    tasks: list[str]
    dtype: str
    dynamic_batch: bool
    input_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    size_bytes: int
    params: int  # of the exported program (BN folded into convolutions)
    params_pruned: int  # of the pruned graph before the rewrites (profile's serve-alone)
    flops: int  # per sample, 2 per multiply-add (profile's convention)
    rewrites: Rewrites
    check: Check | None
    checkpoint: str | None
    notes: list[str] = field(default_factory=list)


def check_target(path: Path, force: bool) -> None:
    """Refuse an output path that cannot be written, before any work is done.

    `mtlc.atomic.check_output` checks links, folders, name lengths and permissions; a
    missing folder is refused rather than created (a typo in -o should not make
    folders), and a file is created and removed there, because `os.access` says yes to
    root on a read-only mount.
    """
    if not path.parent.is_dir():
        raise OutputError(f"{path}: folder '{path.parent}' does not exist")
    check_output(path)
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise OutputError(
            f"{path}: folder '{path.parent}' is not writable ({exc.strerror or exc})"
        ) from None
    if path.exists() and not force:
        raise OutputError(f"{path}: exists; pass --force to overwrite it")


def _count_flops(module: torch.nn.Module, example: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example)
    return counter.get_total_flops()


def export(
    spec: Any,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    tasks: Sequence[str] = (),
    dynamic_batch: bool = True,
    dtype: str = "fp32",
    batch: int = 1,
    overrides: Sequence[str] = (),
    force: bool = False,
    warn: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export `spec`'s outputs (or `tasks`) to `output` (.pt2 or .onnx), verified.

    Without `checkpoint` the spec's initial weights are exported (and `warn` says so).
    With `dynamic_batch` the file accepts any batch size (checked at 1 and 3), otherwise
    exactly `batch`. Raises MtlcError for bad input and ExportMismatch when the written
    file disagrees with the eager model; in both cases nothing is left at `output`.
    """
    from mtlc.checkpoint import load_weights
    from mtlc.compiler import compile_spec
    from mtlc.export.locate import refused

    output = Path(output)
    fmt: Format = format_of(output)
    if dtype not in DTYPES:
        raise MtlcError(f"unknown dtype '{dtype}' (expected one of: {', '.join(DTYPES)})")
    if dtype not in fmt.dtypes:
        raise MtlcError(
            f"{output}: --dtype {dtype} cannot be checked for {fmt.name} (onnxruntime has no "
            f"CPU kernels for it); use {' or '.join(d for d in fmt.dtypes if d != 'fp32')} "
            "or a .pt2 file"
        )
    if fmt.suffix == ".onnx":
        need_onnx()
    check_target(output, force)

    compiled = compile_spec(spec, overrides)
    chosen = choose_tasks(compiled, tasks)
    notes: list[str] = []
    if checkpoint is not None:
        load_weights(compiled, checkpoint)
    elif warn is not None:
        warn("no --checkpoint: exporting the spec's initial (untrained) weights")
    spec_obj = compiled.spec
    eager = serving_graph(compiled, chosen).eval()
    torch_dtype = DTYPES[dtype][0]
    example = torch.randn(2 if dynamic_batch else batch, *spec_obj.input_shape)
    model, rewrites = for_inference(eager, (example,))
    model = model.to(torch_dtype)
    example = example.to(torch_dtype)
    names = {"input": spec_obj.input_name, "outputs": chosen}

    try:
        program = fmt.trace(model, (example,), dynamic_batch, names)
    except Exception as exc:
        error = refused(
            model,
            (example,),
            lambda m, args: fmt.trace(m, args, False, None),
            compiled.topology,
            fmt.name,
            exc,
        )
        if dynamic_batch and not isinstance(error, SpecError):
            # every node exports alone at a fixed batch: the dynamic batch is the problem
            error = MtlcError(f"{error} (with a dynamic batch; try --no-dynamic-batch)")
        raise error from None

    batches = (1, 3) if dynamic_batch else (batch,)
    check: Check | None = None
    with atomic_path(output, keep_suffix=True) as tmp:
        fmt.write(program, tmp)
        if fmt.suffix == ".onnx" and not has_onnxruntime():
            import onnx

            onnx.checker.check_model(str(tmp))
            notes.append("not run back: onnxruntime is not installed (onnx.checker passed)")
        else:
            check = compare(eager, fmt.load(tmp), spec_obj.input_shape, batches, dtype)
            if not check.ok:
                raise ExportMismatch(check, output)
        size = tmp.stat().st_size

    return ExportResult(
        path=output,
        format=fmt.name,
        spec=spec_obj.name,
        tasks=chosen,
        dtype=dtype,
        dynamic_batch=dynamic_batch,
        input_name=spec_obj.input_name,
        input_shape=tuple(spec_obj.input_shape),
        size_bytes=size,
        params=sum(p.numel() for p in model.parameters()),
        params_pruned=sum(p.numel() for p in eager.parameters()),
        flops=_count_flops(model, example[:1]),
        rewrites=rewrites,
        check=check,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        notes=notes,
    )


__all__ = ["ExportMismatch", "ExportResult", "check_target", "export"]
