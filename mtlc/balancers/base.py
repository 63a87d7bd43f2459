"""The contract between a balancer and the trainer.

A balancer owns the whole backward pass of a step rather than just returning a
combined loss, because a gradient-level method (MGDA) needs per-task gradients
before it can decide what to back-propagate. Loss-level balancers only
implement :meth:`Balancer.combine`; the shared :meth:`Balancer.backward` does
the rest, so the trainer has one code path for both levels.

Learned quantities (uncertainty's ``s_t``) are ``nn.Parameter``s and
non-learned state that must survive a resume (DTP's moving averages, MGDA's
last α) are registered buffers: the trainer optimises ``balancer.parameters()``
and checkpoints ``balancer.state_dict()`` like any other module.

Logging never makes the host wait for the device per step. Each step the trainer takes
:meth:`Balancer.step_log`, the step's weights and extra values: host floats for a balancer
that has them on the host (fixed weights, a host draw, a host solver's result), else
copies of the tensors they are computed from (:meth:`Balancer.log_tensors`, still on the
device), which the trainer reads back together with the step's losses, once per
``train.log_every`` steps, and turns into numbers with :meth:`Balancer.log_values`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

KINDS = ("classification", "regression")


class LocalRanks:
    """The reductions a gradient-level balancer applies before solving, for one process.

    With several processes the trainer sets ``balancer.ranks`` to
    :class:`mtlc.train.distributed.Ranks`, which has the same two methods. The rule for a
    gradient-level balancer: reduce what it measured, then call its pure function, so
    every rank solves the same problem and gets the same weights. ``mean`` takes per-task
    gradients w.r.t. parameters (a ``[T, P]`` Jacobian: a mean over the batch on each
    rank); ``sample_gramian`` takes the Gram matrix of gradients w.r.t. a per-sample
    representation (rows stack samples, so the global one is a sum over ranks).
    """

    world = 1

    def mean(self, x: Tensor) -> Tensor:
        return x

    def sample_gramian(self, gram: Tensor) -> Tensor:
        return gram


class BalancerError(ValueError):
    """A balancer was configured or called in a way that cannot work.

    ``path`` locates a bad option inside the spec's ``balancer:`` block (``("weights",
    "seg")``), so the trainer can point at the very key, or the ``--set`` that wrote it.
    """

    def __init__(self, message: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """A ' (did you mean ...?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_number(value: Any) -> bool:
    """YAML gives ints where floats are meant; bools are ints in Python, but never numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def representation_targets(
    shared_repr: Tensor | Sequence[Tensor] | None,
    missing: str,
    detached: str,
    path: tuple[str, ...] = (),
) -> list[Tensor]:
    """The shared representation as a list of targets for a gradient-level backward; the
    caller's messages for a missing one (at spec ``path``) and one outside the graph."""
    if shared_repr is None:
        raise BalancerError(missing, path)
    found = [shared_repr] if isinstance(shared_repr, Tensor) else list(shared_repr)
    if not found or not all(z.requires_grad for z in found):
        raise BalancerError(detached)
    return found


@dataclass(frozen=True)
class StepLog:
    """One step's balancer values for the log, possibly still on their way from the device.

    ``tensors`` are detached copies taken at the step (later steps cannot change them);
    ``read`` turns their host values (``tensor.tolist()`` each, in order) into
    ``(weights, extra)``: the step record's ``weights`` and ``balancer`` entries.
    """

    tensors: tuple[Tensor, ...]
    read: Callable[[list[Any]], tuple[dict[str, float], dict[str, float]]]

    def now(self) -> tuple[dict[str, float], dict[str, float]]:
        """Read the values at once (one host wait when the tensors are on a device)."""
        return self.read([t.tolist() for t in self.tensors])


@dataclass
class StepView:
    """What a balancer may look at after an optimizer step (:meth:`Balancer.after_step`).

    ``outputs``: the step's model outputs (before the update); ``targets``: task → its
    target tensor; ``metrics``: task → the spec's metric names; ``recompute()``: the step's
    task losses again with the updated weights, without gradients (one extra forward, so
    only a balancer that calls it pays for it). ``merge(metrics)``, where given (several
    processes), adds the other ranks' totals to ``{task: {name: Metric}}``: a balancer
    that measures metrics on the batch calls it once, on every rank, before computing
    them, so they are the global batch's (a rank without samples has no ``targets``).
    """

    outputs: Mapping[str, Tensor]
    targets: Mapping[str, Tensor]
    metrics: Mapping[str, Sequence[str]]
    recompute: Callable[[], Mapping[str, Tensor]]
    merge: Callable[[dict[str, dict[str, Any]]], None] | None = None


class Balancer(torch.nn.Module):
    """Base of every balancer: validated task list and kinds, and a loss-level backward.

    ``kinds[task]`` is ``"classification"`` or ``"regression"``; the trainer derives
    it from the task's loss (``registry.CLASSIFICATION_LOSSES``).
    """

    level: ClassVar[str] = "loss"
    ranks: Any = LocalRanks()  # the trainer's Ranks when it runs on several processes

    def __init__(self, tasks: Sequence[str], kinds: Mapping[str, str], **options: Any) -> None:
        super().__init__()
        if options:
            raise BalancerError(
                f"{type(self).__name__} got unknown option(s): {', '.join(sorted(options))}"
            )
        tasks = tuple(tasks)
        if not tasks:
            raise BalancerError("a balancer needs at least one task")
        for task in tasks:
            if not isinstance(task, str):
                raise BalancerError(f"task names must be strings, got {task!r}")
        if len(set(tasks)) != len(tasks):
            raise BalancerError(f"duplicate task names: {list(tasks)}")
        self.tasks: tuple[str, ...] = tasks
        self.kinds: dict[str, str] = {}
        for task in tasks:
            kind = kinds.get(task)
            if kind not in KINDS:
                raise BalancerError(
                    f"task {task!r} has kind {kind!r}; expected one of {', '.join(KINDS)}"
                )
            self.kinds[task] = kind

    # ----- helpers for subclasses -------------------------------------------------

    def index(self, task: str) -> int:
        return self.tasks.index(task)

    def check_task(self, task: Any, where: str, path: tuple[str, ...] = ()) -> str:
        if task not in self.tasks:
            raise BalancerError(
                f"{where} names {task!r}, which is not a task{did_you_mean(str(task), self.tasks)};"
                f" tasks: {', '.join(self.tasks)}",
                path,
            )
        return task

    def per_task(
        self,
        option: str,
        value: Any,
        default: float,
        check: Callable[[float], bool],
        requirement: str,
    ) -> dict[str, float]:
        """A number for every task from a scalar or a ``{task: number}`` dict (missing → default)."""
        if is_number(value):
            value = dict.fromkeys(self.tasks, value)
        elif not isinstance(value, Mapping):
            raise BalancerError(
                f"balancer option {option!r} must be a number or a mapping task → number,"
                f" got {value!r}",
                (option,),
            )
        out = dict.fromkeys(self.tasks, float(default))
        for task, v in value.items():
            self.check_task(task, f"balancer option {option!r}", (option, str(task)))
            if not is_number(v) or not math.isfinite(v) or not check(float(v)):
                raise BalancerError(
                    f"balancer option {option!r} for task {task!r} must be {requirement}, got {v!r}",
                    (option, task),
                )
            out[task] = float(v)
        return out

    def store_per_task(
        self, buffer: Tensor, values: Tensor, names: Sequence[str], absent: float = 0.0
    ) -> None:
        """Write the present tasks' ``values`` (in the order of ``names``) into the ``[T]``
        ``buffer``, ``absent`` for a task absent from the step; device to device: nothing
        waits."""
        with torch.no_grad():
            values = values.detach().to(buffer.device, buffer.dtype)
            if list(names) == list(self.tasks):
                buffer.copy_(values)
            else:
                buffer.fill_(absent)
                for j, t in enumerate(names):
                    buffer[self.index(t)] = values[j]

    def present(self, losses: Mapping[str, Tensor]) -> list[str]:
        """The tasks with a loss this step, in declaration order.

        A task may be missing from ``losses`` (e.g. a batch without its labels);
        it then takes no part in the step.
        """
        for task in losses:
            self.check_task(task, "the losses")
        names = [t for t in self.tasks if t in losses]
        if not names:
            raise BalancerError("backward() got no task losses")
        for t in names:
            if not isinstance(losses[t], Tensor) or losses[t].numel() != 1:
                raise BalancerError(f"the loss of task {t!r} must be a scalar tensor")
        return names

    # ----- the interface the trainer uses ------------------------------------------

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The differentiable combined loss (loss-level balancers)."""
        raise NotImplementedError

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[Tensor],
        shared_repr: Tensor | None = None,
    ) -> Tensor:
        """Back-propagate one step's losses; returns the combined loss, detached, for logging."""
        total = self.combine(losses)
        total.backward()
        return total.detach()

    def weights(self) -> dict[str, float]:
        """The current weight of each task (what the log shows)."""
        if self.log_tensors() is None:
            raise NotImplementedError
        return self.step_log().now()[0]

    # A balancer whose logged values are computed from tensors (parameters, buffers on the
    # device) implements log_tensors() (and log_values(), unless it logs one [T] tensor of
    # weights) instead of weights() and extra_state_for_log(): then logging them costs the
    # host no wait per step.

    def log_tensors(self) -> tuple[Tensor, ...] | None:
        """The tensors this step's logged values are computed from, or ``None`` (the
        default) when :meth:`weights` and :meth:`extra_state_for_log` are host values."""
        return None

    def log_values(self, values: list[Any]) -> tuple[dict[str, float], dict[str, float]]:
        """``(weights, extra)`` from the host values of :meth:`log_tensors` (``tolist()``
        each). It runs later, so it may read only what never changes (tasks, options).

        The default is the usual case: :meth:`log_tensors` is one ``[T]`` tensor, the
        task weights, and there is no extra value."""
        (w,) = values
        return dict(zip(self.tasks, w, strict=True)), {}

    def step_log(self) -> StepLog:
        """This step's values for the log, taken after the backward, before the update."""
        tensors = self.log_tensors()
        if tensors is None:
            weights, extra = self.weights(), self.extra_state_for_log()
            return StepLog((), lambda _: (weights, extra))
        return StepLog(tuple(t.detach().clone() for t in tensors), self.log_values)

    def observe(self, kpis: Mapping[str, float]) -> None:
        """New per-task KPIs in [0, 1] after a step; only DTP uses them."""

    # Hooks the trainer calls for every balancer; the defaults do nothing, so the trainer
    # never asks which balancer it has.

    @property
    def needs_shared_repr(self) -> bool:
        """Whether :meth:`backward` needs the shared representation (MGDA-UB, ``wrt: representation``)."""
        return False

    def after_step(self, view: StepView) -> None:
        """Called after each optimizer step (DTP's KPIs, FAMO's weight update)."""

    def end_epoch(self) -> None:
        """Called at the end of each training epoch (DWA's loss ratios are per epoch)."""

    def extra_state_for_log(self) -> dict[str, float]:
        """Extra per-step values for the log (uncertainty's ``s_t`` and ``σ_t``...)."""
        if self.log_tensors() is None:
            return {}
        return self.step_log().now()[1]
