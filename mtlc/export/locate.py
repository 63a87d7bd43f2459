"""Which node of the serving graph an exporter refuses, and where it is in the spec.

An exporter's own error names an ATen op or a line of generated code, not anything the
user wrote. When a whole-model export fails, each node of the (rewritten, labelled)
fx graph is exported on its own, in graph order, on the inputs it receives in one
eager run; the first that fails is the one to report, with its block's spec location.
This runs only after a failure, so a working export pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from mtlc.compiler.graph import spec_path
from mtlc.errors import MtlcError
from mtlc.spec.load import spec_error
from mtlc.topology import Topology


class _Probe(nn.Module):
    """One fx node as a module whose inputs are the tensors among the node's arguments."""

    def __init__(self, gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any]):
        super().__init__()
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
        self.leaves, self.tree = pytree.tree_flatten((args, kwargs))
        self.slots = [i for i, v in enumerate(self.leaves) if isinstance(v, torch.Tensor)]
        self.inputs = tuple(self.leaves[i] for i in self.slots)
        if node.op == "call_module":
            self.inner = gm.get_submodule(str(node.target))
            self.fn: Callable = self.inner
        elif node.op == "call_method":
            self.fn = lambda obj, *a, **k: getattr(obj, str(node.target))(*a, **k)
        else:
            self.fn = node.target  # type: ignore[assignment]

    def forward(self, *tensors: torch.Tensor) -> Any:
        leaves = list(self.leaves)
        for i, t in zip(self.slots, tensors):
            leaves[i] = t
        args, kwargs = pytree.tree_unflatten(leaves, self.tree)
        return self.fn(*args, **kwargs)


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def refused(
    gm: fx.GraphModule,
    example: tuple,
    attempt: Callable[[nn.Module, tuple], Any],
    topology: Topology,
    exporter: str,
    exc: BaseException,
) -> MtlcError:
    """The error to report for `exc`, naming the first node `attempt` cannot export alone."""
    env: dict[fx.Node, Any] = {}

    class _Keep(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            env[n] = super().run_node(n)
            return env[n]

    try:
        with torch.no_grad():
            _Keep(gm).run(*example)
    except Exception:  # the eager model itself fails: report the exporter's message
        env = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method") or node not in env:
            continue
        probe = _Probe(gm, node, env)
        try:
            attempt(probe, probe.inputs)
        except Exception as inner:
            label = node.meta.get("mtlc", {})
            block = label.get("block")
            what = (
                type(gm.get_submodule(str(node.target))).__name__
                if node.op == "call_module"
                else getattr(node.target, "__name__", str(node.target))
            )
            message = (
                f"the {exporter} exporter refuses node '{node.name}' ({what}) "
                f"of block '{block}': {_first_line(inner)}"
            )
            if block in topology.graph:
                return spec_error(topology.spec, spec_path(topology.graph.nodes[block]), message)
            return MtlcError(message)
    return MtlcError(f"the {exporter} exporter refuses the model: {_first_line(exc)}")


__all__ = ["refused"]
