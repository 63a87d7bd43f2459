"""The drawing kit: what a topology drawing and every sharing point's `draw` share.

`Drawer` (mtlc.viz.topology_view) lays the picture out; this base class holds the
helpers a point's drawing calls (`cluster`, `part`, `title`, `edge`, `fill`, `status`,
`weight`, ...), the task columns and colours, and the `Notes` (costs, learned values,
diff marks) the picture shows. Imports no torch.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mtlc.colors import SHARED, SHARED_FILL, task_colours, tint
from mtlc.topology import Topology
from mtlc.viz.dot import (
    COLUMN_WIDTH,
    NODESEP,
    STATUS,
    UNCHANGED,
    DotWriter,
    html_label,
    quote,
    si,
)


@dataclass
class Notes:
    """Numbers and learned values a drawing shows beside the structure.

    `learned[unit]` is what a sharing point's `learned` readout found for the unit in a
    checkpoint (cross-stitch's α, NDDR's block strengths, a gate's mean weights over
    `samples` validation samples), in the form that point's drawing reads. `status`
    marks nodes (and `edge_status` edges) of a diff, `task_status` the tasks only one
    side has (a changed unit's part for such a task is added or removed, not changed).
    """

    params: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] | None = None
    task_params: dict[str, int] = field(default_factory=dict)
    task_flops: dict[str, int] | None = None
    total_params: int | None = None
    shared_params: int | None = None
    total_flops: int | None = None
    learned: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    sigma: dict[str, float] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    edge_status: dict[tuple[str, str], str] = field(default_factory=dict)
    task_status: dict[str, str] = field(default_factory=dict)
    caption: str | None = None


def column_order(topo: Topology) -> list[str]:
    """The tasks left to right: the spec's order, except that the members of a group
    sit side by side.

    A group's box (a hard group, a cross-stitch inside a group) spans its members'
    columns, and a box can only span neighbours: with groups [[seg, edge], [depth,
    normal]] in spec order seg, depth, normal, edge, edge's mixing node would land in
    depth's column. The first stage with groups decides; colours stay by spec order.
    """
    tasks = list(topo.tasks)
    groups: list[tuple[str, ...]] = []
    for stage in topo.stages:
        groups = [
            tuple(d["tasks"])
            for _, d in topo.graph.nodes(data=True)
            if d.get("stage") == stage
            and d["kind"] in ("block", "unit")
            and 1 < len(d["tasks"]) < len(tasks)
        ]
        if groups:
            break
    order: list[str] = []
    for t in tasks:
        if t not in order:
            group = next((g for g in groups if t in g), (t,))
            order += [x for x in tasks if x in group and x not in order]
    return order


class DrawingKit:
    """The helpers of a topology drawing; `Drawer` adds the layout."""

    def __init__(self, topo: Topology, notes: Notes, loose: int = 0):
        self.topo, self.g, self.notes, self.loose = topo, topo.graph, notes, loose
        self.tasks = column_order(topo)  # left to right; colours keep the spec's order
        self.colour = task_colours(topo.tasks)
        self.diff = bool(notes.status or notes.edge_status or notes.task_status)
        if self.diff:  # a diff: colour means change, not task
            self.colour = dict.fromkeys(self.tasks, UNCHANGED)
        self.aux = {
            d["owner"]: bool(d.get("auxiliary"))
            for _, d in self.g.nodes(data=True)
            if d["kind"] == "output"
        }
        self.dot = DotWriter()
        self.rulers: list[str] = []

    def col(self, tasks: Iterable[str]) -> int:
        return min((self.tasks.index(t) for t in tasks if t in self.tasks), default=0)

    def edge_style(self, tasks: tuple[str, ...]) -> dict[str, object]:
        tasks = tuple(t for t in tasks if t in self.colour)
        if len(tasks) > 1 and len(tasks) == len(self.tasks):
            colour = SHARED
        else:
            colour = ":".join(self.colour[t] for t in tasks) or SHARED
        dashed = bool(tasks) and all(self.aux.get(t) for t in tasks)
        return {"color": colour, "style": "dashed" if dashed else None}

    def fill(self, owner_tasks: tuple[str, ...]) -> dict[str, object]:
        tasks = tuple(t for t in owner_tasks if t in self.colour)
        if not tasks or (len(tasks) == len(self.tasks) and len(tasks) > 1):
            return {"style": "filled", "fillcolor": SHARED_FILL, "color": SHARED}
        if len(tasks) == 1:
            t = tasks[0]
            style = "filled,dashed" if self.aux.get(t) else "filled"
            return {
                "style": style,
                "fillcolor": tint(self.colour[t]),
                "color": self.colour[t],
            }
        return {
            "style": "striped",
            "fillcolor": ":".join(tint(self.colour[t]) for t in tasks),
            "color": SHARED,
        }

    def cost_lines(self, node: str) -> list[tuple[str, str]]:
        parts = []
        if node in self.notes.params:
            parts.append(f"{si(self.notes.params[node])} params")
        if self.notes.flops is not None and node in self.notes.flops:
            parts.append(f"{si(self.notes.flops[node], 'FLOPs')}")
        return [("s", " · ".join(parts))] if parts else []

    def status(self, node: str, attrs: dict[str, object]) -> dict[str, object]:
        base, _, part = node.partition("#")
        status = self.notes.status.get(base)
        if status == "changed" and part.split("/")[-1] in self.notes.task_status:
            status = self.notes.task_status[part.split("/")[-1]]  # a task's part of a grown unit
        if status:
            colour = STATUS[status]
            attrs = dict(attrs, color=colour, penwidth=3.0, fillcolor=tint(colour))
            attrs["style"] = str(attrs.get("style", "filled")).replace("striped", "filled")
            attrs["fontcolor"] = colour if status == "removed" else "black"
        return attrs

    def width(self, tasks: Iterable[str]) -> float:
        k = max(1, len([t for t in tasks if t in self.colour]))
        return k * COLUMN_WIDTH + (k - 1) * NODESEP

    def _group(self, tasks: tuple[str, ...]) -> str | None:
        return tasks[0] if len(tasks) == 1 else None

    def cluster(self, u: str, title: str, detail: str) -> list[tuple[str, str]]:
        """Open the unit's dashed box; return its title lines for `_title` (or a part).

        The box has no label of its own: graphviz routes edges through cluster labels,
        and the edges into a unit all arrive where that label would sit.
        """
        owner = self.g.nodes[u].get("owner")
        if owner:
            title += f" · {owner}"
        status = self.notes.status.get(u)
        self.dot.open(
            f"cluster_{u}",
            label="",  # not the graph's title, which subgraphs inherit
            style="rounded,dashed",
            color=STATUS[status] if status else "#888888",
            penwidth=3 if status else 1,
        )
        return [("b", title), ("s", detail)] + self.cost_lines(u)

    def title(self, u: str, lines: list[tuple[str, str]], beside: str) -> None:
        """The unit's title as a node right of `beside`, on its row inside the box.

        A node is an obstacle that graphviz routes edges around, so no edge crosses it.
        """
        status = self.notes.status.get(u)
        node = f"~title/{u}"
        self.dot.node(
            node,
            shape="plaintext",
            label=html_label(lines),
            fontsize=10,
            fontcolor=STATUS[status] if status == "removed" else "#333333",
        )
        self.dot.open()
        self.dot.add("rank=same")
        self.dot.add(quote(beside))
        self.dot.add(quote(node))
        self.dot.edge(beside, node, style="invis")
        self.dot.close()

    def by_column(self, tasks: Iterable[str]) -> list[str]:
        return sorted(tasks, key=lambda t: self.col((t,)))

    def part(self, n: str, t: str | None, label: str, **attrs: object) -> None:
        base = {"label": label, "group": t}
        base.update(self.fill((t,) if t else tuple(self.tasks)))
        base.update(attrs)
        self.dot.node(n, **self.status(n, base))

    def in_edges(self, u: str) -> dict[str, tuple[str, ...]]:
        """The tasks on each edge into `u`, by source."""
        return {src: tuple(self.g.edges[src, u]["tasks"]) for src in self.g.predecessors(u)}

    def source_of(self, u: str) -> dict[str, str]:
        """Each task's source block on the edges into `u` (units whose inputs carry one
        task's stream per task)."""
        return {t: src for src, ts in self.in_edges(u).items() for t in ts}

    def out_edges(self, u: str) -> dict[str, tuple[str, ...]]:
        """The tasks on each edge out of `u`, by destination."""
        return {dst: tuple(self.g.edges[u, dst]["tasks"]) for dst in self.g.successors(u)}

    def part_edges_out(
        self, u: str, done: set[tuple[str, str]] | None = None
    ) -> set[tuple[str, str]]:
        """After a point drew the edges into its parts: each task's edge out of its part
        `u#task` (unless in `done`); returns the topology edges of `u`, all now drawn."""
        done = set(done or ())
        for src in self.g.predecessors(u):
            done.add((src, u))
        for dst, ts in self.out_edges(u).items():
            if (u, dst) not in done:
                for t in ts:
                    self.edge(f"{u}#{t}", dst, (t,))
                done.add((u, dst))
        return done

    def weight(self, source: str, w: float) -> str:
        """`source 0.91` in small type and the source task's colour (HTML-like label)."""
        colour = self.colour.get(source, SHARED)
        return f'<FONT POINT-SIZE="9" COLOR="{colour}">{html.escape(source)} {w:.2f}</FONT>'

    def weight_text(self, name: str, w: float) -> str:
        return f'<FONT POINT-SIZE="9">{html.escape(name)} {w:.2f}</FONT>'

    def generic_unit(self, u: str) -> None:
        a = self.g.nodes[u]
        lines = [("b", f"{a['type']} · {a['stage']}")] + self.cost_lines(u)
        attrs = {
            "label": html_label(lines),
            "shape": "hexagon",
            "width": self.width(a["tasks"]),
        }
        attrs.update(self.fill(tuple(self.tasks)))
        self.dot.node(u, **self.status(u, attrs))

    def main(self, tasks: Iterable[str]) -> list[str]:
        return [t for t in tasks if not self.aux.get(t)]

    def edge(
        self,
        a: str,
        b: str,
        tasks: tuple[str, ...],
        back: bool = False,
        **extra: object,
    ) -> None:
        """An edge a → b; `back` writes it as b → a drawn backwards, so b can sit left of a."""
        attrs = self.edge_style(tasks)
        attrs.update(extra)
        status = self.notes.edge_status.get((a.split("#")[0], b.split("#")[0]))
        if status:
            attrs["color"] = STATUS[status]
            attrs["penwidth"] = 2.5
        if back:
            self.dot.edge(b, a, dir="back", **attrs)
        else:
            self.dot.edge(a, b, **attrs)
