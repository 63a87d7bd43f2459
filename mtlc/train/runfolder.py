"""The run folder: everything one training leaves behind, in files a person can read.

Layout (``runs/<spec name>/`` by default)::

    spec.yaml        the resolved spec (file + --set + --epochs/--seed), what was trained
    metrics.jsonl    one JSON object per line: {"type": "step", ...} after every optimizer
                     step (per-task losses, balancer weights, lr), {"type": "epoch", ...}
                     after every epoch (train/val losses, val metrics, Δm, best flag)
    last.pt          checkpoint after the latest epoch (or where Ctrl-C stopped the run)
    best.pt          checkpoint of the best epoch (rule in mtlc.train.best.is_better)
    summary.json     status, final and best validation metrics, Δm, timings
    loss.png, weights.png   plots (with matplotlib installed)
    tensorboard/     event files (with --tensorboard)
    baselines/<task>/   single-task runs for Δm (with --baselines), each a run folder
    .mtlc-run        the marker saying mtlc created this folder

A folder is a run folder when mtlc created it: it then holds a ``.mtlc-run`` marker
and nothing but the files above (and the temporary files a killed write leaves, which the
next run removes). Any other entry, a file of the same name that mtlc did not write, or a
symbolic link (followed, it would let a run overwrite the file it points to) makes the
folder one mtlc refuses, with or without ``--force``: ``--force`` starts over by
removing mtlc's own files and nothing else, and keeps ``baselines/`` (those runs are
checked against their spec before being reused).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from mtlc.atomic import (
    TEMP_NAME,
    AppendFile,
    check_output,
    make_folder,
    remove_stale_temps,
    write_text,
)
from mtlc.errors import MtlcError

SPEC = "spec.yaml"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
SUMMARY = "summary.json"
PLOTS = ("loss.png", "weights.png")
TENSORBOARD = "tensorboard"
BASELINES = "baselines"
MARKER = ".mtlc-run"
OWN_FILES = (SPEC, METRICS, LAST, BEST, SUMMARY, *PLOTS)
OWN_FOLDERS = (TENSORBOARD, BASELINES)


class RunFolderError(MtlcError):
    """A run folder that cannot be used as asked (exists, missing, unreadable, foreign)."""


def default_run_dir(spec_name: str, root: str | Path = "runs") -> Path:
    """``runs/<spec name>``, the name made safe as a single path component."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", spec_name).strip(".-") or "run"
    return Path(root) / safe


def scan(
    path: Path,
    files: tuple[str, ...],
    folders: tuple[str, ...] = (),
    folder_name: re.Pattern[str] | None = None,
) -> list[str]:
    """The entries of ``path`` that are mtlc's (by name and kind); RunFolderError otherwise.

    ``files`` must be regular files, ``folders`` (and names matching ``folder_name``)
    folders; temporary files of ``files`` are mtlc's too. Links and anything else are
    refused: mtlc did not write them, so starting over there could lose them.
    """
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot read the folder ({exc.strerror or exc})") from None
    own = []
    for entry in entries:
        name = entry.name
        temp = TEMP_NAME.match(name)
        if entry.is_symlink():
            raise RunFolderError(
                f"{path}: holds a symbolic link '{name}'; mtlc never follows links in a run "
                "folder (remove it, or choose another --out)"
            )
        if name in files or (temp and temp["target"] in files):
            ok = entry.is_file(follow_symlinks=False)
        elif name in folders or (folder_name is not None and folder_name.match(name)):
            ok = entry.is_dir(follow_symlinks=False)
        else:
            raise RunFolderError(
                f"{path}: holds '{name}', which mtlc did not write; a run folder holds only "
                "mtlc's files, so choose a new or empty folder for --out"
            )
        if not ok:
            raise RunFolderError(f"{path}: '{name}' is not what mtlc writes under that name")
        own.append(name)
    return own


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds anything a run writes (so starting a new run there loses it)."""
    return any(
        (path / name).exists() or (path / name).is_symlink()
        for name in (*OWN_FILES, TENSORBOARD, MARKER)
    )


def check(path: Path, *, resume: bool, force: bool) -> None:
    """Raise unless ``path`` can be resumed (``resume``) or used for a new run; writes nothing.

    Kept apart from :func:`prepare` so that the trainer can check everything else (data,
    model, balancer) between the two: ``--force`` must not delete a run and then fail.
    """
    from mtlc.atomic import OutputError

    if resume and force:
        raise RunFolderError("--resume and --force contradict each other: pick one")
    try:
        check_output(path, folder=True)
    except OutputError as exc:
        raise RunFolderError(str(exc)) from None
    if resume:
        if not (path / LAST).is_file() or (path / LAST).is_symlink():
            raise RunFolderError(f"{path}: nothing to resume (no {LAST} in it)")
        scan(path, (*OWN_FILES, MARKER), OWN_FOLDERS)
        read_metrics(path)  # a hostile metrics.jsonl is found before anything is written
        return
    if not path.is_dir():
        return
    own = [n for n in scan(path, (*OWN_FILES, MARKER), OWN_FOLDERS) if not TEMP_NAME.match(n)]
    if own and MARKER not in own:
        shown = ", ".join(n for n in own if n != BASELINES) or BASELINES
        raise RunFolderError(
            f"{path}: holds {shown} but mtlc did not create this folder (no {MARKER} in it); "
            "mtlc removes only what it wrote, so choose a new or empty folder for --out"
        )
    if not force and any(n not in (BASELINES,) for n in own):
        raise RunFolderError(
            f"{path}: a run folder already exists; pass --resume to continue it or "
            "--force to start over"
        )


def prepare(path: Path, *, resume: bool, force: bool) -> None:
    """:func:`check`, then make ``path`` ready: created, cleaned of stale temporary files,
    emptied of mtlc's files (force) and marked as mtlc's."""
    check(path, resume=resume, force=force)
    make_folder(path)
    remove_stale_temps(path, (*OWN_FILES, MARKER))
    if not resume:
        try:
            for name in OWN_FILES:
                (path / name).unlink(missing_ok=True)
            if (path / TENSORBOARD).is_dir():
                shutil.rmtree(path / TENSORBOARD)
        except OSError as exc:
            raise RunFolderError(f"{path}: cannot start over ({exc.strerror or exc})") from None
    if not (path / MARKER).is_file():
        write_text(path / MARKER, json.dumps({"format": "mtlc-run-folder", "version": 1}) + "\n")


def finite(value: Any) -> Any:
    """Non-finite floats become None, recursively: JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_spec(path: Path, spec_dict: dict[str, Any]) -> None:
    write_text(path / SPEC, yaml.safe_dump(spec_dict, sort_keys=False))


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    write_text(path / SUMMARY, json.dumps(finite(summary), indent=2) + "\n")


def _shape_problem(summary: dict[str, Any]) -> str | None:
    """What makes ``summary`` not a run summary's shape (mtlc reads these keys), or None."""

    def number(v: Any) -> bool:
        return v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool))

    def table(v: Any) -> bool:  # task -> metric -> number
        return isinstance(v, dict) and all(
            isinstance(m, dict) and all(isinstance(k, str) and number(x) for k, x in m.items())
            for m in v.values()
        )

    if not isinstance(summary.get("status", ""), str):
        return "'status' is not a string"
    if not isinstance(summary.get("name", ""), str):
        return "'name' is not a string"
    outputs = summary.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(t, str) for t in outputs):
        return "'outputs' is not a list of task names"
    for at in ("final", "best"):
        entry = summary.get(at)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            return f"'{at}' is not an object"
        if not table(entry.get("metrics", {})):
            return f"'{at}.metrics' is not task -> metric -> number"
        if not number(entry.get("delta_m")) or not isinstance(entry.get("epoch", 0), int):
            return f"'{at}' holds a wrong 'epoch' or 'delta_m'"
    if summary.get("baselines") is not None and not table(summary["baselines"]):
        return "'baselines' is not task -> metric -> number"
    data = summary.get("data")
    if data is not None and not isinstance(data, dict):
        return "'data' is not an object"
    return None


def read_summary(path: str | Path) -> dict[str, Any]:
    """The summary of a run folder (or a summary.json path), or a RunFolderError."""
    path = Path(path)
    file = path / SUMMARY if path.is_dir() or not path.suffix else path
    if not file.is_file():
        raise RunFolderError(f"{path}: not a run folder (no {SUMMARY})")
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RunFolderError(f"{file}: cannot read ({exc})") from None
    if not isinstance(summary, dict):
        raise RunFolderError(f"{file}: not a run summary (a JSON object)")
    problem = _shape_problem(summary)
    if problem:
        raise RunFolderError(f"{file}: not a run summary: {problem}")
    return summary


def completed_summary(path: Path, spec_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a run in ``path`` that completed training exactly ``spec_dict``, else None.

    What baselines and sweep points reuse instead of training again.
    """
    if not (path / SPEC).is_file() or (path / SPEC).is_symlink():
        return None  # only a regular file is read: a FIFO would block
    try:
        summary = read_summary(path)
        saved = yaml.safe_load((path / SPEC).read_text(encoding="utf-8"))
    except (MtlcError, OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return summary if summary.get("status") == "completed" and saved == spec_dict else None


def _record_problem(record: Any) -> str | None:
    """Why a metrics.jsonl record is not one mtlc writes (type, counters, per-task dicts)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    kind = record.get("type")
    if kind not in ("step", "epoch"):
        return f"'type' is {kind!r}, not 'step' or 'epoch'"
    for key in ("step", "epoch"):
        value = record.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"'{key}' is not a whole number"
    for key in ("loss", "weights") if kind == "step" else ("val_loss", "metrics"):
        value = record.get(key, {})
        if not isinstance(value, dict):
            return f"'{key}' is not an object"
        for v in value.values():
            if kind == "step" and not (v is None or isinstance(v, numbers.Real)):
                return f"'{key}' holds a value that is not a number"
    return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's metrics.jsonl, in order.

    A torn last line (a kill in the middle of a write) is skipped; any other line that is
    not a record mtlc writes is a RunFolderError naming the file and line.
    """
    file = Path(path) / METRICS
    if not file.is_file() or file.is_symlink():
        return []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{file}: cannot read ({exc})") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if n == len(lines):
                continue
            raise RunFolderError(f"{file}:{n}: not a JSON line") from None
        problem = _record_problem(record)
        if problem:
            raise RunFolderError(f"{file}:{n}: not a metrics record ({problem})")
        records.append(record)
    return records


class MetricsLog:
    """Appends JSON lines to metrics.jsonl, flushed per line so ``tail -f`` follows a run.

    The file is opened without following a link (mtlc.atomic.AppendFile); a full disk
    is a WriteError.
    """

    def __init__(self, path: Path, *, keep: tuple[int, int] | None = None):
        file = path / METRICS
        if keep is not None:
            # Resuming from a checkpoint taken after `epochs` epochs and `steps` steps:
            # records written after it (a run killed between checkpoints) are replayed
            # by the resumed run, so drop them first.
            epochs, steps = keep
            kept = [
                json.dumps(r)
                for r in read_metrics(path)
                if (r.get("type") == "epoch" and r.get("epoch", 0) <= epochs)
                or (r.get("type") == "step" and r.get("step", 0) <= steps)
            ]
            write_text(file, "".join(line + "\n" for line in kept))
        self._fh = AppendFile(file)

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(finite(record)) + "\n")

    def close(self) -> None:
        self._fh.close()
