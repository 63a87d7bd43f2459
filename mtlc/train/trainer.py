"""The trainer: one run's model, data, balancer and optimizer.

:class:`Trainer` is built from a spec (:mod:`mtlc.train.setup` does the checking) and
mixes in its epoch loop (:mod:`mtlc.train.epochs`: stopping, Ctrl-C, the summary), its
step (:mod:`mtlc.train.step`), its validation (:mod:`mtlc.train.validation`) and its
checkpoint state (:mod:`mtlc.train.state`). This module owns what a run is made of and
the order of its training batches.

Choices worth knowing:

* **Reproducible, resumable.** ``train.seed`` seeds torch before the model is built and
  seeds the generator that shuffles the training split; the data sets themselves are fixed
  by their own ``train.data.seed`` (0 by default), so runs with different training seeds
  see the same scenes. ``--resume`` continues bit for bit (:mod:`mtlc.train.state`).
* **Speed.** Batches are slices of pre-built tensors, kept on the GPU when they fit
  (:func:`~mtlc.train.setup.keep_on_device`); the host reads the steps' losses back,
  with each step's balancer values (:meth:`~mtlc.balancers.base.Balancer.step_log`),
  once per ``train.log_every`` steps (:meth:`Trainer.launch_step`), so the host never
  waits for the device more often than that. ``train.amp``,
  ``channels_last`` and ``compile`` are in :mod:`mtlc.train.speed`.
* **Shared parameters** (what MGDA ``mode: exact`` differentiates) are the parameters of
  modules whose graph nodes serve two or more tasks
  (:func:`~mtlc.compiler.labels.shared_parameters`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from mtlc.compiler.labels import shared_parameters
from mtlc.data.batches import iterate_batches, num_batches
from mtlc.devices import resolve_device
from mtlc.spec import Spec, spec_error
from mtlc.train.distributed import Ranks, rank_seed, shard, wrap
from mtlc.train.epochs import EpochLoop
from mtlc.train.setup import (
    BUILT_IN_DATA,
    build_optimizer,
    check_targets,
    cosine_schedule,
    keep_on_device,
    load_split,
    loss_functions,
    per_sample_batchnorm,
    run_balancer,
    to_device,
)
from mtlc.train.speed import (
    CompiledForward,
    LossScaler,
    check_speed,
    compiler_missing,
    to_channels_last,
)
from mtlc.train.state import Checkpointing
from mtlc.train.step import Stepping
from mtlc.train.validation import Validating


class Trainer(EpochLoop, Checkpointing, Stepping, Validating):
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
        processes: int = 1,
    ):
        """``processes``: with no ``ranks``, the size of the job this run will be checked
        for (``mtlc train --nproc N`` builds it once on the CPU before starting N)."""
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

        check_speed(spec, self.device)
        for data in (self.train_data, self.val_data):
            if data is not None and spec.train.data.name in BUILT_IN_DATA:
                keep_on_device(data, self.device)

        torch.manual_seed(spec.train.seed)
        self.compiled = compile_spec(spec, fuse=True, device=self.device.type)
        self.model = self.compiled.supervised.to(self.device)
        if spec.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = self.model if ranks is None else wrap(self.model, spec, ranks)
        self.amp = spec.train.amp
        self.scaler = LossScaler() if self.amp == "fp16" else None
        self._said: set[str] = set()
        self.train_forward = self._compiled_forward(spec.train.compile_mode)
        self.tasks = list(self.compiled.topology.tasks)
        self.pred_keys = sorted(
            self.compiled.topology.predictions,
            key=lambda k: (":" in k, self.tasks.index(k.split(":")[0])),
        )
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
        self.shared = shared_parameters(self.compiled.plain[1])  # labelled: one node per task
        self.task_metrics = {t: list(task.metrics) for t, task in spec.tasks.items()}
        self.optimizer = build_optimizer(spec, self.model, list(self.balancer.parameters()))
        samples = len(self.train_data) if self.train_data is not None else 0
        self.drop_last = self._single_sample_batches(
            samples, ranks.world if ranks is not None else processes
        )
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

    def _single_sample_batches(self, samples: int, world: int) -> bool:
        """Whether to drop a short last training batch (refuse when every batch is short).

        A BatchNorm layer on 1-D features cannot train on a batch of one sample, and with
        N processes each normalises over its own share of the batch (``train.sync_bn``
        aside). A last batch that leaves a process fewer than 2 samples (one process: a
        last batch of one; an empty share runs a placeholder sample) is dropped each
        epoch (like a DataLoader's ``drop_last``, but only for that batch and only for
        such a model); full batches that do, or a training split too small for any
        batch, cannot train at all and are refused here, before any process starts.
        """
        size = self.spec.train.batch_size
        if self.spec.train.sync_bn:
            world = 1  # SyncBatchNorm normalises over the whole global batch
        last = samples % size
        if samples == 0 or (size // world >= 2 and (last == 0 or last // world >= 2)):
            return False
        sample = self._to_device({self.spec.input_name: self.val_data[self.spec.input_name][:1]})
        # the labelled graph calls every BatchNorm itself (the fused one calls some as one)
        layers = per_sample_batchnorm(self.compiled.plain[1], sample[self.spec.input_name])
        if not layers:
            return False
        layer = f"BatchNorm layer '{layers[0]}' normalises one value per channel per sample"
        if samples < 2 * world:
            raise spec_error(
                self.spec,
                ("train", "data"),
                f"{layer} and cannot train on batches of one sample: the training split needs "
                + (
                    "at least 2 samples"
                    if world == 1
                    else f"{2 * world} samples or more for {world} processes (2 per process)"
                ),
            )
        if size // world < 2:
            raise spec_error(
                self.spec,
                ("train", "batch_size"),
                f"{layer} and cannot train on batches of one sample: "
                + (
                    "set train.batch_size to 2 or more"
                    if world == 1
                    else f"{world} processes share train.batch_size {size}, so one gets "
                    f"{size // world} sample(s): set it to {2 * world} or more "
                    "(or train.sync_bn: true on CUDA)"
                ),
            )
        return True

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = to_device(batch, self.device)
        return to_channels_last(batch) if self.spec.train.channels_last else batch

    def say(self, message: str) -> None:
        """A notice shown once per run (on the console, else as a warning)."""
        if message in self._said:
            return
        self._said.add(message)
        if self.console is not None:
            self.console.print(f"[yellow]{message}")
        else:
            warnings.warn(message, stacklevel=2)

    def _compiled_forward(self, mode: str | None) -> Any:
        """The model's training forward: `torch.compile`d when `train.compile` asks and can."""
        if mode is None:
            return self.net
        missing = compiler_missing(self.device)
        if missing is not None:
            self.say(f"train.compile: {missing}; training runs uncompiled")
            return self.net
        return CompiledForward(self.net, mode, self.say)

    def _batches(self) -> Iterator[tuple[dict[str, torch.Tensor], float, int]]:
        """The epoch in progress, from where it stopped (same permutation as before).

        Yields (this process's batch, its share of the global batch, the global size).
        """
        self.generator.set_state(self.epoch_generator)
        it = iterate_batches(
            self.train_data,
            self.spec.train.batch_size,
            shuffle=True,
            generator=self.generator,
            drop_last=self.drop_last,
        )
        for batch in itertools.islice(it, self.batch, None):  # the batches done are skipped
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
