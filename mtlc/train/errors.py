"""What a run can end with: the errors the trainer raises and the result it returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlc.errors import MtlcError


class TrainError(MtlcError):
    """The run cannot start or go on as asked (reported as one line, exit 2)."""


class RunFailed(MtlcError):
    """The run started but the machine could not carry it on (out of memory); exit 1."""

    exit_code = 1


class Diverged(MtlcError):
    """A task loss became NaN or infinite; the message names the task and the step."""

    def __init__(self, message: str, *, task: str, step: int, run_dir: Path):
        super().__init__(message)
        self.task, self.step, self.run_dir = task, step, run_dir


class Interrupted(MtlcError):
    """The user stopped the run (Ctrl-C); ``last.pt`` holds where it stopped."""

    def __init__(self, message: str, *, run_dir: Path, step: int):
        super().__init__(message)
        self.run_dir, self.step = run_dir, step


@dataclass
class RunResult:
    """A finished (or stopped) run: its folder and what summary.json says."""

    run_dir: Path
    summary: dict[str, Any]
    note: str = ""  # said before the summary, e.g. that a resumed run was already complete
