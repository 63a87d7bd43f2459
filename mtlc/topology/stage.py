"""What a sharing point's `build` works with: one encoder stage being added to the topology.

`build_topology` walks the stages in order and hands each to its point
(mtlc.sharing.point.StagePoint.build) as a `StageBuild`: the spec, the graph, each
task's *stream* (the node whose output it reads) and *feature* (which value of that
node: a cross-stitch or NDDR unit is one node with one output per task), and the
located-error helpers. The common layouts are methods here (`add_copies`,
`add_mixing_units`), so most points need no topology code of their own.

A hard stage, or an attention trunk, needs every task of a group to read the same
feature, which is what makes sharing a tree: groups may split later, never merge
again. A per-task stage followed by a shared one has no merge a user could expect
(average? concatenate? the first task's?), so it is refused at the sharing entry of
the stage that would merge (`merge_error`) rather than given a silent choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx

from mtlc.layers.parse import parse_layers, rejoin_calls
from mtlc.layers.vocab import Layer, LayerError, Shape, infer_shape
from mtlc.spec.base import StageSharing

if TYPE_CHECKING:
    from mtlc.spec.schema import Spec
    from mtlc.topology.build import Topology


def spec_err(spec: Spec, path: tuple, message: str, key: bool = False):
    from mtlc.spec.load import spec_error

    return spec_error(spec, path, message, key=key)


def parse_stage_layers(
    spec: Spec, items: Any, path: tuple, shape: Shape
) -> tuple[list[Layer], Shape]:
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
            raise spec_err(spec, path if parsed else path + (i,), str(exc)) from None
    return layers, shape


def infer(layers: list[Layer], shape: Shape) -> Shape:
    for layer in layers:
        shape = infer_shape(layer, shape)
    return shape


def who(tasks: tuple[str, ...], all_tasks: list[str]) -> str:
    return "shared" if len(tasks) == len(all_tasks) and len(all_tasks) > 1 else "+".join(tasks)


def merge_error(
    spec: Spec,
    stage: str,
    members,
    feature: dict[str, str],
    origin: dict[str, str],
    needs: str,
) -> Exception:
    """The located refusal of a stage that would merge tasks with features of their own.

    The hint lists the registered points that can follow such a stage (`follows_split`).
    """
    from mtlc.sharing.point import join_or, stage_points

    apart: dict[str, list[str]] = {}  # feature -> the merging tasks that read it
    for t in members:
        apart.setdefault(feature[t], []).append(t)
    if all(len(group) == 1 for group in apart.values()):
        tasks = f"tasks {', '.join(members)} already have separate features"
    else:
        groups = ", ".join(f"[{', '.join(group)}]" for group in apart.values())
        tasks = f"tasks {', '.join(members)} already have separate features (in groups {groups})"
    since = sorted({origin[t] for t in members if t in origin}, key=list(spec.encoder.stages).index)
    where = (
        ("encoder", "sharing", stage)
        if stage in spec.encoder.sharing
        else ("encoder", "stages", stage)
    )
    following = join_or([p.name for p in stage_points() if p.follows_split])
    return spec_err(
        spec,
        where,
        f"stage '{stage}' is '{spec.sharing_of(stage).type}' ({needs}), but {tasks} since stage "
        f"{', '.join(repr(s) for s in since)} and there is no defined way to merge them: sharing "
        f"can split in later stages, never merge again; give stage '{stage}' a per-task sharing "
        f"type ({following}) instead",
    )


@dataclass
class StageBuild:
    """One encoder stage as its point adds it; `stream`, `feature` and `origin` (the stage
    whose sharing gave a task features of its own) are the builder's, updated in place."""

    spec: Spec
    topo: Topology
    stage: str
    items: Any  # the stage's layer items, a backbone's cut layers, or a traced piece
    shape: Shape  # what the stage reads
    sharing: StageSharing
    stream: dict[str, str]
    feature: dict[str, str]
    origin: dict[str, str]
    link: Callable[[str, str, tuple[str, ...]], None]
    next_type: str | None  # the next stage's sharing type, None after the last stage
    named_backbone: bool  # the stages are a named backbone's parts
    carry: Any = None  # in: what the previous stage left, if it had this type; out: ours

    @property
    def g(self) -> nx.DiGraph:
        return self.topo.graph

    @property
    def tasks(self) -> list[str]:
        return self.topo.tasks

    @property
    def where(self) -> tuple:
        """The stage's sharing entry, where its point's errors point."""
        return ("encoder", "sharing", self.stage)

    def error(self, path: tuple, message: str, key: bool = False) -> Exception:
        """A located SpecError at `path` of the spec (raise it)."""
        return spec_err(self.spec, path, message, key=key)

    def layers(self, items: Any, path: tuple, shape: Shape) -> tuple[list[Layer], Shape]:
        return parse_stage_layers(self.spec, items, path, shape)

    def merge_error(self, members, needs: str) -> Exception:
        return merge_error(self.spec, self.stage, members, self.feature, self.origin, needs)

    def unclaimed(self, taken: bool, unit: str, task: str) -> None:
        """Refuse a unit id that a task's own node takes (task `nddr` in an NDDR stage)."""
        if taken:
            raise self.error(
                ("tasks", task),
                f"task name '{task}' would share its node id with the sharing unit '{unit}'; rename the task",
                key=True,
            )

    def add_block(
        self,
        block: str,
        owner: str | None,
        members: tuple[str, ...],
        layers: list[Layer],
        in_shape: Shape,
        out_shape: Shape,
    ) -> None:
        """A node of the stage's layers: what every point's copies, trunks and experts are."""
        self.g.add_node(
            block,
            kind="block",
            stage=self.stage,
            owner=owner,
            tasks=members,
            layers=layers,
            in_shape=in_shape,
            out_shape=out_shape,
            sharing=self.sharing.type,
        )

    def add_copies(self) -> Shape:
        """Copies of the stage's layers: one per group (`shared` layout) or per task."""
        tasks, sharing, stage = self.tasks, self.sharing, self.stage
        groups = sharing.groups or [tasks]
        if sharing.layout == "shared":
            copies = [tuple(gr) for gr in groups]
        else:
            copies = [(t,) for t in tasks]
        out: Shape | None = None
        for members in copies:
            if len({self.feature[t] for t in members}) > 1:
                needs = "one copy per group" if sharing.groups else "one copy for all tasks"
                raise self.merge_error(members, needs)
            sources = {self.stream[t] for t in members}
            layers, out = self.layers(self.items, ("encoder", "stages", stage), self.shape)
            block = f"{stage}/{who(members, tasks)}"
            owner = None if len(members) == len(tasks) and len(tasks) > 1 else "+".join(members)
            self.add_block(block, owner, members, layers, self.shape, out)
            self.link(sources.pop(), block, members)
            for t in members:
                self.stream[t] = self.feature[t] = block
                if len(members) < len(tasks):
                    self.origin.setdefault(t, stage)
        assert out is not None
        return out

    def add_mixing_units(self, shape: Shape) -> None:
        """After per-task copies: one unit `<stage>/<type>[/<group>]` per group of two or
        more tasks, reading each member's copy and giving each member its own output."""
        g, tasks, sharing, stage = self.g, self.tasks, self.sharing, self.stage
        kind = sharing.type
        for members in [tuple(gr) for gr in (sharing.groups or [tasks])]:
            if len(members) < 2:
                continue
            unit = f"{stage}/{kind}" + (
                "" if len(members) == len(tasks) else f"/{'+'.join(members)}"
            )
            self.unclaimed(unit in g, unit, kind)  # block `s/nddr`
            g.add_node(
                unit,
                kind="unit",
                type=kind,
                stage=stage,
                owner=None if len(members) == len(tasks) else "+".join(members),
                tasks=members,
                shape=shape,
                options=sharing.model_dump(exclude={"type", "groups"}),
            )
            for t in members:
                self.link(self.stream[t], unit, (t,))
                self.stream[t], self.feature[t] = unit, f"{unit}#{t}"
                self.origin.setdefault(t, stage)
