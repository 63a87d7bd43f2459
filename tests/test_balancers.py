"""Balancers: the formulas against hand-worked values, MGDA's solver against an
independent one, the backward passes against recomputed gradients, and a few
training steps per balancer on a tiny two-task model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from mtlc.balancers import Balancer, BalancerError, build_balancer
from mtlc.balancers.dtp import DTP
from mtlc.balancers.fixed import Fixed
from mtlc.balancers.mgda import MGDA, mgda_weights
from mtlc.balancers.min_norm import min_norm
from mtlc.balancers.uncertainty import Uncertainty

TASKS = ("seg", "depth")
KINDS = {"seg": "classification", "depth": "regression"}


# ----- a tiny two-task model ---------------------------------------------------------


class TinyMTL(torch.nn.Module):
    """A shared Linear + tanh, a 3-class head (cross-entropy) and a 1-d head (MSE)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = torch.nn.Linear(4, 6)
        self.heads = torch.nn.ModuleDict(
            {"seg": torch.nn.Linear(6, 3), "depth": torch.nn.Linear(6, 1)}
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = torch.tanh(self.shared(x))
        return z, {t: head(z) for t, head in self.heads.items()}


def tiny_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyMTL()
    x = torch.randn(16, 4)
    targets = {"seg": torch.randint(0, 3, (16,)), "depth": torch.randn(16, 1)}
    return model, x, targets


def task_losses(model: TinyMTL, x, targets):
    z, out = model(x)
    losses = {
        "seg": torch.nn.functional.cross_entropy(out["seg"], targets["seg"]),
        "depth": torch.nn.functional.mse_loss(out["depth"], targets["depth"]),
    }
    return z, losses


# ----- build_balancer and option checking ---------------------------------------------


def test_build_each_type_and_default():
    assert isinstance(build_balancer({}, TASKS, KINDS), Fixed)
    assert isinstance(build_balancer({"type": "fixed"}, TASKS, KINDS), Fixed)
    assert isinstance(
        build_balancer({"type": "uncertainty", "init": -0.5}, TASKS, KINDS), Uncertainty
    )
    assert isinstance(build_balancer({"type": "dtp", "gamma": {"seg": 2}}, TASKS, KINDS), DTP)
    mgda = build_balancer({"type": "mgda", "normalize": "l2", "mode": "ub"}, TASKS, KINDS)
    assert isinstance(mgda, MGDA) and mgda.level == "gradient"
    assert Fixed.level == Uncertainty.level == DTP.level == "loss"


def test_unknown_type_and_option_suggest():
    with pytest.raises(BalancerError, match="did you mean 'mgda'"):
        build_balancer({"type": "mgd"}, TASKS, KINDS)
    with pytest.raises(BalancerError, match="did you mean 'weights'"):
        build_balancer({"type": "fixed", "weigths": {"seg": 1}}, TASKS, KINDS)
    with pytest.raises(BalancerError, match="did you mean 'normalize'"):
        build_balancer({"type": "mgda", "normalise": "l2"}, TASKS, KINDS)
    assert issubclass(BalancerError, ValueError)


@pytest.mark.parametrize(
    "options",
    [
        {"type": "fixed", "weights": {"sge": 1.0}},
        {"type": "dtp", "gamma": {"sge": 2.0}},
        {"type": "dtp", "kpi": {"sge": "miou"}},
    ],
)
def test_unknown_task_in_per_task_option_is_named(options):
    with pytest.raises(BalancerError, match="'sge'.*not a task.*did you mean 'seg'"):
        build_balancer(options, TASKS, KINDS)


@pytest.mark.parametrize(
    "options",
    [
        {"type": "fixed", "weights": {"seg": -1}},
        {"type": "fixed", "weights": 2.0},
        {"type": "uncertainty", "init": "zero"},
        {"type": "dtp", "momentum": 1.0},
        {"type": "dtp", "init": 0.0},
        {"type": "dtp", "gamma": True},
        {"type": "dtp", "kpi": {"seg": 3}},
        {"type": "mgda", "normalize": "l1"},
        {"type": "mgda", "mode": "upper"},
        {"type": "mgda", "max_iter": 0},
        {"type": "mgda", "tol": 0},
    ],
)
def test_bad_option_values(options):
    with pytest.raises(BalancerError):
        build_balancer(options, TASKS, KINDS)


def test_bad_kinds_and_losses():
    with pytest.raises(BalancerError, match="kind"):
        Fixed(TASKS, {"seg": "classification", "depth": "segmentation"})
    balancer = Fixed(TASKS, KINDS)
    with pytest.raises(BalancerError, match="not a task"):
        balancer.combine({"sge": torch.tensor(1.0)})


# ----- loss-level formulas -------------------------------------------------------------


def test_fixed_weights_and_default_one():
    balancer = Fixed(
        ("a", "b", "c"), dict.fromkeys("abc", "regression"), weights={"a": 2.0, "c": 0.5}
    )
    assert balancer.weights() == {"a": 2.0, "b": 1.0, "c": 0.5}
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    total = balancer.backward({"a": x[0], "b": x[1], "c": x[2] ** 2}, shared_params=[])
    assert total.item() == pytest.approx(2 * 1 + 2 + 0.5 * 9)
    assert not total.requires_grad
    assert x.grad.tolist() == pytest.approx([2.0, 1.0, 0.5 * 2 * 3])


def test_uncertainty_formula_and_gradients():
    balancer = Uncertainty(TASKS, KINDS, init=0.3)
    with torch.no_grad():
        balancer.log_vars.copy_(torch.tensor([0.3, -1.2]))
    l_seg = torch.tensor(0.8, requires_grad=True)
    l_depth = torch.tensor(2.5, requires_grad=True)
    total = balancer.backward({"seg": l_seg, "depth": l_depth}, shared_params=[])
    s_seg, s_depth = 0.3, -1.2
    expected = (
        1.0 * math.exp(-s_seg) * 0.8 + s_seg / 2 + 0.5 * math.exp(-s_depth) * 2.5 + s_depth / 2
    )
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # ∂L/∂s_t = −c_t·exp(−s_t)·L_t + 1/2
    grad_s = balancer.log_vars.grad.tolist()
    assert grad_s[0] == pytest.approx(-1.0 * math.exp(-s_seg) * 0.8 + 0.5, rel=1e-6)
    assert grad_s[1] == pytest.approx(-0.5 * math.exp(-s_depth) * 2.5 + 0.5, rel=1e-6)
    assert l_depth.grad.item() == pytest.approx(0.5 * math.exp(-s_depth), rel=1e-6)
    assert balancer.weights() == pytest.approx(
        {"seg": math.exp(-s_seg), "depth": 0.5 * math.exp(-s_depth)}
    )
    log = balancer.extra_state_for_log()
    assert log["s_depth"] == pytest.approx(s_depth)
    assert log["sigma_depth"] == pytest.approx(math.exp(s_depth / 2))


def test_uncertainty_total_may_be_negative():
    balancer = Uncertainty(TASKS, KINDS, init=-3.0)
    total = balancer.combine({"seg": torch.tensor(0.0), "depth": torch.tensor(0.01)})
    assert total.item() < 0


def test_dtp_weights_after_observations_by_hand():
    balancer = DTP(TASKS, KINDS, gamma={"seg": 2.0}, momentum=0.5, kpi={"seg": "miou"})
    assert balancer.kpi == {"seg": "miou"}
    # Before any KPI: κ̄ = init = 0.5 for both; γ_seg = 2, γ_depth = 1 (default).
    assert balancer.weights() == pytest.approx(
        {"seg": -(0.5**2) * math.log(0.5), "depth": -0.5 * math.log(0.5)}
    )
    # momentum 0.5: κ̄ ← 0.5·κ̄ + 0.5·κ
    balancer.observe({"seg": 0.9, "depth": 0.2})  # seg 0.7, depth 0.35
    balancer.observe({"seg": 0.3})  # seg 0.5, depth unchanged
    balancer.observe({"seg": 0.1, "depth": float("nan")})  # seg 0.3, NaN skipped
    assert balancer.kpi_avg.tolist() == pytest.approx([0.3, 0.35])
    assert balancer.weights() == pytest.approx(
        {"seg": -(0.7**2) * math.log(0.3), "depth": -0.65 * math.log(0.35)}
    )
    # Loss level with constant weights.
    l_seg = torch.tensor(2.0, requires_grad=True)
    l_depth = torch.tensor(3.0, requires_grad=True)
    total = balancer.backward({"seg": l_seg, "depth": l_depth}, shared_params=[])
    w = balancer.weights()
    assert total.item() == pytest.approx(2.0 * w["seg"] + 3.0 * w["depth"])
    assert l_seg.grad.item() == pytest.approx(w["seg"])


def test_dtp_default_momentum_is_weight_of_old_average():
    balancer = DTP(TASKS, KINDS)
    balancer.observe({"seg": 1.0})  # 0.9·0.5 + 0.1·1.0
    assert balancer.kpi_avg[0].item() == pytest.approx(0.55)
    assert balancer.weights()["seg"] == pytest.approx(-0.45 * math.log(0.55))


def test_dtp_clamps_and_rejects_out_of_range():
    balancer = DTP(TASKS, KINDS, momentum=0.0)
    balancer.observe({"seg": 1.0, "depth": 0.0})
    w = balancer.weights()
    assert w["seg"] == pytest.approx(-(1e-4) * math.log(1 - 1e-4))
    assert w["depth"] == pytest.approx(-(1 - 1e-4) * math.log(1e-4))
    with pytest.raises(BalancerError, match="in \\[0, 1\\]"):
        balancer.observe({"seg": 1.5})
    with pytest.raises(BalancerError, match="not a task"):
        balancer.observe({"sge": 0.5})


# ----- MGDA's solver -----------------------------------------------------------------


def objective(grads: np.ndarray, alpha: np.ndarray) -> float:
    d = alpha @ grads
    return float(d @ d)


def slsqp_min_norm(grads: np.ndarray) -> np.ndarray:
    """An independent solver: SLSQP over the simplex."""
    gram = grads @ grads.T
    t = len(gram)
    result = scipy.optimize.minimize(
        lambda a: a @ gram @ a,
        np.full(t, 1.0 / t),
        jac=lambda a: 2 * gram @ a,
        bounds=[(0.0, 1.0)] * t,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1, "jac": lambda a: np.ones(t)}],
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    return result.x


def assert_simplex(alpha: torch.Tensor) -> None:
    assert (alpha >= 0).all()
    assert alpha.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_min_norm_reference_pair():
    jac = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    alpha = min_norm(jac)
    assert alpha.tolist() == pytest.approx([0.6, 0.4], abs=1e-12)
    assert (alpha @ jac).tolist() == pytest.approx([0.0, 1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_min_norm_two_tasks_closed_form(seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(2, 7)) + rng.normal(size=7)
    v11, v12, v22 = g[0] @ g[0], g[0] @ g[1], g[1] @ g[1]
    gamma = np.clip((v22 - v12) / (v11 + v22 - 2 * v12), 0.0, 1.0)
    alpha = min_norm(torch.tensor(g))
    assert alpha.tolist() == pytest.approx([gamma, 1 - gamma], abs=1e-12)


def test_min_norm_two_tasks_vertex_cases():
    # g2 lies beyond g1 along the same ray and to its side: the nearest point is g1 itself.
    g = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    assert min_norm(g).tolist() == [1.0, 0.0]
    assert min_norm(g.flip(0)).tolist() == [0.0, 1.0]
    assert min_norm(torch.ones(2, 3, dtype=torch.float64)).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("tasks", [3, 5, 8])
@pytest.mark.parametrize("seed", range(4))
def test_min_norm_matches_independent_solver(tasks, seed):
    rng = np.random.default_rng(100 * tasks + seed)
    params = 2 * tasks + 3 * seed
    grads = rng.normal(size=(tasks, params)) + rng.normal(size=params) * (0.5 + 0.5 * seed)
    alpha = min_norm(torch.tensor(grads))
    assert_simplex(alpha)
    ours = objective(grads, alpha.numpy())
    reference = objective(grads, slsqp_min_norm(grads))
    assert ours <= reference * (1 + 1e-6)
    assert ours == pytest.approx(reference, rel=1e-6)


def test_min_norm_gradient_inside_hull():
    g = torch.tensor(
        [[-1.0, -1.0, 1.0], [2.0, -1.0, 1.0], [-1.0, 2.0, 1.0], [0.5, 0.2, 1.0]],
        dtype=torch.float64,
    )
    # The triangle's centroid (0, 0, 1) is the min-norm point; g4 is inside the hull.
    alpha = min_norm(g)
    assert_simplex(alpha)
    assert (alpha @ g).tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-9)


def test_min_norm_vertex_and_origin_in_hull():
    g = torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [2.0, -1.0, 0.5]], dtype=torch.float64)
    assert min_norm(g).tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)
    # The origin inside the hull: a Pareto-stationary point, direction 0. With three
    # points α is unique (barycentric coordinates); with four, only the direction is.
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert min_norm(g).tolist() == pytest.approx([0.5, 0.25, 0.25], abs=1e-9)
    g = torch.cat([g, torch.tensor([[0.3, 2.0]], dtype=torch.float64)])
    alpha = min_norm(g)
    assert_simplex(alpha)
    assert objective(g.numpy(), alpha.numpy()) < 1e-10


def test_min_norm_degenerate_inputs():
    assert min_norm(torch.randn(1, 5)).tolist() == [1.0]
    assert min_norm(torch.zeros(3, 4)).tolist() == pytest.approx([1 / 3] * 3)
    assert min_norm(torch.randn(4, 0)).tolist() == pytest.approx([0.25] * 4)
    # max_iter = 1 still returns a point of the simplex.
    alpha = min_norm(torch.randn(6, 10, dtype=torch.float64), max_iter=1)
    assert_simplex(alpha)
    with pytest.raises(BalancerError):
        min_norm(torch.randn(5))


def test_mgda_normalisations():
    rng = np.random.default_rng(7)
    grads = torch.tensor(rng.normal(size=(4, 9)) + 1.0)
    losses = torch.tensor([0.5, 2.0, 1.5, 4.0], dtype=torch.float64)
    norms = grads.norm(dim=1, keepdim=True)
    cases = {
        "none": grads,
        "l2": grads / norms,
        "loss": grads / losses[:, None],
        "loss+": grads / (losses[:, None] * norms),
    }
    for mode, scaled in cases.items():
        alpha = mgda_weights(grads, losses, mode)
        assert objective(scaled.numpy(), alpha.numpy()) == pytest.approx(
            objective(scaled.numpy(), min_norm(scaled).numpy()), rel=1e-9
        ), mode
    # l2 ignores the scale of each gradient, loss+ also that of each loss. Rescaling moves
    # the Gram matrix by rounding errors, which the solver (tol 1e-6) can turn into ~1e-8
    # changes of α; 1e-9 failed now and then.
    rescale = torch.tensor([[3.0], [0.1], [10.0], [1.0]], dtype=torch.float64)
    assert mgda_weights(grads * rescale, losses, "l2").tolist() == pytest.approx(
        mgda_weights(grads, losses, "l2").tolist(), abs=1e-7
    )
    assert mgda_weights(grads, losses * 7, "loss+").tolist() == pytest.approx(
        mgda_weights(grads, losses, "loss+").tolist(), abs=1e-7
    )
    with pytest.raises(BalancerError, match="did you mean 'loss\\+'"):
        mgda_weights(grads, losses, "los+")


# ----- MGDA's backward -----------------------------------------------------------------


def reference_grads(model, x, targets, wrt):
    """Per-task gradients on a fresh forward: ({task: grads on wrt}, [T, P] on z, losses)."""
    z, losses = task_losses(model, x, targets)
    per_task = {
        t: torch.autograd.grad(losses[t], wrt(model), retain_graph=True, allow_unused=True)
        for t in TASKS
    }
    on_z = torch.stack(
        [torch.autograd.grad(losses[t], z, retain_graph=True)[0].reshape(-1) for t in TASKS]
    )
    return per_task, on_z, {t: v.detach() for t, v in losses.items()}


@pytest.mark.parametrize("mode", ["exact", "ub"])
def test_mgda_backward_matches_recomputed_gradients(mode):
    model, x, targets = tiny_setup(1)
    shared = list(model.shared.parameters())
    balancer = MGDA(TASKS, KINDS, mode=mode, normalize="loss+")
    z, losses = task_losses(model, x, targets)
    total = balancer.backward(losses, shared_params=shared, shared_repr=z)
    alpha = balancer.weights()
    assert_simplex(torch.tensor(list(alpha.values())))

    per_shared, on_z, values = reference_grads(
        model, x, targets, lambda m: list(m.shared.parameters())
    )
    loss_vec = torch.stack([values[t] for t in TASKS])
    if mode == "exact":
        flat = torch.stack([torch.cat([g.reshape(-1) for g in per_shared[t]]) for t in TASKS])
    else:
        flat = on_z
    expected_alpha = mgda_weights(flat, loss_vec, "loss+")
    assert list(alpha.values()) == pytest.approx(expected_alpha.tolist(), abs=1e-6)
    assert total.item() == pytest.approx(sum(alpha[t] * values[t].item() for t in TASKS), rel=1e-6)

    # Shared parameters hold exactly Σ α_t ∂L_t/∂W.
    for i, p in enumerate(shared):
        combined = sum(alpha[t] * per_shared[t][i] for t in TASKS)
        torch.testing.assert_close(p.grad, combined, rtol=1e-5, atol=1e-7)
    # Each head holds α_t ∂L_t/∂θ_t.
    for t in TASKS:
        own, _, _ = reference_grads(model, x, targets, lambda m, t=t: list(m.heads[t].parameters()))
        for p, g in zip(model.heads[t].parameters(), own[t]):
            torch.testing.assert_close(p.grad, alpha[t] * g, rtol=1e-5, atol=1e-7)


def test_mgda_exact_and_ub_weights_differ_but_both_on_simplex():
    model, x, targets = tiny_setup(2)
    shared = list(model.shared.parameters())
    found = {}
    for mode in ("exact", "ub"):
        balancer = MGDA(TASKS, KINDS, mode=mode, normalize="none")
        z, losses = task_losses(model, x, targets)
        balancer.backward(losses, shared_params=shared, shared_repr=z)
        found[mode] = torch.tensor(list(balancer.weights().values()))
        assert_simplex(found[mode])
    assert not torch.allclose(found["exact"], found["ub"], atol=1e-4)


def test_mgda_ub_needs_shared_repr_and_unused_params_are_zero():
    model, x, targets = tiny_setup(3)
    _, losses = task_losses(model, x, targets)
    with pytest.raises(BalancerError, match="mode 'ub' needs a shared representation"):
        MGDA(TASKS, KINDS, mode="ub").backward(losses, shared_params=[])
    unused = torch.nn.Parameter(torch.ones(3))
    balancer = MGDA(TASKS, KINDS)
    balancer.backward(losses, shared_params=[*model.shared.parameters(), unused])
    assert unused.grad is None


def test_mgda_single_present_task():
    model, x, targets = tiny_setup(4)
    _, losses = task_losses(model, x, targets)
    balancer = MGDA(TASKS, KINDS)
    total = balancer.backward({"depth": losses["depth"]}, shared_params=[])
    assert balancer.weights() == {"seg": 0.0, "depth": 1.0}
    assert total.item() == pytest.approx(losses["depth"].item())


# ----- training and resuming -------------------------------------------------------------


BALANCER_OPTIONS = [
    {"type": "fixed", "weights": {"seg": 1.0, "depth": 0.5}},
    {"type": "uncertainty"},
    {"type": "dtp", "gamma": 2.0},
    {"type": "mgda", "normalize": "loss+"},
    {"type": "mgda", "mode": "ub", "normalize": "l2"},
]


@pytest.mark.parametrize("options", BALANCER_OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_thirty_steps_reduce_the_losses(options):
    model, x, targets = tiny_setup(5)
    balancer = build_balancer(options, TASKS, KINDS)
    opt = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=0.1)

    def summed() -> float:
        with torch.no_grad():
            return sum(v.item() for v in task_losses(model, x, targets)[1].values())

    before = summed()
    for _ in range(30):
        opt.zero_grad()
        z, losses = task_losses(model, x, targets)
        total = balancer.backward(
            losses, shared_params=list(model.shared.parameters()), shared_repr=z
        )
        assert math.isfinite(total.item())
        opt.step()
        balancer.observe({t: math.exp(-v.item()) for t, v in losses.items()})
        assert set(balancer.weights()) == set(TASKS)
    assert summed() < 0.9 * before


def test_state_dict_round_trips():
    model, x, targets = tiny_setup(6)
    trained: dict[str, Balancer] = {
        "uncertainty": Uncertainty(TASKS, KINDS),
        "dtp": DTP(TASKS, KINDS),
        "mgda": MGDA(TASKS, KINDS),
    }
    with torch.no_grad():
        trained["uncertainty"].log_vars.copy_(torch.tensor([0.7, -0.4]))
    trained["dtp"].observe({"seg": 0.9, "depth": 0.1})
    z, losses = task_losses(model, x, targets)
    trained["mgda"].backward(losses, shared_params=list(model.shared.parameters()))

    for name, balancer in trained.items():
        state = balancer.state_dict()
        fresh = build_balancer({"type": name}, TASKS, KINDS)
        assert fresh.weights() != pytest.approx(balancer.weights()), name
        fresh.load_state_dict(state)
        assert fresh.weights() == pytest.approx(balancer.weights()), name
    assert set(trained["uncertainty"].state_dict()) == {"log_vars"}
    assert set(trained["dtp"].state_dict()) == {"kpi_avg"}
    assert set(trained["mgda"].state_dict()) == {"alpha"}
