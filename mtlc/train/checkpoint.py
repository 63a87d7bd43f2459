"""Checkpoints: one dict written atomically, read back with ``weights_only=True``.

The format (version 1) is a plain dict of tensors, numbers, strings, lists and dicts, so
loading it never unpickles arbitrary objects::

    {"format": "mtlc-checkpoint", "version": 1,
     "spec": <the resolved spec as a plain dict>,
     "model": <state_dict of the supervised GraphModule (the final model's modules too)>,
     "balancer": <balancer state_dict>, "optimizer": ..., "scheduler": ... | None,
     "epoch": <epochs finished>, "step": <optimizer steps taken>,
     "batch": <batches of the current epoch done>, "rng": {...}, "progress": {...}}

A write goes to a temporary file in the same folder, is flushed to disk and then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a crash or a
Ctrl-C while saving leaves the previous checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from mtlc.atomic import atomic_open
from mtlc.errors import MtlcError

FORMAT = "mtlc-checkpoint"
VERSION = 1
# what resuming a run reads; `mtlc eval` and `mtlc viz --checkpoint` need only "model"
RUN_KEYS = ("spec", "model", "balancer", "optimizer", "epoch", "step", "batch", "rng", "progress")


class CheckpointError(MtlcError):
    """A checkpoint that is missing, unreadable, or not one mtlc wrote."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` (format keys added) to ``path`` atomically, flushed to disk."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_open(path, "wb", fsync=True) as fh:
        torch.save(payload, fh)


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Copy a checkpoint file atomically (best.pt from last.pt without pickling twice)."""
    with open(src, "rb") as source, atomic_open(dst, "wb") as fh:
        shutil.copyfileobj(source, fh)


def load_checkpoint(path: str | Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raise CheckpointError otherwise.

    ``keys`` are entries the caller is about to read: a file that lacks one is reported
    here, in one line, rather than as a KeyError deep in the caller. Everything is loaded
    onto the CPU: RNG states must be CPU tensors, and ``load_state_dict`` moves weights
    and optimizer state to wherever the model is.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first.startswith("Weights only load failed"):  # torch's advice to unpickle: no
            first = "not a torch.save file of tensors and plain data"
        raise CheckpointError(f"{path}: cannot read checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mtlc checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state.get('version')!r}; this mtlc reads {VERSION}"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: an incomplete mtlc checkpoint (no {', '.join(missing)})")
    if "model" in keys and not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict")
    return state
