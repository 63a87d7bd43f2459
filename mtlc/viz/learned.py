"""What a trained checkpoint learned, in the terms a topology drawing can show.

- cross-stitch α: the [T, T] matrix (target, source), averaged over channels when α is
  per channel, which is what Misra et al. plot;
- NDDR: per (target, source) pair the mean |diagonal| of that source's C×C block of
  the target's 1×1 conv: the conv starts as init·I per block, so its diagonal says how
  much of each task's own channels the target still takes in (Gao et al. inspect the
  same blocks);
- uncertainty σ_t = exp(s_t / 2) from the balancer's learned `log_vars` (s = log σ²).

Modules are found through the fx node labels (the call_module nodes whose `block` is
the unit), never by guessing state-dict names, so a unit's file may name its modules
as it likes. Attention-gate activations would need a forward pass over real data, so
the drawing does not show them.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from mtlc.checkpoint import check_fits
from mtlc.compiler import Compiled
from mtlc.errors import MtlcError


def _unit_modules(compiled: Compiled, unit: str) -> list[tuple[str, str | None, nn.Module]]:
    """(qualified name, owner, module) of every module the unit's fx nodes call."""
    gm = compiled.supervised
    return [
        (n.target, n.meta["mtlc"].get("owner"), gm.get_submodule(n.target))
        for n in gm.graph.nodes
        if n.op == "call_module" and n.meta.get("mtlc", {}).get("block") == unit
    ]


def cross_stitch_alpha(compiled: Compiled, state: dict, unit: str) -> list[list[float]] | None:
    for name, _, module in _unit_modules(compiled, unit):
        for pname, _ in module.named_parameters():
            if pname.split(".")[-1] == "alpha":
                alpha = state[f"{name}.{pname}"].float()
                if alpha.dim() > 2:
                    alpha = alpha.flatten(2).mean(-1)
                return alpha.tolist()
    return None


def nddr_strengths(compiled: Compiled, state: dict, unit: str) -> list[list[float]] | None:
    tasks = list(compiled.topology.graph.nodes[unit]["tasks"])
    rows: dict[str, list[float]] = {}
    for name, owner, module in _unit_modules(compiled, unit):
        if owner not in tasks or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        w = state[f"{name}.weight"].float()
        c = w.shape[0]
        if w.shape[1] != len(tasks) * c:
            continue
        w = w.reshape(c, len(tasks), c)  # [out, source, in]
        rows[owner] = [w[:, s, :].diagonal().abs().mean().item() for s in range(len(tasks))]
    return [rows[t] for t in tasks] if len(rows) == len(tasks) else None


def uncertainty_sigma(compiled: Compiled, balancer: dict) -> dict[str, float]:
    s = balancer.get("log_vars")
    tasks = compiled.topology.tasks
    if s is None or s.numel() != len(tasks):
        return {}
    return {t: math.exp(v / 2) for t, v in zip(tasks, s.float().tolist())}


def learned(compiled: Compiled, ckpt: dict[str, Any], where: str) -> dict[str, Any]:
    """`alpha`, `nddr` and `sigma` for `Notes`, from a checkpoint of this spec."""
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise MtlcError(f"{where} holds no model weights")
    check_fits(compiled, state, where)
    g = compiled.topology.graph
    alpha, nddr = {}, {}
    for u, d in g.nodes(data=True):
        if d["kind"] != "unit":
            continue
        if d["type"] == "cross_stitch" and (a := cross_stitch_alpha(compiled, state, u)):
            alpha[u] = a
        elif d["type"] == "nddr" and (m := nddr_strengths(compiled, state, u)):
            nddr[u] = m
    # The balancer's state says what it was (the spec given may set another balancer).
    balancer = ckpt.get("balancer")
    sigma = uncertainty_sigma(compiled, balancer) if isinstance(balancer, dict) else {}
    return {"alpha": alpha, "nddr": nddr, "sigma": sigma}
