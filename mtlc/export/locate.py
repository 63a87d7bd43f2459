"""Which node of the serving graph an exporter refuses, and where it is in the spec.

An exporter's own error names an ATen op or a line of generated code, not anything the
user wrote. When a whole-model export fails, the graph is run once eagerly, recording
the ops each fx node dispatches. If the error names an op (ONNX: "No ONNX function
found for <OpOverload(op='…')>"), the first node that ran it is the answer. Otherwise
each node is exported on its own, in graph order, on the inputs it received; the first
that fails is reported (an ONNX export per node costs seconds, hence the op match
first). Either way the node's block gives the spec location. This runs only after a
failure, so a working export pays nothing for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

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


_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)"),
    re.compile(r"target=torch\.ops\.([\w.]+?)\.(\w+)\]?\("),
)


class _Ops(TorchDispatchMode):
    """The names (`aten.conv2d.default`) of the ops run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def _named_ops(exc: BaseException) -> set[str]:
    """Ops (`ns.op.overload`) an exporter's error chain says it could not handle."""
    found: set[str] = set()
    while exc is not None:
        for pattern in _OP_PATTERNS:
            found |= {f"{m.group(1)}.{m.group(2)}" for m in pattern.finditer(str(exc))}
        exc = exc.__cause__ or exc.__context__
    return found


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause: exporters wrap the reason in advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def _error(
    gm: fx.GraphModule, node: fx.Node, topology: Topology, exporter: str, reason: str
) -> MtlcError:
    """`<spec>:line:col: <block path>: the X exporter refuses node 'n' (Type) of block 'b'`."""
    block = node.meta.get("mtlc", {}).get("block")
    what = (
        type(gm.get_submodule(str(node.target))).__name__
        if node.op == "call_module"
        else getattr(node.target, "__name__", str(node.target))
    )
    message = (
        f"the {exporter} exporter refuses node '{node.name}' ({what}) of block '{block}': {reason}"
    )
    if block in topology.graph:
        return spec_error(topology.spec, spec_path(topology.graph.nodes[block]), message)
    return MtlcError(message)


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
    ops: dict[fx.Node, set[str]] = {}

    class _Keep(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            with _Ops() as seen:
                env[n] = super().run_node(n)
            ops[n] = seen.names
            return env[n]

    try:
        with torch.no_grad():
            _Keep(gm).run(*example)
    except Exception:  # the eager model itself fails: report the exporter's message
        env = {}
    calls = [
        n
        for n in gm.graph.nodes
        if n.op in ("call_module", "call_function", "call_method") and n in env
    ]
    named = _named_ops(exc)
    for node in calls:
        if named & ops[node]:
            return _error(gm, node, topology, exporter, _first_line(exc))
    for node in calls:
        probe = _Probe(gm, node, env).eval()
        try:
            attempt(probe, probe.inputs)
        except Exception as inner:
            return _error(gm, node, topology, exporter, _first_line(inner))
    return MtlcError(f"the {exporter} exporter refuses the model: {_first_line(exc)}")


__all__ = ["refused"]
