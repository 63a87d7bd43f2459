"""What a trained checkpoint learned, in the terms a topology drawing can show.

Each sharing point reads its own units (`learned` in its file, mtlc.sharing: cross-stitch
α, NDDR block strengths, a gate's mean weights) through a `Readout`; this module adds
the balancer's uncertainty σ_t = exp(s_t / 2) from its learned `log_vars` (s = log σ²).

Modules are found through the fx node labels (the call_module nodes whose `block` is
the unit), never by guessing state-dict names, so a unit's file may name its modules
as it likes. A value that depends on the input (a gate's weights) is the mean of the
unit's module outputs over the validation split (`Readout.mean_output`, one pass over
the data for every unit whose point `probes`).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from mtlc.checkpoint import check_fits
from mtlc.compiler import Compiled
from mtlc.errors import MtlcError
from mtlc.sharing.point import unit_point


class Readout:
    """A checkpoint's weights, and the model's units, as a point's `learned` reads them."""

    def __init__(self, compiled: Compiled, state: dict, where: str):
        self.compiled, self.state, self.where = compiled, state, where
        self.topology = compiled.topology
        self.spec = compiled.topology.spec  # the spec the model was compiled from
        self.samples = 0  # validation samples behind `mean_output`
        self._means: dict[str, list[Any]] | None = None

    def modules(self, unit: str) -> list[tuple[str, str | None, nn.Module]]:
        """(qualified name, owner, module) of every module the unit's fx nodes call."""
        gm = self.compiled.supervised
        return [
            (n.target, n.meta["mtlc"].get("owner"), gm.get_submodule(n.target))
            for n in gm.graph.nodes
            if n.op == "call_module" and n.meta.get("mtlc", {}).get("block") == unit
        ]

    def mean_output(self, unit: str) -> list[Any] | None:
        """The unit's module output averaged over the validation split (as a list)."""
        if self._means is None:
            from mtlc.viz.gates import mean_unit_outputs

            g = self.topology.graph
            probed = [
                u for u, d in g.nodes(data=True) if d["kind"] == "unit" and unit_point(d).probes
            ]
            self._means, self.samples = mean_unit_outputs(self.spec, self.state, self.where, probed)
        return self._means.get(unit)


def uncertainty_sigma(compiled: Compiled, balancer: dict) -> dict[str, float]:
    s = balancer.get("log_vars")
    tasks = compiled.topology.tasks
    if s is None or s.numel() != len(tasks):
        return {}
    return {t: math.exp(v / 2) for t, v in zip(tasks, s.float().tolist())}


def learned(compiled: Compiled, ckpt: dict[str, Any], where: str) -> dict[str, Any]:
    """`learned` (per unit), `samples` and `sigma` for `Notes`, from a checkpoint of this spec."""
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise MtlcError(f"{where} holds no model weights")
    check_fits(compiled, state, where)
    readout = Readout(compiled, state, where)
    found = {}
    for u, d in compiled.topology.graph.nodes(data=True):
        if d["kind"] == "unit" and (value := unit_point(d).learned(readout, u)):
            found[u] = value
    # The balancer's state says what it was (the spec given may set another balancer).
    balancer = ckpt.get("balancer")
    sigma = uncertainty_sigma(compiled, balancer) if isinstance(balancer, dict) else {}
    return {"learned": found, "samples": readout.samples, "sigma": sigma}
