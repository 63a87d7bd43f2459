"""MGDA: multi-task learning as multi-objective optimisation (Sener & Koltun, NeurIPS 2018).

The update direction is the min-norm point of the convex hull of the per-task
gradients on the shared parameters, ``min_{α ∈ Δ} ‖Σ_t α_t g_t‖²``; it is a
descent direction for every task at once, or zero at a Pareto-stationary point.

The core is two pure functions of a ``[T, P]`` gradient matrix, :func:`min_norm`
and :func:`mgda_weights`; :class:`MGDA` only collects the gradients and
back-propagates. Choices, with the official code
(github.com/isl-org/MultiObjectiveOptimization) as the reference:

* Solver: everything runs on the T×T Gram matrix in float64, so it costs the same
  for any P. On a GPU (up to ``ENUMERATE_MAX`` tasks) it is solved exactly where the
  gradients are by enumerating the simplex's faces (:func:`min_norm_enumerate`:
  tensor ops only, so a step never waits for the host); on the CPU, as in the
  official ``find_min_norm_element_FW``: the
  best pair by the 2-vector closed form, then Frank–Wolfe steps with exact line
  search, stopping when a step changes α by less than ``tol`` (L1) or after
  ``max_iter`` steps (the official loop never incremented its counter, a known
  bug; we cap it). Three departures, all to reach the true minimum: the
  degenerate 2-vector cases return the vertex itself (official: 0.999/0.001);
  *away steps* (Wolfe 1970; Lacoste-Julien & Jaggi 2015) are taken when moving
  weight off the worst active gradient pays more than a Frank–Wolfe step, since
  plain FW zig-zags at O(1/k) whenever the min-norm point lies on a face of the
  hull (250 plain steps leave ~1e-4 relative error at T = 8); and a final
  *polish* solves the equality-constrained problem on the found support
  exactly, kept only if it is feasible and no worse.
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

import math
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

NORMALIZATIONS = ("l2", "loss", "loss+", "none")
MODES = ("exact", "ub")

_GRAM_CHUNK = 1 << 20  # columns per float64 block when forming the Gram matrix


def _min_norm_2(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """``min_c ‖c·x1 + (1 − c)·x2‖²`` from the inner products: returns (c, cost).

    The closed form ``c = (v22 − v12)/(v11 + v22 − 2·v12)``; its denominator is
    ‖x1 − x2‖², which is 0 only when x1 = x2, a case the first branch catches.
    """
    if v12 >= v11:  # x1 is the closest point (also x1 == x2)
        return 1.0, v11
    if v12 >= v22:  # x2 is the closest point
        return 0.0, v22
    c = (v22 - v12) / (v11 + v22 - 2.0 * v12)
    c = min(max(c, 0.0), 1.0)
    return c, v22 + c * (v12 - v22)


def _gram(grads: Tensor) -> Tensor:
    """``grads @ grads.T`` accumulated in float64 block by block, on ``grads``' device."""
    t, p = grads.shape
    gram = torch.zeros(t, t, dtype=torch.float64, device=grads.device)
    for start in range(0, p, _GRAM_CHUNK):
        block = grads[:, start : start + _GRAM_CHUNK].to(torch.float64)
        gram += block @ block.T
    return gram


# Up to this many tasks the exact enumeration solver runs on the device (2^T − 1 faces).
ENUMERATE_MAX = 10


def _faces(n: int, device: torch.device) -> Tensor:
    """Every non-empty subset of n tasks as a [2^n − 1, n] boolean mask."""
    codes = torch.arange(1, 2**n, device=device)
    return (codes[:, None] >> torch.arange(n, device=device)) & 1 == 1


def min_norm_enumerate(gram: Tensor) -> Tensor:
    """The exact α ∈ Δ minimising ``αᵀ·gram·α``, by tensor ops only (no host sync).

    The minimiser lies in the relative interior of one face S of the simplex, where it
    solves the equality-constrained problem on S: the KKT system
    ``[G_SS 1; 1ᵀ 0]·[α_S; λ] = [0; 1]``. All 2^T − 1 faces are solved at once (one
    batched LU solve); a candidate counts if it is feasible (α ≥ 0, Σα = 1, the system
    solved), and the feasible one of least ``αᵀGα`` is the answer. The system is
    singular only when the gradients of S are affinely dependent, and some optimum
    always has an affinely independent support (Carathéodory), whose system is
    regular; the T vertices are always feasible.
    Fixed work for a given T, and nothing leaves the device: the GPU never waits for
    the host. Checked against the Frank–Wolfe solver (:func:`_min_norm_gram`).
    """
    n = gram.shape[0]
    dtype = torch.float64
    gram = gram.to(dtype)
    if n == 1:
        return torch.ones(1, dtype=dtype, device=gram.device)
    faces = _faces(n, gram.device)  # [F, n]
    f = faces.shape[0]
    mask = faces.to(dtype)
    kkt = torch.zeros(f, n + 1, n + 1, dtype=dtype, device=gram.device)
    inside = mask[:, :, None] * mask[:, None, :]
    # rows in S: G_S· α + λ = 0; rows outside S: α_i = 0; last row: Σ α_S = 1
    kkt[:, :n, :n] = gram * inside + torch.diag_embed(1.0 - mask)
    kkt[:, :n, n] = mask
    kkt[:, n, :n] = mask
    rhs = torch.zeros(f, n + 1, 1, dtype=dtype, device=gram.device)
    rhs[:, n] = 1.0
    # solve_ex without its error check: the check (like svd/pinv's) would wait for the GPU;
    # a singular face gives non-finite values and is dropped as infeasible below
    sol, _ = torch.linalg.solve_ex(kkt, rhs, check_errors=False)
    alpha = sol[:, :n, 0] * mask
    residual = (kkt @ sol - rhs).abs().amax(dim=(1, 2))
    scale = gram.diagonal().abs().max().clamp(min=1e-300)
    feasible = (
        (alpha >= -1e-10).all(dim=1)
        & ((alpha.sum(dim=1) - 1.0).abs() <= 1e-8)
        & (residual <= 1e-8 * (1.0 + scale))
        & torch.isfinite(alpha).all(dim=1)
    )
    alpha = alpha.clamp(min=0.0)
    alpha = alpha / alpha.sum(dim=1, keepdim=True).clamp(min=1e-300)
    cost = torch.einsum("fi,ij,fj->f", alpha, gram, alpha)
    cost = torch.where(feasible, cost, torch.full_like(cost, math.inf))
    best = alpha.index_select(0, torch.argmin(cost).reshape(1))[0]  # no host read of the index
    # as the CPU solver: non-finite gradients mean nothing (the NaN loss will surface
    # anyway) and with all-zero gradients every α is optimal; uniform is the least arbitrary
    uniform = torch.full_like(best, 1.0 / n)
    meaningful = torch.isfinite(gram).all() & (gram.diagonal().sum() > 0)
    return torch.where(meaningful, best, uniform)


def _solve(gram: Tensor, max_iter: int, tol: float) -> Tensor:
    """α for a Gram matrix: on an accelerator by enumeration (T ≤ ENUMERATE_MAX, no host
    sync), else by Frank–Wolfe on the CPU (faster there: 2 ms against 10 ms at T = 8)."""
    if gram.device.type != "cpu" and gram.shape[0] <= ENUMERATE_MAX:
        return min_norm_enumerate(gram)
    return _min_norm_gram(gram.cpu(), max_iter, tol).to(gram.device)


def _polish(gram: Tensor, alpha: Tensor) -> Tensor:
    """Exact minimiser over the affine hull of α's support, if it lies in the simplex."""
    support = torch.nonzero(alpha > 0).flatten()
    k = support.numel()
    if k < 2:
        return alpha
    kkt = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    kkt[:k, :k] = gram[support][:, support]
    kkt[:k, k] = 1.0
    kkt[k, :k] = 1.0
    rhs = torch.zeros(k + 1, 1, dtype=torch.float64)
    rhs[k] = 1.0
    sol = torch.linalg.lstsq(kkt, rhs).solution[:k, 0]
    if not torch.isfinite(sol).all() or sol.min() < -1e-12 or sol.clamp(min=0).sum() <= 0:
        return alpha
    candidate = torch.zeros_like(alpha)
    candidate[support] = sol.clamp(min=0)
    candidate /= candidate.sum()
    if candidate @ gram @ candidate <= alpha @ gram @ alpha:
        return candidate
    return alpha


def _min_norm_gram(gram: Tensor, max_iter: int = 250, tol: float = 1e-6) -> Tensor:
    """α ∈ Δ minimising ``αᵀ·gram·α`` (gram: T×T float64 on the CPU)."""
    n = gram.shape[0]
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    # Non-finite gradients: α cannot mean anything; the NaN loss will surface anyway.
    # All-zero gradients: every α is optimal; uniform is the least arbitrary.
    if n == 1 or not torch.isfinite(gram).all() or float(gram.diagonal().sum()) <= 0:
        return uniform
    g = gram.tolist()
    best: tuple[float, int, int, float] | None = None
    for i in range(n):
        for j in range(i + 1, n):
            c, cost = _min_norm_2(g[i][i], g[i][j], g[j][j])
            if best is None or cost < best[0]:
                best = (cost, i, j, c)
    assert best is not None
    _, i, j, c = best
    alpha = torch.zeros(n, dtype=torch.float64)
    alpha[i], alpha[j] = c, 1.0 - c
    if n == 2:
        return alpha  # the closed form is exact

    diag = gram.diagonal()
    for _ in range(max_iter):
        ga = gram @ alpha  # half the gradient of αᵀGα
        f = float(alpha @ ga)
        t = int(torch.argmin(ga))
        s = int(torch.argmax(torch.where(alpha > 0, ga, -math.inf)))
        gap_fw, gap_away = f - float(ga[t]), float(ga[s]) - f
        if max(gap_fw, gap_away) <= 0:
            break  # no vertex improves: optimal
        drop = False
        if gap_fw >= gap_away:
            # Official step: min-norm point of the segment [current point, g_t].
            c, _ = _min_norm_2(f, float(ga[t]), float(diag[t]))
            new = c * alpha
            new[t] += 1.0 - c
        else:
            # Away step: move along (current point − g_s), shrinking α_s, at most to 0.
            a_s = float(alpha[s])
            eta_max = a_s / (1.0 - a_s) if a_s < 1.0 else 0.0
            den = f - 2.0 * float(ga[s]) + float(diag[s])  # ‖current − g_s‖²
            eta = gap_away / den if den > 0 else eta_max
            if eta >= eta_max:
                eta, drop = eta_max, True
            new = (1.0 + eta) * alpha
            new[s] -= eta
            if drop:
                new[s] = 0.0
            new.clamp_(min=0.0)
        new /= new.sum()
        change = float((new - alpha).abs().sum())
        alpha = new
        if change < tol and not drop:
            break
    return _polish(gram, alpha)


def min_norm(grads: Tensor, *, max_iter: int = 250, tol: float = 1e-6) -> Tensor:
    """α on the simplex minimising ``‖Σ_t α_t·grads[t]‖²`` for a ``[T, P]`` matrix.

    Returns a ``[T]`` tensor with ``grads``' dtype (float64 if not floating) and device.
    """
    if grads.dim() != 2 or grads.shape[0] < 1:
        raise BalancerError(f"min_norm needs a [T, P] matrix with T ≥ 1, got {tuple(grads.shape)}")
    alpha = _solve(_gram(grads), max_iter, tol)
    return alpha.to(device=grads.device, dtype=_out_dtype(grads))


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
    return gram_weights(_gram(grads), losses, normalize, max_iter=max_iter, tol=tol).to(
        device=grads.device, dtype=_out_dtype(grads)
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
    return _solve(gram, max_iter, tol)


def _out_dtype(grads: Tensor) -> torch.dtype:
    return grads.dtype if grads.is_floating_point() else torch.float64


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
                gram = _gram(self.ranks.mean(grads))
            else:
                gram = self.ranks.sample_gramian(_gram(grads))
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
