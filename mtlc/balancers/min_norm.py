"""The min-norm point of a convex hull of gradients: ``min_{α ∈ Δ} ‖Σ_t α_t g_t‖²``.

For T task gradients ``g_t`` (the rows of a ``[T, P]`` matrix), the α on the simplex Δ
that minimises ``‖Σ_t α_t g_t‖²`` gives the shortest vector in their convex hull: a
direction of common descent for every task, or zero at a Pareto-stationary point
(Désidéri's MGDA, 2012; Sener & Koltun, NeurIPS 2018). This module holds only that
solver, as pure functions of the gradients or of their Gram matrix, so other balancers
and the tests can use it without the MGDA balancer (:mod:`mtlc.balancers.mgda`), which
adds the gradient normalisation, the collection of per-task gradients and the backward.

Choices, with the official code (github.com/isl-org/MultiObjectiveOptimization) as the
reference: everything runs on the T×T Gram matrix in float64, so it costs the same for
any P. On a GPU (up to ``ENUMERATE_MAX`` tasks) it is solved exactly where the
gradients are by enumerating the simplex's faces (:func:`min_norm_enumerate`: tensor
ops only, so a step never waits for the host); on the CPU, as in the official
``find_min_norm_element_FW``: the best pair by the 2-vector closed form, then
Frank–Wolfe steps with exact line search, stopping when a step changes α by less than
``tol`` (L1) or after ``max_iter`` steps (the official loop never incremented its
counter, a known bug; we cap it). Three departures, all to reach the true minimum: the
degenerate 2-vector cases return the vertex itself (official: 0.999/0.001); *away
steps* (Wolfe 1970; Lacoste-Julien & Jaggi 2015) are taken when moving weight off the
worst active gradient pays more than a Frank–Wolfe step, since plain FW zig-zags at
O(1/k) whenever the min-norm point lies on a face of the hull (250 plain steps leave
~1e-4 relative error at T = 8); and a final *polish* solves the equality-constrained
problem on the found support exactly, kept only if it is feasible and no worse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlc.balancers.base import BalancerError

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


def gram_matrix(grads: Tensor) -> Tensor:
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


def solve_gram(gram: Tensor, max_iter: int, tol: float) -> Tensor:
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
    alpha = solve_gram(gram_matrix(grads), max_iter, tol)
    return alpha.to(device=grads.device, dtype=out_dtype(grads))


def out_dtype(grads: Tensor) -> torch.dtype:
    """The dtype weights come back in: the gradients' own, float64 for integer input."""
    return grads.dtype if grads.is_floating_point() else torch.float64
