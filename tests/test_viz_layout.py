"""Where graphviz puts things: no edge crosses any text, each task keeps its column.

These read graphviz's own layout (`dot -Tjson`: node positions, the text it draws and
every edge's Bézier spline), so they check the picture a reader sees, not the DOT that
asks for it. Unit titles used to be cluster labels, which graphviz does not route
around: every NDDR title, cross-stitch's, PAD-Net's and JTRL's had edges through them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlc.spec import load_spec
from mtlc.topology import build_topology
from mtlc.viz import dot_source
from mtlc.viz.topology_view import column_order

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))

Box = tuple[float, float, float, float, str]


def _layout(source: str) -> dict:
    import graphviz

    return json.loads(graphviz.Source(source).pipe(format="json"))


def _text_boxes(obj: dict) -> list[Box]:
    """The box of each line of text graphviz draws for a node or cluster, shrunk by 1pt."""
    out, size = [], 14.0
    for op in obj.get("_ldraw_", []):
        if op["op"] == "F":
            size = op["size"]
        elif op["op"] == "T":
            (x, y), w = op["pt"], op["width"]
            x0 = {"l": x, "c": x - w / 2, "r": x - w}[op["align"]]
            out.append((x0 + 1, y - 0.2 * size + 1, x0 + w - 1, y + 0.8 * size - 1, op["text"]))
    return out


def _curve(points: list[tuple[float, float]], n: int = 24) -> Iterator[tuple[float, float]]:
    """Points along a piecewise cubic Bézier (graphviz's `pos` of an edge)."""
    for i in range(0, len(points) - 3, 3):
        p0, p1, p2, p3 = points[i : i + 4]
        for k in range(n + 1):
            t = k / n
            w = ((1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t * t * (1 - t), t**3)
            yield (
                sum(c * p[0] for c, p in zip(w, (p0, p1, p2, p3))),
                sum(c * p[1] for c, p in zip(w, (p0, p1, p2, p3))),
            )


def crossings(layout: dict) -> list[tuple[str, str, str]]:
    """(edge tail, edge head, text) for every visible edge through text it does not own."""
    objs = layout["objects"]
    boxes = [(i, b) for i, o in enumerate(objs) for b in _text_boxes(o)]
    out = []
    for e in layout.get("edges", []):
        if e.get("style") == "invis":
            continue
        pts = [
            tuple(map(float, p.split(","))) for p in e["pos"].split() if p[:2] not in ("e,", "s,")
        ]
        curve = list(_curve(pts))
        for owner, (x0, y0, x1, y1, text) in boxes:
            if owner in (e["tail"], e["head"]):
                continue
            if any(x0 < x < x1 and y0 < y < y1 for x, y in curve):
                out.append((objs[e["tail"]]["name"], objs[e["head"]]["name"], text))
    return out


@needs_dot
def test_the_crossing_finder_finds_a_crossing():
    """An edge into a labelled cluster crosses its label (the old drawing's fault):
    reported, so the checks below can fail."""
    layout = _layout('digraph { a -> b; subgraph cluster_u { label="title"; b } }')
    assert crossings(layout) == [("a", "b", "title")]


@needs_dot
@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_no_edge_runs_through_any_text(spec):
    layout = _layout(dot_source(spec))
    assert crossings(layout) == []
    # the unit boxes carry no label of their own (graphviz routes edges through those)
    for obj in layout["objects"]:
        if obj["name"].startswith("cluster_"):
            assert not _text_boxes(obj), obj["name"]


@needs_dot
@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_task_keeps_its_column(spec):
    """Each part drawn for one task (a Σα, a 1×1 conv, a refine pass, a distilled F°)
    sits nearer that task's output than any other task's."""
    loaded = load_spec(spec)
    topo = build_topology(loaded)
    layout = _layout(dot_source(spec))
    x = {o["name"]: float(o["pos"].split(",")[0]) for o in layout["objects"] if "pos" in o}
    outputs = {t: x[f"output/{t}"] for t in topo.tasks}
    # JTRL's turns are a chain that zigzags through the columns by design
    parts = [
        (n, n.split("#")[1].split("/")[-1])
        for n in x
        if "#" in n and topo.graph.nodes[n.split("#")[0]].get("type") != "recursive"
    ]
    # a mixture's per-task gates are single nodes (no `#` part), named by the topology
    parts += [
        (n, a["owner"])
        for n, a in topo.graph.nodes(data=True)
        if "experts" in a and a["owner"] is not None
    ]
    checked = 0
    for name, t in parts:
        if t in outputs:
            nearest = min(outputs, key=lambda s: abs(outputs[s] - x[name]))
            assert nearest == t, f"{name} sits in {nearest}'s column"
            checked += 1
    hard_only = loaded.decoder is None and all(
        loaded.sharing_of(s).type == "hard" for s in loaded.encoder.stages
    )
    if not hard_only and spec.stem != "recursive":  # the others draw per-task parts
        assert checked


def test_group_members_sit_side_by_side():
    """mixed.yaml groups [seg, edge] and [depth, normal]; edge is last in the spec."""
    spec = next(p for p in SPECS if p.stem == "mixed")
    topo = build_topology(load_spec(spec))
    assert list(topo.tasks) == ["seg", "depth", "normal", "edge"]
    assert column_order(topo) == ["seg", "edge", "depth", "normal"]
