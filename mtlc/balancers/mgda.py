"""MGDA: multi-task learning as multi-objective optimisation (Sener & Koltun, NeurIPS 2018).

The update direction is the min-norm point of the convex hull of the per-task
gradients on the shared parameters, ``min_{α ∈ Δ} ‖Σ_t α_t g_t‖²``; it is a
descent direction for every task at once, or zero at a Pareto-stationary point.

The α comes from the min-norm solver (:func:`mtlc.balancers.min_norm.min_norm`, its own
module, where its choices are explained); this module adds what makes it MGDA: the
gradient normalisation (:func:`mgda_weights`, :func:`gram_weights`, pure functions of a
``[T, P]`` gradient matrix or its Gram matrix) and :class:`MGDA`, which only collects the
gradients and back-propagates. Choices, with the official code
(github.com/isl-org/MultiObjectiveOptimization) as the reference:

* Normalisation (``gradient_normalizers`` in the official code) only changes the
  α that is found; the step itself back-propagates ``Σ_t α_t L_t`` with the
  unnormalised losses, so shared parameters receive ``Σ_t α_t ∂L_t/∂W`` and each
  head receives ``α_t ∂L_t/∂θ_t``. The official code divides by ``L_t``; we divide
  by ``|L_t|`` (the same for the positive losses it was written for), and a zero
  norm or loss leaves that gradient unscaled instead of producing NaN.
* ``mode: exact`` differentiates each task loss w.r.t. every shared parameter
  (T extra backward passes through the encoder). ``mode: ub`` (MGDA-UB, the
  paper's upper bound) differentiates w.r.t. the shared representation z
  instead, so the T passes stop at z and only the final one crosses the encoder.
  As in the official code, the batch dimension stays in the flattened gradient
  (``∂L_t/∂z`` of shape ``[B, ...]`` becomes one vector), it is not averaged away.
* α is a buffer (``alpha``), so the last weights are logged and checkpointed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.base import (
    Balancer,
    BalancerError,
    did_you_mean,
    is_number,
    representation_targets,
)
from mtlc.balancers.min_norm import gram_matrix, out_dtype, solve_gram

NORMALIZATIONS = ("l2", "loss", "loss+", "none")
MODES = ("exact", "ub")


def mgda_weights(
    grads: Tensor,
    losses: Tensor,
    normalize: str,
    *,
    max_iter: int = 250,
    tol: float = 1e-6,
) -> Tensor:
    """MGDA's α for a ``[T, P]`` gradient matrix and the ``[T]`` task losses.

    ``normalize``: ``l2`` g/‖g‖, ``loss`` g/|L|, ``loss+`` g/(|L|·‖g‖), ``none``.
    Scaling row t by ``k_t`` scales the Gram matrix to ``k_s·k_t·G_st``, so the
    normalised gradients are never materialised.
    """
    if normalize not in NORMALIZATIONS:
        raise BalancerError(
            f"unknown MGDA normalisation {normalize!r}{did_you_mean(str(normalize), NORMALIZATIONS)};"
            f" known: {', '.join(NORMALIZATIONS)}"
        )
    if grads.dim() != 2 or grads.shape[0] < 1:
        raise BalancerError(
            f"mgda_weights needs a [T, P] matrix with T ≥ 1, got {tuple(grads.shape)}"
        )
    return gram_weights(gram_matrix(grads), losses, normalize, max_iter=max_iter, tol=tol).to(
        device=grads.device, dtype=out_dtype(grads)
    )


def gram_weights(
    gram: Tensor, losses: Tensor, normalize: str, *, max_iter: int = 250, tol: float = 1e-6
) -> Tensor:
    """:func:`mgda_weights` from the ``[T, T]`` float64 Gram matrix (float64; solved on its device)."""
    n = gram.shape[0]
    scale = torch.ones(n, dtype=torch.float64, device=gram.device)
    if normalize in ("l2", "loss+"):
        norms = gram.diagonal().clamp(min=0).sqrt()
        scale = scale * torch.where(norms > 0, 1.0 / norms, torch.ones_like(norms))
    if normalize in ("loss", "loss+"):
        values = losses.detach().reshape(-1).to(device=gram.device, dtype=torch.float64).abs()
        if values.numel() != n:
            raise BalancerError(f"mgda_weights got {values.numel()} losses for {n} gradients")
        scale = scale * torch.where(values > 0, 1.0 / values, torch.ones_like(values))
    gram = gram * scale[:, None] * scale[None, :]
    return solve_gram(gram, max_iter, tol)


class MGDA(Balancer):
    """Options: ``normalize`` (``loss+``), ``mode`` (``exact`` | ``ub``), ``max_iter`` (250),
    ``tol`` (1e-6). Gradient-level: the trainer must pass ``shared_params`` (and
    ``shared_repr`` for ``ub``) to :meth:`backward`.
    """

    level = "gradient"

    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        normalize: str = "loss+",
        mode: str = "exact",
        max_iter: int = 250,
        tol: float = 1e-6,
    ) -> None:
        super().__init__(tasks, kinds)
        for option, value, known in (
            ("normalize", normalize, NORMALIZATIONS),
            ("mode", mode, MODES),
        ):
            if value not in known:
                raise BalancerError(
                    f"balancer option {option!r} must be one of {', '.join(known)}, got {value!r}"
                    f"{did_you_mean(str(value), known)}"
                )
        if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
            raise BalancerError(f"balancer option 'max_iter' must be an int ≥ 1, got {max_iter!r}")
        if not is_number(tol) or not tol > 0:
            raise BalancerError(f"balancer option 'tol' must be a number > 0, got {tol!r}")
        self.normalize, self.mode = normalize, mode
        self.max_iter, self.tol = max_iter, float(tol)
        n = len(self.tasks)
        self.register_buffer("alpha", torch.full((n,), 1.0 / n, dtype=torch.float64))
        self.batched: bool | None = None  # per-task gradients in one vmapped backward?

    def _targets(
        self, shared_params: Sequence[Tensor], shared_repr: Tensor | Sequence[Tensor] | None
    ) -> list[Tensor]:
        if self.mode == "exact":
            return [p for p in shared_params if p.requires_grad]
        return representation_targets(
            shared_repr,
            "mgda mode 'ub' needs a shared representation; the trainer must pass"
            " shared_repr= (the shared encoder's output, not detached), or use mode: exact",
            "mgda mode 'ub': shared_repr must be part of the autograd graph (not detached)",
        )

    def task_gradients(self, losses: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
        """The ``[T, P]`` matrix of ``∂L_t/∂targets``, flattened and concatenated (None → 0).

        On an accelerator, one batched backward (``is_grads_batched``: a vmap over the T
        one-hot output gradients) replaces T backward passes, which there cost launches;
        where an op has no batching rule the T passes run one by one instead (decided
        once per balancer). On the CPU the T passes run one by one: the vmapped backward
        is slower there (an MGDA-UB step 1.43× a fixed one against 1.17×, specs/hard.yaml,
        T = 3, batch 32 of 64×64, one thread).
        """
        sizes = [x.numel() for x in targets]
        dtype = torch.float64 if any(x.dtype == torch.float64 for x in targets) else torch.float32
        device = targets[0].device if targets else torch.device("cpu")
        if targets and len(losses) > 1 and device.type != "cpu" and self.batched is not False:
            try:
                out = self._batched_gradients(losses, targets, dtype)
                self.batched = True
                return out
            except RuntimeError:
                if self.batched:  # it worked before: a real error
                    raise
                self.batched = False
        if not targets:
            return torch.zeros(len(losses), sum(sizes), dtype=dtype, device=device)
        from mtlc.balancers.gradient import jacobian  # the one-by-one passes every method uses

        return jacobian(losses, targets)

    @staticmethod
    def _batched_gradients(
        losses: Sequence[Tensor], targets: Sequence[Tensor], dtype: torch.dtype
    ) -> Tensor:
        stacked = torch.stack([x.reshape(()) for x in losses])
        eye = torch.eye(len(losses), dtype=stacked.dtype, device=stacked.device)
        grads = torch.autograd.grad(
            stacked,
            list(targets),
            grad_outputs=eye,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        return torch.cat(
            [
                (
                    torch.zeros(len(losses), x.numel(), dtype=dtype, device=stacked.device)
                    if g is None
                    else g.reshape(len(losses), -1).to(dtype)
                )
                for g, x in zip(grads, targets, strict=True)
            ],
            dim=1,
        )

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[Tensor],
        shared_repr: Tensor | None = None,
    ) -> Tensor:
        """α on the device, then one backward of ``Σ_t α_t L_t``; the host never waits."""
        names = self.present(losses)
        targets = self._targets(shared_params, shared_repr)
        task_losses = [losses[t].reshape(()) for t in names]
        stacked = torch.stack(task_losses)
        if len(names) == 1:
            alpha = torch.ones(1, dtype=torch.float64, device=stacked.device)
        else:
            grads = self.task_gradients(task_losses, targets)
            values = stacked.detach().to(torch.float64)
            # several processes: the global Gram matrix, so every rank gets the same α
            if self.mode == "exact":
                gram = gram_matrix(self.ranks.mean(grads))
            else:
                gram = self.ranks.sample_gramian(gram_matrix(grads))
            alpha = gram_weights(
                gram, values, self.normalize, max_iter=self.max_iter, tol=self.tol
            ).to(device=stacked.device, dtype=torch.float64)
        total = (alpha.to(stacked.dtype) * stacked).sum()
        total.backward()
        self.store_per_task(self.alpha, alpha, names)
        return total.detach()

    @property
    def needs_shared_repr(self) -> bool:
        return self.mode == "ub"

    def aggregate(self, J: Tensor, losses: Tensor | None) -> Tensor:
        """``Σ_t α_t J_t`` (the contract of :func:`mtlc.balancers.combine_gradients`)."""
        if losses is None:
            if self.normalize in ("loss", "loss+"):
                raise BalancerError(
                    f"mgda normalize {self.normalize!r} needs the task losses:"
                    " combine_gradients(..., losses=[T])"
                )
            losses = torch.ones(J.shape[0], dtype=J.dtype)
        alpha = mgda_weights(J, losses, self.normalize, max_iter=self.max_iter, tol=self.tol)
        return alpha @ J

    def log_tensors(self) -> tuple[Tensor, ...]:
        """The last α (tasks absent from the last step have 0; 1/T before the first step)."""
        return (self.alpha,)
