"""`--level ops`: the fx graph itself, clustered by stage and by block, shapes on edges.

This is the view for checking what the compiler emitted: one node per fx node (each
layer module, each getitem of a unit's tuple, each resize), inside a box per topology
block, inside a box per stage, in the block owner's colour. Shapes come from running
`torch.fx.passes.shape_prop.ShapeProp` on a meta-device zero image, so they are the
shapes the code really produces (batch dim dropped, as in the spec).
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from mtlc.colors import SHARED, SHARED_FILL, task_colours, tint
from mtlc.compiler import Compiled
from mtlc.viz.dot import DotWriter as _Dot
from mtlc.viz.dot import html_label as _html
from mtlc.viz.dot import shape_text


def _meta_shape(meta) -> str:
    if isinstance(meta, TensorMetadata):
        return shape_text(tuple(meta.shape)[1:])
    if isinstance(meta, (tuple, list)):
        return "(" + ", ".join(_meta_shape(m) for m in meta) + ")"
    if isinstance(meta, dict):
        return "{" + ", ".join(f"{k}: {_meta_shape(v)}" for k, v in meta.items()) + "}"
    return ""


def _module_text(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size
        text = f"Conv2d {k[0]}×{k[1]} {module.in_channels}→{module.out_channels}"
        return text + (f" /{module.stride[0]}" if module.stride[0] != 1 else "")
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{type(module).__name__}({module.num_features})"
    return type(module).__name__


def _op_text(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return _module_text(gm.get_submodule(n.target))
    if n.op == "call_function":
        if n.target is operator.getitem:
            return f"[{n.args[1]}]"
        return getattr(n.target, "__name__", str(n.target))
    if n.op == "call_method":
        return f".{n.target}()"
    return str(n.target)


def ops_dot(compiled: Compiled) -> str:
    """DOT source of the supervised fx graph (every prediction the trainer sees)."""
    gm = compiled.supervised
    spec = compiled.spec
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros((1, *spec.input_shape), device=_device(gm)))
    colour = task_colours(compiled.topology.tasks)

    clusters: dict[str, dict[str, list[fx.Node]]] = {}
    loose: list[fx.Node] = []
    for n in gm.graph.nodes:
        label = n.meta.get("mtlc")
        if label is None or n.op in ("placeholder", "output"):
            loose.append(n)
            continue
        stage = label.get("stage") or ("heads" if label.get("kind") == "head" else "outputs")
        clusters.setdefault(stage, {}).setdefault(label["block"], []).append(n)

    d = _Dot()
    d.add("rankdir=TB")
    d.add('fontname="Helvetica"')
    d.add("labelloc=t")
    d.add(f"label={_html([('b', f'{spec.name} · fx graph')])}")
    d.add('node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled"]')
    d.add('edge [fontname="Helvetica", fontsize=8, color="#666666", arrowsize=0.6]')
    for n in loose:
        text = "predictions" if n.op == "output" else f"{n.target} (input)"
        d.node(n.name, label=_html([("b", text)]), shape="oval", fillcolor="white")
    for stage, blocks in clusters.items():
        d.open(
            f"cluster_stage/{stage}", label=_html([("b", stage)]), style="rounded", color="#999999"
        )
        for block, nodes in blocks.items():
            owner = (
                compiled.topology.graph.nodes[block].get("owner")
                if block in compiled.topology.graph
                else None
            )
            c = colour.get(owner, SHARED)
            d.open(
                f"cluster_block/{block}",
                label=_html([("s", block)]),
                style="rounded,filled",
                fillcolor=tint(c, 0.92) if owner in colour else "#f7f7f7",
                color=c,
            )
            for n in nodes:
                node_owner = n.meta["mtlc"].get("owner")
                fill = tint(colour[node_owner]) if node_owner in colour else SHARED_FILL
                d.node(
                    n.name,
                    label=_html([("b", n.name), ("s", _op_text(gm, n))]),
                    fillcolor=fill,
                    color=colour.get(node_owner, SHARED),
                )
            d.close()
        d.close()
    for n in gm.graph.nodes:
        if n.op == "output":
            (result,) = n.args
            for key, src in result.items():
                d.edge(src.name, n.name, label=f"{key}: {_meta_shape(src.meta.get('tensor_meta'))}")
            continue
        for src in n.all_input_nodes:
            meta = src.meta.get("tensor_meta")
            if (
                n.op == "call_function"
                and n.target is operator.getitem
                and isinstance(meta, (tuple, list))
            ):
                meta = meta[n.args[1]]
            d.edge(src.name, n.name, label=_meta_shape(meta))
    return "digraph fx {\n" + "\n".join(d.lines) + "\n}\n"


def _device(gm: fx.GraphModule) -> torch.device:
    return next((t.device for t in gm.state_dict().values()), torch.device("meta"))
