"""The field's balancers: each method's direction on fixed Jacobians against TorchJD's
published values or an independent computation from its paper, the properties each method
claims, the one backward pass, training a few steps, exact resume and bad input."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import scipy.optimize
import torch

from mtlc.balancers import BalancerError, build_balancer, combine_gradients
from mtlc.balancers.base import StepView
from mtlc.balancers.gradient import GradientBalancer
from mtlc.registry import BALANCERS, resolve

J0 = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
TASKS = ("a", "b", "c")
KINDS = dict.fromkeys(TASKS, "regression")
GRADIENT = [n for n in BALANCERS if resolve(BALANCERS, n).level == "gradient"]
LOSS = [n for n in BALANCERS if n not in GRADIENT]
# Deterministic for a fixed J (no random order, no state): permutation-equivariant.
DETERMINISTIC = ["mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl", "config", "cagrad"]


def rand_jacobian(t: int, p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, p, generator=g, dtype=torch.float64)


# ----- values: TorchJD's published ones on J0, and the papers' formulas ---------------


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("upgrad", {}, [0.2929, 1.9004, 1.9004]),
        ("mgda", {"normalize": "none"}, [0.0, 1.0, 1.0]),
        ("imtl_g", {}, [0.0767, 1.0, 1.0]),
        ("pcgrad", {}, [0.5848, 3.8012, 3.8012]),
        ("dualproj", {}, [0.5563, 1.1109, 1.1109]),
        # mtlc's Aligned-MTL uses the official/LibMTL preference w = 1: T = 2 × TorchJD's.
        ("aligned_mtl", {}, [2 * 0.2133, 2 * 0.9673, 2 * 0.9673]),
    ],
)
def test_published_values(name, options, expected):
    d = combine_gradients(name, J0, **options)
    assert d.shape == (3,)
    assert torch.allclose(d, torch.tensor(expected, dtype=d.dtype), atol=2e-4)


def test_pcgrad_by_hand():
    """Yu et al. Alg. 1 for two conflicting rows, worked out directly."""
    g1, g2 = J0
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert torch.allclose(combine_gradients("pcgrad", J0), p1 + p2)
    # No conflict: PCGrad is the plain sum (its scaling is the sum, as the paper's).
    J = torch.tensor([[1.0, 2.0, 0.0], [0.5, 1.0, 3.0]], dtype=torch.float64)
    assert torch.allclose(combine_gradients("pcgrad", J), J.sum(0))


def test_config_formula():
    """Liu et al. 2024, eq. 2: ĝ ∝ U⁺1, length Σ_t g_t·ĝ."""
    J = rand_jacobian(3, 7, 1)
    U = J / J.norm(dim=1, keepdim=True)
    direction = torch.linalg.pinv(U) @ torch.ones(3, dtype=J.dtype)
    unit = direction / direction.norm()
    expected = (J @ unit).sum() * unit
    d = combine_gradients("config", J)
    assert torch.allclose(d, expected, atol=1e-9)
    cos = (J @ d) / (J.norm(dim=1) * d.norm())
    assert torch.allclose(cos, cos[0].expand(3), atol=1e-9)  # equal angle with every task


def test_cagrad_against_scipy():
    """The dual of CAGrad solved independently with scipy, then d = (g0 + λ g_w)/(1 + c²)."""
    J = rand_jacobian(3, 6, 2)
    c = 0.4
    G = (J @ J.T).numpy()
    g0 = J.mean(0).numpy()
    phi = c * np.linalg.norm(g0)
    Jn = J.numpy()

    def obj(w):
        gw = w @ Jn
        return gw @ g0 + phi * np.linalg.norm(gw)

    res = scipy.optimize.minimize(
        obj,
        np.ones(3) / 3,
        bounds=[(0, 1)] * 3,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
        options={"ftol": 1e-12, "maxiter": 500},
    )
    gw = res.x @ Jn
    expected = (g0 + phi / np.linalg.norm(gw) * gw) / (1 + c**2)
    d = combine_gradients("cagrad", J, c=c).numpy()
    assert np.allclose(d, expected, atol=2e-4 * np.linalg.norm(expected))
    assert G.shape == (3, 3)
    # rescale 0 is TorchJD's unscaled form.
    d0 = combine_gradients("cagrad", J, c=c, rescale=0).numpy()
    assert np.allclose(d0, d * (1 + c**2), atol=1e-9)


def test_nash_mtl_solves_the_bargaining_equation():
    """Navon et al.: Gα = 1/α element-wise, solved independently with scipy (the official
    code normalises G for the solver but puts the factor back in the constraint)."""
    J = rand_jacobian(3, 8, 3)
    G = (J @ J.T).numpy()
    alpha = scipy.optimize.fsolve(lambda a: G @ a - 1 / a, np.ones(3))
    expected = alpha @ J.numpy()
    d = combine_gradients("nash_mtl", J, max_norm=0.0).numpy()
    assert np.allclose(d, expected, rtol=5e-3, atol=1e-3)
    clipped = combine_gradients("nash_mtl", J, max_norm=0.5)
    assert clipped.norm() == pytest.approx(min(0.5, float(np.linalg.norm(expected))), rel=1e-3)


def test_graddrop_keeps_agreeing_signs():
    """When every task's gradient has the same sign in a coordinate, P ∈ {0, 1}: all kept."""
    J = torch.tensor([[1.0, -2.0, 3.0], [0.5, -1.0, 0.25]], dtype=torch.float64)
    torch.manual_seed(0)
    assert torch.allclose(combine_gradients("graddrop", J), J.sum(0))
    # Opposite signs: each coordinate keeps exactly one sign's gradients.
    J = torch.tensor([[1.0, -2.0], [-3.0, 4.0]], dtype=torch.float64)
    d = combine_gradients("graddrop", J)
    for k in range(2):
        assert float(d[k]) in (float(J[0, k]), float(J[1, k]))
    leaky = combine_gradients("graddrop", J, leak=1.0)
    assert torch.allclose(leaky, J.sum(0))


def test_gradvac_first_step_is_pcgrad_then_targets_move():
    """With φ̂ = 0, GradVac corrects exactly the negative cosines, as PCGrad does."""
    torch.manual_seed(0)
    assert torch.allclose(combine_gradients("gradvac", J0), combine_gradients("pcgrad", J0))
    b = build_balancer(
        {"type": "gradvac", "beta": 0.5}, ("x", "y"), dict.fromkeys("xy", "regression")
    )
    b.aggregate(J0, None)
    cos = float(J0[0] @ J0[1] / (J0[0].norm() * J0[1].norm()))
    # φ̂ ← (1 − β)·0 + β·φ for the pair, the cosine of g_x (unmodified when visited) with g_y.
    assert float(b.phi[0, 1]) == pytest.approx(0.5 * cos)


def test_moco_first_step_by_hand():
    J = rand_jacobian(2, 4, 4)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    ghat = J / (J.norm(dim=1, keepdim=True) + 1e-8) * losses[:, None]
    y = 0.5 * ghat  # y = 0 − β(0 − ĝ) with β_1 = 0.5
    lam = torch.softmax(
        torch.full((2,), 0.5, dtype=torch.float64)
        - 0.1 * (y @ y.T) @ torch.full((2,), 0.5, dtype=torch.float64),
        0,
    )
    assert torch.allclose(combine_gradients("moco", J, losses=losses), y.T @ lam)


def test_db_mtl_first_step_by_hand():
    J = rand_jacobian(2, 5, 5)
    losses = torch.tensor([4.0, 0.25], dtype=torch.float64)
    g = J / (losses[:, None] + 1e-8)
    buf = g + 0.9 * (0 - g)
    n = buf.norm(dim=1)
    expected = (n.max() / (n + 1e-8)) @ buf
    assert torch.allclose(combine_gradients("db_mtl", J, losses=losses), expected)


# ----- the properties each method claims ---------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["upgrad", "mgda", "dualproj"])
def test_non_conflicting(name, seed):
    """UPGrad, MGDA and DualProj: J d ≥ 0, no task's loss increases to first order."""
    J = rand_jacobian(3, 5, seed)
    J[2] = -J[1] + 0.3 * J[0]  # make rows conflict
    assert (J @ J.T).min() < 0
    options = {"normalize": "none"} if name == "mgda" else {}
    d = combine_gradients(name, J, **options)
    assert d.norm() > 1e-3
    # TorchJD's quadprog projector regularises G by 1e-4 relative: first order, not exact.
    assert (J @ d).min() >= -1e-3 * J.norm() * d.norm()
    assert (J.sum(0) @ J.T).min() < 0  # while the plain sum does increase some task's loss


@pytest.mark.parametrize("seed", range(3))
def test_pcgrad_removes_the_conflicting_component(seed):
    """Two tasks: each projected gradient is orthogonal to the other task's gradient."""
    J = rand_jacobian(2, 5, seed)
    if J[0] @ J[1] > 0:
        J[1] = -J[1]
    g1, g2 = J
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    assert abs(float(p1 @ g2)) < 1e-9
    assert torch.allclose(combine_gradients("pcgrad", J), p1 + g2 - (g2 @ g1) / (g1 @ g1) * g1)


@pytest.mark.parametrize("seed", range(3))
def test_imtl_g_equal_projections(seed):
    J = rand_jacobian(3, 6, seed)
    d = combine_gradients("imtl_g", J)
    proj = (J @ d) / J.norm(dim=1)
    assert torch.allclose(proj, proj[0].expand(3), atol=1e-8)


def test_aligned_mtl_aligns():
    """Bᵀ-transformed gradients are orthogonal with equal norms (condition number 1)."""
    J = rand_jacobian(3, 6, 7)
    G = J @ J.T
    lam, V = torch.linalg.eigh(G)
    B = lam.min().sqrt() * V @ torch.diag(1 / lam.sqrt()) @ V.T
    aligned = B @ J
    gram = aligned @ aligned.T
    assert torch.allclose(gram, lam.min() * torch.eye(3, dtype=J.dtype), atol=1e-8)
    assert torch.allclose(combine_gradients("aligned_mtl", J), aligned.sum(0), atol=1e-8)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_permutation_invariance(name):
    J = rand_jacobian(3, 5, 11)
    options = {"normalize": "l2"} if name == "mgda" else {}
    d = combine_gradients(name, J, **options)
    for perm in itertools.permutations(range(3)):
        dp = combine_gradients(name, J[list(perm)], **options)
        assert torch.allclose(d, dp, atol=1e-4 * d.norm())


# ----- the one backward pass ---------------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self, tasks=TASKS) -> None:
        super().__init__()
        self.shared = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6)
        )
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(6, 1) for t in tasks})

    def forward(self, x):
        z = torch.tanh(self.shared(x))
        return z, {t: h(z) for t, h in self.heads.items()}


def data(seed=0, tasks=TASKS):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    ys = {t: torch.sin((i + 1) * x[:, :1]) + 0.1 * i for i, t in enumerate(tasks)}
    return x, ys


def losses_of(model, x, ys):
    z, out = model(x)
    return z, {t: torch.nn.functional.mse_loss(out[t], ys[t]) for t in ys}


@pytest.mark.parametrize("on", ["parameters", "representation"])
def test_backward_gives_aggregate_to_shared_and_own_loss_to_heads(on):
    torch.manual_seed(0)
    model = Tiny()
    x, ys = data()
    shared = list(model.shared.parameters())
    b = build_balancer({"type": "upgrad", "wrt": on}, TASKS, KINDS)
    z, losses = losses_of(model, x, ys)
    b.backward(losses, shared_params=shared, shared_repr=z)
    got_shared = torch.cat([p.grad.reshape(-1) for p in shared])
    got_heads = {t: model.heads[t].weight.grad.clone() for t in TASKS}
    # Recompute independently.
    model.zero_grad()
    z, losses = losses_of(model, x, ys)
    target = shared if on == "parameters" else [z]
    rows = []
    for t in TASKS:
        gs = torch.autograd.grad(losses[t], target, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    d = combine_gradients("upgrad", torch.stack(rows))
    if on == "parameters":
        expected = d
    else:
        gs = torch.autograd.grad(z, shared, grad_outputs=d.view_as(z), retain_graph=True)
        expected = torch.cat([g.reshape(-1) for g in gs])
    assert torch.allclose(got_shared, expected, atol=1e-5, rtol=1e-4)
    for t in TASKS:
        (own,) = torch.autograd.grad(losses[t], model.heads[t].weight, retain_graph=True)
        assert torch.allclose(got_heads[t], own, atol=1e-6)


class FakeRanks:
    """Records what a balancer reduces (the trainer's ``Ranks`` with several processes)."""

    def __init__(self, world: int = 2) -> None:
        self.world, self.seen = world, []

    def mean(self, x):
        self.seen.append(("mean", tuple(x.shape)))
        return x

    def sample_gramian(self, gram):
        self.seen.append(("sample_gramian", tuple(gram.shape)))
        return gram


def test_processes_reduce_the_jacobian_or_the_gramian_before_solving():
    model = Tiny()
    x, ys = data()
    shared = list(model.shared.parameters())
    n = sum(p.numel() for p in shared)
    b = build_balancer({"type": "pcgrad"}, TASKS, KINDS)
    b.ranks = FakeRanks()
    _, losses = losses_of(model, x, ys)
    b.backward(losses, shared_params=shared)
    assert b.ranks.seen == [("mean", (3, n))]
    b = build_balancer({"type": "upgrad", "wrt": "representation"}, TASKS, KINDS)
    b.ranks = FakeRanks()
    z, losses = losses_of(model, x, ys)
    b.backward(losses, shared_params=shared, shared_repr=z)
    assert b.ranks.seen == [("sample_gramian", (3, 3))]
    b = build_balancer({"type": "graddrop", "wrt": "representation"}, TASKS, KINDS)
    b.ranks = FakeRanks()
    z, losses = losses_of(model, x, ys)
    with pytest.raises(BalancerError, match="cannot be reduced over processes"):
        b.backward(losses, shared_params=shared, shared_repr=z)


# ----- every balancer trains, and resumes exactly --------------------------------------


def make(name, tasks=TASKS):
    return build_balancer({"type": name}, tasks, dict.fromkeys(tasks, "regression"), validate=True)


def train(model, balancer, steps, x, ys, opt):
    shared = list(model.shared.parameters())
    totals = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        z, losses = losses_of(model, x, ys)
        balancer.backward(losses, shared_params=shared, shared_repr=z)
        opt.step()
        with torch.no_grad():
            balancer.after_step(StepView({}, {}, {}, lambda: losses_of(model, x, ys)[1]))
        totals.append(sum(float(v) for v in losses.values()))
        balancer.end_epoch()  # one "epoch" per step, so DWA's ratios start moving
    return totals


@pytest.mark.parametrize("name", list(BALANCERS))
def test_every_balancer_lowers_the_loss(name):
    torch.manual_seed(0)
    model = Tiny()
    b = make(name)
    x, ys = data()
    opt = torch.optim.Adam([*model.parameters(), *b.parameters()], lr=1e-2)
    with torch.no_grad():
        start = sum(float(v) for v in losses_of(model, x, ys)[1].values())
    train(model, b, 25, x, ys, opt)
    with torch.no_grad():
        end = sum(float(v) for v in losses_of(model, x, ys)[1].values())
    assert end < 0.8 * start, (name, start, end)
    w = b.weights()
    assert set(w) == set(TASKS) and all(np.isfinite(list(w.values())))


STATEFUL = ["famo", "dwa", "gradvac", "nash_mtl", "moco", "db_mtl", "gradnorm", "imtl_l"]


@pytest.mark.parametrize("name", STATEFUL)
def test_exact_resume(name):
    """k steps, save, n more; against: k steps, save, load into fresh objects, n more."""
    x, ys = data()

    def fresh():
        torch.manual_seed(0)
        model, b = Tiny(), make(name)
        opt = torch.optim.Adam([*model.parameters(), *b.parameters()], lr=1e-2)
        return model, b, opt

    model, b, opt = fresh()
    train(model, b, 4, x, ys, opt)
    saved = {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "balancer": {k: v.clone() for k, v in b.state_dict().items()},
        "opt": opt.state_dict(),
        "rng": torch.get_rng_state(),
    }
    import copy

    saved = copy.deepcopy(saved)
    straight = train(model, b, 4, x, ys, opt)
    model2, b2, opt2 = fresh()
    model2.load_state_dict(saved["model"])
    b2.load_state_dict(saved["balancer"])
    opt2.load_state_dict(saved["opt"])
    torch.set_rng_state(saved["rng"])
    resumed = train(model2, b2, 4, x, ys, opt2)
    assert resumed == straight
    for (k, v), v2 in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(v, v2), k


# ----- bad input -----------------------------------------------------------------------


def test_unknown_method_did_you_mean():
    with pytest.raises(BalancerError, match="did you mean 'pcgrad'"):
        combine_gradients("pcgard", J0)
    with pytest.raises(BalancerError, match="did you mean 'upgrad'"):
        build_balancer({"type": "upgrd"}, TASKS, KINDS)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"c": -1}, "c"),
        ({"c": "big"}, "c"),
        ({"rescale": 3}, "rescale"),
        ({"wrt": "layers"}, "wrt"),
        ({"cc": 1}, "cc"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(BalancerError, match=match):
        combine_gradients("cagrad", J0, **options)


def test_bad_jacobian_and_level():
    with pytest.raises(BalancerError, match="T ≥ 2"):
        combine_gradients("upgrad", J0[:1])
    with pytest.raises(BalancerError, match=r"\[T, P\]"):
        combine_gradients("upgrad", J0[0])
    with pytest.raises(BalancerError, match="loss-level"):
        combine_gradients("dwa", J0)
    with pytest.raises(BalancerError, match="needs the task losses"):
        combine_gradients("moco", J0)


def test_state_sized_methods_refuse_the_representation():
    with pytest.raises(BalancerError, match="shared parameters only"):
        build_balancer({"type": "moco", "wrt": "representation"}, TASKS, KINDS)
    b = build_balancer({"type": "pcgrad", "wrt": "representation"}, TASKS, KINDS)
    assert b.needs_shared_repr
    model = Tiny()
    x, ys = data()
    _, losses = losses_of(model, x, ys)
    with pytest.raises(BalancerError, match="shared representation"):
        b.backward(losses, shared_params=list(model.shared.parameters()), shared_repr=None)


def test_missing_extra_gives_a_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "quadprog" else real(name, *a)
    )
    with pytest.raises(BalancerError, match=r"mtlc\[balancers\]"):
        build_balancer({"type": "upgrad"}, TASKS, KINDS)


def test_cagrad_solver_failure_falls_back_and_logs_once(monkeypatch, caplog):
    import torchjd.aggregation as agg

    def boom(self, gram):
        raise RuntimeError("solver failed")

    monkeypatch.setattr(agg.CAGradWeighting, "forward", boom)
    b = build_balancer(
        {"type": "cagrad", "c": 0.5, "rescale": 0}, ("x", "y"), dict.fromkeys("xy", "regression")
    )
    with caplog.at_level(logging.WARNING, logger="mtlc"):
        d1 = b.aggregate(J0, None)
        b.aggregate(J0, None)
    assert torch.allclose(d1, 1.5 * J0.mean(0))  # w = 1/T: d = (1 + c) g0
    assert sum("cagrad" in r.message for r in caplog.records) == 1


def test_nash_mtl_solver_failure_keeps_previous_weights_and_logs_once(monkeypatch, caplog):
    import cvxpy

    b = build_balancer(
        {"type": "nash_mtl", "max_norm": 0}, ("x", "y"), dict.fromkeys("xy", "regression")
    )
    first = b.aggregate(J0, None)

    def boom(*a, **k):
        raise cvxpy.error.SolverError("ECOS failed")

    monkeypatch.setattr(cvxpy.Problem, "solve", boom)
    b.engine._init_optim_problem()  # rebuild, so the failing solve is the one wrapped
    with caplog.at_level(logging.WARNING, logger="mtlc"):
        second = b.aggregate(J0, None)
        b.aggregate(J0, None)
    assert torch.allclose(first, second)
    assert sum("nash_mtl" in r.message for r in caplog.records) == 1


def test_every_gradient_method_is_registered_as_one():
    assert set(GRADIENT) >= {
        "mgda",
        "pcgrad",
        "graddrop",
        "gradvac",
        "cagrad",
        "imtl_g",
        "nash_mtl",
        "aligned_mtl",
        "upgrad",
        "dualproj",
        "config",
        "moco",
        "db_mtl",
    }
    for n in GRADIENT:
        cls = resolve(BALANCERS, n)
        assert n == "mgda" or issubclass(cls, GradientBalancer)


def test_gradnorm_first_step_gradient_by_hand():
    """Chen et al. 2018: L_grad = Σ|G_t − Ḡ r_t^α|; at the first step r_t = 1 and w = 1, so
    ∂L_grad/∂s_k = Σ_t sign(n_t − n̄)·n_t·(δ_tk − 1/T) with n_t = ‖∇_W L_t‖ (W = last shared weight)."""
    torch.manual_seed(0)
    model = Tiny()
    x, ys = data()
    b = make("gradnorm")
    shared = list(model.shared.parameters())
    _, losses = losses_of(model, x, ys)
    W = [p for p in shared if p.dim() >= 2][-1]
    n = torch.stack(
        [torch.autograd.grad(losses[t], W, retain_graph=True)[0].norm() for t in TASKS]
    ).double()
    b.backward(losses, shared_params=shared)
    sign = torch.sign(n - n.mean())
    T = len(TASKS)
    expected = torch.stack(
        [(sign * n * ((torch.arange(T) == k).double() - 1 / T)).sum() for k in range(T)]
    )
    assert torch.allclose(b.logits.grad.double(), expected, rtol=1e-4, atol=1e-7)
    # the network got Σ w_t L_t with w = 1: the heads their own loss's gradient
    (own,) = torch.autograd.grad(losses_of(model, x, ys)[1]["a"], model.heads["a"].weight)
    assert torch.allclose(model.heads["a"].weight.grad, own, atol=1e-6)


def test_gls_and_imtl_l_formulas():
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(0.25), "c": torch.tensor(1.0)}
    gls = make("gls")
    assert float(gls.combine(losses)) == pytest.approx((4.0 * 0.25 * 1.0) ** (1 / 3))
    assert gls.weights()["a"] == pytest.approx(1.0 / (3 * 4.0))
    imtl = make("imtl_l")
    with torch.no_grad():
        imtl.scales.copy_(torch.tensor([0.5, -1.0, 0.0]))
    total = imtl.combine(losses)
    expected = sum(np.exp(s) * float(v) - s for s, v in zip([0.5, -1.0, 0.0], losses.values()))
    assert float(total) == pytest.approx(expected, rel=1e-6)
    total.backward()  # ∂/∂s_t = e^{s_t} L_t − 1: zero where the scaled loss is 1
    assert imtl.scales.grad[2] == pytest.approx(0.0)
    assert imtl.scales.grad[0] == pytest.approx(np.exp(0.5) * 4.0 - 1, rel=1e-6)


def test_dwa_weights_from_the_last_two_epoch_means():
    """Liu et al. 2019: w_t = T·softmax(r_t/τ), r_t = L̄_t(e−1)/L̄_t(e−2); 1 before that."""
    dwa = build_balancer(
        {"type": "dwa", "temperature": 2.0}, ("x", "y"), dict.fromkeys("xy", "regression")
    )
    epochs = [[(2.0, 1.0), (4.0, 1.0)], [(1.0, 1.0), (1.0, 0.5)]]  # two steps per epoch
    for epoch in epochs:
        assert dwa.weights() == {"x": 1.0, "y": 1.0}
        for x, y in epoch:
            dwa.combine({"x": torch.tensor(x), "y": torch.tensor(y)})
        dwa.end_epoch()
    r = torch.tensor([1.0 / 3.0, 0.75 / 1.0])  # means: x 3 → 1, y 1 → 0.75
    expected = 2 * torch.softmax(r / 2.0, 0)
    assert list(dwa.weights().values()) == pytest.approx(expected.tolist())
