"""The trainer's epoch loop: :meth:`EpochLoop.fit` and what happens at each epoch's end.

Mixed into :class:`~mtlc.train.trainer.Trainer` (which builds the model, data, balancer
and optimizer) next to its step (:mod:`mtlc.train.step`), validation
(:mod:`mtlc.train.validation`) and checkpoint state (:mod:`mtlc.train.state`).

* **Stopping.** Ctrl-C is turned into a request that the loop honours between steps (an
  optimizer step is never cut in half): it saves ``last.pt`` and raises
  :class:`~mtlc.train.errors.Interrupted` (the CLI exits 130). A second Ctrl-C aborts at
  once without saving. A non-finite task loss stops the run with
  :class:`~mtlc.train.errors.Diverged` naming the task and the step (the CLI exits 1: the
  command was right, the training failed); nothing is saved after it, so
  ``last.pt``/``best.pt`` keep the last good epoch.
* **Every end writes a summary.** However the run ends (done, diverged, interrupted, a
  full disk, out of memory), summary.json and the plots are written for what was trained.
* **best.pt**: :mod:`mtlc.train.best`.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from mtlc.atomic import WriteError
from mtlc.memory import allocation, is_out_of_memory
from mtlc.train import runfolder
from mtlc.train.best import best_reference, is_better, safe_delta_m
from mtlc.train.checkpoint import RUN_KEYS, copy_checkpoint, load_checkpoint, save_checkpoint
from mtlc.train.errors import Diverged, Interrupted, RunFailed, RunResult
from mtlc.train.setup import first_line
from mtlc.train.sinks import (
    NullLog,
    epoch_table,
    open_tensorboard,
    progress_bar,
    short_losses,
    tb_epoch,
    tb_step,
)
from mtlc.train.step import Launched


class EpochLoop:
    """The trainer's loop half (mixed into :class:`~mtlc.train.trainer.Trainer`).

    It drives the trainer's batches through its step, validates at each epoch's end,
    saves checkpoints and writes the run folder's logs and summary (rank 0 only).
    """

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

        def written() -> bool:
            """Write the summary; False when the disk refused it for a run that failed."""
            try:
                runfolder.write_summary(run_dir, summary)
            except WriteError:
                if status == "completed":
                    raise
                return False
            return True

        if not written():
            return summary
        try:
            summary["plots"] = write_plots(run_dir)
        except Exception as exc:  # a plot never fails a run
            summary["plots"] = f"plots skipped: {first_line(exc)}"
        written()
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
                    pending: list[Launched] = []
                    for batch, share, size in self._batches():
                        pending.append(
                            self.launch_step(self._to_device(batch), share=share, size=size)
                        )
                        if len(pending) >= self.spec.train.log_every or self._stop:
                            self._account(pending, log, writer, bar, task_id)
                            pending = []
                        if self._stop:
                            break
                    self._account(pending, log, writer, bar, task_id)
                finally:
                    self.train_time += time.perf_counter() - start
            if self._stop:
                self._save_interrupted(run_dir)
            self._end_epoch(run_dir, log, writer)

    def _account(
        self,
        pending: list[Launched],
        log: runfolder.MetricsLog,
        writer: Any,
        bar: Any,
        task_id: Any,
    ) -> None:
        """Finish launched steps (one wait for the device): sums, counters, logs, progress."""
        for launched, record in zip(pending, self.finish_steps(pending), strict=True):
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


def _install_sigint(trainer: Any) -> Any:
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
