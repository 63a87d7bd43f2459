"""``correlated``: the synthetic regression tasks of the MMoE paper, with a set correlation.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, section 3.2:

1. draw orthonormal unit vectors u_1, u_2 in R^dim;
2. task weights ``w_1 = c·u_1`` and ``w_2 = c·(p·u_1 + sqrt(1 − p²)·u_2)``, so that
   cos(w_1, w_2) = p, the task correlation;
3. inputs ``x ~ N(0, I_dim)``;
4. targets ``y_t = w_tᵀx + Σ_{j=1..m} sin(α_j·w_tᵀx + β_j) + ε_t``, with α_j, β_j shared
   by the tasks and ``ε_t ~ N(0, 0.01)`` i.i.d.

The paper calls c, m, α and β "given parameters" and does not give their values; mtlc's
choices are c = 1, m = 10 and, by default (``sine_params: normal``), α_j, β_j drawn once per
seed from N(0, 1): slow, smooth sines that a small network fits almost to the noise.
``sine_params: integer`` takes α_j = j and β_j = (j − 1)² for j = 1..m instead, the values
of the public generator of this data in the google-research repository ("Simple generator
for synthetic multi-task data"; "the original paper does not provide the values"): sines
up to frequency m in w_tᵀx, a wiggly target that binds a small network's capacity, the
regime in which the paper's finding shows (benchmarks/RESULTS.md). The paper writes the
noise as N(0, 0.01), read here in the usual N(μ, σ²) notation: variance 0.01, so the
option ``noise`` (a standard deviation) defaults to 0.1.

The linear parts ``w_tᵀx`` of two tasks then have Pearson correlation exactly p in
expectation. **More than two tasks** (``tasks: T``): u_1…u_T orthonormal and
``w_t = c·(p·u_1 + sqrt(1 − p²)·u_t)`` for t ≥ 2, so task 1 and every other task have
correlation p, and two tasks t, s ≥ 2 have correlation p² (they are related through task 1
only). For T = 2 this is exactly the paper's construction.

Options: ``train`` (8000), ``val`` (2000), ``dim`` (100), ``tasks`` (2), ``correlation`` p
(0.5, in [−1, 1]), ``scale`` c (1.0), ``sines`` m (10), ``sine_params`` (``normal`` or
``integer``, above), ``noise`` (0.1, the standard deviation of ε).

Tensors: ``x`` float32 [N, dim] and ``y1``, ``y2``, … float32 [N, 1]. The task (the u's,
α, β) depends on ``seed`` only, so train and val share it; the samples x and ε of each
split come from a seed derived from ``seed`` and the split's name. ``info["task_weights"]``
([T, dim]), ``info["alphas"]`` and ``info["betas"]`` give the task parameters.
"""

from __future__ import annotations

import math

import torch

from mtlc.data import (
    TensorData,
    check_choice,
    check_memory,
    check_options,
    check_range,
    check_split,
    derived_seed,
)

__all__ = ["generate_task", "load"]

SCHEMA = {
    "train": (int, 8000),
    "val": (int, 2000),
    "dim": (int, 100),
    "tasks": (int, 2),
    "correlation": (float, 0.5),
    "scale": (float, 1.0),
    "sines": (int, 10),
    "sine_params": (str, "normal"),
    "noise": (float, 0.1),
}
SINE_PARAMS = ("normal", "integer")


def generate_task(
    dim: int,
    tasks: int,
    correlation: float,
    scale: float,
    sines: int,
    generator: torch.Generator,
    sine_params: str = "normal",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Task weights [T, dim] and the shared α [m], β [m] (float64).

    The directions are drawn first and the normal α, β after them, so a seed gives the same
    directions whichever ``sine_params`` is chosen.
    """
    gauss = torch.randn(dim, tasks, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    u = (q * torch.sign(torch.diagonal(r))).T  # [T, dim], orthonormal rows
    p = correlation
    w = torch.empty_like(u)
    w[0] = scale * u[0]
    for t in range(1, tasks):
        w[t] = scale * (p * u[0] + math.sqrt(max(0.0, 1.0 - p * p)) * u[t])
    if sine_params == "integer":
        j = torch.arange(sines, dtype=torch.float64)
        return w, j + 1, j * j
    alphas = torch.randn(sines, generator=generator, dtype=torch.float64)
    betas = torch.randn(sines, generator=generator, dtype=torch.float64)
    return w, alphas, betas


def load(split: str, *, seed: int = 0, **options) -> TensorData:
    """Generate the ``split`` of the ``correlated`` data set (see the module docstring)."""
    check_split(split)
    o = check_options("correlated", options, SCHEMA)
    check_range("train", o["train"], 1)
    check_range("val", o["val"], 1)
    check_range("tasks", o["tasks"], 1)
    check_range("dim", o["dim"], o["tasks"])
    check_range("correlation", o["correlation"], -1.0, 1.0)
    check_range("sines", o["sines"], 0)
    check_range("noise", o["noise"], 0.0)
    check_choice("sine_params", o["sine_params"], SINE_PARAMS)
    n, dim, tasks = o[split], o["dim"], o["tasks"]
    # x in float64 and float32, the float64 sines (3 live copies) and the task vectors
    needed = n * (dim * 12 + tasks * o["sines"] * 24 + tasks * 20) + dim * tasks * 24
    check_memory(split, f"{n} samples of {dim} inputs and {tasks} tasks", needed)

    g_task = torch.Generator().manual_seed(derived_seed(seed, "correlated", "task"))
    w, alphas, betas = generate_task(
        o["dim"], o["tasks"], o["correlation"], o["scale"], o["sines"], g_task, o["sine_params"]
    )
    g = torch.Generator().manual_seed(derived_seed(seed, "correlated", split))
    n = o[split]
    x = torch.randn(n, o["dim"], generator=g, dtype=torch.float64)
    linear = x @ w.T  # [N, T]
    y = linear + torch.sin(linear.unsqueeze(-1) * alphas + betas).sum(-1)
    y = y + o["noise"] * torch.randn(y.shape, generator=g, dtype=torch.float64)
    tensors = {"x": x.float()}
    for t in range(o["tasks"]):
        tensors[f"y{t + 1}"] = y[:, t : t + 1].float()
    info = {
        "inputs": {"x": [o["dim"]]},
        "num_classes": {},
        "targets": [f"y{t + 1}" for t in range(o["tasks"])],
        "task_weights": w.float(),
        "alphas": alphas.float(),
        "betas": betas.float(),
    }
    return TensorData(tensors, info)
