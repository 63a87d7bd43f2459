"""The gradient-level contract: a pure function of the task Jacobian, and its one backward.

Every gradient-level balancer (PCGrad, CAGrad, UPGrad, …) is a :class:`GradientBalancer`
whose only method-specific code is :meth:`GradientBalancer.aggregate`, a function of the
``[T, P]`` task Jacobian ``J`` (row t = ``∂L_t/∂θ_shared`` flattened) and the ``[T]`` task
losses that returns the ``[P]`` update direction. Public as
``mtlc.balancers.combine_gradients(name, J, **options)``, so a method can be tested and
reused without a model.

One backward pass, the same for every method:

1. ``J`` is collected with ``autograd.grad`` on the *targets*: the shared parameters
   (``wrt: parameters``) or the shared representation z (``wrt: representation``, MGDA-UB's
   trick: T backward passes that stop at z, the batch dimension kept in the row).
2. What was measured is reduced over the processes before the method sees it, so every
   rank solves the same problem and gets the same direction: the trainer's ``ranks``
   (``balancer.ranks``; a no-op in one process) gives ``ranks.mean(J)`` for a Jacobian on
   the parameters, and ``ranks.sample_gramian(G)`` for the Gramian of a Jacobian on the
   per-sample representation (whose rows concatenate over ranks, so only the Gramian can
   be reduced: methods that need J itself, GradDrop and ConFIG, refuse
   ``wrt: representation`` on several processes). This is the only point where ranks
   must agree; the rest is local.
3. ``g = aggregate(J, losses)``.
4. ``Σ_t L_t`` is back-propagated once, so every task-specific parameter receives its own
   task's unweighted gradient ``∂L_t/∂θ_t`` (as in TorchJD's ``mtl_backward`` and LibMTL),
   and the targets receive ``g`` through an additive correction ``g − Σ_t J_t``: written into
   ``.grad`` of the shared parameters, or sent into z as an extra root of the same backward.
   Additive, so it composes with DDP's gradient averaging (the averaged ``Σ_t J_t`` is what
   the reduced ``J`` sums to).

A step with a single present task back-propagates that loss unchanged: no aggregation is
defined for one row (a spec with one task is refused before training).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer, BalancerError, representation_targets

log = logging.getLogger("mtlc")

TARGETS = ("parameters", "representation")
EXTRA_HINT = "pip install 'mtlc[balancers]'"


def require(method: str, modules: Sequence[str]) -> None:
    """Fail with an install hint when an optional solver of ``method`` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BalancerError(
            f"balancer {method!r} needs {', '.join(missing)} (optional solvers); install them with"
            f" {EXTRA_HINT}",
            ("type",),
        )


def jacobian(losses: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """The ``[T, P]`` matrix of ``∂L_t/∂targets``, flattened and concatenated (unused → 0)."""
    sizes = [x.numel() for x in targets]
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in targets) else torch.float32
    device = targets[0].device if targets else torch.device("cpu")
    out = torch.zeros(len(losses), sum(sizes), dtype=dtype, device=device)
    for row, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, targets, retain_graph=True, allow_unused=True)
        offset = 0
        for g, size in zip(grads, sizes):
            if g is not None:
                out[row, offset : offset + size] = g.reshape(-1)
            offset += size
    return out


class WarnOnce:
    """Logs a solver fallback the first time it happens in a run, then stays quiet."""

    def __init__(self, message: str) -> None:
        self.message, self.done = message, False

    def __call__(self, detail: str = "") -> None:
        if not self.done:
            self.done = True
            log.warning(self.message + (f" ({detail})" if detail else ""))


class GradientBalancer(Balancer):
    """Base of the gradient-level methods: see the module docstring for the backward pass.

    Subclasses implement :meth:`aggregate`; ``weights()`` reports the last step's weights
    on the task gradients when the method has them (``last_weights``), else the effective
    coefficient ``⟨g, g_t⟩/‖g_t‖²`` of each task's gradient in the direction g.
    """

    level: ClassVar[str] = "gradient"
    # False for methods whose state has the size of the target (MoCo): z changes with the batch.
    allows_representation: ClassVar[bool] = True

    def __init__(
        self, tasks: Sequence[str], kinds: Mapping[str, str], *, wrt: str = "parameters"
    ) -> None:
        super().__init__(tasks, kinds)
        if wrt not in TARGETS:
            raise BalancerError(
                f"balancer option 'wrt' must be one of {', '.join(TARGETS)}, got {wrt!r}", ("wrt",)
            )
        if wrt == "representation" and not self.allows_representation:
            raise BalancerError(
                f"{type(self).__name__} keeps a state the size of the gradient, so it works on the"
                " shared parameters only; use wrt: parameters",
                ("wrt",),
            )
        self.wrt = wrt
        n = len(self.tasks)
        self.register_buffer("last_weights", torch.ones(n, dtype=torch.float64))
        # The step's weights on the task gradients, where aggregate() has them (_record).
        self._step_weights: Tensor | None = None

    @property
    def needs_shared_repr(self) -> bool:
        return self.wrt == "representation"

    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        """The ``[P]`` update direction from the ``[T, P]`` Jacobian and the ``[T]`` losses.

        ``losses`` is ``None`` when :func:`combine_gradients` was given none; a method that
        needs them says so (:func:`needs_losses`).
        """
        raise NotImplementedError

    def head_weights(self, losses: Tensor) -> Tensor:
        """``c_t`` such that task-specific parameters receive ``c_t ∂L_t/∂θ_t`` (1 by default)."""
        return torch.ones_like(losses)

    def targets(
        self, shared_params: Sequence[Tensor], shared_repr: Tensor | Sequence[Tensor] | None
    ) -> list[Tensor]:
        if self.wrt == "parameters":
            return [p for p in shared_params if p.requires_grad]
        return representation_targets(
            shared_repr,
            f"{self.name()} wrt: representation needs the shared representation; the trainer"
            " must pass shared_repr= (not detached), or use wrt: parameters",
            f"{self.name()} wrt: representation: the shared representation must be part of"
            " the autograd graph (not detached)",
            ("wrt",),
        )

    @classmethod
    def name(cls) -> str:
        return cls.__name__

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[Tensor],
        shared_repr: Tensor | None = None,
    ) -> Tensor:
        names = self.present(losses)
        task_losses = [losses[t].reshape(()) for t in names]
        if len(names) == 1:
            task_losses[0].backward()
            return task_losses[0].detach()
        targets = self.targets(shared_params, shared_repr)
        values = torch.stack([x.detach().float() for x in task_losses])
        heads = self.head_weights(values).detach()  # on the losses' device: no read
        total = sum(c * x for c, x in zip(heads.unbind(0), task_losses))
        if not targets:
            total.backward()
            return total.detach()
        J = jacobian(task_losses, targets)
        if self.wrt == "parameters":
            J = self.ranks.mean(J)
        values = values.to(J.device, J.dtype)
        g = self.aggregate(J, values).to(J.dtype)
        self._record(J, g, names)
        correction = g - heads.to(J.device, J.dtype) @ J
        pieces, offset = [], 0
        for x in targets:
            pieces.append(correction[offset : offset + x.numel()].view_as(x).to(x.dtype))
            offset += x.numel()
        if self.wrt == "parameters":
            total.backward()
            with torch.no_grad():
                for p, piece in zip(targets, pieces):
                    if p.grad is None:
                        p.grad = piece.clone()
                    else:
                        p.grad += piece
        else:
            torch.autograd.backward([total, *targets], [torch.ones_like(total), *pieces])
        return total.detach()

    def _record(self, J: Tensor, g: Tensor, names: Sequence[str]) -> None:
        weights = self._step_weights
        if weights is None:
            with torch.no_grad():
                norms = (J * J).sum(dim=1)
                proj = J @ g
                weights = torch.where(
                    norms > 0, proj / norms.clamp(min=1e-30), torch.ones_like(proj)
                )
        self.store_per_task(self.last_weights, weights, names)
        self._step_weights = None

    def log_tensors(self) -> tuple[Tensor, ...]:
        """The last step's weight on each task's gradient (1 before the first step)."""
        return (self.last_weights,)


def needs_jacobian_locally(balancer: GradientBalancer) -> None:
    """Methods that need J itself cannot run on the representation across processes."""
    if balancer.wrt == "representation" and balancer.ranks.world > 1:
        raise BalancerError(
            f"{balancer.name()} needs the Jacobian itself, which cannot be reduced over"
            " processes on the per-sample representation; use wrt: parameters",
            ("wrt",),
        )


class GramianMethod(GradientBalancer):
    """A method whose direction is ``w @ J`` with weights ``w`` from the Gramian ``J Jᵀ``.

    Subclasses implement :meth:`gramian_weights`; the Gramian is formed in float64, so the
    weights do not depend on P's rounding, and ``J`` is only touched twice (Gramian, combine).
    """

    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        raise NotImplementedError

    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        J64 = J.to(torch.float64)
        if losses is not None:
            losses = losses.to(torch.float64)
        gram = J64 @ J64.T
        if self.wrt == "representation":
            gram = self.ranks.sample_gramian(gram)  # the global Gramian of the per-sample rows
        w = self.gramian_weights(gram, losses).to(torch.float64)
        self._step_weights = w
        return (w.to(J64.device) @ J64).to(J.dtype)


class RunningGradients(GradientBalancer):
    """A method that tracks the task gradients in a ``[T, P]`` buffer and counts its steps k
    (MoCo's ``y``, DB-MTL's EMA).

    The buffer has the size of the target, so it works on the shared parameters only; it is
    created at the first step (when P is known) and takes a checkpoint's shape on load. k is
    a buffer (exact resume) mirrored on the host (``_steps``), so ``β_k`` never waits for the
    device. Subclasses name the two buffers (``state_buffer``, ``step_buffer``: checkpoint
    keys) and call :meth:`start_step` at the top of :meth:`aggregate`.
    """

    allows_representation = False
    state_buffer: ClassVar[str]
    step_buffer: ClassVar[str]

    def __init__(
        self, tasks: Sequence[str], kinds: Mapping[str, str], *, wrt: str = "parameters"
    ) -> None:
        super().__init__(tasks, kinds, wrt=wrt)
        self.register_buffer(self.state_buffer, torch.zeros(len(self.tasks), 0))
        self.register_buffer(self.step_buffer, torch.zeros((), dtype=torch.float64))
        self._steps = 0  # the host copy of the step buffer: k is needed on the host, unread

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        saved = state_dict.get(prefix + self.state_buffer)
        current = getattr(self, self.state_buffer)
        if saved is not None and saved.shape != current.shape:
            setattr(self, self.state_buffer, torch.zeros_like(saved, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._steps = int(getattr(self, self.step_buffer))

    def start_step(self, method: str, J: Tensor, losses: Tensor | None) -> tuple[Tensor, float]:
        """Check the step has every task, size the state to ``J``, count the step: ``(losses, k)``."""
        losses = needs_losses(method, losses)
        if J.shape[0] != len(self.tasks):
            raise ValueError(f"{method} needs every task's loss at every step")
        if getattr(self, self.state_buffer).shape != J.shape:
            setattr(self, self.state_buffer, torch.zeros_like(J))
        with torch.no_grad():
            getattr(self, self.step_buffer).add_(1)
        self._steps += 1
        return losses, float(self._steps)


def needs_losses(method: str, losses: Tensor | None) -> Tensor:
    if losses is None:
        raise BalancerError(f"{method} needs the task losses: combine_gradients(..., losses=[T])")
    return losses


def check_jacobian(J: Any) -> Tensor:
    if not isinstance(J, Tensor) or J.dim() != 2 or not J.is_floating_point():
        shape = tuple(J.shape) if isinstance(J, Tensor) else type(J).__name__
        raise BalancerError(f"J must be a floating [T, P] tensor, got {shape}")
    if J.shape[0] < 2:
        raise BalancerError(
            f"a gradient-level method combines T ≥ 2 task gradients, got T = {J.shape[0]}"
        )
    return J


def combine_gradients(
    name: str, J: Tensor, *, losses: Tensor | None = None, **options: Any
) -> Tensor:
    """The update direction ``[P]`` that gradient-level method ``name`` makes of ``J [T, P]``.

    ``options`` are the method's spec options, validated by the same pydantic model as the
    spec's ``balancer:`` block; ``losses`` (``[T]``) is needed only by loss-aware methods
    (MGDA's loss normalisations, MoCo, Nash-MTL ignores it). A stateful method (GradVac,
    MoCo, Nash-MTL) starts from a fresh state, so this is one step of it: a pure function.
    """
    from mtlc.balancers import build_balancer
    from mtlc.registry import BALANCERS, resolve

    J = check_jacobian(J)
    if name not in BALANCERS:
        build_balancer({"type": name}, ("a", "b"), {})  # raises the did-you-mean error
    cls = resolve(BALANCERS, name)
    if getattr(cls, "level", "loss") != "gradient":
        gradient = [
            n for n in BALANCERS if getattr(resolve(BALANCERS, n), "level", "") == "gradient"
        ]
        raise BalancerError(
            f"{name!r} is a loss-level balancer; combine_gradients takes one of {', '.join(gradient)}",
            ("type",),
        )
    t = J.shape[0]
    tasks = tuple(f"task{i}" for i in range(t))
    balancer = build_balancer(
        {"type": name, **options}, tasks, dict.fromkeys(tasks, "regression"), validate=True
    )
    if losses is not None:
        losses = torch.as_tensor(losses, dtype=J.dtype, device=J.device).reshape(-1)
        if losses.numel() != t:
            raise BalancerError(f"losses has {losses.numel()} values for {t} task gradients")
    return balancer.aggregate(J, losses)
