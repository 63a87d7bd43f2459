"""`mtlc export`: serve one task or all as a torch.export (.pt2) or ONNX file.

Imports nothing heavy at package level (the CLI imports this package to list its
commands); `export` and `load_exported` import torch when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from mtlc.export.pipeline import ExportResult

__all__ = ["export", "load_exported"]


def export(spec: Any, output: str | Path, **options: Any) -> ExportResult:
    """Export `spec` to `output` (.pt2 or .onnx), verified; see `mtlc.export.pipeline.export`."""
    from mtlc.export.pipeline import export as _export

    return _export(spec, output, **options)


def load_exported(path: str | Path) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Load a file written by `mtlc export`: a callable taking the input batch and
    returning `{task: tensor}`.

    A .pt2 file is read with `torch.export.load` (an ExportedProgram: no pickled code
    runs), an .onnx file with onnxruntime on the CPU. Neither needs the spec or mtlc's
    layers; this helper is only a convenience, the README shows the two lines each
    runtime needs without mtlc.
    """
    from mtlc.errors import MtlcError
    from mtlc.export.writers import format_of

    fmt = format_of(path)
    if not Path(path).is_file():
        raise MtlcError(f"{path}: no such file")
    if fmt.suffix == ".onnx":
        from mtlc.export.writers import ONNX_HINT, has_onnxruntime

        if not has_onnxruntime():
            raise MtlcError(f"running {path} needs onnxruntime: {ONNX_HINT}")
    return fmt.load(path)
