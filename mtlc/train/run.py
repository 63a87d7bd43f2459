"""The Python faces of ``mtlc train`` and ``mtlc eval``: a spec in, a run folder or scores out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlc.devices import resolve_device
from mtlc.spec import Spec, load_spec
from mtlc.train import distributed, runfolder
from mtlc.train.baselines import baseline_metrics, find_baselines
from mtlc.train.checkpoint import load_checkpoint
from mtlc.train.errors import Diverged, Interrupted, RunResult
from mtlc.train.launch import check_job
from mtlc.train.setup import load_model_state
from mtlc.train.sinks import tensorboard_available
from mtlc.train.state import check_resumable
from mtlc.train.trainer import Trainer


def train(
    spec: Any,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    allow_import: frozenset[str] | tuple[str, ...] = frozenset(),
    tensorboard: bool = False,
    baselines: bool | dict[str, dict[str, float]] = False,
    console: Any = None,
    progress: bool = True,
) -> RunResult:
    """Train a spec into a run folder; the Python face of ``mtlc train``.

    ``baselines=True`` trains (or reuses) the single-task baselines in
    ``<run>/baselines/`` first; a dict gives their metrics directly. Raises
    :class:`TrainError`/``SpecError`` before anything is written or removed (the data,
    the model, the balancer and the folder are all checked first), :class:`Diverged` or
    :class:`Interrupted` after.

    Started by torchrun (``mtlc train --nproc N`` or ``torchrun ... -m mtlc train``), the
    process joins the job first: rank 0 alone prepares and writes the run folder and
    prints; every rank trains its share (:mod:`mtlc.train.distributed`).
    """
    spec = load_spec(spec, overrides)
    run_dir = Path(out) if out is not None else runfolder.default_run_dir(spec.name)
    ranks = None
    if distributed.launched():
        ranks, torch_device = distributed.join(device)
    else:
        torch_device = resolve_device(device)
    together = False  # whether every rank ends the same way (distributed.leave)
    try:
        result = _train(
            spec,
            run_dir,
            ranks,
            torch_device,
            resume,
            force,
            allow_import,
            tensorboard,
            baselines,
            console,
            progress,
        )
        together = True
        return result
    except (Diverged, Interrupted):
        together = True  # agreed by every rank in the step's all-reduce
        raise
    finally:
        if ranks is not None:
            distributed.leave(together)


def _train(
    spec: Spec,
    run_dir: Path,
    ranks: distributed.Ranks | None,
    torch_device: Any,
    resume: bool,
    force: bool,
    allow_import: frozenset[str] | tuple[str, ...],
    tensorboard: bool,
    baselines: bool | dict[str, dict[str, float]],
    console: Any,
    progress: bool,
) -> RunResult:
    processes = ranks.world if ranks is not None else 1
    writes = ranks is None or ranks.writes
    console = console if writes else None  # rank 0 alone prints
    if tensorboard:
        tensorboard_available()
    runfolder.check(run_dir, resume=resume, force=force)
    if resume:
        where = check_resumable(spec, run_dir, processes)
        epochs = spec.train.epochs
        if where["epoch"] >= epochs and not where["batch"]:
            done = _complete(run_dir, epochs)
            if done is not None:
                return done
        if epochs != where["epochs"] and console is not None:
            console.print(
                f"resuming with train.epochs {epochs}: the run was planned for "
                f"{where['epochs']} and has trained {where['epoch']}",
                markup=False,
                soft_wrap=True,
            )
    if ranks is not None:
        check_job(spec, processes, torch_device.type)
    trainer = Trainer(
        spec,
        device=torch_device,
        allow_import=allow_import,
        console=console,
        progress=progress,
        ranks=ranks,
    )
    if ranks is not None:
        check_job(spec, processes, torch_device.type, samples=len(trainer.train_data))
    if writes:
        runfolder.prepare(run_dir, resume=resume, force=force)
    if baselines is True:
        found = baseline_metrics(
            spec,
            run_dir,
            device=torch_device,
            allow_import=allow_import,
            console=console,
            ranks=ranks,
        )
    elif isinstance(baselines, dict):
        found = baselines
    else:
        found = find_baselines(spec, run_dir)
    return trainer.fit(run_dir, resume=resume, baselines=found, tensorboard=tensorboard)


def _complete(run_dir: Path, epochs: int) -> RunResult | None:
    """The result of a resumed run that has nothing left to train (None: finish it)."""
    try:
        summary = runfolder.read_summary(run_dir)
    except runfolder.RunFolderError:
        return None  # killed before its summary: resuming writes it
    if summary.get("status") != "completed" or summary.get("epochs") != epochs:
        return None
    note = (
        f"the run in {run_dir} is already complete ({epochs} of {epochs} epochs): nothing "
        "was trained. --epochs N extends it, --force starts it over"
    )
    return RunResult(run_dir, summary, note=note)


def evaluate(
    spec: Any,
    checkpoint: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    allow_import: frozenset[str] | tuple[str, ...] = frozenset(),
) -> dict[str, Any]:
    """Validation losses and metrics of a checkpoint on the spec's validation split."""
    spec = load_spec(spec, overrides)
    state = load_checkpoint(checkpoint, ("model",))
    trainer = Trainer(spec, device=device, allow_import=allow_import, console=None, splits=("val",))
    load_model_state(trainer.model, state["model"], str(checkpoint))
    val_loss, metrics = trainer.validate()
    return {
        "checkpoint": str(checkpoint),
        "epoch": state.get("epoch"),
        "val_loss": val_loss,
        "metrics": metrics,
    }
