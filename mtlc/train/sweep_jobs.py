"""``mtlc sweep --jobs K``: the points of a sweep trained by K processes at once.

Each point is trained by :func:`mtlc.train.run.train` in a fresh process (``spawn``: no
state copied from the parent), from the same spec file and ``--set`` list as a
one-at-a-time sweep, so a point trains exactly as it would alone; the torch threads are
split between the processes. The processes print nothing; the parent says which point
started and how it ended. Ctrl-C reaches every process: each point saves ``last.pt`` and
stops, and running the sweep again resumes them.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mtlc.errors import MtlcError
from mtlc.train.errors import Interrupted


@dataclass
class Job:
    """One point to train: its number, folder and how ``train`` is called for it."""

    index: int
    run_dir: Path
    spec: dict[str, Any]  # the point's resolved spec
    resume: bool
    force: bool
    device: str
    allow_import: frozenset[str]
    baselines: dict[str, dict[str, float]] | None


def _train_point(job: Job, threads: int) -> tuple[str, Any]:
    """In the child: train one point; ("done" | "diverged", summary) or ("error" | ..., text)."""
    import torch

    from mtlc.train import runfolder
    from mtlc.train.errors import Diverged
    from mtlc.train.run import train

    torch.set_num_threads(threads)
    try:
        result = train(
            job.spec,
            out=job.run_dir,
            resume=job.resume,
            force=job.force,
            device=job.device,
            allow_import=job.allow_import,
            baselines=job.baselines or False,
            console=None,
            progress=False,
        )
        return "done", result.summary
    except Diverged as exc:
        return "diverged", (str(exc), runfolder.read_summary(job.run_dir))
    except Interrupted as exc:
        return "interrupted", str(exc)
    except MtlcError as exc:  # exceptions with their own __init__ do not unpickle: send text
        return "error", str(exc)


def train_in_parallel(
    specs: list[Any],
    folders: list[Path],
    processes: int,
    force: bool,
    device: str,
    allow_import: frozenset[str] | tuple[str, ...],
    baselines: dict[str, dict[str, float]] | None,
    console: Any = None,
) -> dict[int, dict]:
    """Train the points (numbered from 1) that are not finished yet; their summaries."""
    from mtlc.train import runfolder
    from mtlc.train.state import check_resumable

    jobs = []
    for i, (spec, run_dir) in enumerate(zip(specs, folders), 1):
        data = spec.model_dump(mode="json")
        if not force and runfolder.completed_summary(run_dir, data) is not None:
            continue
        resume = not force and (run_dir / runfolder.LAST).is_file()
        if resume:
            check_resumable(spec, run_dir)
        jobs.append(
            Job(i, run_dir, data, resume, force, device, frozenset(allow_import), baselines)
        )
    return train_points(jobs, processes, console) if jobs else {}


def train_points(jobs: list[Job], processes: int, console: Any = None) -> dict[int, dict]:
    """Train ``jobs`` with ``processes`` at a time; the summary of each, by point number."""
    from rich.markup import escape

    threads = max(1, (os.cpu_count() or 1) // processes)
    summaries: dict[int, dict] = {}
    stopped: list[str] = []
    failed: list[str] = []
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        running: dict[Future, Job] = {}
        try:
            for job in jobs:
                running[pool.submit(_train_point, job, threads)] = job
                _say(console, f"point {job.index} queued → {escape(str(job.run_dir))}")
            pending = set(running)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running[future]
                    status, value = future.result()
                    if status == "done":
                        summaries[job.index] = value
                        _say(console, f"point {job.index} finished → {escape(str(job.run_dir))}")
                    elif status == "diverged":
                        summaries[job.index] = value[1]
                        _say(console, f"[red]point {job.index} diverged:[/] {escape(value[0])}")
                    elif status == "interrupted":
                        stopped.append(value)
                    else:
                        failed.append(f"point {job.index}: {value}")
        except KeyboardInterrupt:  # the children got it too: they save and stop
            pool.shutdown(wait=True, cancel_futures=True)
            stopped.append("Ctrl-C")
    if failed:
        raise MtlcError(failed[0])
    if stopped:
        raise Interrupted(
            "sweep interrupted; the points in progress saved last.pt; run the same sweep "
            "again to resume them",
            run_dir=jobs[0].run_dir.parent,
            step=0,
        )
    return summaries


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, soft_wrap=True)
