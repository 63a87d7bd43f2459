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

MTAN attention units also carry `role`: a stage's per-task gates (`s2/attention/seg`,
role "gate") read the shared trunk block, and from the second attention stage on also
the stage's one refinement unit (`s2/attention/refine`, role "refine", owner None),
which takes each task's previous gate and hands the refined feature to that task's
new gate; edges into and out of it carry one task each. A gate's `reads` names the trunk
block its mask sees (u_b) and `gates` the one it multiplies (u_t): the same block, or,
for MTAN on a ResNet (`split`), `s2/shared` (the stage's blocks but the last) and
`s2/last` (the last block).

While building we follow each task's *stream* (the node whose output it reads) and
its *feature* (which value of that node: a cross-stitch or NDDR unit is one node with
one output per task). A hard stage, or an attention trunk, needs every task of a
group to read the same feature, which is what makes sharing a tree: groups may split
later, never merge again. A per-task stage followed by a shared one has no merge a
user could expect (average? concatenate? the first task's?), so it is refused at the
sharing entry of the stage that would merge rather than given a silent choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from mtlc.layers.vocab import (
    Layer,
    LayerError,
    Shape,
    infer_shape,
    parse_layer,
    parse_layers,
    rejoin_calls,
)
from mtlc.spec.names import name_problem
from mtlc.spec.schema import Spec
from mtlc.topology.backbone import backbone_stages
from mtlc.topology.experts import expert_stage

DECODER_STAGE = "decoder"
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


def _err(spec: Spec, path: tuple, message: str, key: bool = False):
    from mtlc.spec.load import spec_error

    return spec_error(spec, path, message, key=key)


def _layers(spec: Spec, items: list, path: tuple, shape: Shape) -> tuple[list[Layer], Shape]:
    """Parse a layer list and push `shape` through it, locating any problem."""
    if hasattr(items, "out_shape"):  # a piece of a traced model: its nodes are its layers
        return [], items.out_shape
    layers = []
    parsed = all(isinstance(item, Layer) for item in items)  # a backbone's, already cut
    for i, item in enumerate(items if parsed else rejoin_calls(items)):
        try:
            for layer in [item] if parsed else parse_layers(item):
                shape = infer_shape(layer, shape)
                layers.append(layer)
        except LayerError as exc:
            raise _err(spec, path if parsed else path + (i,), str(exc)) from None
    return layers, shape


def _infer(layers: list[Layer], shape: Shape) -> Shape:
    for layer in layers:
        shape = infer_shape(layer, shape)
    return shape


def _splittable(spec: Spec, stage: str, layers: list[Layer], traced: bool) -> None:
    """MTAN's ResNet form needs blocks before the last, and u_b shaped like u_t."""
    where = ("encoder", "sharing", stage)
    if traced:
        raise _err(spec, where, "split needs the stage's blocks; a traced backbone has none")
    if len(layers) < 2:
        raise _err(
            spec, where, f"split needs at least two blocks in stage '{stage}', it has {len(layers)}"
        )


def mtan_pool(before: Shape, after: Shape) -> tuple[int, int] | None:
    """The integer (kH, kW) whose max-pool maps `before`'s H×W onto `after`'s, if any.

    MTAN carries a task's attended feature from one attention stage to the next through
    a shared refinement and a pool; only an integer pooling factor can do that exactly.
    """
    factors = []
    for b, a in zip(before[1:], after[1:]):
        k = b // a
        if k < 1 or b // k != a:
            return None
        factors.append(k)
    return factors[0], factors[1]


def _who(tasks: tuple[str, ...], all_tasks: list[str]) -> str:
    return "shared" if len(tasks) == len(all_tasks) and len(all_tasks) > 1 else "+".join(tasks)


def _unclaimed(spec: Spec, taken: bool, unit: str, task: str) -> None:
    """Refuse a unit id that a task's own node takes (task `nddr` in an NDDR stage)."""
    if taken:
        raise _err(
            spec,
            ("tasks", task),
            f"task name '{task}' would share its node id with the sharing unit '{unit}'; rename the task",
            key=True,
        )


def _merge_error(
    spec: Spec,
    stage: str,
    members,
    feature: dict[str, str],
    origin: dict[str, str],
    needs: str,
) -> Exception:
    """The located refusal of a stage that would merge tasks with features of their own."""
    apart: dict[str, list[str]] = {}  # feature -> the merging tasks that read it
    for t in members:
        apart.setdefault(feature[t], []).append(t)
    if all(len(group) == 1 for group in apart.values()):
        who = f"tasks {', '.join(members)} already have separate features"
    else:
        groups = ", ".join(f"[{', '.join(group)}]" for group in apart.values())
        who = f"tasks {', '.join(members)} already have separate features (in groups {groups})"
    since = sorted({origin[t] for t in members if t in origin}, key=list(spec.encoder.stages).index)
    where = (
        ("encoder", "sharing", stage)
        if stage in spec.encoder.sharing
        else ("encoder", "stages", stage)
    )
    return _err(
        spec,
        where,
        f"stage '{stage}' is '{spec.sharing_of(stage).type}' ({needs}), but {who} since stage "
        f"{', '.join(repr(s) for s in since)} and there is no defined way to merge them: sharing "
        f"can split in later stages, never merge again; give stage '{stage}' a per-task sharing "
        "type (separate, cross_stitch or nddr) instead",
    )


def build_topology(spec: Spec) -> Topology:
    """The topology of a validated spec; raises a located SpecError where it cannot be built."""
    for t in spec.tasks:
        problem = name_problem(t)
        if problem:
            raise _err(spec, ("tasks", t), f"task name {t!r} {problem}", key=True)
    for s in spec.encoder.stages:
        problem = name_problem(s) or (
            f"is reserved ({', '.join(map(repr, _NOT_STAGES))} name parts of the topology)"
            if s in _NOT_STAGES
            else None
        )
        if problem:
            raise _err(spec, ("encoder", "stages", s), f"stage name {s!r} {problem}", key=True)

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
    trunk: str | None = None  # the shared trunk of consecutive attention stages
    chain: str | None = None  # the shared gate of the previous PLE level
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
    for stage, items in spec.encoder.stages.items():
        if topo.traced is not None:
            items = topo.traced.pieces[stage]
        elif cut is not None:
            items = cut[stage]
        sharing = spec.sharing_of(stage)
        path = ("encoder", "stages", stage)
        if sharing.layout == "experts":
            following = stage_names[stage_names.index(stage) + 1 :]
            last = not following or spec.sharing_of(following[0]).type != sharing.type
            helpers = {"err": _err, "layers": _layers, "link": link, "merge": _merge_error}
            shape, chain = expert_stage(
                spec, g, stage, items, shape, (stream, feature, origin), chain, last, helpers
            )
            trunk = None
            continue
        chain = None
        if sharing.layout == "trunk":
            if trunk is None and len(set(feature.values())) > 1:
                raise _merge_error(
                    spec, stage, tasks, feature, origin, "attention needs one shared trunk"
                )
            src = trunk or next(iter(stream.values()))
            layers, out = _layers(spec, items, path, shape)
            if len(out) != 3:
                raise _err(
                    spec,
                    ("encoder", "sharing", stage),
                    f"attention needs feature maps [C, H, W]; stage '{stage}' outputs {list(out)}",
                )
            if trunk is not None and mtan_pool(shape, out) is None:
                raise _err(
                    spec,
                    ("encoder", "sharing", stage),
                    f"attention cannot carry the previous stage's attended features {list(shape)} to stage '{stage}' ({list(out)}): "
                    "its H and W must shrink by an integer pooling factor",
                )
            block = f"{stage}/shared"
            split = sharing.split if sharing.split is not None else cut is not None
            if split:
                _splittable(spec, stage, layers, topo.traced is not None)
            u_b = _infer(layers[:-1], shape) if split else out
            if u_b[1:] != out[1:]:
                raise _err(
                    spec,
                    ("encoder", "sharing", stage),
                    f"split: the blocks but the last give {list(u_b)}, the last block {list(out)}; "
                    "the mask needs the same H×W",
                )
            g.add_node(
                block,
                kind="block",
                stage=stage,
                owner=None,
                tasks=tuple(tasks),
                layers=layers[:-1] if split else layers,
                in_shape=shape,
                out_shape=u_b,
                sharing=sharing.type,
            )
            link(src, block, tuple(tasks))
            gated = block
            if split:  # MTAN on ResNet: u_b above, the last block gives u_t
                gated = f"{stage}/last"
                g.add_node(
                    gated,
                    kind="block",
                    stage=stage,
                    owner=None,
                    tasks=tuple(tasks),
                    layers=layers[-1:],
                    in_shape=u_b,
                    out_shape=out,
                    sharing=sharing.type,
                )
                link(block, gated, tuple(tasks))
            refine = None
            if trunk is not None:
                # one refinement for all tasks: its own node, so its weights are counted
                # and drawn once rather than inside whichever task's gate came first
                refine = f"{stage}/attention/refine"
                _unclaimed(spec, "refine" in tasks, refine, "refine")  # gate `s/attention/refine`
                g.add_node(
                    refine,
                    kind="unit",
                    type="attention",
                    role="refine",
                    stage=stage,
                    owner=None,
                    tasks=tuple(tasks),
                    shape=out,
                    options=sharing.model_dump(exclude={"type"}),
                )
            for t in tasks:
                gate = f"{stage}/attention/{t}"
                g.add_node(
                    gate,
                    kind="unit",
                    type="attention",
                    role="gate",
                    stage=stage,
                    owner=t,
                    tasks=(t,),
                    shape=out,
                    options=sharing.model_dump(exclude={"type"}),
                    reads=block,  # u_b, what the mask sees
                    gates=gated,  # u_t, what the mask multiplies
                )
                link(block, gate, (t,))
                if gated != block:
                    link(gated, gate, (t,))
                if refine is not None:
                    link(stream[t], refine, (t,))
                    link(refine, gate, (t,))
                stream[t] = feature[t] = gate
                origin.setdefault(t, stage)
            trunk, shape = gated, out
            continue

        trunk = None
        groups = sharing.groups or [tasks]
        if sharing.layout == "shared":
            copies = [tuple(gr) for gr in groups]
        else:
            copies = [(t,) for t in tasks]
        layers_out: Shape | None = None
        for members in copies:
            if len({feature[t] for t in members}) > 1:
                needs = "one copy per group" if sharing.groups else "one copy for all tasks"
                raise _merge_error(spec, stage, members, feature, origin, needs)
            sources = {stream[t] for t in members}
            layers, layers_out = _layers(spec, items, path, shape)
            block = f"{stage}/{_who(members, tasks)}"
            owner = None if len(members) == len(tasks) and len(tasks) > 1 else "+".join(members)
            g.add_node(
                block,
                kind="block",
                stage=stage,
                owner=owner,
                tasks=members,
                layers=layers,
                in_shape=shape,
                out_shape=layers_out,
                sharing=sharing.type,
            )
            link(sources.pop(), block, members)
            for t in members:
                stream[t] = feature[t] = block
                if len(members) < len(tasks):
                    origin.setdefault(t, stage)
        shape = layers_out
        if sharing.type == "nddr" and len(shape) not in (1, 3):
            raise _err(
                spec,
                ("encoder", "sharing", stage),
                f"nddr needs feature maps [C, H, W] or vectors [F]; stage '{stage}' outputs {list(shape)}",
            )
        if sharing.layout == "per_task" and sharing.type != "separate":
            for members in [tuple(gr) for gr in (sharing.groups or [tasks])]:
                if len(members) < 2:
                    continue
                unit = f"{stage}/{sharing.type}" + (
                    "" if len(members) == len(tasks) else f"/{'+'.join(members)}"
                )
                _unclaimed(spec, unit in g, unit, sharing.type)  # block `s/nddr`
                g.add_node(
                    unit,
                    kind="unit",
                    type=sharing.type,
                    stage=stage,
                    owner=None if len(members) == len(tasks) else "+".join(members),
                    tasks=members,
                    shape=shape,
                    options=sharing.model_dump(exclude={"type", "groups"}),
                )
                for t in members:
                    link(stream[t], unit, (t,))
                    stream[t], feature[t] = unit, f"{unit}#{t}"
                    origin.setdefault(t, stage)

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
        raise _err(
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
        raise _err(spec, ("decoder",), "a decoder needs at least two tasks to exchange features")
    out_shapes = {t: _head_shape(spec, t, feat_shape) for t in topo.tasks}
    for t, out in out_shapes.items():
        if len(out) != 3:
            raise _err(
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
            layers, _ = _layers(spec, task.head, ("tasks", t, "head"), feat_shape)
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
    if dec.type == "recursive":
        for step in range(1, dec.steps + 1):
            for t in order:
                if not spec.tasks[t].auxiliary:
                    topo.predictions[f"{t}:step{step}"] = unit
    return new_stream


def _head_shape(spec: Spec, t: str, shape: Shape) -> Shape:
    return _layers(spec, spec.tasks[t].head, ("tasks", t, "head"), shape)[1]


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
        layers, out = _layers(spec, task.head, ("tasks", t, "head"), in_shape[t])
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
        raise _err(
            spec,
            ("tasks", t, "head"),
            f"loss '{task.loss_name}' needs {need[1]}, but the head outputs {list(out)}",
        )
    if task.loss_name == "cosine" and len(out) not in (1, 3):
        raise _err(
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
