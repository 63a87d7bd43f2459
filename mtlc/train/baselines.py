"""Single-task baselines for Δm: each task trained alone with the same backbone.

A task's baseline spec is derived from the multi-task spec: the same input, encoder
stages, head, loss, metrics, data and training settings, but only that task, hard
sharing everywhere (with one task, every sharing point degenerates to a plain column),
no decoder and a fixed balancer. It is trained once into ``<run>/baselines/<task>/`` (a
run folder of its own) and reused as long as its resolved spec is unchanged; a stopped
baseline run is resumed (with the same number of processes; else it starts over). Δm
compares *final* (last-epoch) validation metrics of the baselines. A multi-process run
trains its baselines on the same processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtlc.spec import Spec, load_spec
from mtlc.train import runfolder


def baseline_tasks(spec: Spec) -> list[str]:
    """The tasks Δm averages over: outputs (not auxiliary) that have metrics."""
    return [t for t in spec.outputs if spec.tasks[t].metrics]


def single_task_spec(spec: Spec, task: str) -> Spec:
    """The spec of ``task``'s single-task baseline (module docstring)."""
    data = spec.model_dump(mode="json")
    one = dict(data["tasks"][task])
    one["auxiliary"] = False
    data["name"] = f"{spec.name}-{task}"
    data["tasks"] = {task: one}
    data["encoder"]["sharing"] = {}
    data["encoder"]["init"] = {}  # the baselines are what a multi-task run starts from
    data["decoder"] = None
    data["balancer"] = {"type": "fixed"}
    return load_spec(data)


def find_baselines(spec: Spec, run_dir: Path) -> dict[str, dict[str, float]] | None:
    """Baseline metrics already in ``run_dir/baselines`` for every Δm task, else None."""
    tasks = baseline_tasks(spec)
    found = {}
    for t in tasks:
        single = single_task_spec(spec, t)
        summary = runfolder.completed_summary(
            run_dir / runfolder.BASELINES / t, single.model_dump(mode="json")
        )
        if summary is None or not summary.get("final"):
            return None
        found[t] = summary["final"]["metrics"][t]
    return found or None


def baseline_metrics(
    spec: Spec,
    run_dir: Path,
    *,
    device: torch.device,
    allow_import: frozenset[str] | tuple[str, ...] = frozenset(),
    console: Any = None,
    ranks: Any = None,
) -> dict[str, dict[str, float]]:
    """Train (or reuse) every baseline of ``spec`` under ``run_dir/baselines``.

    On several processes (``ranks``, :class:`~mtlc.train.distributed.Ranks`) each baseline
    is trained by all of them, one after the other, like the multi-task run: rank 0 looks
    in the folder (reuse, resume or start) and tells the others, and alone writes there.
    """
    from rich.markup import escape

    from mtlc.train.errors import TrainError
    from mtlc.train.trainer import Trainer

    tasks = baseline_tasks(spec)
    if not tasks:
        raise TrainError("--baselines: no output task has metrics, so there is no Δm to compute")
    processes = ranks.world if ranks is not None else 1
    writes = ranks is None or ranks.writes
    found = {}
    for i, t in enumerate(tasks, 1):
        single = single_task_spec(spec, t)
        folder = run_dir / runfolder.BASELINES / t
        plan = _plan(single, folder, processes) if writes else None
        summary, resume = plan if ranks is None else ranks.broadcast(plan)
        if summary is None:
            if console is not None:
                console.print(
                    f"[bold]baseline {i}/{len(tasks)}: {t} alone[/] → {escape(str(folder))}",
                    soft_wrap=True,
                )
            if writes:
                runfolder.prepare(folder, resume=resume, force=not resume)
            trainer = Trainer(
                single, device=device, allow_import=allow_import, console=console, ranks=ranks
            )
            summary = trainer.fit(folder, resume=resume).summary
        elif console is not None:
            console.print(
                f"baseline {i}/{len(tasks)}: {t} (cached in {folder})", markup=False, soft_wrap=True
            )
        found[t] = summary["final"]["metrics"][t]
    return found


def _plan(single: Spec, folder: Path, processes: int) -> tuple[dict[str, Any] | None, bool]:
    """(the summary of a finished baseline to reuse, else None; whether to resume it)."""
    from mtlc.train.errors import TrainError
    from mtlc.train.state import check_resumable

    summary = runfolder.completed_summary(folder, single.model_dump(mode="json"))
    if summary is not None:
        return summary, False
    resume = (folder / runfolder.LAST).is_file()
    if resume:
        try:
            check_resumable(single, folder, processes)
        except TrainError:
            resume = False  # another spec or number of processes: start it over
    return None, resume
