"""The training loop: a compiled spec, its data, its losses and its balancer.

One forward of the *supervised* GraphModule gives every prediction the spec supervises:
the tasks (auxiliary ones included), intermediate predictions under ``task:tag`` keys
(PAD-Net's initial predictions, JTRL's steps) and ``@shared``, the shared representation
MGDA-UB differentiates against. Task t's loss for the balancer is its final loss plus
``decoder.supervision`` × each of its intermediate losses, so deep supervision is
balanced together with the task it belongs to.

Choices worth knowing:

* **Reproducible, resumable.** ``train.seed`` seeds torch before the model is built and
  seeds the generator that shuffles the training split; the data sets themselves are fixed
  by their own ``train.data.seed`` (0 by default), so runs with different training seeds
  see the same scenes. A checkpoint holds the torch RNG state, the shuffling generator's
  state at the start of the epoch and the number of batches done, so ``--resume`` replays
  the same permutation, skips the batches already seen and continues bit for bit: on the
  CPU, stopping and resuming gives the same weights as an uninterrupted run.
* **Stopping.** Ctrl-C is turned into a request that the loop honours between steps (an
  optimizer step is never cut in half): it saves ``last.pt`` and raises
  :class:`Interrupted` (the CLI exits 130). A second Ctrl-C aborts at once without saving.
  A non-finite task loss stops the run with :class:`Diverged` naming the task and the
  step (the CLI exits 1: the command was right, the training failed); nothing is saved
  after it, so ``last.pt``/``best.pt`` keep the last good epoch.
* **Speed.** Batches are slices of pre-built tensors; the host reads a step's losses back
  only after launching the next step (:meth:`Trainer.launch_step`), so logging never
  makes a GPU wait.
* **best.pt** is the epoch with the highest Δm against single-task baselines when the
  run has them (``--baselines``, or a ``baselines/`` folder from an earlier run).
  Without baselines, a new epoch replaces the best one when it wins the mean-rank
  comparison with it: per task, the share of its metrics that improved minus the share
  that got worse, averaged over the tasks, is positive (a task without metrics votes
  with its validation loss; :func:`pairwise_score`). The first epoch is the first best.
* **Shared parameters** (what MGDA ``mode: exact`` differentiates) are the parameters of
  modules whose graph nodes serve two or more tasks (:func:`shared_parameters`).
* **Learning rates.** Modules with an ``lr_mult`` attribute (cross-stitch and NDDR units)
  get their own parameter group at ``lr × lr_mult``; the cosine schedule multiplies every
  group's own base rate, so it keeps the multiplier (the survey's code lost it to its
  schedule). The balancer's learned parameters (uncertainty's s_t) train at the base rate
  without weight decay.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlc import registry
from mtlc.compiler import SHARED_KEY
from mtlc.compiler.labels import shared_parameters
from mtlc.devices import resolve_device
from mtlc.errors import MtlcError
from mtlc.spec import Spec, load_spec, spec_error
from mtlc.train import runfolder
from mtlc.train.checkpoint import RUN_KEYS, copy_checkpoint, load_checkpoint, save_checkpoint


class TrainError(MtlcError):
    """The run cannot start or go on as asked (reported as one line, exit 2)."""


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
    run_dir: Path
    summary: dict[str, Any]


@dataclass
class Launched:
    """A step taken whose losses (``values``: per task, intermediates, total) are being read."""

    epoch: int
    step: int
    size: int
    tasks: list[str]
    intermediate: list[str]
    values: torch.Tensor
    ready: Any  # a torch.cuda.Event on a GPU, None on the CPU
    weights: dict[str, float]
    lr: float
    extra: dict[str, float]


# -- helpers the trainer, eval and the benchmarks share ----------------------------------


def load_model_state(model: nn.Module, state: dict[str, Any], where: str) -> None:
    """Load a state dict, or say in one line how it differs from the model."""
    own = model.state_dict()
    problems = []
    for what, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        ("of another shape", [k for k in own if k in state and own[k].shape != state[k].shape]),
    ):
        if keys:
            problems.append(f"{len(keys)} {what} (e.g. {keys[0]})")
    if problems:
        raise TrainError(f"{where} does not fit this spec's model: {'; '.join(problems)} entries")
    model.load_state_dict(state)


def task_kinds(spec: Spec) -> dict[str, str]:
    """classification | regression per task, from its loss (Kendall's c_t, DTP)."""
    return {
        t: "classification" if task.loss_name in registry.CLASSIFICATION_LOSSES else "regression"
        for t, task in spec.tasks.items()
    }


def loss_functions(spec: Spec) -> dict[str, Any]:
    """task -> ``f(pred, target)`` with the spec's loss options bound."""
    return {
        t: functools.partial(registry.resolve(registry.LOSSES, task.loss_name), **task.loss_options)
        for t, task in spec.tasks.items()
    }


def build_optimizer(
    spec: Spec, model: nn.Module, extra: list[nn.Parameter]
) -> torch.optim.Optimizer:
    """The spec's optimizer over the model (lr_mult groups) and the balancer's parameters."""
    opt = spec.train.optimizer
    by_mult: dict[float, list[nn.Parameter]] = {}
    grouped: set[int] = set()
    for module in model.modules():
        mult = getattr(module, "lr_mult", None)
        if mult is None or mult == 1.0:
            continue
        for p in module.parameters():
            if id(p) not in grouped and p.requires_grad:
                grouped.add(id(p))
                by_mult.setdefault(float(mult), []).append(p)
    # frozen stages (`encoder.freeze`) have requires_grad False: not optimised at all
    base = [p for p in model.parameters() if id(p) not in grouped and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": base}]
    groups += [{"params": ps, "lr": opt.lr * m} for m, ps in by_mult.items()]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if opt.type == "sgd":
        return torch.optim.SGD(
            groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    cls = torch.optim.AdamW if opt.type == "adamw" else torch.optim.Adam
    return cls(groups, lr=opt.lr, weight_decay=opt.weight_decay)


def _cosine(total: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def load_split(spec: Spec, split: str, allow_import: frozenset[str]):
    """One split of the spec's data, checked against the spec's input and task targets."""
    from mtlc.data import DataError, load_dataset

    data_spec = spec.train.data
    options = {"name": data_spec.name, **data_spec.options}
    try:
        data = load_dataset(options, split, allow_import=allow_import)
    except DataError as exc:
        raise TrainError(str(exc)) from None
    keys = data.keys()
    if spec.input_name not in keys:
        raise spec_error(
            spec,
            ("input", spec.input_name),
            f"data set '{data_spec.name}' has no entry '{spec.input_name}' (it has: {', '.join(keys)})",
            key=True,
        )
    if len(data) == 0:
        raise TrainError(f"data set '{data_spec.name}' has no samples in its {split} split")
    x = data[spec.input_name]
    if x.dtype != torch.float32:
        raise spec_error(
            spec,
            ("input", spec.input_name),
            f"data set '{data_spec.name}' gives '{spec.input_name}' as {x.dtype}, but the "
            "model computes in float32: convert it (e.g. tensor.float())",
        )
    got = tuple(x.shape[1:])
    if got != spec.input_shape:
        raise spec_error(
            spec,
            ("input", spec.input_name),
            f"the spec says {list(spec.input_shape)} but data set '{data_spec.name}' gives "
            f"{list(got)} (set both, e.g. --set input.{spec.input_name}={list(got)})",
        )
    for t, task in spec.tasks.items():
        target = task.target or t
        if target not in keys:
            raise spec_error(
                spec,
                ("tasks", t, "target") if task.target else ("tasks", t),
                f"task '{t}' reads batch entry '{target}', which data set '{data_spec.name}' "
                f"does not have (it has: {', '.join(keys)}); set tasks.{t}.target",
                key=task.target is None,
            )
    return data


def run_balancer(spec: Spec, topology: Any) -> Any:
    """The spec's balancer for these tasks; a bad option is a SpecError at its key.

    Used by the trainer and by ``mtlc sweep`` to check every grid point before the
    first one trains (the schema cannot know, e.g., that weights must be ≥ 0).
    """
    from mtlc.balancers import BalancerError, build_balancer

    options = spec.balancer.model_dump()
    try:
        balancer = build_balancer(options, topology.tasks, task_kinds(spec))
    except BalancerError as exc:
        raise spec_error(spec, ("balancer", *exc.path), str(exc)) from None
    if options.get("mode") == "ub" and topology.shared_repr is None:
        raise spec_error(
            spec,
            ("balancer", "mode"),
            "mgda mode 'ub' needs one shared representation that every task reads, "
            "but this spec's tasks leave the encoder with separate features; "
            "use mode: exact",
        )
    return balancer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def best_reference(
    spec: Spec, metrics: dict[str, dict[str, float]], val_loss: dict[str, float]
) -> dict[str, dict[str, float]]:
    """What best.pt compares between epochs: each output task's metrics, else its val loss."""
    out = {}
    for t in spec.outputs:
        values = {k: v for k, v in metrics.get(t, {}).items() if math.isfinite(v)}
        out[t] = values or {"loss": val_loss[t]}
    return out


def safe_delta_m(
    results: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]]
) -> float | None:
    """Δm (the survey's sign), or None when a value it needs is missing or not finite."""
    from mtlc.delta import delta_m

    try:
        shared = {t: {k: results[t][k] for k in b} for t, b in baselines.items()}
        return delta_m(shared, baselines)
    except (KeyError, ValueError, ZeroDivisionError):
        return None


def pairwise_score(new: dict[str, dict[str, float]], old: dict[str, dict[str, float]]) -> float:
    """Mean over tasks of (share of metrics that improved − share that got worse), in [−1, 1].

    It is the mean-rank comparison of two epochs: unlike a relative change it needs no
    non-zero reference and no common scale, so a metric at 0 (no pixel within 11.25°
    yet) or a tiny error cannot dominate the decision.
    """
    from mtlc.metrics import metric_class

    scores = []
    for t, metrics in old.items():
        votes = []
        for k, before in metrics.items():
            after = new.get(t, {}).get(k)
            if after is None or not (math.isfinite(after) and math.isfinite(before)):
                continue
            higher = k != "loss" and metric_class(k).higher_is_better
            votes.append(
                (after > before) - (after < before)
                if higher
                else (after < before) - (after > before)
            )
        if votes:
            scores.append(sum(votes) / len(votes))
    return sum(scores) / len(scores) if scores else 0.0


def is_better(new: dict[str, Any], best: dict[str, Any] | None, baselines: dict | None) -> bool:
    """The rule for best.pt (module docstring): Δm against baselines, else the mean rank."""
    if best is None:
        return True
    if baselines:
        a, b = new.get("delta_m"), best.get("delta_m")
        return a is not None and (b is None or a > b)
    return pairwise_score(new["reference"], best["reference"]) > 0


# -- the trainer ---------------------------------------------------------------------------


class Trainer:
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
    ):
        from mtlc.compiler import compile_spec

        self.spec = spec
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.console = console
        self.show_progress = progress and console is not None
        allow = frozenset(allow_import)
        self.train_data = load_split(spec, "train", allow) if "train" in splits else None
        self.val_data = load_split(spec, "val", allow)

        torch.manual_seed(spec.train.seed)
        self.compiled = compile_spec(spec)
        self.model = self.compiled.supervised.to(self.device)
        self.tasks = list(self.compiled.topology.tasks)
        self.pred_keys = [k for k in self.compiled.topology.predictions]
        self.pred_keys.sort(key=lambda k: (":" in k, self.tasks.index(k.split(":")[0])))
        self.targets = {t: task.target or t for t, task in spec.tasks.items()}
        self.losses = loss_functions(spec)
        self.supervision = spec.decoder.supervision if spec.decoder is not None else 1.0
        for data in (self.train_data, self.val_data):
            if data is not None:
                self._check_targets(data)

        options = spec.balancer.model_dump()
        self.balancer = run_balancer(spec, self.compiled.topology).to(self.device)
        self.use_shared_repr = options.get("mode") == "ub"
        self.shared = shared_parameters(self.model)
        self.kpi_metric: dict[str, str] = {}
        if options.get("type") == "dtp":
            for t, task in spec.tasks.items():
                name = options.get("kpi", {}).get(t) or (task.metrics[0] if task.metrics else None)
                if name is not None:
                    self.kpi_metric[t] = name
        self.optimizer = build_optimizer(spec, self.model, list(self.balancer.parameters()))
        samples = len(self.train_data) if self.train_data is not None else 0
        self.batches_per_epoch = -(-samples // spec.train.batch_size)
        self.scheduler = None
        if spec.train.scheduler == "cosine":
            total = spec.train.epochs * self.batches_per_epoch
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _cosine(total))
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
        self._stop = False
        # where a fresh run's random stream starts (dropout...): fit() rewinds to it, so
        # whatever runs between construction and fit (baselines) cannot change the run
        self._start_rng = self._rng_state()

    @torch.no_grad()
    def _check_targets(self, data: Any) -> None:
        """Every supervised prediction against its batch entry, before anything is written.

        One forward of two samples (eval mode: no statistics or random numbers used) goes
        through each task's own loss and metrics, so a head with the wrong number of
        channels or resolution is a located error instead of a traceback at step 1; the
        class ids of a cross-entropy task are checked over the whole split (an id beyond
        the logits would otherwise stop the run mid-epoch, or crash a CUDA kernel).
        """
        from mtlc.metrics import build_metric

        name = self.spec.train.data.name
        sample = self._to_device({k: v[:2] for k, v in data.tensors.items()})
        self.model.eval()
        out = self.model(sample[self.spec.input_name])
        for key in self.pred_keys:
            t = key.split(":")[0]
            task, pred, entry = self.spec.tasks[t], out[key], self.targets[t]
            target = sample[entry]
            try:
                self.losses[t](pred, target)
                for m in task.metrics if key == t else ():
                    build_metric(m).update(pred, target)
            except (ValueError, IndexError, RuntimeError) as exc:
                raise spec_error(
                    self.spec,
                    ("tasks", t, "head"),
                    f"'{key}' predicts {list(pred.shape[1:])} per sample, which does not fit "
                    f"batch entry '{entry}' of data set '{name}' ({list(target.shape[1:])}, "
                    f"{target.dtype}): {_first_line(exc)}",
                ) from None
            if task.loss_name == "cross_entropy":
                ids = data[entry]
                ignore = task.loss_options.get("ignore_index", -1)
                bad = ids[(ids != ignore) & ((ids < 0) | (ids >= pred.shape[1]))]
                if bad.numel():
                    raise spec_error(
                        self.spec,
                        ("tasks", t, "head"),
                        f"'{key}' predicts {pred.shape[1]} classes, but batch entry '{entry}' "
                        f"of data set '{name}' holds class id {int(bad[0])} (ids must lie in "
                        f"[0, {pred.shape[1] - 1}], or be the ignore index {ignore})",
                    )

    def _rng_state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def _set_rng_state(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])

    # -- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        rng = {
            **self._rng_state(),
            "generator": self.generator.get_state(),
            "epoch_generator": self.epoch_generator,
        }
        return {
            "spec": self.spec.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "balancer": self.balancer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch,
            "step": self.step,
            "batch": self.batch,
            "rng": rng,
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
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise TrainError(f"the checkpoint does not fit this spec's balancer: {first}") from None
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.batch = state["epoch"], state["step"], state["batch"]
        rng = state["rng"]
        self._set_rng_state(rng)
        self.generator.set_state(rng["generator"])
        self.epoch_generator = rng["epoch_generator"]
        p = state["progress"]
        self.epoch_sums, self.epoch_count = dict(p["epoch_sums"]), p["epoch_count"]
        self.best, self.last = p["best"], p["last"]
        self.train_time, self.samples = p["train_time"], p["samples"]

    # -- one step ---------------------------------------------------------------------------
    def forward_losses(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(outputs, per-task balancer losses, every supervised prediction's own loss)."""
        out = self.model(batch[self.spec.input_name])
        parts = {
            k: self.losses[k.split(":")[0]](out[k], batch[self.targets[k.split(":")[0]]])
            for k in self.pred_keys
        }
        per_task: dict[str, torch.Tensor] = {}
        for key, loss in parts.items():
            task = key.split(":")[0]
            if task in per_task:
                per_task[task] = per_task[task] + self.supervision * loss
            else:
                per_task[task] = loss
        return out, per_task, parts

    def launch_step(self, batch: dict[str, torch.Tensor]) -> Launched:
        """One optimizer step, with its losses still on their way back from the device.

        The losses are read back later (:meth:`finish_step`), so on a GPU the host never
        waits for the device inside a step and can queue the next one meanwhile; the
        trainer finishes step s after launching step s + 1. A non-finite loss is thus
        seen one step late, after the optimizer has used it: the run stops there and
        never saves those weights, so the checkpoints on disk stay good.
        """
        if not self.model.training:
            self.model.train()
        out, per_task, parts = self.forward_losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        total = self.balancer.backward(
            per_task,
            shared_params=self.shared,
            shared_repr=out.get(SHARED_KEY) if self.use_shared_repr else None,
        )
        intermediate = [k for k in parts if ":" in k]
        read = [*per_task.values(), *(parts[k] for k in intermediate), total]
        values = torch.stack([v.detach().float().reshape(()) for v in read])
        ready = None
        if values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            values = host.copy_(values, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        weights = self.balancer.weights()
        if self.spec.train.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.kpi_metric:
            self.balancer.observe(self._batch_kpis(out, batch))
        self.step += 1
        return Launched(
            epoch=self.epoch + 1,
            step=self.step,
            size=batch[self.spec.input_name].shape[0],
            tasks=list(per_task),
            intermediate=intermediate,
            values=values,
            ready=ready,
            weights=weights,
            lr=lr,
            extra=self.balancer.extra_state_for_log(),
        )

    def finish_step(self, launched: Launched) -> dict[str, Any]:
        """Read a launched step's losses, stop on a non-finite one, return its record."""
        if launched.ready is not None:
            launched.ready.synchronize()
        values = launched.values.tolist()
        losses = dict(zip(launched.tasks, values))
        for task, value in losses.items():
            if not math.isfinite(value):
                raise Diverged(
                    f"the loss of task '{task}' is {value} at step {launched.step} "
                    f"(epoch {launched.epoch})",
                    task=task,
                    step=launched.step,
                    run_dir=Path("."),
                )
        record: dict[str, Any] = {
            "type": "step",
            "epoch": launched.epoch,
            "step": launched.step,
            "loss": losses,
            "total": values[-1],
            "weights": launched.weights,
            "lr": launched.lr,
        }
        if launched.intermediate:
            record["parts"] = dict(zip(launched.intermediate, values[len(losses) : -1]))
        if launched.extra:
            record["balancer"] = launched.extra
        return record

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One optimizer step, read back at once (what tests and benchmarks want)."""
        return self.finish_step(self.launch_step(batch))

    @torch.no_grad()
    def _batch_kpis(
        self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """DTP's per-step KPIs: the task's KPI metric on this batch, mapped into [0, 1]."""
        from mtlc.metrics import build_metric, kpi

        kpis = {}
        for t, name in self.kpi_metric.items():
            metric = build_metric(name)
            metric.update(out[t], batch[self.targets[t]])
            value = metric.compute()
            if math.isfinite(value):
                kpis[t] = kpi(name, value)
        return kpis

    # -- validation -------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Validation loss per task and every task's metrics over the whole split."""
        from mtlc.data.batches import iterate_batches
        from mtlc.metrics import build_metric

        self.model.eval()
        metrics = {t: {m: build_metric(m) for m in self.spec.tasks[t].metrics} for t in self.tasks}
        sums = dict.fromkeys(self.tasks, 0.0)
        n = 0
        for batch in iterate_batches(self.val_data, self.spec.train.batch_size, shuffle=False):
            batch = self._to_device(batch)
            out, per_task, _ = self.forward_losses(batch)
            size = batch[self.spec.input_name].shape[0]
            values = torch.stack([v.float() for v in per_task.values()]).tolist()
            for t, v in zip(per_task, values):
                sums[t] += v * size
            n += size
            for t, ms in metrics.items():
                for m in ms.values():
                    m.update(out[t], batch[self.targets[t]])
        val_loss = {t: s / max(n, 1) for t, s in sums.items()}
        results = {t: {k: m.compute() for k, m in ms.items()} for t, ms in metrics.items() if ms}
        return val_loss, results

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The epoch in progress, from where it stopped (same permutation as before)."""
        from mtlc.data.batches import iterate_batches

        self.generator.set_state(self.epoch_generator)
        it = iterate_batches(
            self.train_data, self.spec.train.batch_size, shuffle=True, generator=self.generator
        )
        for i, batch in enumerate(it):
            if i >= self.batch:
                yield batch

    def request_stop(self) -> None:
        """Ask the loop to save and stop after the current step (what Ctrl-C does)."""
        self._stop = True

    # -- the run ----------------------------------------------------------------------------
    def fit(
        self,
        run_dir: Path,
        *,
        resume: bool = False,
        baselines: dict[str, dict[str, float]] | None = None,
        tensorboard: bool = False,
    ) -> RunResult:
        """Train to ``spec.train.epochs`` in ``run_dir`` (prepared by the caller)."""
        from mtlc.train.plots import write_plots

        if resume:
            self.load_state(load_checkpoint(run_dir / runfolder.LAST, RUN_KEYS))
        else:
            self._set_rng_state(self._start_rng)
        runfolder.write_spec(run_dir, self.spec.model_dump(mode="json"))
        log = runfolder.MetricsLog(run_dir, keep=(self.epoch, self.step) if resume else None)
        writer = _tensorboard(run_dir) if tensorboard else None
        self.baselines = baselines
        previous = _install_sigint(self)
        status = "completed"
        try:
            self._loop(run_dir, log, writer)
        except Diverged as exc:
            status = "diverged"
            exc.run_dir = run_dir
            where = (
                f"{run_dir / runfolder.LAST} (epoch {self.epoch}) is the last good checkpoint"
                if (run_dir / runfolder.LAST).exists()
                else "no checkpoint was written before it"
            )
            exc.args = (f"{exc.args[0]}; training stopped. {where}",)
            raise
        except Interrupted:
            status = "interrupted"
            raise
        finally:
            _restore_sigint(previous)
            log.close()
            if writer is not None:
                writer.close()
            summary = self.summary(status)
            summary["plots"] = write_plots(run_dir)
            runfolder.write_summary(run_dir, summary)
        return RunResult(run_dir, summary)

    def _loop(self, run_dir: Path, log: runfolder.MetricsLog, writer: Any) -> None:
        epochs = self.spec.train.epochs
        while self.epoch < epochs:
            with self._progress() as bar:
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
                    for batch in self._batches():
                        launched = self.launch_step(self._to_device(batch))
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
            _tb_step(writer, record)
        bar.update(task_id, advance=1, losses=_short(record["loss"]))

    def _save_interrupted(self, run_dir: Path) -> None:
        save_checkpoint(self.state(), run_dir / runfolder.LAST)
        raise Interrupted(
            f"interrupted at step {self.step} (epoch {self.epoch + 1}); saved "
            f"{run_dir / runfolder.LAST}; continue with --resume",
            run_dir=run_dir,
            step=self.step,
        )

    def _end_epoch(self, run_dir: Path, log: runfolder.MetricsLog, writer: Any) -> None:
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
            _tb_epoch(writer, record)
        save_checkpoint(self.state(), run_dir / runfolder.LAST)
        if better:
            copy_checkpoint(run_dir / runfolder.LAST, run_dir / runfolder.BEST)
        if self.console is not None:
            self.console.print(epoch_table(self.spec, record))

    def _progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"),
            console=self.console,
            disable=not self.show_progress,
            transient=True,
        )

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


# -- small pieces -----------------------------------------------------------------------------


def _short(losses: dict[str, float]) -> str:
    return "  ".join(f"{t} {v:.3f}" for t, v in losses.items())


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


def _tensorboard(run_dir: Path) -> Any:
    _tensorboard_available()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / runfolder.TENSORBOARD))


def _tb_step(writer: Any, record: dict[str, Any]) -> None:
    step = record["step"]
    for t, v in record["loss"].items():
        writer.add_scalar(f"loss/{t}", v, step)
    for t, v in record["weights"].items():
        writer.add_scalar(f"weight/{t}", v, step)
    writer.add_scalar("lr", record["lr"], step)


def _tb_epoch(writer: Any, record: dict[str, Any]) -> None:
    step = record["step"]
    for t, ms in record["metrics"].items():
        for k, v in ms.items():
            writer.add_scalar(f"val/{t}/{k}", v, step)
    for t, v in record["val_loss"].items():
        writer.add_scalar(f"val_loss/{t}", v, step)
    if record["delta_m"] is not None:
        writer.add_scalar("val/delta_m", record["delta_m"], step)


def epoch_table(spec: Spec, record: dict[str, Any]) -> Any:
    """The end-of-epoch table: per task train/val loss, balancer weight and val metrics."""
    from rich.table import Table

    title = f"epoch {record['epoch']}/{spec.train.epochs}  step {record['step']}"
    if record.get("delta_m") is not None:
        title += f"  Δm {record['delta_m']:+.2f}%"
    if record.get("best"):
        title += "  (best so far)"
    table = Table(title=title, title_justify="left")
    for name in ("task", "train loss", "val loss", "weight", "metric", "value"):
        table.add_column(name, justify="left" if name in ("task", "metric") else "right")
    for t in record["val_loss"]:
        metrics = list(record["metrics"].get(t, {}).items()) or [("", None)]
        for i, (name, value) in enumerate(metrics):
            first = i == 0
            table.add_row(
                (t + (" (aux)" if spec.tasks[t].auxiliary else "")) if first else "",
                _fmt(record["train_loss"].get(t)) if first else "",
                _fmt(record["val_loss"][t]) if first else "",
                _fmt(record["weights"].get(t)) if first else "",
                name,
                _fmt(value) if name else "",
                end_section=i == len(metrics) - 1,
            )
    return table


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


# -- entry points -------------------------------------------------------------------------------


def check_resumable(spec: Spec, run_dir: Path) -> None:
    """Resuming needs the same spec as the stopped run, except for the number of epochs."""
    saved = load_checkpoint(run_dir / runfolder.LAST, RUN_KEYS)["spec"]
    now = spec.model_dump(mode="json")
    diffs = [p for p in _diff(saved, now) if p != "train.epochs"]
    if diffs:
        shown = ", ".join(diffs[:5]) + (" …" if len(diffs) > 5 else "")
        raise TrainError(
            f"{run_dir}: the spec differs from the run being resumed ({shown}); "
            "use --force to start over, or --out for a new run folder"
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


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
    """
    from mtlc.train.baselines import baseline_metrics, find_baselines

    spec = load_spec(spec, overrides)
    run_dir = Path(out) if out is not None else runfolder.default_run_dir(spec.name)
    torch_device = resolve_device(device)
    if tensorboard:
        _tensorboard_available()
    runfolder.check(run_dir, resume=resume, force=force)
    if resume:
        check_resumable(spec, run_dir)
    trainer = Trainer(
        spec, device=torch_device, allow_import=allow_import, console=console, progress=progress
    )
    runfolder.prepare(run_dir, resume=resume, force=force)
    if baselines is True:
        found = baseline_metrics(
            spec, run_dir, device=torch_device, allow_import=allow_import, console=console
        )
    elif isinstance(baselines, dict):
        found = baselines
    else:
        found = find_baselines(spec, run_dir)
    return trainer.fit(run_dir, resume=resume, baselines=found, tensorboard=tensorboard)


def _tensorboard_available() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise TrainError(
            "--tensorboard needs the tensorboard package: pip install 'mtlc[tensorboard]'"
        ) from None


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
