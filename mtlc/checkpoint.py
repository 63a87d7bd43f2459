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

This module sits below train, viz, export and the compiler's column loading: each of
them reads checkpoints through it (`load_weights` checks that a checkpoint belongs to
the spec, naming the keys that do not fit), and none of them imports another to do so.
"""

from __future__ import annotations

import numbers
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtlc.atomic import atomic_open
from mtlc.errors import MtlcError

if TYPE_CHECKING:
    from mtlc.compiler import Compiled

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
        # a FIFO or a device would block or never end: only regular files are read
        what = "not a regular file" if path.exists() else "no such checkpoint file"
        raise CheckpointError(f"{path}: {what}")
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
    checked = (*keys, "scheduler") if "optimizer" in keys and "scheduler" in state else keys
    for key in checked:
        problem = _field_problem(key, state[key])
        if problem:
            raise CheckpointError(f"{path}: its '{key}' entry {problem}")
    return state


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _tensors(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()
    )


def _byte_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1


def _entry(v: Any) -> bool:
    """A best/last epoch entry of the progress (what the best.pt rule compares)."""
    if v is None:
        return True
    if not isinstance(v, dict) or not _is_int(v.get("epoch")):
        return False
    ref = v.get("reference")
    return (
        isinstance(ref, dict)
        and all(isinstance(m, dict) and all(map(_is_number, m.values())) for m in ref.values())
        and (v.get("delta_m") is None or _is_number(v.get("delta_m")))
        and isinstance(v.get("metrics"), dict)
        and isinstance(v.get("val_loss"), dict)
    )


def _field_problem(key: str, value: Any) -> str | None:
    """Why a checkpoint entry is not of the type mtlc wrote there, or None.

    ``weights_only`` loading guarantees plain data, not the right plain data: a field of
    the wrong type would otherwise surface as a traceback in the middle of resuming.
    """
    if key in ("model", "balancer"):
        return None if _tensors(value) else "is not a state dict (names -> tensors)"
    if key == "spec":
        return None if isinstance(value, dict) else "is not a spec (a mapping)"
    if key == "scheduler":
        return None if value is None or isinstance(value, dict) else "is not a scheduler state"
    if key == "optimizer":
        ok = (
            isinstance(value, dict)
            and isinstance(value.get("state"), dict)
            and isinstance(value.get("param_groups"), list)
            and all(isinstance(g, dict) for g in value["param_groups"])
        )
        return None if ok else "is not an optimizer state dict"
    if key in ("epoch", "step", "batch"):
        return None if _is_int(value) else "is not a whole number >= 0"
    if key == "rng":
        ok = (
            isinstance(value, dict)
            and all(_byte_tensor(value.get(k)) for k in ("torch", "generator", "epoch_generator"))
            and (
                "cuda" not in value
                or (isinstance(value["cuda"], list) and all(map(_byte_tensor, value["cuda"])))
            )
        )
        return None if ok else "is not the random number generators' state"
    if key == "progress":
        v = value
        ok = (
            isinstance(v, dict)
            and isinstance(v.get("epoch_sums"), dict)
            and all(isinstance(k, str) and _is_number(x) for k, x in v["epoch_sums"].items())
            and _is_int(v.get("epoch_count"))
            and _is_int(v.get("samples"))
            and _is_number(v.get("train_time"))
            and _entry(v.get("best"))
            and _entry(v.get("last"))
        )
        return None if ok else "is not the run's progress record"
    return None


def check_fits(compiled: Compiled, state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse a checkpoint of another architecture, naming the first differences."""
    expected = {k: tuple(v.shape) for k, v in compiled.supervised.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in expected if k not in given]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [
        f"{k} is {list(given[k])}, the spec makes {list(s)}"
        for k, s in expected.items()
        if k in given and given[k] != s
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{where} was not trained from spec '{compiled.spec.name}': "
            + "; ".join(problems[:3])
            + more
        )


def load_weights(compiled: Compiled, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's model weights into `compiled` (both graphs share the modules).

    A checkpoint of another spec is refused before anything is copied, naming the
    mismatched keys. Returns the checkpoint (its `epoch`, `spec`, ... for the caller).
    """
    state = load_checkpoint(path, ("model",))
    check_fits(compiled, state["model"], str(path))
    compiled.supervised.load_state_dict(state["model"])
    return state
