"""MGDA without host waits (issue 12): the device solver and the batched task gradients.

`min_norm_enumerate` is checked against an independent solver (scipy's SLSQP) and the
Frank–Wolfe solver; that nothing in the device path reads a value back to the host is
checked on the `meta` device, where any `.item()`, `float()` or `.tolist()` raises.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from mtlc.balancers.mgda import MGDA, mgda_weights
from mtlc.balancers.min_norm import _min_norm_gram, min_norm_enumerate

KINDS = {"a": "regression", "b": "regression", "c": "regression"}


def slsqp(gram: np.ndarray) -> np.ndarray:
    n = gram.shape[0]
    res = scipy.optimize.minimize(
        lambda a: a @ gram @ a,
        np.full(n, 1.0 / n),
        jac=lambda a: 2 * gram @ a,
        bounds=[(0, 1)] * n,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return res.x


@pytest.mark.parametrize("tasks", [2, 3, 5, 8])
@pytest.mark.parametrize("rank", ["full", "low"])
def test_enumeration_finds_the_min_norm_point(tasks, rank):
    rng = np.random.default_rng(tasks + (100 if rank == "low" else 0))
    for _ in range(5):
        inner = tasks + 3 if rank == "full" else max(1, tasks // 2)
        g = rng.normal(size=(tasks, inner)) @ rng.normal(size=(inner, 9))
        g += rng.normal(size=9) * rng.uniform(0, 2)  # move the hull off the origin at times
        gram = torch.tensor(g @ g.T)
        alpha = min_norm_enumerate(gram)
        assert alpha.min() >= 0 and float(alpha.sum()) == pytest.approx(1.0, abs=1e-12)
        ours = float(alpha @ gram @ alpha)
        reference = slsqp(g @ g.T)
        scale = float(gram.diagonal().max())
        best = float(reference @ (g @ g.T) @ reference)
        assert ours <= best + 1e-9 * scale
        assert ours == pytest.approx(best, abs=1e-7 * scale)
        # never worse than the CPU's Frank–Wolfe solver (which stops short at times:
        # T = 8 here gives 1.6690 against the true 1.6587)
        fw = _min_norm_gram(gram)
        assert ours <= float(fw @ gram @ fw) + 1e-9 * scale


def test_enumeration_degenerate_cases_match_the_cpu_solver():
    assert min_norm_enumerate(torch.ones(1, 1, dtype=torch.float64)).tolist() == [1.0]
    assert min_norm_enumerate(torch.zeros(3, 3, dtype=torch.float64)).tolist() == pytest.approx(
        [1 / 3] * 3
    )
    nan = torch.full((2, 2), float("nan"), dtype=torch.float64)
    assert min_norm_enumerate(nan).tolist() == [0.5, 0.5]
    # the origin inside the hull: barycentric coordinates (as the CPU solver's test)
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert min_norm_enumerate(g @ g.T).tolist() == pytest.approx([0.5, 0.25, 0.25], abs=1e-9)


@pytest.mark.parametrize("normalize", ["l2", "loss", "loss+", "none"])
def test_the_device_path_never_reads_a_value_back(normalize):
    # on `meta` tensors any host read raises ("cannot be called on meta tensors")
    grads = torch.empty(3, 50, device="meta")
    alpha = mgda_weights(grads, torch.empty(3, device="meta"), normalize)
    assert alpha.shape == (3,) and alpha.device.type == "meta"


def test_mgda_backward_on_meta_tensors_reads_nothing_back():
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 6, device="meta")
    heads = torch.nn.ModuleList(torch.nn.Linear(6, 1, device="meta") for _ in range(3))
    x = torch.empty(5, 4, device="meta")
    z = torch.tanh(shared(x))
    losses = {t: h(z).pow(2).mean() for t, h in zip("abc", heads, strict=True)}
    balancer = MGDA(("a", "b", "c"), KINDS, mode="ub").to("meta")
    total = balancer.backward(losses, shared_params=list(shared.parameters()), shared_repr=z)
    assert total.device.type == "meta" and shared.weight.grad is not None


def setup(seed: int = 0):
    torch.manual_seed(seed)
    shared = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh())
    heads = torch.nn.ModuleList(torch.nn.Linear(8, 2) for _ in range(3))
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    z = shared(x)
    losses = {
        t: torch.nn.functional.mse_loss(h(z), y * (i + 1))
        for i, (t, h) in enumerate(zip("abc", heads))
    }
    return shared, heads, z, losses


@pytest.mark.parametrize("mode", ["exact", "ub"])
def test_batched_gradients_equal_one_backward_per_task(mode):
    shared, _, z, losses = setup()
    targets = list(shared.parameters()) if mode == "exact" else [z]
    balancer = MGDA(("a", "b", "c"), KINDS, mode=mode)
    on_cpu = balancer.task_gradients(list(losses.values()), targets)
    assert balancer.batched is None  # on the CPU: one backward per task (faster there)
    batched = MGDA._batched_gradients(list(losses.values()), targets, torch.float32)
    looped = torch.stack(
        [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(loss, targets, retain_graph=True)]
            )
            for loss in losses.values()
        ]
    )
    torch.testing.assert_close(batched, looped, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(on_cpu, looped, rtol=0, atol=0)


def test_backward_applies_the_alpha_it_reports():
    shared, heads, z, losses = setup(1)
    params = list(shared.parameters())
    per_task = [torch.autograd.grad(v, params, retain_graph=True) for v in losses.values()]
    balancer = MGDA(("a", "b", "c"), KINDS, normalize="none")
    balancer.backward(losses, shared_params=params)
    alpha = balancer.alpha
    assert float(alpha.sum()) == pytest.approx(1.0)
    for i, p in enumerate(params):
        want = sum(float(alpha[t]) * per_task[t][i] for t in range(3))
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)
    # the α reported is the min-norm point of the shared gradients
    g = torch.stack([torch.cat([x.reshape(-1) for x in grads]) for grads in per_task]).double()
    reference = _min_norm_gram(g @ g.T)
    torch.testing.assert_close(alpha, reference, rtol=1e-5, atol=1e-6)
