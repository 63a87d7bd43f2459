"""A run's checkpoint state: what last.pt holds, how a run is restored from it, and
whether a stopped run may be resumed with the spec given now.

A checkpoint holds fp16's loss scale (``scaler``: the scale and the clean steps since
it last changed, so a resumed run goes on from the scale it had reached rather than from
2^16, which would skip steps again as it fell back), the torch RNG state (every rank's, with several processes), the shuffling generator's state at the start of
the epoch and the number of batches done, so ``--resume`` replays the same permutation,
skips the batches already seen and continues bit for bit: on the CPU, stopping and
resuming gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtlc.spec import Spec
from mtlc.train import runfolder
from mtlc.train.checkpoint import RUN_KEYS, load_checkpoint
from mtlc.train.errors import TrainError
from mtlc.train.setup import load_model_state


class Checkpointing:
    """The trainer's save/restore half (mixed into :class:`~mtlc.train.trainer.Trainer`).

    It reads and writes the trainer's model, balancer, optimizer, scheduler, generators
    and progress counters; everything a checkpoint holds is listed in :meth:`state`.
    """

    def _rng_state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def _set_rng_state(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])

    def state(self) -> dict[str, Any]:
        rng = {
            **self._rng_state(),
            "generator": self.generator.get_state(),
            "epoch_generator": self.epoch_generator,
        }
        if self.ranks is not None:
            rng["ranks"] = self.ranks.gather(self._rng_state())  # a collective: every rank
        return {
            "spec": self.spec.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "balancer": self.balancer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "batch": self.batch,
            "rng": rng,
            "processes": self.ranks.world if self.ranks is not None else 1,
            "progress": {
                "epoch_sums": dict(self.epoch_sums),
                "epoch_count": self.epoch_count,
                "best": self.best,
                "last": self.last,
                "train_time": self.train_time,
                "samples": self.samples,
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        load_model_state(self.model, state["model"], "the checkpoint")
        try:
            self.balancer.load_state_dict(state["balancer"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise TrainError(f"the checkpoint does not fit this spec's balancer: {first}") from None
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):  # older checkpoints have none
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.batch = state["epoch"], state["step"], state["batch"]
        rng = state["rng"]
        self._set_rng_state(rng)
        if self.ranks is not None and "ranks" in rng:
            self._set_rng_state(rng["ranks"][self.ranks.rank])
        self.generator.set_state(rng["generator"])
        self.epoch_generator = rng["epoch_generator"]
        p = state["progress"]
        self.epoch_sums, self.epoch_count = dict(p["epoch_sums"]), p["epoch_count"]
        self.best, self.last = p["best"], p["last"]
        self.train_time, self.samples = p["train_time"], p["samples"]


def check_resumable(spec: Spec, run_dir: Path, processes: int = 1) -> dict[str, Any]:
    """Check that ``spec`` may continue the run in ``run_dir``; its checkpoint's counters.

    Resuming needs the same spec as the stopped run, and the same number of processes
    (the shards and each rank's random stream depend on it). ``train.epochs`` alone may
    grow, to extend a run, as long as nothing depends on it: under the cosine schedule
    the number of epochs sets the learning rate of every step, so a different one would
    change the plan of a run half done (refused, like a changed lr). Fewer epochs than
    the run has already trained is refused too. Returns ``{"epoch", "batch", "epochs"}``:
    epochs done, batches of the next one done, and the epochs the run was planned for.
    """
    state = load_checkpoint(run_dir / runfolder.LAST, RUN_KEYS)
    before = state.get("processes", 1)
    if before != processes:
        raise TrainError(
            f"{run_dir}: the run was trained with {before} process(es) and cannot be resumed "
            f"with {processes}: resume it with --nproc {before}"
        )
    saved = state["spec"]
    now = spec.model_dump(mode="json")
    diffs = [p for p in _diff(saved, now) if p != "train.epochs"]
    if diffs:
        shown = ", ".join(diffs[:5]) + (" …" if len(diffs) > 5 else "")
        raise TrainError(
            f"{run_dir}: the spec differs from the run being resumed ({shown}); "
            "use --force to start over, or --out for a new run folder"
        )
    train = saved.get("train") if isinstance(saved.get("train"), dict) else {}
    planned = train.get("epochs", spec.train.epochs)
    epochs = spec.train.epochs
    if epochs != planned and spec.train.scheduler == "cosine":
        raise TrainError(
            f"{run_dir}: the run was planned for {planned} epochs and its cosine schedule "
            f"sets every step's learning rate from that; resuming with {epochs} would change "
            "it half way: resume without --epochs, or start over with --force"
        )
    done = state["epoch"] + (1 if state["batch"] else 0)
    if epochs < done:
        raise TrainError(
            f"{run_dir}: the run has already trained {done} epoch(s), more than the "
            f"{epochs} asked for: resume without --epochs, or start over with --force"
        )
    return {"epoch": state["epoch"], "batch": state["batch"], "epochs": planned}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
