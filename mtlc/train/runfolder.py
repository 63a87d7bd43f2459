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

A folder holding any of these files is never reused unless the caller asks to resume it
or to start over (``--force``, which removes mtlc's own files and nothing else, and
keeps ``baselines/``: those runs are checked against their spec before being reused).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from mtlc.atomic import write_text
from mtlc.errors import MtlcError

SPEC = "spec.yaml"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
SUMMARY = "summary.json"
PLOTS = ("loss.png", "weights.png")
TENSORBOARD = "tensorboard"
BASELINES = "baselines"
OWN_FILES = (SPEC, METRICS, LAST, BEST, SUMMARY, *PLOTS)


class RunFolderError(MtlcError):
    """A run folder that cannot be used as asked (exists, missing, unreadable)."""


def default_run_dir(spec_name: str, root: str | Path = "runs") -> Path:
    """``runs/<spec name>``, the name made safe as a single path component."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", spec_name).strip(".-") or "run"
    return Path(root) / safe


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds anything a run writes (so starting a new run there loses it)."""
    return any((path / name).exists() for name in (*OWN_FILES, TENSORBOARD))


def check(path: Path, *, resume: bool, force: bool) -> None:
    """Raise unless ``path`` can be resumed (``resume``) or used for a new run; writes nothing.

    Kept apart from :func:`prepare` so that the trainer can check everything else (data,
    model, balancer) between the two: ``--force`` must not delete a run and then fail.
    """
    if resume and force:
        raise RunFolderError("--resume and --force contradict each other: pick one")
    if resume:
        if not (path / LAST).is_file():
            raise RunFolderError(f"{path}: nothing to resume (no {LAST} in it)")
        return
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path}: exists and is not a folder")
    if not force and path.is_dir() and is_run_folder(path):
        raise RunFolderError(
            f"{path}: a run folder already exists; pass --resume to continue it or "
            "--force to start over"
        )


def prepare(path: Path, *, resume: bool, force: bool) -> None:
    """:func:`check`, then make ``path`` ready: created, and emptied of mtlc's files (force)."""
    check(path, resume=resume, force=force)
    if resume:
        return
    if path.is_dir() and is_run_folder(path):
        for name in OWN_FILES:
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / TENSORBOARD, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


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


def read_summary(path: str | Path) -> dict[str, Any]:
    """The summary of a run folder (or a summary.json path), or a RunFolderError."""
    path = Path(path)
    file = path / SUMMARY if path.is_dir() or not path.suffix else path
    if not file.is_file():
        raise RunFolderError(f"{path}: not a run folder (no {SUMMARY})")
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{file}: cannot read ({exc})") from None
    if not isinstance(summary, dict):
        raise RunFolderError(f"{file}: not a run summary (a JSON object)")
    return summary


def completed_summary(path: Path, spec_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a run in ``path`` that completed training exactly ``spec_dict``, else None.

    What baselines and sweep points reuse instead of training again.
    """
    try:
        summary = read_summary(path)
        saved = yaml.safe_load((path / SPEC).read_text(encoding="utf-8"))
    except (MtlcError, OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return summary if summary.get("status") == "completed" and saved == spec_dict else None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's metrics.jsonl, in order (a torn last line is skipped)."""
    file = Path(path) / METRICS
    if not file.is_file():
        return []
    records = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends JSON lines to metrics.jsonl, flushed per line so ``tail -f`` follows a run."""

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
        self._fh = open(file, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(finite(record)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
