"""Writers: a rewritten serving graph → a .pt2 (torch.export) or .onnx file.

Each format is a `Format`: how to trace the module into a program, how to write the
program to a path, and how to load a written file back as a callable returning
`{task: tensor}` (what verification runs and what `mtlc.load_exported` returns).
Both trace the same module with the same dynamic batch dimension, so the files differ
only in their runtime: torch.export's ExportedProgram (loaded with
`torch.export.load`, no pickled code) or ONNX (run by onnxruntime or any ONNX runtime).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlc.errors import MtlcError

ONNX_HINT = "pip install 'mtlc[onnx]'"


def dynamic_shapes(dynamic_batch: bool) -> tuple[dict[int, Any]] | None:
    """The input's dim 0 as a named dynamic dimension (any batch ≥ 1), or all static."""
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Exporters log what they trace (a failed torch.export dumps its graph; torch.onnx
    warns once per torchvision op it cannot register) and their dependencies warn about
    their own deprecations: nothing a user can act on, and an export that fails is
    reported as one located line instead."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


# -- torch.export (.pt2) ------------------------------------------------------------------


def trace_pt2(module: nn.Module, example: tuple, dynamic_batch: bool, names: dict | None) -> Any:
    with quiet():
        return torch.export.export(module, example, dynamic_shapes=dynamic_shapes(dynamic_batch))


def write_pt2(program: Any, path: Path) -> None:
    torch.export.save(program, path)


def load_pt2(path: str | Path) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The program's module: call it with the input batch, get `{task: tensor}`."""
    return torch.export.load(path).module()


# -- ONNX ---------------------------------------------------------------------------------


def need_onnx() -> None:
    """Refuse early, with the install hint, when the ONNX exporter cannot run."""
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise MtlcError(f"writing .onnx needs the {package} package: {ONNX_HINT}") from None


def has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def trace_onnx(module: nn.Module, example: tuple, dynamic_batch: bool, names: dict | None) -> Any:
    """`names` ({"input", "outputs"}) name the graph's inputs and outputs; None: torch's."""
    with quiet():
        return torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=[names["input"]] if names else None,
            output_names=list(names["outputs"]) if names else None,
            dynamic_shapes=dynamic_shapes(dynamic_batch),
            verbose=False,
        )


def write_onnx(program: Any, path: Path) -> None:
    import onnx

    onnx.save_model(program.model_proto, path)


def load_onnx(path: str | Path) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """An onnxruntime session (CPU) wrapped to take a tensor and return `{task: tensor}`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = session.run(names, {feed.name: x.detach().cpu().numpy()})
        return {n: torch.from_numpy(o) for n, o in zip(names, outs)}

    return run


@dataclass(frozen=True)
class Format:
    """One file format an export can be written in."""

    name: str
    suffix: str
    trace: Callable[[nn.Module, tuple, bool, dict | None], Any]
    write: Callable[[Any, Path], None]
    load: Callable[[str | Path], Callable[[torch.Tensor], dict[str, torch.Tensor]]]
    dtypes: tuple[str, ...]  # the --dtype values its loader can run on the CPU


FORMATS: dict[str, Format] = {
    ".pt2": Format(
        "torch.export", ".pt2", trace_pt2, write_pt2, load_pt2, ("fp32", "bf16", "fp16")
    ),
    # onnxruntime has no CPU kernels for bfloat16 convolutions: such a file cannot be checked
    ".onnx": Format("ONNX", ".onnx", trace_onnx, write_onnx, load_onnx, ("fp32", "fp16")),
}


def format_of(path: str | Path) -> Format:
    """The format named by the path's suffix; anything else is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise MtlcError(
            f"{path}: unknown output format '{suffix or '(no suffix)'}' "
            f"(expected {' or '.join(FORMATS)})"
        )
    return FORMATS[suffix]


__all__ = ["FORMATS", "ONNX_HINT", "Format", "format_of", "has_onnxruntime", "need_onnx"]
