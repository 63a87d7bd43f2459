"""A spec's task-sharing topology as graphviz DOT, laid out the way papers draw it.

Input on top, one row per encoder stage (a left-hand ruler names each row and its
sharing type), one column per task in a fixed colour that the task keeps everywhere:
its blocks, its edges, its head, its output and its legend entry. A hard stage is one
box spanning the columns it serves (a group box spans its group, striped in its
members' colours). Every sharing point keeps the shape its paper gives it, so a reader
recognises the method before reading a label; that drawing is in the point's own file
(mtlc.sharing, `draw`, `draw_edges`, `draw_edge`, `arrange`), which calls the public
helpers of `Drawer` (`cluster`, `part`, `title`, `edge`, `fill`, `status`, ...).

A unit's title is a node beside its parts inside its dashed box, never the box's
label: graphviz routes edges through cluster labels, and a unit's inputs arrive right
there. Columns follow the spec's task order except that a group's members sit side by
side (`column_order`); colours always follow the spec (`mtlc.colors`). In a diff the
colours mean added / removed / changed / unchanged and the legend is their key.

Auxiliary tasks are dashed. Node ids are the topology's own (`s2/seg`, `head/depth`);
a unit drawn as several nodes uses `unit#part` ids inside a `cluster_unit` box, so a
reader of the DOT or SVG (tests, diff) can always find the topology node again.
This module imports no torch: numbers arrive through `Notes`.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from mtlc.colors import SHARED, SHARED_FILL, task_colours, tint
from mtlc.sharing.point import stage_points, unit_point
from mtlc.topology import Topology
from mtlc.viz.dot import (
    COLUMN_WIDTH,
    NODESEP,
    STATUS,
    STATUS_MEANING,
    UNCHANGED,
    DotWriter,
    html_label,
    layers_text,
    quote,
    shape_text,
    si,
    small_cell,
    traced_text,
)

__all__ = [
    "STATUS",
    "UNCHANGED",
    "Drawer",
    "Notes",
    "column_order",
    "topology_dot",
    "topology_sources",
    "union_topology",
]


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


def topology_dot(topo: Topology, notes: Notes | None = None, *, loose: int = 0) -> str:
    """DOT source for the topology; `notes` adds costs, learned values and diff marks.

    `loose` drops row constraints: 1 the heads' and outputs' rows, 2 every row. Graphviz's
    ranking sometimes fails on constraints that can all be met ("trouble in init_rank",
    seen when rows are fed from two clusters, as in a diff's union of NDDR and a
    decoder); a drawing with fewer aligned rows beats none.
    """
    return Drawer(topo, notes or Notes(), loose).draw()


def topology_sources(topo: Topology, notes: Notes | None = None) -> list[str]:
    """The drawing from most to least constrained, for `render.write` to try in order."""
    return [topology_dot(topo, notes, loose=level) for level in (0, 1, 2)]


class Drawer:
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
        self.left: set[str] = set()  # MTAN gates drawn left of their trunk

    # -- helpers ----------------------------------------------------------------------
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
            return {"style": style, "fillcolor": tint(self.colour[t]), "color": self.colour[t]}
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

    def _row(self, label: str, sub: str, nodes: list[str], stage: bool = False) -> None:
        """A rank=same row with a ruler label on the left and its nodes in column order.

        Stage rows get `~stage/<name>` rulers, the fixed rows `~row/<label>`, so a stage
        may be called `heads` or `input` without two rows sharing a ruler.
        """
        if not nodes or self.loose >= 2 or (self.loose and label in ("heads", "outputs")):
            return
        ruler = f"~stage/{label}" if stage else f"~row/{label}"
        d = self.dot
        d.open()
        d.add("rank=same")
        d.node(
            ruler,
            shape="plaintext",
            label=html_label([("b", label)] + ([("s", sub)] if sub else [])),
            fontcolor="#444444",
            group="~ruler",
        )
        self.rulers.append(ruler)
        for n in nodes:
            d.add(quote(n))
        chain = [ruler, *nodes]
        for a, b in zip(chain, chain[1:]):
            d.edge(a, b, style="invis")
        d.close()

    # -- the picture ----------------------------------------------------------------
    def draw(self) -> str:
        d, g = self.dot, self.g
        title = self.notes.caption or self.topo.spec.name
        d.add("rankdir=TB")
        d.add(f"nodesep={NODESEP}")
        d.add("ranksep=0.45")
        d.add("newrank=true")
        d.add('fontname="Helvetica"')
        d.add("labelloc=t")
        d.add(f"label={html_label([('b', title)])}")
        d.add('node [fontname="Helvetica", fontsize=11, shape=box, margin="0.12,0.06"]')
        d.add('edge [fontname="Helvetica", fontsize=9, penwidth=1.6, arrowsize=0.7]')

        inputs = self.topo.nodes_of("input")
        for n in inputs:
            attrs = g.nodes[n]
            look = {
                "label": html_label([("b", attrs["name"]), ("s", shape_text(attrs["shape"]))]),
                "style": "rounded,filled",
                "fillcolor": "white",
                "color": SHARED,
                "width": self.width(self.tasks),
            }
            d.node(n, **self.status(n, look))
        self._row("input", "", inputs + ["~legend"])
        self._legend()

        for stage in self._stages():
            self._stage(stage)
        self._decoder()
        heads = sorted(self.topo.nodes_of("head"), key=lambda n: self.col(g.nodes[n]["tasks"]))
        for n in heads:
            self._box(n, f"head · {g.nodes[n]['owner']}")
        self._row("heads", "", heads)
        outputs = sorted(self.topo.nodes_of("output"), key=lambda n: self.col(g.nodes[n]["tasks"]))
        for n in outputs:
            self._output(n)
        self._row("outputs", "", outputs)
        for a, b in zip(self.rulers, self.rulers[1:]):
            d.edge(a, b, style="invis", weight=5)
        self._edges()
        return "digraph mtlc {\n" + "\n".join(d.lines) + "\n}\n"

    def _stages(self) -> list[str]:
        seen = list(self.topo.stages)
        for _, d in self.g.nodes(data=True):  # a diff's union may hold stages of both sides
            if d.get("stage") and d["stage"] != "decoder" and d["stage"] not in seen:
                seen.append(d["stage"])
        return seen

    def _box(
        self, n: str, title: str, width: float | None = None, group: str | None = None
    ) -> None:
        a = self.g.nodes[n]
        lines = [("b", title)]
        layers = layers_text(a.get("layers", [])) or traced_text(a.get("traced") or [])
        lines += [("s", line) for line in textwrap.wrap(layers, 40)]
        lines.append(("s", f"{shape_text(a['in_shape'])} → {shape_text(a['out_shape'])}"))
        lines += self.cost_lines(n)
        attrs = {
            "label": html_label(lines),
            "width": width or self.width(a["tasks"]),
            "group": group or self._group(a["tasks"]),
        }
        attrs.update(self.fill(a["tasks"]))
        if a["kind"] == "head":
            attrs["style"] = str(attrs["style"]) + ",bold"
        self.dot.node(n, **self.status(n, attrs))

    def _output(self, n: str) -> None:
        a = self.g.nodes[n]
        t = a["owner"]
        loss = next(
            (
                self.g.nodes[s].get("loss")
                for s in self.g.successors(n)
                if self.g.nodes[s]["kind"] == "loss"
            ),
            None,
        )
        lines = [("b", t), ("s", shape_text(a["shape"]) + (f" · {loss}" if loss else ""))]
        if a.get("auxiliary"):
            lines.append(("s", "auxiliary"))
        if t in self.notes.sigma:
            lines.append(("s", f"σ = {self.notes.sigma[t]:.3g}"))
        colour = self.colour.get(t, SHARED)
        attrs = {
            "label": html_label(lines),
            "shape": "ellipse",
            "style": "filled,dashed" if a.get("auxiliary") else "filled",
            "fillcolor": colour,
            "fontcolor": "white",
            "color": colour,
            "group": t,
        }
        self.dot.node(n, **self.status(n, attrs))

    # -- encoder --------------------------------------------------------------------
    def _stage(self, stage: str) -> None:
        g = self.g
        blocks = sorted(
            (n for n, d in g.nodes(data=True) if d["kind"] == "block" and d["stage"] == stage),
            key=lambda n: self.col(g.nodes[n]["tasks"]),
        )
        sharing = {g.nodes[b].get("sharing") for b in blocks}
        units = sorted(
            (n for n, d in g.nodes(data=True) if d["kind"] == "unit" and d["stage"] == stage),
            key=lambda n: self.col(g.nodes[n]["tasks"]),
        )
        row, width, group = list(blocks), None, None
        for point in stage_points():  # the first point that lays the stage out, if any
            own = [u for u in units if g.nodes[u]["type"] == point.name]
            arranged = point.arrange(self, stage, list(blocks), own) if own else None
            if arranged is not None:
                row, width, group = arranged
                break
        for b in blocks:
            who = b.split("/", 1)[1]
            self._box(b, f"{stage} · {who}", width=width, group=group)
        for u in units:
            self._unit(u)
        kinds = " / ".join(sorted(s.replace("_", "-") for s in sharing if s))
        self._row(stage, kinds, row, stage=True)

    def _unit(self, u: str) -> dict[str, str]:
        """Draw a unit; return, per task, its topmost part (to hang it below what precedes)."""
        return unit_point(self.g.nodes[u]).draw(self, u) or {}

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
        attrs = {"label": html_label(lines), "shape": "hexagon", "width": self.width(a["tasks"])}
        attrs.update(self.fill(tuple(self.tasks)))
        self.dot.node(u, **self.status(u, attrs))

    # -- decoder --------------------------------------------------------------------
    def _decoder(self) -> None:
        g = self.g
        dec = [n for n, d in g.nodes(data=True) if d["stage"] == "decoder"]
        if not dec:
            return
        feats = sorted(
            (n for n in dec if g.nodes[n]["kind"] == "block"),
            key=lambda n: self.col(g.nodes[n]["tasks"]),
        )
        for n in feats:
            self._box(n, f"features F · {g.nodes[n]['owner']}")
        self._row("decoder", "task features", feats)
        preds = sorted(
            (n for n in dec if g.nodes[n]["kind"] == "predictor"),
            key=lambda n: self.col(g.nodes[n]["tasks"]),
        )
        for n in preds:
            a = g.nodes[n]
            aux = self.aux.get(a["owner"])
            lines = [("b", f"{'prediction' if aux else 'initial'} · {a['owner']}")]
            lines += [("s", layers_text(a["layers"]))]
            lines += [("s", f"→ {shape_text(a['out_shape'])}")] + self.cost_lines(n)
            attrs = {"label": html_label(lines), "shape": "note", "group": a["owner"]}
            attrs.update(self.fill(a["tasks"]))
            self.dot.node(n, **self.status(n, attrs))
        self._row("initial", "deep supervision", preds)
        for u in (n for n in dec if g.nodes[n]["kind"] == "unit"):
            tops = self._unit(u)
            for p in preds:  # the exchange sits below the initial predictions
                t = g.nodes[p]["owner"]
                if t in tops:
                    self.dot.edge(p, tops[t], style="invis")

    def main(self, tasks: Iterable[str]) -> list[str]:
        return [t for t in tasks if not self.aux.get(t)]

    # -- edges ----------------------------------------------------------------------
    def edge(
        self, a: str, b: str, tasks: tuple[str, ...], back: bool = False, **extra: object
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

    def _edges(self) -> None:
        g = self.g
        done: set[tuple[str, str]] = set()
        for u, d in g.nodes(data=True):
            if d["kind"] == "unit":
                done |= unit_point(d).draw_edges(self, u)
        for a, b, d in g.edges(data=True):
            if (a, b) in done or g.nodes[b]["kind"] == "loss":
                continue
            if g.nodes[b]["kind"] == "unit" and unit_point(g.nodes[b]).draw_edge(
                self, a, b, d["tasks"]
            ):
                continue
            self.edge(a, b, d["tasks"])

    # -- legend ---------------------------------------------------------------------
    def _legend(self) -> None:
        n = self.notes
        rows = []
        if self.diff:  # the key to a diff's colours, then the tasks
            for status, meaning in STATUS_MEANING.items():
                colour = STATUS.get(status, UNCHANGED)
                rows.append(
                    f'<TR><TD BGCOLOR="{tint(colour, 0.6)}" BORDER="1" COLOR="{colour}"> </TD>'
                    f'<TD ALIGN="LEFT"><B>{status}</B></TD>'
                    f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9">{meaning}</FONT></TD></TR>'
                )
        for t in self.tasks:
            if self.diff:
                status = n.task_status.get(t)
                colour = STATUS[status] if status else "black"
                info = ", ".join(x for x in (status, "auxiliary" if self.aux.get(t) else "") if x)
                rows.append(
                    f'<TR><TD></TD><TD ALIGN="LEFT"><FONT COLOR="{colour}"><B>task {html.escape(t)}'
                    f"</B></FONT></TD>{small_cell(info)}</TR>"
                )
                continue
            colour = self.colour[t]
            cells = [
                f'<TD BGCOLOR="{colour}"> </TD>',
                f'<TD ALIGN="LEFT"><B>{html.escape(t)}</B></TD>',
            ]
            info = []
            if self.aux.get(t):
                info.append("auxiliary")
            if t in n.task_params:
                info.append(f"{si(n.task_params[t])} params")
            if n.task_flops and t in n.task_flops:
                info.append(si(n.task_flops[t], "FLOPs"))
            if t in n.sigma:
                info.append(f"σ {n.sigma[t]:.3g}")
            text = html.escape(" · ".join(info))
            cells.append(small_cell(text))
            rows.append("<TR>" + "".join(cells) + "</TR>")
        totals = []
        if n.total_params is not None:
            text = f"total {si(n.total_params)} params"
            if n.shared_params is not None:
                text += f" (shared {si(n.shared_params)})"
            totals.append(text)
        if n.total_flops is not None:
            totals.append(f"{si(n.total_flops, 'FLOPs')} per image (2 per multiply-add)")
        if n.task_params:
            totals.append("per task: serving that task alone")
        for text in totals:
            body = html.escape(text)
            rows.append(
                f'<TR><TD COLSPAN="3" ALIGN="LEFT"><FONT POINT-SIZE="9">{body}</FONT></TD></TR>'
            )
        label = '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2">' + "".join(rows) + "</TABLE>>"
        self.dot.node("~legend", shape="plaintext", label=label)


def union_topology(a: Topology, b: Topology) -> Topology:
    """Both topologies in one graph (attributes from b where both have a node), for a diff."""
    graph = nx.compose(a.graph, b.graph)
    tasks = list(a.tasks) + [t for t in b.tasks if t not in a.tasks]
    stages = list(b.stages)
    for i, s in enumerate(a.stages):
        if s not in stages:
            before = a.stages[i - 1] if i else None
            stages.insert(stages.index(before) + 1 if before in stages else 0, s)
    outputs = [t for t in tasks if t in a.outputs or t in b.outputs]
    return Topology(graph, b.spec, tasks, outputs, stages)
