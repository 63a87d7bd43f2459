"""The trainer: one run's model, data, balancer and optimizer, and its epoch loop.

:class:`Trainer` is built from a spec (:mod:`mtlc.train.setup` does the checking) and
mixes in its step (:mod:`mtlc.train.step`), its validation
(:mod:`mtlc.train.validation`) and its checkpoint state (:mod:`mtlc.train.state`).
This module owns the loop over epochs and what happens at their ends.

Choices worth knowing:

* **Reproducible, resumable.** ``train.seed`` seeds torch before the model is built and
  seeds the generator that shuffles the training split; the data sets themselves are fixed
  by their own ``train.data.seed`` (0 by default), so runs with different training seeds
  see the same scenes. ``--resume`` continues bit for bit (:mod:`mtlc.train.state`).
* **Stopping.** Ctrl-C is turned into a request that the loop honours between steps (an
  optimizer step is never cut in half): it saves ``last.pt`` and raises
  :class:`~mtlc.train.errors.Interrupted` (the CLI exits 130). A second Ctrl-C aborts at
  once without saving. A non-finite task loss stops the run with
  :class:`~mtlc.train.errors.Diverged` naming the task and the step (the CLI exits 1: the
  command was right, the training failed); nothing is saved after it, so
  ``last.pt``/``best.pt`` keep the last good epoch.
* **Speed.** Batches are slices of pre-built tensors; the host reads a step's losses back
  only after launching the next step (:meth:`Trainer.launch_step`), so logging never
  makes a GPU wait.
* **best.pt**: :mod:`mtlc.train.best`.
* **Shared parameters** (what MGDA ``mode: exact`` differentiates) are the parameters of
  modules whose graph nodes serve two or more tasks
  (:func:`~mtlc.compiler.labels.shared_parameters`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mtlc.atomic import WriteError
from mtlc.compiler.labels import shared_parameters
from mtlc.data.batches import num_batches
from mtlc.devices import resolve_device
from mtlc.memory import allocation, is_out_of_memory
from mtlc.spec import Spec, spec_error
from mtlc.train import runfolder
from mtlc.train.best import best_reference, is_better, safe_delta_m
from mtlc.train.checkpoint import RUN_KEYS, copy_checkpoint, load_checkpoint, save_checkpoint
from mtlc.train.distributed import Ranks, rank_seed, shard, wrap
from mtlc.train.errors import Diverged, Interrupted, RunFailed, RunResult
from mtlc.train.setup import (
    build_optimizer,
    check_targets,
    cosine_schedule,
    first_line,
    load_split,
    loss_functions,
    per_sample_batchnorm,
    run_balancer,
    to_device,
)
from mtlc.train.sinks import (
    NullLog,
    epoch_table,
    open_tensorboard,
    progress_bar,
    short_losses,
    tb_epoch,
    tb_step,
)
from mtlc.train.state import Checkpointing
from mtlc.train.step import Launched, Stepping
from mtlc.train.validation import Validating


class Trainer(Checkpointing, Stepping, Validating):
    """Owns the model, data, balancer and optimizer of one run; :meth:`fit` trains it."""

    def __init__(
        self,
        spec: Spec,
        *,
        device: str | torch.device = "auto",
        allow_import: frozenset[str] | tuple[str, ...] = frozenset(),
        console: Any = None,
        progress: bool = True,
        splits: tuple[str, ...] = ("train", "val"),
        ranks: Ranks | None = None,
    ):
        from mtlc.compiler import compile_spec

        self.spec = spec
        self.ranks = ranks  # None: one process; else this process's place in the job
        self.writes = ranks is None or ranks.writes
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.console = console
        self.show_progress = progress and console is not None
        allow = frozenset(allow_import)
        self.train_data = load_split(spec, "train", allow) if "train" in splits else None
        self.val_data = load_split(spec, "val", allow)

        torch.manual_seed(spec.train.seed)
        self.compiled = compile_spec(spec)
        self.model = self.compiled.supervised.to(self.device)
        self.net = self.model if ranks is None else wrap(self.model, spec, ranks)
        self.tasks = list(self.compiled.topology.tasks)
        self.pred_keys = [k for k in self.compiled.topology.predictions]
        self.pred_keys.sort(key=lambda k: (":" in k, self.tasks.index(k.split(":")[0])))
        self.targets = {t: task.target or t for t, task in spec.tasks.items()}
        self.losses = loss_functions(spec)
        self.supervision = spec.decoder.supervision if spec.decoder is not None else 1.0
        for data in (self.train_data, self.val_data):
            if data is not None:
                check_targets(
                    spec,
                    self.model,
                    data,
                    pred_keys=self.pred_keys,
                    targets=self.targets,
                    losses=self.losses,
                    device=self.device,
                )

        self.balancer = run_balancer(spec, self.compiled.topology).to(self.device)
        if ranks is not None:
            self.balancer.ranks = ranks  # gradient-level balancers reduce before solving
        self.use_shared_repr = self.balancer.needs_shared_repr
        self.shared = shared_parameters(self.model)
        self.task_metrics = {t: list(task.metrics) for t, task in spec.tasks.items()}
        self.optimizer = build_optimizer(spec, self.model, list(self.balancer.parameters()))
        samples = len(self.train_data) if self.train_data is not None else 0
        self.drop_last = self._single_sample_batches(samples)
        self.batches_per_epoch = num_batches(
            samples, spec.train.batch_size, drop_last=self.drop_last
        )
        self.scheduler = None
        if spec.train.scheduler == "cosine":
            total = spec.train.epochs * self.batches_per_epoch
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, cosine_schedule(total)
            )
        self.generator = torch.Generator().manual_seed(spec.train.seed)

        # progress of the run, all of it saved in checkpoints
        self.epoch = 0  # epochs finished (trained and validated)
        self.step = 0  # optimizer steps taken
        self.batch = 0  # batches of the epoch in progress done
        self.epoch_generator = self.generator.get_state()
        self.epoch_sums = dict.fromkeys(self.tasks, 0.0)
        self.epoch_count = 0
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.train_time = 0.0
        self.samples = 0
        self._stop = False  # every rank agreed to stop (one process: Ctrl-C was pressed)
        self._stop_asked = False  # Ctrl-C on this rank, not yet agreed with the others
        self.saved_epoch: int | None = None  # the epoch last.pt holds, once one is written
        # where a fresh run's random stream starts (dropout...): fit() rewinds to it, so
        # whatever runs between construction and fit (baselines) cannot change the run
        if ranks is not None and ranks.world > 1:
            torch.manual_seed(rank_seed(spec.train.seed, ranks.rank))  # dropout differs by rank
        self._start_rng = self._rng_state()

    def _single_sample_batches(self, samples: int) -> bool:
        """Whether to drop a last training batch of one sample (refuse when all are).

        A BatchNorm layer on 1-D features cannot train on a batch of one sample. A split
        whose size leaves one sample over loses it each epoch (like a DataLoader's
        ``drop_last``, but only for that batch and only for such a model); a batch size
        or a training split of one cannot train at all and is refused here.
        """
        size = self.spec.train.batch_size
        if samples == 0 or (size > 1 and samples % size != 1):
            return False
        sample = self._to_device({self.spec.input_name: self.val_data[self.spec.input_name][:1]})
        layers = per_sample_batchnorm(self.model, sample[self.spec.input_name])
        if not layers:
            return False
        if size == 1 or samples == 1:
            where = ("train", "batch_size") if samples > 1 else ("train", "data")
            raise spec_error(
                self.spec,
                where,
                f"BatchNorm layer '{layers[0]}' normalises one value per channel per sample "
                "and cannot train on batches of one sample: "
                + (
                    "set train.batch_size to 2 or more"
                    if samples > 1
                    else "the training split needs at least 2 samples"
                ),
            )
        return True

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return to_device(batch, self.device)

    def _batches(self) -> Iterator[tuple[dict[str, torch.Tensor], float, int]]:
        """The epoch in progress, from where it stopped (same permutation as before).

        Yields (this process's batch, its share of the global batch, the global size).
        """
        from mtlc.data.batches import iterate_batches

        self.generator.set_state(self.epoch_generator)
        it = iterate_batches(
            self.train_data,
            self.spec.train.batch_size,
            shuffle=True,
            generator=self.generator,
            drop_last=self.drop_last,
        )
        for i, batch in enumerate(it):
            if i >= self.batch:
                if self.ranks is None:
                    yield batch, 1.0, batch[self.spec.input_name].shape[0]
                else:
                    yield shard(batch, self.ranks)

    def request_stop(self) -> None:
        """Ask the loop to save and stop after the current step (what Ctrl-C does).

        With several processes the ranks agree on it in the next step's all-reduce.
        """
        if self.ranks is None:
            self._stop = True
        else:
            self._stop_asked = True

    # -- the run ----------------------------------------------------------------------------
    def fit(
        self,
        run_dir: Path,
        *,
        resume: bool = False,
        baselines: dict[str, dict[str, float]] | None = None,
        tensorboard: bool = False,
    ) -> RunResult:
        """Train to ``spec.train.epochs`` in ``run_dir`` (prepared by the caller).

        However the run ends (done, diverged, interrupted, a full disk, out of memory),
        summary.json and the plots are written for what was trained; a write that fails
        at the end of a run that already failed is dropped, not raised over its error.
        """
        if resume:
            self.load_state(load_checkpoint(run_dir / runfolder.LAST, RUN_KEYS))
            self.saved_epoch = self.epoch
        else:
            self._set_rng_state(self._start_rng)
        log: Any = NullLog()
        writer = None
        if self.writes:
            runfolder.write_spec(run_dir, self.spec.model_dump(mode="json"))
            log = runfolder.MetricsLog(run_dir, keep=(self.epoch, self.step) if resume else None)
            writer = open_tensorboard(run_dir) if tensorboard else None
        self.baselines = baselines
        previous = _install_sigint(self)
        status = "completed"
        try:
            self._loop(run_dir, log, writer)
        except Diverged as exc:
            status = "diverged"
            exc.run_dir = run_dir
            exc.args = (f"{exc.args[0]}; training stopped. {self._last_good(run_dir)}",)
            raise
        except Interrupted:
            status = "interrupted"
            raise
        except WriteError as exc:  # a full disk: the checkpoint on disk is the last whole one
            status = "failed"
            exc.args = (f"{exc.args[0]}; training stopped. {self._last_good(run_dir)}",)
            raise
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            status = "failed"
            raise RunFailed(
                f"out of memory at step {self.step + 1} (epoch {self.epoch + 1}) with "
                f"train.batch_size {self.spec.train.batch_size} on {self.device}"
                f"{allocation(exc)}: lower train.batch_size. {self._last_good(run_dir)}"
            ) from None
        except BaseException:  # a second Ctrl-C, a bug: the summary must not say completed
            status = "failed"
            raise
        finally:
            _restore_sigint(previous)
            log.close()
            if writer is not None:
                writer.close()
            summary = self._close(run_dir, status) if self.writes else self.summary(status)
        return RunResult(run_dir, summary)

    def _last_good(self, run_dir: Path) -> str:
        if self.saved_epoch is not None and (run_dir / runfolder.LAST).exists():
            return (
                f"{run_dir / runfolder.LAST} (epoch {self.saved_epoch}) is the last good checkpoint"
            )
        return "no checkpoint was written before it"

    def _close(self, run_dir: Path, status: str) -> dict[str, Any]:
        """Write summary.json, then the plots, then the summary with the plots' note.

        Called however the run ended, so it never raises over the exception that ended
        it: the small summary goes first (on a full disk it is what most needs to
        survive), a failed write leaves the previous file whole (mtlc.atomic), and a
        plot that cannot be drawn becomes a note instead of an error.
        """
        from mtlc.train.plots import write_plots

        summary = self.summary(status)
        try:
            runfolder.write_summary(run_dir, summary)
        except WriteError:
            if status == "completed":
                raise
            return summary
        try:
            summary["plots"] = write_plots(run_dir)
        except Exception as exc:  # a plot never fails a run
            summary["plots"] = f"plots skipped: {first_line(exc)}"
        try:
            runfolder.write_summary(run_dir, summary)
        except WriteError:
            if status == "completed":
                raise
        return summary

    def _loop(self, run_dir: Path, log: runfolder.MetricsLog, writer: Any) -> None:
        epochs = self.spec.train.epochs
        while self.epoch < epochs:
            with progress_bar(self.console, self.show_progress) as bar:
                task_id = bar.add_task(
                    f"epoch {self.epoch + 1}/{epochs}",
                    total=self.batches_per_epoch,
                    completed=self.batch,
                    losses="",
                )

                # the loop's time counts everything per batch: slicing, the step, logging
                start = time.perf_counter()
                try:
                    pending = None
                    for batch, share, size in self._batches():
                        launched = self.launch_step(self._to_device(batch), share=share, size=size)
                        if pending is not None:
                            self._account(pending, log, writer, bar, task_id)
                        pending = launched
                        if self._stop:
                            break
                    if pending is not None:
                        self._account(pending, log, writer, bar, task_id)
                finally:
                    self.train_time += time.perf_counter() - start
            if self._stop:
                self._save_interrupted(run_dir)
            self._end_epoch(run_dir, log, writer)

    def _account(
        self, launched: Launched, log: runfolder.MetricsLog, writer: Any, bar: Any, task_id: Any
    ) -> None:
        """Finish a launched step: epoch sums, counters, metrics.jsonl, TensorBoard, progress."""
        record = self.finish_step(launched)
        for t, v in record["loss"].items():
            self.epoch_sums[t] += v * launched.size
        self.epoch_count += launched.size
        self.batch += 1
        self.samples += launched.size
        log.write(record)
        if writer is not None:
            tb_step(writer, record)
        bar.update(task_id, advance=1, losses=short_losses(record["loss"]))

    def _save_interrupted(self, run_dir: Path) -> None:
        state = self.state()  # on every rank: it gathers their random states
        if self.writes:
            save_checkpoint(state, run_dir / runfolder.LAST)
        raise Interrupted(
            f"interrupted at step {self.step} (epoch {self.epoch + 1}); saved "
            f"{run_dir / runfolder.LAST}; continue with --resume",
            run_dir=run_dir,
            step=self.step,
        )

    def _end_epoch(self, run_dir: Path, log: runfolder.MetricsLog, writer: Any) -> None:
        self.balancer.end_epoch()
        val_loss, metrics = self.validate()
        train_loss = {t: s / max(self.epoch_count, 1) for t, s in self.epoch_sums.items()}
        self.epoch += 1
        self.batch = 0
        self.epoch_generator = self.generator.get_state()
        self.epoch_sums, self.epoch_count = dict.fromkeys(self.tasks, 0.0), 0
        entry = {
            "epoch": self.epoch,
            "step": self.step,
            "metrics": metrics,
            "val_loss": val_loss,
            "train_loss": train_loss,
            "weights": self.balancer.weights(),
            "reference": best_reference(self.spec, metrics, val_loss),
            "delta_m": safe_delta_m(metrics, self.baselines) if self.baselines else None,
        }
        better = is_better(entry, self.best, self.baselines)
        if better:
            self.best = entry
        self.last = entry
        record = {"type": "epoch", **{k: v for k, v in entry.items() if k != "reference"}}
        record["best"] = better
        log.write(record)
        if writer is not None:
            tb_epoch(writer, record)
        state = self.state()  # on every rank: it gathers their random states
        if self.writes:
            save_checkpoint(state, run_dir / runfolder.LAST)
        self.saved_epoch = self.epoch
        if self.writes:
            if better:
                copy_checkpoint(run_dir / runfolder.LAST, run_dir / runfolder.BEST)
            # a summary per epoch: a run that a full disk or a kill stops still has one
            runfolder.write_summary(run_dir, self.summary("running"))
        if self.console is not None:
            self.console.print(epoch_table(self.spec, record))

    def summary(self, status: str) -> dict[str, Any]:
        def public(entry: dict[str, Any] | None) -> dict[str, Any] | None:
            if entry is None:
                return None
            return {k: v for k, v in entry.items() if k != "reference"}

        return {
            "format": "mtlc-run",
            "version": 1,
            "name": self.spec.name,
            "status": status,
            "epochs": self.epoch,
            "steps": self.step,
            "device": str(self.device),
            "processes": self.ranks.world if self.ranks is not None else 1,
            "tasks": self.tasks,
            "outputs": list(self.spec.outputs),
            "balancer": self.spec.balancer.type,
            "params": sum(p.numel() for p in self.compiled.model.parameters()),
            "final": public(self.last),
            "best": public(self.best),
            "baselines": self.baselines,
            "train_time_s": self.train_time,
            "train_samples_per_s": self.samples / self.train_time if self.train_time else None,
        }


def _install_sigint(trainer: Trainer) -> Any:
    """First Ctrl-C: stop after this step and save; second: the default (abort)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if trainer._stop:
            raise KeyboardInterrupt
        trainer.request_stop()
        if trainer.console is not None:
            trainer.console.print(
                "[yellow]stopping after this step (Ctrl-C again aborts without saving)"
            )

    return signal.signal(signal.SIGINT, handler)


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
