"""Turn a validated spec into its task-sharing topology.

The topology is the block-level picture every later layer reads: compile emits torch
code per block, viz draws blocks, diff compares them, profile rolls op costs up to
them. Node ids are stable, readable strings (`s2/seg`, `s2/cross_stitch`,
`head/depth`), so two specs can be compared node by node.

Node attributes (all nodes): `kind` — input | block | unit | predictor | head | output
| loss; `stage` — the stage name, "decoder" or None; `owner` — the task or group the node
belongs to, None when shared by all; `tasks` — the tasks whose features pass through it.
Blocks, heads and predictors carry `layers`, `in_shape`, `out_shape`; units carry
`type`, `options` and `shape`. Edges carry `tasks`: whose stream flows along them.

Each stage is added by its sharing point (mtlc.sharing.point.StagePoint.build, with
the helpers of mtlc.topology.stage); a point's own node attributes (MTAN's `role`, a
gate's `experts`) are documented in its file. A decoder adds per-task features and
initial predictions, then its point's unit between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from mtlc.layers.parse import parse_layer
from mtlc.layers.vocab import Shape
from mtlc.sharing.point import DECODER_STAGE, decoder_point, stage_point
from mtlc.spec.names import name_problem
from mtlc.spec.schema import Spec
from mtlc.topology.backbone import backbone_stages
from mtlc.topology.stage import StageBuild, parse_stage_layers, spec_err

# first parts of node ids that are not stages: a stage with one of these names would
# give its blocks the ids of inputs, heads, outputs or losses (`loss/seg`)
_NOT_STAGES = ("input", "head", "output", "loss", DECODER_STAGE)


@dataclass
class Topology:
    """The DAG plus the facts about it that every consumer asks for."""

    graph: nx.DiGraph
    spec: Spec
    tasks: list[str]
    outputs: list[str]
    stages: list[str]
    # supervised output key -> predictor/head node, e.g. "seg", "seg:initial"
    predictions: dict[str, str] = field(default_factory=dict)
    # the node every task reads after the encoder, when there is one (MGDA-UB's z)
    shared_repr: str | None = None
    # an imported backbone, traced and cut per stage (mtlc.topology.traced)
    traced: Any = None

    def nodes_of(self, kind: str) -> list[str]:
        return [n for n, d in self.graph.nodes(data=True) if d["kind"] == kind]


def build_topology(spec: Spec) -> Topology:
    """The topology of a validated spec; raises a located SpecError where it cannot be built."""
    for t in spec.tasks:
        problem = name_problem(t)
        if problem:
            raise spec_err(spec, ("tasks", t), f"task name {t!r} {problem}", key=True)
    for s in spec.encoder.stages:
        problem = name_problem(s) or (
            f"is reserved ({', '.join(map(repr, _NOT_STAGES))} name parts of the topology)"
            if s in _NOT_STAGES
            else None
        )
        if problem:
            raise spec_err(spec, ("encoder", "stages", s), f"stage name {s!r} {problem}", key=True)

    g = nx.DiGraph(name=spec.name)
    tasks = list(spec.tasks)
    topo = Topology(g, spec, tasks, spec.outputs, list(spec.encoder.stages))
    inp = f"input/{spec.input_name}"
    g.add_node(
        inp,
        kind="input",
        stage=None,
        owner=None,
        tasks=tuple(tasks),
        shape=spec.input_shape,
        name=spec.input_name,
    )

    stream: dict[str, str] = dict.fromkeys(tasks, inp)
    # the value each task reads: the stream node, plus the task for a per-task unit output
    feature: dict[str, str] = dict.fromkeys(tasks, inp)
    origin: dict[str, str] = {}  # the stage whose sharing gave a task features of its own
    shape: Shape = spec.input_shape
    carry: tuple[str, Any] | None = None  # (type, what a stage left for the next of its type)
    stage_names = list(spec.encoder.stages)

    def link(src: str, dst: str, flowing: tuple[str, ...]) -> None:
        if g.has_edge(src, dst):
            g.edges[src, dst]["tasks"] = tuple(
                sorted(set(g.edges[src, dst]["tasks"]) | set(flowing), key=tasks.index)
            )
        else:
            g.add_edge(src, dst, tasks=tuple(flowing))

    cut = backbone_stages(spec)
    if spec.encoder.backbone is not None and spec.encoder.backbone.import_ is not None:
        from mtlc.topology.traced import trace_backbone  # imports torch and the user's model

        topo.traced = trace_backbone(spec)
    for i, (stage, items) in enumerate(spec.encoder.stages.items()):
        if topo.traced is not None:
            items = topo.traced.pieces[stage]
        elif cut is not None:
            items = cut[stage]
        sharing = spec.sharing_of(stage)
        following = stage_names[i + 1] if i + 1 < len(stage_names) else None
        build = StageBuild(
            spec=spec,
            topo=topo,
            stage=stage,
            items=items,
            shape=shape,
            sharing=sharing,
            stream=stream,
            feature=feature,
            origin=origin,
            link=link,
            next_type=spec.sharing_of(following).type if following else None,
            named_backbone=cut is not None,
            carry=carry[1] if carry is not None and carry[0] == sharing.type else None,
        )
        shape = stage_point(sharing.type).build(build)
        carry = (sharing.type, build.carry) if build.carry is not None else None

    if topo.traced is not None:
        for _, a in g.nodes(data=True):
            if a["kind"] == "block" and a["stage"] in topo.traced.pieces:
                a["traced"] = topo.traced.pieces[a["stage"]].modules
    last = set(feature.values())
    if len(last) == 1 and g.nodes[next(iter(last))]["kind"] in ("block", "input"):
        topo.shared_repr = last.pop()
    if spec.decoder is not None:
        stream = _decoder(spec, topo, stream, shape, link)
    _heads(spec, topo, stream, shape, link)
    return topo


def _decoder(
    spec: Spec, topo: Topology, stream: dict[str, str], shape: Shape, link
) -> dict[str, str]:
    """Per-task features and initial predictions, then the decoder unit between them."""
    g, dec = topo.graph, spec.decoder
    if len(shape) != 3:
        raise spec_err(
            spec,
            ("decoder", "type"),
            f"decoder '{dec.type}' needs feature maps [C, H, W] from the encoder, which outputs {list(shape)}",
        )
    feat_shape = (dec.features, shape[1], shape[2])
    feature_layers = [
        parse_layer(f"conv({dec.features}, 3)"),
        parse_layer("bn"),
        parse_layer("relu"),
    ]
    order = getattr(dec, "order", None) or topo.tasks
    members = tuple(topo.tasks)  # every task makes features; `order` only says who takes turns
    if len(members) < 2:
        raise spec_err(
            spec, ("decoder",), "a decoder needs at least two tasks to exchange features"
        )
    out_shapes = {t: _head_shape(spec, t, feat_shape) for t in topo.tasks}
    for t, out in out_shapes.items():
        if len(out) != 3:
            raise spec_err(
                spec,
                ("tasks", t, "head"),
                f"decoder '{dec.type}' needs every task's head to output a map [C, H, W] for its intermediate predictions; got {list(out)}",
            )
    unit = f"{DECODER_STAGE}/{dec.type}"
    g.add_node(
        unit,
        kind="unit",
        type=dec.type,
        stage=DECODER_STAGE,
        owner=None,
        tasks=members,
        shape=feat_shape,
        options=dec.model_dump(exclude={"type"}) | {"order": list(order)},
        out_shapes={t: out_shapes[t] for t in members},
    )
    new_stream = dict(stream)
    for t in members:
        feat = f"{DECODER_STAGE}/{t}/features"
        g.add_node(
            feat,
            kind="block",
            stage=DECODER_STAGE,
            owner=t,
            tasks=(t,),
            layers=feature_layers,
            in_shape=shape,
            out_shape=feat_shape,
            sharing=dec.type,
        )
        link(stream[t], feat, (t,))
        task = spec.tasks[t]
        pred = f"{DECODER_STAGE}/{t}/initial"
        if task.auxiliary:
            layers, _ = parse_stage_layers(spec, task.head, ("tasks", t, "head"), feat_shape)
        else:
            layers = [parse_layer(f"conv({out_shapes[t][0]}, 1)")]
        g.add_node(
            pred,
            kind="predictor",
            stage=DECODER_STAGE,
            owner=t,
            tasks=(t,),
            layers=layers,
            in_shape=feat_shape,
            out_shape=out_shapes[t],
            resize=not task.auxiliary,
        )
        link(feat, pred, (t,))
        topo.predictions[t if task.auxiliary else f"{t}:initial"] = pred
        link(feat, unit, (t,))
        if not task.auxiliary:
            new_stream[t] = unit
        else:
            new_stream.pop(t)
    for key in decoder_point(dec.type).predictions(dec, spec):
        topo.predictions[key] = unit
    return new_stream


def _head_shape(spec: Spec, t: str, shape: Shape) -> Shape:
    return parse_stage_layers(spec, spec.tasks[t].head, ("tasks", t, "head"), shape)[1]


_LOSS_NEEDS = {
    "cross_entropy": (2, "class scores with at least 2 channels"),
    "cosine": (2, "a direction with at least 2 channels"),
}


def _heads(spec: Spec, topo: Topology, stream: dict[str, str], shape: Shape, link) -> None:
    g = topo.graph
    in_shape = {
        t: (spec.decoder.features, shape[1], shape[2]) if spec.decoder is not None else shape
        for t in stream
    }
    for t in topo.tasks:
        if t not in stream:  # an auxiliary task ended at its initial prediction
            _output(
                spec, topo, t, topo.predictions[t], g.nodes[topo.predictions[t]]["out_shape"], link
            )
            continue
        task = spec.tasks[t]
        layers, out = parse_stage_layers(spec, task.head, ("tasks", t, "head"), in_shape[t])
        head = f"head/{t}"
        g.add_node(
            head,
            kind="head",
            stage=None,
            owner=t,
            tasks=(t,),
            layers=layers,
            in_shape=in_shape[t],
            out_shape=out,
        )
        link(stream[t], head, (t,))
        topo.predictions[t] = head
        _output(spec, topo, t, head, out, link)


def _output(spec: Spec, topo: Topology, t: str, src: str, out: Shape, link) -> None:
    task = spec.tasks[t]
    need = _LOSS_NEEDS.get(task.loss_name)
    if need and out[0] < need[0]:
        raise spec_err(
            spec,
            ("tasks", t, "head"),
            f"loss '{task.loss_name}' needs {need[1]}, but the head outputs {list(out)}",
        )
    if task.loss_name == "cosine" and len(out) not in (1, 3):
        raise spec_err(
            spec,
            ("tasks", t, "head"),
            f"loss 'cosine' needs [C] or [C, H, W], but the head outputs {list(out)}",
        )
    g = topo.graph
    g.add_node(
        f"output/{t}",
        kind="output",
        stage=None,
        owner=t,
        tasks=(t,),
        shape=out,
        auxiliary=task.auxiliary,
    )
    link(src, f"output/{t}", (t,))
    g.add_node(f"loss/{t}", kind="loss", stage=None, owner=t, tasks=(t,), loss=task.loss_name)
    link(f"output/{t}", f"loss/{t}", (t,))
