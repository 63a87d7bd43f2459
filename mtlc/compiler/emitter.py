"""The builder that sharing points and the compiler write fx nodes through.

Every node gets a label in `node.meta["mtlc"]`: `block` (the topology node it
implements), `stage`, `kind` (layer | unit | head | predictor | resize | input |
output) and `owner` (the task or group it belongs to, None when shared). After the
graph is complete the compiler adds `tasks`: the tasks whose predictions depend on the
node. Profile and viz sum and colour by these labels.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from mtlc.compiler.reload import new_graph
from mtlc.layers.modules import build_module
from mtlc.layers.vocab import Layer, Shape, infer_shape
from mtlc.topology import Topology


def module_prefix(block: str, attrs: dict[str, Any]) -> str:
    """Where a block's layers live in the root module: `encoder.s2.seg`, `heads.depth`…"""
    if attrs["kind"] == "head":
        return f"heads.{attrs['owner']}"
    if attrs["stage"] == "decoder":
        return "decoder." + ".".join(block.split("/")[1:])
    stage, who = block.split("/")
    return f"encoder.{stage}.{who.replace('+', '_')}"


def _fetch(root: nn.Module, qualname: str) -> Any:
    *parents, leaf = qualname.split(".")
    return getattr(root.get_submodule(".".join(parents)), leaf)


class Emitter:
    """Owns the root module and the fx graph while a spec is compiled."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.root = nn.Module()
        self.graph = new_graph()
        # topology node -> {task or output key: fx node carrying that task's value}
        self.values: dict[str, dict[str, fx.Node]] = {}

    # -- node attributes of the topology ------------------------------------------------
    def attrs(self, block: str) -> dict[str, Any]:
        return self.topology.graph.nodes[block]

    def inputs(self, block: str) -> dict[str, dict[str, fx.Node]]:
        """For each predecessor of `block`: the values it passes along the edge, per task."""
        g = self.topology.graph
        return {
            src: {t: self.values[src][t] for t in g.edges[src, block]["tasks"]}
            for src in g.predecessors(block)
        }

    def streams(self, block: str) -> dict[str, fx.Node]:
        """Each task's incoming value, for units whose predecessors carry one task each."""
        merged: dict[str, fx.Node] = {}
        for values in self.inputs(block).values():
            merged.update(values)
        return merged

    # -- writing nodes --------------------------------------------------------------------
    def add_module(self, qualname: str, module: nn.Module) -> str:
        """Register `module` under a dotted name (containers are created as needed)."""
        *parents, leaf = qualname.split(".")
        parent = self.root
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        if hasattr(parent, leaf):
            raise AssertionError(f"module name '{qualname}' is used twice")
        parent.add_module(leaf, module)
        return qualname

    def _label(self, node: fx.Node, block: str, kind: str, owner: str | None) -> fx.Node:
        attrs = self.attrs(block)
        node.meta["mtlc"] = {
            "block": block,
            "stage": attrs.get("stage"),
            "kind": kind,
            "owner": owner,
        }
        return node

    def has_module(self, qualname: str) -> bool:
        try:
            self.root.get_submodule(qualname)
        except AttributeError:
            return False
        return True

    def call_module(
        self,
        qualname: str,
        module: nn.Module | None,
        args: tuple,
        *,
        block: str,
        kind: str,
        owner: str | None,
    ) -> fx.Node:
        """Call `module`, registered as `qualname`; `None` calls the one registered there before.

        Calling a registered module again is how weights are reused inside one graph
        (a predictor shared by every JTRL step, MTAN's refinement shared by the tasks).
        """
        target = self.add_module(qualname, module) if module is not None else qualname
        return self._label(self.graph.call_module(target, args), block, kind, owner)

    def call_function(
        self,
        fn: Callable,
        args: tuple,
        kwargs: dict | None = None,
        *,
        block: str,
        kind: str,
        owner: str | None,
    ) -> fx.Node:
        return self._label(self.graph.call_function(fn, args, kwargs or {}), block, kind, owner)

    def getitem(
        self, value: fx.Node, index: int, *, block: str, kind: str, owner: str | None
    ) -> fx.Node:
        return self.call_function(
            operator.getitem, (value, index), block=block, kind=kind, owner=owner
        )

    def layers(
        self,
        prefix: str,
        layers: list[Layer],
        x: fx.Node,
        shape: Shape,
        *,
        block: str,
        kind: str,
        owner: str | None,
    ) -> tuple[fx.Node, Shape]:
        """Emit a layer list as one call_module node per layer, named `prefix.<layer><i>`.

        A layer with a fixed module name (a backbone's `layer3.2`) is registered under it.
        """
        for i, layer in enumerate(layers):
            x = self.call_module(
                f"{prefix}.{layer.module or f'{layer.name}{i}'}",
                build_module(layer, shape),
                (x,),
                block=block,
                kind=kind,
                owner=owner,
            )
            shape = infer_shape(layer, shape)
        return x, shape

    def inline(
        self,
        piece: Any,
        source: fx.GraphModule,
        x: fx.Node,
        prefix: str,
        *,
        block: str,
        owner: str | None,
    ) -> fx.Node:
        """Copy a piece of a traced model (mtlc.topology.traced) into the graph, reading `x`.

        Its modules and attributes are copied under `prefix` with their own names (so a
        copy per task gets its own weights), its functions and methods are called as they
        were; a module the piece calls twice is copied once and called twice.
        """
        device = torch.get_default_device()  # meta while profiling: no weights copied
        env: dict[fx.Node, Any] = {piece.input: x}

        def value(n: fx.Node) -> Any:
            if n not in env:  # only attributes may come from outside the piece
                assert n.op == "get_attr", f"{n.name} crosses a cut"
                qualname = f"{prefix}.{n.target}"
                if not self.has_attr(qualname):
                    self.add_attr(qualname, _fetch(source, str(n.target)), device)
                env[n] = self._label(self.graph.get_attr(qualname), block, "layer", owner)
            return env[n]

        for node in piece.nodes:
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), value)
            if node.op == "call_module":
                qualname = f"{prefix}.{node.target}"
                module = None
                if not self.has_module(qualname):
                    module = copy.deepcopy(source.get_submodule(str(node.target))).to(device)
                out = self.call_module(
                    qualname, module, args, block=block, kind="layer", owner=owner
                )
                out.kwargs = kwargs
            else:
                out = self._label(
                    self.graph.create_node(node.op, node.target, args, kwargs),
                    block,
                    "layer",
                    owner,
                )
            env[node] = out
        return env[piece.output]

    def has_attr(self, qualname: str) -> bool:
        *parents, leaf = qualname.split(".")
        try:
            return hasattr(self.root.get_submodule(".".join(parents)), leaf)
        except AttributeError:
            return False

    def add_attr(self, qualname: str, value: Any, device: torch.device) -> None:
        """Register a copied parameter, buffer or constant tensor under a dotted name."""
        *parents, leaf = qualname.split(".")
        parent = self.root
        for part in parents:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        if isinstance(value, nn.Parameter):
            parent.register_parameter(
                leaf, nn.Parameter(value.detach().clone().to(device), value.requires_grad)
            )
        elif isinstance(value, torch.Tensor):
            parent.register_buffer(leaf, value.detach().clone().to(device))
        else:
            setattr(parent, leaf, copy.deepcopy(value))

    def resize(
        self, x: fx.Node, size: tuple[int, ...], *, block: str, owner: str | None
    ) -> fx.Node:
        """Bilinear resize of a feature map to `size` (H, W)."""
        return self.call_function(
            torch.nn.functional.interpolate,
            (x,),
            {"size": tuple(size), "mode": "bilinear", "align_corners": False},
            block=block,
            kind="resize",
            owner=owner,
        )
