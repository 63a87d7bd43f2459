"""Which balancers make the host wait for the device in a step, and that their log never does.

On `meta` tensors any host read raises (`.item()`, `float()`, `.tolist()`, `.cpu()`), so a
balancer step that runs on meta tensors would not wait for a GPU either. Every balancer's
:meth:`~mtlc.balancers.base.Balancer.step_log` runs there (the trainer reads it later, with
the losses); the steps themselves run there for every balancer whose method computes on the
device, and the others are listed with the host work that makes them wait.
"""

from __future__ import annotations

import pytest
import torch

from mtlc.balancers import build_balancer
from mtlc.balancers.base import Balancer, StepView
from mtlc.registry import BALANCERS

TASKS = ("a", "b", "c")
KINDS = dict.fromkeys(TASKS, "regression")

# balancers whose step reads values on the host (one wait per step on a GPU), and why
HOST_STEP = {
    "pcgrad": "TorchJD's PCGrad weighting copies the Gramian to the host",
    "gradvac": "its φ̂ state and TorchJD's GradVac run on the host",
    "cagrad": "the dual is solved by cvxpy on the host",
    "nash_mtl": "the bargaining problem is solved by cvxpy on the host",
    "imtl_g": "TorchJD's IMTL-G reads a value on the host",
    "aligned_mtl": "TorchJD's Aligned-MTL reads the Gramian's rank on the host",
    "upgrad": "quadprog solves the projections on the host",
    "dualproj": "quadprog solves the projection on the host",
}
# balancers whose after_step reads on the host: DTP's KPI is a metric of the batch,
# computed and range-checked on the host
HOST_AFTER_STEP = {"dtp"}


def meta_step():
    """A 3-task model's outputs and losses on the meta device (no data anywhere)."""
    shared = torch.nn.Linear(4, 6, device="meta")
    heads = [torch.nn.Linear(6, 1, device="meta") for _ in TASKS]
    z = torch.tanh(shared(torch.empty(5, 4, device="meta")))
    outs = {t: h(z) for t, h in zip(TASKS, heads, strict=True)}
    losses = {t: o.pow(2).mean() for t, o in outs.items()}
    view = StepView(
        outs,
        {t: torch.empty(5, 1, device="meta") for t in TASKS},
        dict.fromkeys(TASKS, ["abs_err"]),
        lambda: {t: o.pow(2).mean().detach() for t, o in outs.items()},
    )
    return list(shared.parameters()), z, losses, view


def test_the_lists_name_real_balancers():
    assert set(HOST_STEP) | HOST_AFTER_STEP <= set(BALANCERS)
    assert len(BALANCERS) == 22


@pytest.mark.parametrize("name", list(BALANCERS))
def test_a_step_and_its_log_read_nothing_back_unless_listed(name):
    balancer = build_balancer({"type": name}, TASKS, KINDS).to("meta")
    balancer.step_log()  # before any step: no read either
    params, z, losses, view = meta_step()
    if name in HOST_STEP:
        with pytest.raises((RuntimeError, NotImplementedError)):
            balancer.backward(losses, shared_params=params, shared_repr=z)
        return
    balancer.backward(losses, shared_params=params, shared_repr=z)
    log = balancer.step_log()
    assert all(t.device.type == "meta" for t in log.tensors)
    assert bool(log.tensors) == (type(balancer).log_tensors is not Balancer.log_tensors)
    if name in HOST_AFTER_STEP:
        with pytest.raises((RuntimeError, NotImplementedError)):
            balancer.after_step(view)
    else:
        balancer.after_step(view)


@pytest.mark.parametrize("name", list(BALANCERS))
def test_the_log_is_the_step_s_values_whatever_comes_after(name):
    """step_log() taken at a step reads, later, what weights() said at that step."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 6)
    heads = [torch.nn.Linear(6, 1) for _ in TASKS]
    balancer = build_balancer({"type": name}, TASKS, KINDS)
    optimizer = torch.optim.SGD(
        [*shared.parameters(), *(p for h in heads for p in h.parameters())]
        + list(balancer.parameters()),
        lr=0.1,
    )
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    logs, said = [], []
    for _ in range(3):
        z = torch.tanh(shared(x))
        outs = {t: h(z) for t, h in zip(TASKS, heads, strict=True)}
        losses = {t: (o - y * (i + 1)).pow(2).mean() for i, (t, o) in enumerate(outs.items())}
        optimizer.zero_grad()
        balancer.backward(losses, shared_params=list(shared.parameters()), shared_repr=z)
        logs.append(balancer.step_log())
        said.append((balancer.weights(), balancer.extra_state_for_log()))
        optimizer.step()
        view = StepView(outs, {t: y for t in TASKS}, dict.fromkeys(TASKS, ["abs_err"]), None)
        if name == "famo":
            view.recompute = lambda ls=losses: {t: v.detach() * 0.9 for t, v in ls.items()}
        balancer.after_step(view)
    assert [log.now() for log in logs] == said
    assert set(said[-1][0]) == set(TASKS)
