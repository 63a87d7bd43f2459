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

import networkx as nx

from mtlc.colors import SHARED, tint
from mtlc.sharing.point import stage_points, unit_point
from mtlc.topology import Topology
from mtlc.viz.dot import (
    NODESEP,
    STATUS,
    STATUS_MEANING,
    UNCHANGED,
    html_label,
    layers_text,
    quote,
    shape_text,
    si,
    small_cell,
    traced_text,
)
from mtlc.viz.drawing import DrawingKit, Notes, column_order

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


class Drawer(DrawingKit):
    """The picture: rows of stages, the decoder, heads, outputs, edges and the legend."""

    # -- helpers ----------------------------------------------------------------------
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
        lines = [
            ("b", t),
            ("s", shape_text(a["shape"]) + (f" · {loss}" if loss else "")),
        ]
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

    # -- edges ----------------------------------------------------------------------
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
