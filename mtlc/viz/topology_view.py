"""A spec's task-sharing topology as graphviz DOT, laid out the way papers draw it.

Input on top, one row per encoder stage (a left-hand ruler names each row and its
sharing type), one column per task in a fixed colour that the task keeps everywhere:
its blocks, its edges, its head, its output and its legend entry. A hard stage is one
box spanning the columns it serves (a group box spans its group, striped in its
members' colours). Every sharing point keeps the shape its paper gives it, so a reader
recognises the method before reading a label:

- cross-stitch: per task a mixing node Σα fed by every column it mixes (T² edges,
  weighted by α when a checkpoint says what was learned; the values are written on
  the Σα, one line per source in its colour, where converging edge labels would not be);
- NDDR: every column into one concat bar, then a 1×1 conv per task;
- MTAN attention: a per-task gate beside the shared trunk, chained stage to stage
  through the task's own pass of the shared refinement (one grey box per task, so the
  shared module never reads as a place where tasks mix);
- PAD-Net: initial predictions, then distillation edges between the tasks' features;
- PAP-Net: per task an affinity matrix, exchanged across tasks into each diffusion;
- JTRL: the alternating chain of turns, `order` × `steps` nodes long;
- MMoE / CGC / PLE: the stage's experts side by side (shared ones grey, a task's own in
  its colour), below them one gate per task (and PLE's shared gate) fed by the experts it
  mixes (thin edges, by learned mean weight when a checkpoint is given) and by the input
  it reads (dotted).

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

import networkx as nx

from mtlc.colors import SHARED, SHARED_FILL, task_colours, tint
from mtlc.topology import Topology
from mtlc.topology.build import mtan_pool

STATUS = {"added": "#1a9641", "removed": "#d7191c", "changed": "#f39c12"}
UNCHANGED = "#9e9e9e"  # a diff's colour for what both specs have alike
STATUS_MEANING = {
    "added": "only in B",
    "removed": "only in A",
    "changed": "in both, different",
    "unchanged": "in both, the same",
}
COLUMN_WIDTH = 2.3  # inches; a block serving k tasks is k columns wide
NODESEP = 0.3
# Exchanges between tasks: a task's own stream thick, what it takes from others thin
# (dashes are kept for auxiliary tasks).
OWN_WIDTH = 2.2
CROSS_WIDTH = 1.0


@dataclass
class Notes:
    """Numbers and learned values a drawing shows beside the structure.

    `alpha[unit][t][s]` is cross-stitch's weight of source task s in target task t;
    `nddr[unit][t][s]` the strength of source s's block in t's 1×1 conv; both are in
    the unit's task order. `gates[unit][e]` is a gate's mean weight of its e-th expert
    (the unit's `experts` order) over `gate_samples` validation samples. `status` marks nodes (and `edge_status` edges) of a diff,
    `task_status` the tasks only one side has (a changed unit's part for such a task
    is added or removed, not changed).
    """

    params: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] | None = None
    task_params: dict[str, int] = field(default_factory=dict)
    task_flops: dict[str, int] | None = None
    total_params: int | None = None
    shared_params: int | None = None
    total_flops: int | None = None
    alpha: dict[str, list[list[float]]] = field(default_factory=dict)
    nddr: dict[str, list[list[float]]] = field(default_factory=dict)
    sigma: dict[str, float] = field(default_factory=dict)
    gates: dict[str, list[float]] = field(default_factory=dict)
    gate_samples: int = 0
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


def si(n: float, unit: str = "") -> str:
    """12345 -> '12.3k': three significant digits are what a picture has room for."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            text = f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
            return f"{text}{suffix}{unit}" if not unit else f"{text} {suffix}{unit}"
    return f"{n:g}" + (f" {unit}" if unit else "")


def shape_text(shape: Iterable[int]) -> str:
    return "×".join(str(s) for s in shape)


def layer_text(layer) -> str:
    """Short layer text for a box: convs show their kernel, which `str(layer)` hides."""
    a = layer.args
    if layer.name in ("conv", "deconv"):
        k = a["k"]
        text = f"{layer.name}{k}×{k} {a['out']}"
        if a.get("stride", 1) != 1:
            text += f" /{a['stride']}" if layer.name == "conv" else f" ×{a['stride']}"
        return text
    if layer.name in ("maxpool", "avgpool"):
        return f"{layer.name}{a['k']}×{a['k']}"
    if layer.name in ("bottleneck", "resblock"):
        width = a["planes"] * 4 if layer.name == "bottleneck" else a["out"]
        text = f"{layer.name} {width}" if width else layer.name
        text += f" /{a['stride']}" if a["stride"] != 1 else ""
        return text + (f" d{a['dilation']}" if a["dilation"] != 1 else "")
    return str(layer)


_STEM = ("conv1", "bn1", "relu", "maxpool")


def traced_text(modules: list[str]) -> str:
    """A traced backbone piece: its top-level modules, in order (`traced: layer2 · layer3`)."""
    tops: list[str] = []
    for name in modules:
        if name.split(".")[0] not in tops:
            tops.append(name.split(".")[0])
    return f"traced: {' · '.join(tops)}" if tops else ""


def layers_text(layers: list) -> str:
    """A box's layers, short enough for a 100-layer backbone stage.

    A backbone's parts collapse to their names (`stem · layer3: 6× bottleneck 1024 d2`,
    the dilation of the stage's later blocks); runs of identical layers to `n× layer`.
    """
    runs: list[tuple[str, int, str]] = []  # (key, count, text)
    for layer in layers:
        module = getattr(layer, "module", None) or ""
        if module in _STEM:
            key, text = "stem", "stem"
        elif module.startswith("layer"):
            key, text = module.split(".")[0], layer_text(layer).split(" /")[0]
        else:
            key, text = str(layer), layer_text(layer)
        if runs and runs[-1][0] == key:
            k, n, _ = runs[-1]
            runs[-1] = (k, n if key == "stem" else n + 1, text)
        else:
            runs.append((key, 1, text))
    out = []
    for key, n, text in runs:
        count = f"{n}× {text}" if n > 1 else text
        out.append(f"{key}: {count}" if key.startswith("layer") and key != text else count)
    return " · ".join(out)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(attrs: dict[str, object]) -> str:
    parts = []
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, str) and v.startswith("<") and v.endswith(">"):
            parts.append(f"{k}={v}")  # an HTML-like label
        elif isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        else:
            parts.append(f"{k}={_q(str(v))}")
    return " [" + ", ".join(parts) + "]" if parts else ""


def _html(lines: list[tuple[str, str]]) -> str:
    """An HTML-like label from (style, text) lines: 'b' bold title, 's' small, '' plain."""
    out = []
    for style, text in lines:
        t = html.escape(text, quote=False)
        if style == "b":
            out.append(f"<B>{t}</B>")
        elif style == "s":
            out.append(f'<FONT POINT-SIZE="9">{t}</FONT>')
        else:
            out.append(t)
    return "<" + "<BR/>".join(out) + ">"


class _Dot:
    """Just enough of a DOT writer: statements, nested subgraphs, quoting."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1

    def add(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def node(self, name: str, **attrs: object) -> None:
        self.add(_q(name) + _attrs(attrs))

    def edge(self, a: str, b: str, **attrs: object) -> None:
        self.add(f"{_q(a)} -> {_q(b)}" + _attrs(attrs))

    def open(self, name: str = "", **attrs: object) -> None:
        self.add(f"subgraph {_q(name)} {{" if name else "{")
        self.depth += 1
        for k, v in attrs.items():
            self.add(
                f"{k}={v}" if isinstance(v, str) and v.startswith("<") else f"{k}={_q(str(v))}"
            )

    def close(self) -> None:
        self.depth -= 1
        self.add("}")


def topology_dot(topo: Topology, notes: Notes | None = None, *, loose: int = 0) -> str:
    """DOT source for the topology; `notes` adds costs, learned values and diff marks.

    `loose` drops row constraints: 1 the heads' and outputs' rows, 2 every row. Graphviz's
    ranking sometimes fails on constraints that can all be met ("trouble in init_rank",
    seen when rows are fed from two clusters, as in a diff's union of NDDR and a
    decoder); a drawing with fewer aligned rows beats none.
    """
    return _Drawer(topo, notes or Notes(), loose).draw()


def topology_sources(topo: Topology, notes: Notes | None = None) -> list[str]:
    """The drawing from most to least constrained, for `render.write` to try in order."""
    return [topology_dot(topo, notes, loose=level) for level in (0, 1, 2)]


class _Drawer:
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
        self.dot = _Dot()
        self.rulers: list[str] = []
        self.left_gates: set[str] = set()  # MTAN gates drawn left of their trunk

    # -- helpers ----------------------------------------------------------------------
    def _col(self, tasks: Iterable[str]) -> int:
        return min((self.tasks.index(t) for t in tasks if t in self.tasks), default=0)

    def _edge_style(self, tasks: tuple[str, ...]) -> dict[str, object]:
        tasks = tuple(t for t in tasks if t in self.colour)
        if len(tasks) > 1 and len(tasks) == len(self.tasks):
            colour = SHARED
        else:
            colour = ":".join(self.colour[t] for t in tasks) or SHARED
        dashed = bool(tasks) and all(self.aux.get(t) for t in tasks)
        return {"color": colour, "style": "dashed" if dashed else None}

    def _fill(self, owner_tasks: tuple[str, ...]) -> dict[str, object]:
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

    def _cost_lines(self, node: str) -> list[tuple[str, str]]:
        parts = []
        if node in self.notes.params:
            parts.append(f"{si(self.notes.params[node])} params")
        if self.notes.flops is not None and node in self.notes.flops:
            parts.append(f"{si(self.notes.flops[node], 'FLOPs')}")
        return [("s", " · ".join(parts))] if parts else []

    def _status(self, node: str, attrs: dict[str, object]) -> dict[str, object]:
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

    def _width(self, tasks: Iterable[str]) -> float:
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
            label=_html([("b", label)] + ([("s", sub)] if sub else [])),
            fontcolor="#444444",
            group="~ruler",
        )
        self.rulers.append(ruler)
        for n in nodes:
            d.add(_q(n))
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
        d.add(f"label={_html([('b', title)])}")
        d.add('node [fontname="Helvetica", fontsize=11, shape=box, margin="0.12,0.06"]')
        d.add('edge [fontname="Helvetica", fontsize=9, penwidth=1.6, arrowsize=0.7]')

        inputs = self.topo.nodes_of("input")
        for n in inputs:
            attrs = g.nodes[n]
            look = {
                "label": _html([("b", attrs["name"]), ("s", shape_text(attrs["shape"]))]),
                "style": "rounded,filled",
                "fillcolor": "white",
                "color": SHARED,
                "width": self._width(self.tasks),
            }
            d.node(n, **self._status(n, look))
        self._row("input", "", inputs + ["~legend"])
        self._legend()

        for stage in self._stages():
            self._stage(stage)
        self._decoder()
        heads = sorted(self.topo.nodes_of("head"), key=lambda n: self._col(g.nodes[n]["tasks"]))
        for n in heads:
            self._box(n, f"head · {g.nodes[n]['owner']}")
        self._row("heads", "", heads)
        outputs = sorted(self.topo.nodes_of("output"), key=lambda n: self._col(g.nodes[n]["tasks"]))
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
        lines += self._cost_lines(n)
        attrs = {
            "label": _html(lines),
            "width": width or self._width(a["tasks"]),
            "group": group or self._group(a["tasks"]),
        }
        attrs.update(self._fill(a["tasks"]))
        if a["kind"] == "head":
            attrs["style"] = str(attrs["style"]) + ",bold"
        self.dot.node(n, **self._status(n, attrs))

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
            "label": _html(lines),
            "shape": "ellipse",
            "style": "filled,dashed" if a.get("auxiliary") else "filled",
            "fillcolor": colour,
            "fontcolor": "white",
            "color": colour,
            "group": t,
        }
        self.dot.node(n, **self._status(n, attrs))

    # -- encoder --------------------------------------------------------------------
    def _stage(self, stage: str) -> None:
        g = self.g
        blocks = sorted(
            (n for n, d in g.nodes(data=True) if d["kind"] == "block" and d["stage"] == stage),
            key=lambda n: self._col(g.nodes[n]["tasks"]),
        )
        sharing = {g.nodes[b].get("sharing") for b in blocks}
        units = sorted(
            (n for n, d in g.nodes(data=True) if d["kind"] == "unit" and d["stage"] == stage),
            key=lambda n: self._col(g.nodes[n]["tasks"]),
        )
        gates = [
            u for u in units if g.nodes[u]["type"] == "attention" and g.nodes[u]["role"] == "gate"
        ]
        row = list(blocks)
        mixture = any("experts" in g.nodes[u] for u in units)
        if gates:
            # MTAN: the trunk is one column in the middle, each task's gate beside it
            # on the same row, as in Liu et al.'s figure. The stage's refinement stays
            # out of the row: fed by the gates above and feeding these, it lands between.
            half = len(self.tasks) // 2
            left = [u for u in gates if self._col(g.nodes[u]["tasks"]) < half]
            self.left_gates.update(left)
            row = left + blocks + [u for u in gates if u not in left]
        for b in blocks:
            who = b.split("/", 1)[1]
            self._box(
                b,
                f"{stage} · {who}",
                # experts side by side, each narrow, whatever tasks it serves
                width=COLUMN_WIDTH if gates else 0.6 * COLUMN_WIDTH if mixture else None,
                group="~trunk" if gates else None,  # the trunk straight down the middle
            )
        for u in units:
            self._unit(u)
        kinds = " / ".join(sorted(s.replace("_", "-") for s in sharing if s))
        self._row(stage, kinds, row, stage=True)

    def _unit(self, u: str) -> dict[str, str]:
        """Draw a unit; return, per task, its topmost part (to hang it below what precedes)."""
        kind = self.g.nodes[u]["type"]
        draw = {
            "cross_stitch": self._cross_stitch,
            "nddr": self._nddr,
            "attention": self._attention,
            "mmoe": self._gate,
            "cgc": self._gate,
            "ple": self._gate,
            "distillation": self._distillation,
            "affinity": self._affinity,
            "recursive": self._recursive,
        }.get(kind, self._generic_unit)
        return draw(u) or {}

    def _cluster(self, u: str, title: str, detail: str) -> list[tuple[str, str]]:
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
        return [("b", title), ("s", detail)] + self._cost_lines(u)

    def _title(self, u: str, lines: list[tuple[str, str]], beside: str) -> None:
        """The unit's title as a node right of `beside`, on its row inside the box.

        A node is an obstacle that graphviz routes edges around, so no edge crosses it.
        """
        status = self.notes.status.get(u)
        node = f"~title/{u}"
        self.dot.node(
            node,
            shape="plaintext",
            label=_html(lines),
            fontsize=10,
            fontcolor=STATUS[status] if status == "removed" else "#333333",
        )
        self.dot.open()
        self.dot.add("rank=same")
        self.dot.add(_q(beside))
        self.dot.add(_q(node))
        self.dot.edge(beside, node, style="invis")
        self.dot.close()

    def _by_column(self, tasks: Iterable[str]) -> list[str]:
        return sorted(tasks, key=lambda t: self._col((t,)))

    def _part(self, n: str, t: str | None, label: str, **attrs: object) -> None:
        base = {"label": label, "group": t}
        base.update(self._fill((t,) if t else tuple(self.tasks)))
        base.update(attrs)
        self.dot.node(n, **self._status(n, base))

    def _cross_stitch(self, u: str) -> None:
        a = self.g.nodes[u]
        opts = a.get("options", {})
        init = opts.get("init", (0.9, 0.1))
        gran = opts.get("granularity", "channel")
        title = self._cluster(
            u,
            f"cross-stitch · {a['stage']}",
            f"α {len(a['tasks'])}×{len(a['tasks'])}"
            + (f"×{a['shape'][0]}" if gran == "channel" else "")
            + f", init {init[0]:g}/{init[1]:g}",
        )
        tasks = list(a["tasks"])
        alpha = self.notes.alpha.get(u)
        for i, t in enumerate(tasks):
            if alpha:  # what t learned to take from each column, in that column's colour
                self._part(
                    f"{u}#{t}", t, self._alpha_label(tasks, alpha[i]), style="rounded,filled"
                )
            else:
                label = _html([("b", "Σα")])
                self._part(f"{u}#{t}", t, label, shape="circle", width=0.55, fixedsize="true")
        self._title(u, title, f"{u}#{self._by_column(tasks)[-1]}")
        self.dot.close()

    def _alpha_label(self, sources: list[str], row: list[float]) -> str:
        """Σα over its learned weights, one line per source task in the source's colour.

        On the box, not on the T² edges: labels of edges that converge on one node
        overlap, and a reader could not tell which number belongs to which edge.
        """
        lines = ["<B>Σα</B>"] + [self._weight(s, w) for s, w in zip(sources, row)]
        return "<" + "<BR/>".join(lines) + ">"

    def _weight(self, source: str, w: float) -> str:
        """`source 0.91` in small type and the source task's colour (HTML-like label)."""
        colour = self.colour.get(source, SHARED)
        return f'<FONT POINT-SIZE="9" COLOR="{colour}">{html.escape(source)} {w:.2f}</FONT>'

    def _nddr(self, u: str) -> None:
        a = self.g.nodes[u]
        tasks = a["tasks"]
        c = a["shape"][0]
        init = a.get("options", {}).get("init", (0.9, 0.1))
        title, detail, *cost = self._cluster(
            u, f"NDDR · {a['stage']}", f"init {init[0]:g}·I / {init[1]:g}·I"
        )
        # the title rides on the concat bar: nothing else on that row for edges to cross
        concat = f"concat  {len(tasks)}×{c} = {len(tasks) * c} ch"
        extra = " · ".join([detail[1]] + [x[1] for x in cost])
        self._part(
            f"{u}#concat",
            None,
            _html([("b", f"{title[1]}  ·  {concat}"), ("s", extra)]),
            width=self._width(tasks),
            height=0.25,
            fillcolor="#444444",
            fontcolor="white",
            style="filled",
        )
        strengths = self.notes.nddr.get(u)
        for i, t in enumerate(tasks):
            label = _html([("b", "1×1 conv · BN · ReLU"), ("s", f"{len(tasks) * c} → {c}")])
            if strengths:  # per source block, in the source's colour
                weights = " ".join(self._weight(s, w) for s, w in zip(tasks, strengths[i]))
                label = label[:-1] + "<BR/>" + weights + ">"
            self._part(f"{u}#{t}", t, label, width=COLUMN_WIDTH)
            self.dot.edge(f"{u}#concat", f"{u}#{t}", **self._edge_style((t,)))
        self.dot.close()

    def _attention(self, u: str) -> None:
        a = self.g.nodes[u]
        if a["role"] == "refine":
            self._refine(u)
            return
        t = a["owner"]
        lines = [("b", f"attention · {t}"), ("s", "σ(conv1×1 …) ⊙ shared")] + self._cost_lines(u)
        attrs = {"label": _html(lines), "shape": "invtrapezium", "group": t, "width": COLUMN_WIDTH}
        attrs.update(self._fill((t,)))
        self.dot.node(u, **self._status(u, attrs))

    def _gate(self, u: str) -> None:
        """A mixture's gate: softmax over the experts it mixes, then their weighted sum;
        with a checkpoint, each expert's mean weight on the validation split."""
        a = self.g.nodes[u]
        owner = a["owner"]
        k = a.get("options", {}).get("top_k")
        n = len(a["experts"])
        title = f"gate · {owner or 'shared'}"
        lines = [("b", title), ("s", f"softmax over {n}" + (f", top-{k}" if k else "") + " → Σ")]
        lines += self._cost_lines(u)
        label = _html(lines)
        weights = self.notes.gates.get(u)
        if weights:
            experts = [e.split("/", 1)[1] for e in a["experts"]]
            rows = [self._weight_text(e, w) for e, w in zip(experts, weights)]
            rows.append(
                f'<FONT POINT-SIZE="8">mean of {self.notes.gate_samples} val samples</FONT>'
            )
            label = label[:-1] + "<BR/>" + "<BR/>".join(rows) + ">"
        attrs = {"label": label, "shape": "invtrapezium", "group": owner, "width": COLUMN_WIDTH}
        attrs.update(self._fill((owner,) if owner else tuple(self.tasks)))
        self.dot.node(u, **self._status(u, attrs))

    def _weight_text(self, name: str, w: float) -> str:
        return f'<FONT POINT-SIZE="9">{html.escape(name)} {w:.2f}</FONT>'

    def _refine(self, u: str) -> None:
        """MTAN's refinement: one module with shared weights that each task's chain
        runs through on its own (Liu et al. apply the same f to every task's mask).

        Drawn as one small grey box per task, in that task's column and linked only to
        that task's gates, so it cannot read as a place where the tasks' features mix;
        every box says "shared weights" and only the first carries the parameter count.
        """
        a = self.g.nodes[u]
        before = self.g.nodes[next(iter(self.g.predecessors(u)))]["shape"]
        what = "3×3 conv-BN-ReLU" + ("" if mtan_pool(before, a["shape"]) == (1, 1) else " + pool")
        tasks = self._by_column({t for ts in self._task_edges(u).values() for t in ts})
        for i, t in enumerate(tasks):
            lines = [("b", "refine"), ("s", what)]
            lines += [("s", "shared weights")] + (self._cost_lines(u) if i == 0 else [])
            attrs = {"label": _html(lines), "fontsize": 9, "group": t, "width": 1.4}
            attrs.update(self._fill(tuple(self.tasks)))
            attrs["style"] = "rounded,filled,dashed"
            self.dot.node(f"{u}#{t}", **self._status(f"{u}#{t}", attrs))

    def _task_edges(self, u: str) -> dict[str, tuple[str, ...]]:
        """The tasks on each edge into `u`, by source."""
        return {src: tuple(self.g.edges[src, u]["tasks"]) for src in self.g.predecessors(u)}

    def _generic_unit(self, u: str) -> None:
        a = self.g.nodes[u]
        lines = [("b", f"{a['type']} · {a['stage']}")] + self._cost_lines(u)
        attrs = {"label": _html(lines), "shape": "hexagon", "width": self._width(a["tasks"])}
        attrs.update(self._fill(tuple(self.tasks)))
        self.dot.node(u, **self._status(u, attrs))

    # -- decoder --------------------------------------------------------------------
    def _decoder(self) -> None:
        g = self.g
        dec = [n for n, d in g.nodes(data=True) if d["stage"] == "decoder"]
        if not dec:
            return
        feats = sorted(
            (n for n in dec if g.nodes[n]["kind"] == "block"),
            key=lambda n: self._col(g.nodes[n]["tasks"]),
        )
        for n in feats:
            self._box(n, f"features F · {g.nodes[n]['owner']}")
        self._row("decoder", "task features", feats)
        preds = sorted(
            (n for n in dec if g.nodes[n]["kind"] == "predictor"),
            key=lambda n: self._col(g.nodes[n]["tasks"]),
        )
        for n in preds:
            a = g.nodes[n]
            aux = self.aux.get(a["owner"])
            lines = [("b", f"{'prediction' if aux else 'initial'} · {a['owner']}")]
            lines += [("s", layers_text(a["layers"]))]
            lines += [("s", f"→ {shape_text(a['out_shape'])}")] + self._cost_lines(n)
            attrs = {"label": _html(lines), "shape": "note", "group": a["owner"]}
            attrs.update(self._fill(a["tasks"]))
            self.dot.node(n, **self._status(n, attrs))
        self._row("initial", "deep supervision", preds)
        for u in (n for n in dec if g.nodes[n]["kind"] == "unit"):
            tops = self._unit(u)
            for p in preds:  # the exchange sits below the initial predictions
                t = g.nodes[p]["owner"]
                if t in tops:
                    self.dot.edge(p, tops[t], style="invis")

    def _main(self, tasks: Iterable[str]) -> list[str]:
        return [t for t in tasks if not self.aux.get(t)]

    def _distillation(self, u: str) -> dict[str, str]:
        a = self.g.nodes[u]
        title = self._cluster(u, "PAD-Net distillation", "Fᵏ + Σ σ(W Fˡ) ⊙ Fˡ")
        parts = {t: f"{u}#{t}" for t in self._main(a["tasks"])}
        for t, p in parts.items():
            self._part(p, t, _html([("b", f"F° · {t}"), ("s", "distilled")]), width=COLUMN_WIDTH)
        self._title(u, title, parts[self._by_column(parts)[-1]])
        self.dot.close()
        return parts

    def _affinity(self, u: str) -> dict[str, str]:
        a = self.g.nodes[u]
        o = a.get("options", {})
        title = self._cluster(
            u,
            "PAP-Net affinity propagation",
            f"at 1/{o.get('downsample', 2)} · {o.get('iterations', 3)} iterations · β {o.get('beta', 0.05):g}",
        )
        mats = {t: f"{u}#affinity/{t}" for t in a["tasks"]}
        for t, p in mats.items():
            label = _html([("b", f"affinity M · {t}"), ("s", "softmax(FᵀF/√C)")])
            self._part(p, t, label, shape="box3d")
        for t in self._main(a["tasks"]):
            label = _html([("b", f"diffusion · {t}"), ("s", "βΣαM·X + (1−β)F")])
            self._part(f"{u}#{t}", t, label, width=COLUMN_WIDTH)
        self._title(u, title, mats[self._by_column(mats)[-1]])
        self.dot.close()
        return mats

    def _turns(self, u: str) -> list[tuple[int, str]]:
        a = self.g.nodes[u]
        order = a.get("options", {}).get("order") or list(a["tasks"])
        steps = a.get("options", {}).get("steps", 1)
        main = self._main(order)
        return [(k, t) for k in range(1, steps + 1) for t in main]

    def _recursive(self, u: str) -> dict[str, str]:
        a = self.g.nodes[u]
        o = a.get("options", {})
        order = o.get("order") or list(a["tasks"])
        title = self._cluster(
            u, "JTRL recursive refinement", f"order {' → '.join(order)} · {o.get('steps', 1)} steps"
        )
        turns = self._turns(u)
        for k, t in turns:
            lines = [
                ("b", f"{t} · step {k}"),
                ("s", "balance gate + attention"),
                ("s", f"⇒ {t}:step{k}"),
            ]
            self._part(f"{u}#{k}/{t}", t, _html(lines), width=COLUMN_WIDTH)
        if turns:
            self._title(u, title, f"{u}#{turns[0][0]}/{turns[0][1]}")
        self.dot.close()
        return {t: f"{u}#1/{t}" for t in self._main(order)}

    # -- edges ----------------------------------------------------------------------
    def _unit_edges(self, u: str) -> set[tuple[str, str]]:
        """Draw the edges into and out of a unit drawn as parts; return the topology edges done."""
        g, a = self.g, self.g.nodes[u]
        kind = a["type"]
        done: set[tuple[str, str]] = set()
        ins = {src: g.edges[src, u]["tasks"] for src in g.predecessors(u)}
        outs = {dst: g.edges[u, dst]["tasks"] for dst in g.successors(u)}
        refine = kind == "attention" and a.get("role") == "refine"
        if kind not in ("cross_stitch", "nddr", "distillation", "affinity", "recursive") and not (
            refine
        ):
            return done
        source_of = {t: src for src, ts in ins.items() for t in ts}
        e = self._edge
        if refine:  # each task through its own pass of the shared module
            for src, ts in ins.items():
                for t in ts:
                    e(src, f"{u}#{t}", (t,))
        elif kind == "cross_stitch":
            alpha = self.notes.alpha.get(u)
            tasks = list(a["tasks"])
            for src, ts in ins.items():
                for s in ts:
                    for t in tasks:
                        extra: dict[str, object] = {}
                        if alpha:  # the value itself is on the Σα box (`_alpha_label`)
                            w = alpha[tasks.index(t)][tasks.index(s)]
                            extra = {"penwidth": 0.4 + 4 * min(abs(w), 1.5)}
                        e(src, f"{u}#{t}", (s,), **extra)
        elif kind == "nddr":
            for src, ts in ins.items():
                e(src, f"{u}#concat", ts)
        elif kind == "distillation":
            for t in self._main(a["tasks"]):
                for s in a["tasks"]:
                    # the residual F_t thick, each gated message σ(W F_s) ⊙ F_s thin, ⊙-headed
                    own = s == t
                    e(
                        source_of[s],
                        f"{u}#{t}",
                        (s,),
                        arrowhead="normal" if own else "odot",
                        penwidth=OWN_WIDTH if own else CROSS_WIDTH,
                    )
        elif kind == "affinity":
            for s in a["tasks"]:
                e(source_of[s], f"{u}#affinity/{s}", (s,))
            for t in self._main(a["tasks"]):
                e(source_of[t], f"{u}#{t}", (t,))
                for s in a["tasks"]:
                    width = OWN_WIDTH if s == t else CROSS_WIDTH
                    e(f"{u}#affinity/{s}", f"{u}#{t}", (s,), penwidth=width)
        elif kind == "recursive":
            latest = {t: source_of[t] for t in a["tasks"]}
            for k, t in self._turns(u):
                node = f"{u}#{k}/{t}"
                for s in a["tasks"]:
                    e(latest[s], node, (s,), penwidth=OWN_WIDTH if s == t else CROSS_WIDTH)
                latest[t] = node
            for dst, ts in outs.items():
                for t in ts:
                    e(latest[t], dst, (t,))
                    done.add((u, dst))
        for src in ins:
            done.add((src, u))
        for dst, ts in outs.items():
            if (u, dst) not in done:
                for t in ts:
                    e(f"{u}#{t}", dst, (t,))
                done.add((u, dst))
        return done

    def _edge(
        self, a: str, b: str, tasks: tuple[str, ...], back: bool = False, **extra: object
    ) -> None:
        """An edge a → b; `back` writes it as b → a drawn backwards, so b can sit left of a."""
        attrs = self._edge_style(tasks)
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
                done |= self._unit_edges(u)
        for a, b, d in g.edges(data=True):
            if (a, b) in done or g.nodes[b]["kind"] == "loss":
                continue
            if g.nodes[b].get("type") == "attention" and g.nodes[a]["kind"] == "block":
                # the shared trunk's feature, gated per task beside it
                self._edge(a, b, d["tasks"], back=b in self.left_gates, color=SHARED)
            elif "experts" in g.nodes[b] and a in g.nodes[b]["experts"]:
                # an expert into a gate: thin, or as thick as its learned mean weight
                weights = self.notes.gates.get(b)
                w = weights[g.nodes[b]["experts"].index(a)] if weights else None
                width = CROSS_WIDTH if w is None else 0.4 + 4 * w
                self._edge(a, b, d["tasks"], penwidth=width)
            elif "experts" in g.nodes[b]:  # what the gate reads to weigh its experts
                self._edge(a, b, d["tasks"], style="dotted")
            else:
                self._edge(a, b, d["tasks"])

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
                    f"</B></FONT></TD>{_small_cell(info)}</TR>"
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
            cells.append(_small_cell(text))
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


def _small_cell(text: str) -> str:
    """A legend cell in small type; empty when there is nothing to say (graphviz refuses
    an empty <FONT>)."""
    return f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9">{text}</FONT></TD>' if text else "<TD></TD>"


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
