"""One training step: forward, per-task losses, the balancer's backward, the optimizer.

One forward of the *supervised* GraphModule gives every prediction the spec supervises:
the tasks (auxiliary ones included), intermediate predictions under ``task:tag`` keys
(PAD-Net's initial predictions, JTRL's steps) and ``@shared``, the shared representation
MGDA-UB differentiates against. Task t's loss for the balancer is its final loss plus
``decoder.supervision`` × each of its intermediate losses, so deep supervision is
balanced together with the task it belongs to.

The host reads the steps' losses back only once per ``train.log_every`` steps
(:meth:`Stepping.finish_steps`), together with the balancer's values of each step
(:meth:`~mtlc.balancers.base.Balancer.step_log`: copies of its tensors taken at the step,
or host numbers where the balancer has them there), so logging never makes a GPU wait
more often. A non-finite task loss or balancer weight stops the run with
:class:`~mtlc.train.errors.Diverged` naming the task and the step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlc.balancers.base import StepLog, StepView
from mtlc.compiler import SHARED_KEY
from mtlc.train.distributed import loss_counts
from mtlc.train.errors import Diverged
from mtlc.train.speed import autocast


@dataclass
class Launched:
    """A step taken whose losses (``values``: per task, intermediates, total) and balancer
    values (``logged``, turned into numbers by ``balancer.read``) are being read."""

    epoch: int
    step: int
    size: int
    tasks: list[str]
    intermediate: list[str]
    values: torch.Tensor
    logged: list[torch.Tensor]
    balancer: StepLog
    ready: Any  # a torch.cuda.Event on a GPU, None on the CPU
    lr: float


class Stepping:
    """The trainer's step half (mixed into :class:`~mtlc.train.trainer.Trainer`).

    It uses the trainer's model, losses, balancer, optimizer and scheduler; the
    balancer's part of a step is :meth:`balance` and nothing else.
    """

    def forward_losses(
        self,
        batch: dict[str, torch.Tensor],
        model: nn.Module | None = None,
        *,
        training: bool = False,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(outputs, per-task balancer losses, every supervised prediction's own loss).

        ``model`` defaults to the training network (the DDP wrapper on several processes);
        validation passes the plain model, whose forward runs no collective. A training
        forward runs the speed switches (:mod:`mtlc.train.speed`): the compiled network,
        autocast, fp16's gradient scaling at the outputs; validation runs in float32.
        """
        with autocast(self.device, self.amp if training else "off"):
            forward = model or (self.train_forward if training else self.net)
            out = forward(batch[self.spec.input_name])
            if training and self.scaler is not None:
                out = self.scaler.scale_outputs(out, keep=SHARED_KEY)
            parts = {
                k: self.losses[t](out[k], batch[self.targets[t]])
                for k in self.pred_keys
                for t in (k.split(":")[0],)
            }
        return out, self.task_losses(parts), parts

    def task_losses(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's loss: its final prediction's plus ``supervision`` × its intermediates'."""
        per_task: dict[str, torch.Tensor] = {}
        for key, loss in parts.items():
            task = key.split(":")[0]
            if task in per_task:
                per_task[task] = per_task[task] + self.supervision * loss
            else:
                per_task[task] = loss
        return per_task

    def balance(
        self, out: dict[str, torch.Tensor], per_task: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The balancer's backward of this step's task losses; returns the total loss.

        Gradients land in the parameters' ``.grad``; whatever the balancer needs besides
        the losses (the shared parameters, the shared representation) is handed over here.
        """
        return self.balancer.backward(
            per_task,
            shared_params=self.shared,
            shared_repr=out.get(SHARED_KEY) if self.use_shared_repr else None,
        )

    def launch_step(
        self, batch: dict[str, torch.Tensor], *, share: float = 1.0, size: int | None = None
    ) -> Launched:
        """One optimizer step, with its losses still on their way back from the device.

        The losses are read back later (:meth:`finish_step`), so on a GPU the host never
        waits for the device inside a step and can queue the next one meanwhile; the
        trainer finishes step s after launching step s + 1. A non-finite loss is thus
        seen one step late, after the optimizer has used it: the run stops there and
        never saves those weights, so the checkpoints on disk stay good. On several
        processes, ``batch`` is this rank's ``share`` of a global batch of ``size``.
        """
        if not self.model.training:
            self.model.train()
        out, per_task, parts = self.forward_losses(batch, training=True)
        if self.ranks is not None:
            per_task, parts = self._global_losses(parts, share)
        self.optimizer.zero_grad(set_to_none=True)
        total = self.balance(out, per_task)
        intermediate = [k for k in parts if ":" in k]
        logged = self.balancer.step_log()  # before the update, like the losses
        values, copies, ready = _read_later(
            [*per_task.values(), *(parts[k] for k in intermediate), total], logged.tensors
        )
        finite = self.scaler is None or self.scaler.unscale(list(self.model.parameters()))
        lr = self._optimizer_step(finite)
        self.balancer.after_step(self._step_view(out, batch, share))
        self.step += 1
        return Launched(
            epoch=self.epoch + 1,
            step=self.step,
            size=size if size is not None else batch[self.spec.input_name].shape[0],
            tasks=list(per_task),
            intermediate=intermediate,
            values=values,
            logged=copies,
            balancer=logged,
            ready=ready,
            lr=lr,
        )

    def _global_losses(
        self, parts: dict[str, torch.Tensor], share: float
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Several processes: the losses of the global batch, and the ranks' stop vote.

        Every supervised prediction's loss is made global on its own (with its own count
        of valid elements, :mod:`mtlc.train.distributed`), then summed into the tasks'.
        """
        both, stop = self.ranks.global_losses(parts, loss_counts(parts, share), self._stop_asked)
        self._stop = self._stop or stop
        return self.task_losses(both), both

    def _optimizer_step(self, finite: bool = True) -> float:
        """Clip, step the optimizer (not when fp16 overflowed) and the schedule; the lr used."""
        if self.spec.train.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            if finite:
                self.optimizer.step()
        except (RuntimeError, OverflowError) as exc:
            if "overflow" not in str(exc):
                raise
            # a learning rate so large that the update is beyond float32: a divergence
            raise Diverged(
                f"the optimizer's update overflowed at step {self.step + 1} (epoch "
                f"{self.epoch + 1}; train.optimizer.lr is {lr:g})",
                task="",
                step=self.step + 1,
                run_dir=Path("."),
            ) from None
        if self.scheduler is not None:
            self.scheduler.step()
        return lr

    def finish_steps(self, pending: list[Launched]) -> Iterator[dict[str, Any]]:
        """Read launched steps back with one wait for the device; their records, in order.

        A generator: the records of the steps before a non-finite one are yielded (and
        logged) before :class:`Diverged` is raised for it.

        The balancer's values were taken when each step was launched: host numbers, or
        copies of its tensors that are read here with the losses, in the same wait.
        """
        if not pending:
            return
        if pending[-1].ready is not None:
            pending[-1].ready.synchronize()  # stream order: every earlier copy is done too
        for launched in pending:
            yield self._record(launched)

    def finish_step(self, launched: Launched) -> dict[str, Any]:
        """Read one launched step back (see :meth:`finish_steps`)."""
        return next(self.finish_steps([launched]))

    def _record(self, launched: Launched) -> dict[str, Any]:
        """A step's record; a non-finite task loss stops the run (Diverged)."""
        values = launched.values.tolist()
        losses = dict(zip(launched.tasks, values))
        _check_finite(losses, "the loss", launched)
        weights, extra = launched.balancer.read([t.tolist() for t in launched.logged])
        _check_finite(weights, "the balancer's weight", launched)
        record: dict[str, Any] = {
            "type": "step",
            "epoch": launched.epoch,
            "step": launched.step,
            "loss": losses,
            "total": values[-1],
            "weights": weights,
            "lr": launched.lr,
        }
        if launched.intermediate:
            record["parts"] = dict(zip(launched.intermediate, values[len(losses) : -1]))
        if extra:
            record["balancer"] = extra
        return record

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One optimizer step, read back at once (what tests and benchmarks want)."""
        return self.finish_step(self.launch_step(batch))

    def _step_view(
        self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], share: float = 1.0
    ) -> Any:
        """What the balancer may look at after the step (:class:`~mtlc.balancers.base.StepView`).

        On several processes the view is of the global batch: metrics the balancer
        accumulates are merged over the ranks (a rank with no samples adds none), and
        ``recompute()`` gives the global losses.
        """
        ranks = self.ranks

        def recompute() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                _, losses, parts = self.forward_losses(batch, self.model)
            if ranks is None:
                return losses
            both = ranks.global_losses(parts, loss_counts(parts, share), False)[0]
            return {k: v.detach() for k, v in self.task_losses(both).items()}

        targets = {t: batch[key] for t, key in self.targets.items() if key in batch and share > 0}
        merge = ranks.merge_metrics if ranks is not None else None
        return StepView(out, targets, self.task_metrics, recompute, merge)


def _check_finite(values: dict[str, float], what: str, launched: Launched) -> None:
    """Diverged for the first task whose value (``what``: its loss, its weight) is not finite."""
    for task, value in values.items():
        if not math.isfinite(value):
            raise Diverged(
                f"{what} of task '{task}' is {value} at step {launched.step} "
                f"(epoch {launched.epoch})",
                task=task,
                step=launched.step,
                run_dir=Path("."),
            )


def _read_later(
    read: list[torch.Tensor], also: tuple[torch.Tensor, ...] = ()
) -> tuple[torch.Tensor, list[torch.Tensor], Any]:
    """The scalars stacked, and ``also`` as they are (the balancer's tensors, whatever their
    dtype); on a GPU copied to pinned memory without waiting, plus one event for all."""
    values = torch.stack([v.detach().float().reshape(()) for v in read])
    also = [t.detach() for t in also]
    ready = None
    if values.is_cuda or any(t.is_cuda for t in also):
        values, *also = [_to_pinned(t) for t in (values, *also)]
        ready = torch.cuda.Event()
        ready.record()  # stream order: every copy above is done when it is
    return values, also, ready


def _to_pinned(t: torch.Tensor) -> torch.Tensor:
    """A host copy of ``t`` in pinned memory, made without waiting (a CPU tensor: itself)."""
    if not t.is_cuda:
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)
