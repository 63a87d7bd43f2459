"""`mtlc viz`: the drawing shows every task, stage, sharing unit and head with the right edges.

DOT is parsed as text (no pydot) and SVG with xml.etree, so what is checked is what a
reader of the file gets. Every spec of `specs/` is drawn, plus small specs written here
that cover hard sharing, groups, separate stages and cross-stitch with parameter counts
worked out by hand.
"""

from __future__ import annotations

import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

import pytest
import torch
from click.testing import CliRunner

from mtlc import registry
from mtlc.cli import main
from mtlc.colors import SHARED_FILL, task_colours, tint
from mtlc.sharing.point import StagePoint
from mtlc.spec import load_spec
from mtlc.spec.base import StageSharing
from mtlc.topology import build_topology
from mtlc.viz import dot_source, draw
from mtlc.viz.dot import COLUMN_WIDTH, NODESEP
from mtlc.viz.topology_view import Notes, topology_dot
from tests.conftest import NDDR

# svg, png, pdf and html need graphviz's `dot`; CI installs it where it can.
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))

# Parameters by hand: s1 3·4·9+4 = 112; s2 per task 4·6·9+6 = 222, α 2·2·6 = 24;
# s3 per task 6·6+6 = 42; heads 6·3+3 = 21 (seg), 6·1+1 = 7 (depth). Total 692.
TINY = """\
mtlc: 1
name: tiny
input: {image: [3, 8, 8]}
encoder:
  stages:
    s1: [conv(4, 3), relu]
    s2: [conv(6, 3), relu]
    s3: [conv(6, 1), relu]
  sharing:
    s2: cross_stitch
    s3: separate
tasks:
  seg:   {head: [conv(3, 1)], loss: cross_entropy}
  depth: {head: [conv(1, 1)], loss: l1}
"""

GROUPS = """\
mtlc: 1
name: groups
input: {image: [3, 16, 16]}
encoder:
  stages:
    s1: [conv(8, 3), relu, maxpool(2)]
    s2: [conv(8, 3), relu]
    s3: [conv(8, 3), relu]
  sharing:
    s2: {type: hard, groups: [[seg, edge], [depth, normal]]}
    s3: {type: cross_stitch, groups: [[seg, edge], [depth], [normal]]}
tasks:
  seg:    {head: [conv(3, 1)], loss: cross_entropy}
  depth:  {head: [conv(1, 1)], loss: l1}
  normal: {head: [conv(3, 1)], loss: cosine}
  edge:   {head: [conv(1, 1)], loss: bce, auxiliary: true}
"""


# -- reading DOT and SVG back ------------------------------------------------------------


def _attrs(text: str) -> dict[str, str]:
    """`a="x", label=<<B>y</B>>, w=1.5` → dict, honouring quotes and nested <...>."""
    out, i = {}, 0
    while i < len(text):
        eq = text.index("=", i)
        key = text[i:eq].strip(" ,")
        j = eq + 1
        if text[j] == '"':
            k = j + 1
            while text[k] != '"':
                k += 2 if text[k] == "\\" else 1
            out[key], i = text[j + 1 : k].replace('\\"', '"'), k + 1
        elif text[j] == "<":
            depth, k = 0, j
            while True:
                depth += {"<": 1, ">": -1}.get(text[k], 0)
                k += 1
                if depth == 0:
                    break
            out[key], i = text[j + 1 : k - 1], k
        else:
            k = text.find(",", j)
            k = len(text) if k < 0 else k
            out[key], i = text[j:k].strip(), k
        while i < len(text) and text[i] in ", ":
            i += 1
    return out


class Dot:
    """Nodes, edges and rank=same rows of DOT text written by mtlc."""

    NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)+)" \[(.*)\]$')
    EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)+)" -> "((?:[^"\\]|\\.)+)"(?: \[(.*)\])?$')

    def __init__(self, text: str):
        self.text = text
        self.nodes: dict[str, dict[str, str]] = {}
        self.edges: list[tuple[str, str, dict[str, str]]] = []
        self.rows: list[list[str]] = []
        self.clusters: list[str] = re.findall(r'subgraph "(cluster_[^"]+)"', text)
        row: list[str] | None = None
        for line in text.splitlines():
            if line.strip() == "rank=same":
                row = []
                self.rows.append(row)
            elif line.strip() == "}":
                row = None
            elif m := self.EDGE.match(line):
                attrs = _attrs(m[3]) if m[3] else {}
                if attrs.get("style") == "invis":
                    continue
                a, b = (m[2], m[1]) if attrs.get("dir") == "back" else (m[1], m[2])
                self.edges.append((a, b, attrs))
            elif m := self.NODE.match(line):
                self.nodes[m[1]] = _attrs(m[2])
                if row is not None:
                    row.append(m[1])
            elif row is not None and (m := re.match(r'^\s*"([^"]+)"$', line)):
                row.append(m[1])

    def of(self, node: str) -> list[str]:
        """The DOT nodes drawing a topology node: itself, or its `node#part`s."""
        return [n for n in self.nodes if n == node or n.startswith(node + "#")]

    def linked(self, a: str, b: str) -> bool:
        sa, sb = set(self.of(a)), set(self.of(b))
        return any(x in sa and y in sb for x, y, _ in self.edges)

    def edge(self, a: str, b: str) -> dict[str, str]:
        (attrs,) = [d for x, y, d in self.edges if (x, y) == (a, b)]
        return attrs

    def row_of(self, node: str) -> list[str]:
        (row,) = [r for r in self.rows if node in r]
        return row


def check_complete(topo, nodes: set[str], linked) -> None:
    """Every topology node but the losses is drawn, and every edge between them."""
    g = topo.graph
    for n, d in g.nodes(data=True):
        if d["kind"] == "loss":
            continue
        assert n in nodes or any(x.startswith(n + "#") for x in nodes), f"{n} not drawn"
    for a, b in g.edges:
        if g.nodes[b]["kind"] != "loss":
            assert linked(a, b), f"edge {a} -> {b} not drawn"


def svg_parts(path: Path) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """Titles of the nodes, edges and clusters of a graphviz SVG."""
    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ET.parse(path).getroot()
    nodes, edges, clusters = set(), set(), set()
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        title = g.find("s:title", ns)
        if title is None:
            continue
        kind = g.get("class")
        if kind == "node":
            nodes.add(title.text)
        elif kind == "edge":
            a, b = title.text.split("->")
            edges.add((a, b))
        elif kind == "cluster":
            clusters.add(title.text)
    return nodes, edges, clusters


# -- every spec, drawn -------------------------------------------------------------------


@pytest.fixture(params=SPECS, ids=[p.stem for p in SPECS])
def repo_spec(request) -> Path:
    return request.param


def test_specs_folder_is_not_empty():
    assert len(SPECS) >= 3


@needs_dot
def test_every_spec_draws_every_node_and_edge_as_svg(repo_spec, tmp_path):
    """The SVG a user opens holds every task column, stage, unit, head and output."""
    out = draw(repo_spec, tmp_path / "t.svg")
    topo = build_topology(load_spec(repo_spec))
    nodes, edges, clusters = svg_parts(out)

    def linked(a: str, b: str) -> bool:
        sa = {n for n in nodes if n == a or n.startswith(a + "#")}
        sb = {n for n in nodes if n == b or n.startswith(b + "#")}
        return any((x in sa and y in sb) or (x in sb and y in sa) for x, y in edges)

    check_complete(topo, nodes, linked)
    for stage in topo.stages:
        assert f"~stage/{stage}" in nodes  # one labelled row per stage
    svg = out.read_text()
    for t in topo.tasks:
        assert f">{t}<" in svg  # in the legend and on its output
    for u in topo.nodes_of("unit"):
        a = topo.graph.nodes[u]
        if a["type"] != "attention" and "experts" not in a:  # a gate is one node, as MTAN's
            assert f"cluster_{u}" in clusters
        elif "experts" in a:
            assert u in nodes
    assert "params" in svg


def test_every_spec_dot_has_one_colour_per_task(repo_spec):
    spec = load_spec(repo_spec)
    topo = build_topology(spec)
    dot = Dot(topology_dot(topo))
    colour = task_colours(topo.tasks)
    for t in topo.tasks:
        out = dot.nodes[f"output/{t}"]
        assert out["fillcolor"] == colour[t]
        assert ("dashed" in out["style"]) == spec.tasks[t].auxiliary
        if f"head/{t}" in dot.nodes:
            assert dot.nodes[f"head/{t}"]["fillcolor"] == tint(colour[t])
            assert dot.nodes[f"head/{t}"]["color"] == colour[t]
        assert f'BGCOLOR="{colour[t]}"' in dot.nodes["~legend"]["label"]
    check_complete(topo, set(dot.nodes), dot.linked)


# -- the shapes of each sharing point -----------------------------------------------------


def test_hard_stage_is_one_box_spanning_all_columns(write_spec):
    topo = build_topology(load_spec(write_spec(GROUPS)))
    dot = Dot(topology_dot(topo))
    s1 = dot.nodes["s1/shared"]
    assert float(s1["width"]) == pytest.approx(4 * COLUMN_WIDTH + 3 * NODESEP, abs=0.01)
    assert dot.row_of("s1/shared") == ["~stage/s1", "s1/shared"]
    # every task leaves the shared box along its own coloured edge
    colour = task_colours(topo.tasks)
    assert dot.edge("s1/shared", "s2/seg+edge")["color"] == f"{colour['seg']}:{colour['edge']}"


def test_groups_span_their_group_striped_in_their_colours(write_spec):
    topo = build_topology(load_spec(write_spec(GROUPS)))
    dot = Dot(topology_dot(topo))
    colour = task_colours(topo.tasks)
    for group, members in (("seg+edge", ("seg", "edge")), ("depth+normal", ("depth", "normal"))):
        box = dot.nodes[f"s2/{group}"]
        assert float(box["width"]) == pytest.approx(2 * COLUMN_WIDTH + NODESEP, abs=0.01)
        assert box["style"] == "striped"
        assert box["fillcolor"] == ":".join(tint(colour[t]) for t in members)
    assert dot.row_of("s2/seg+edge") == ["~stage/s2", "s2/seg+edge", "s2/depth+normal"]
    # the cross-stitch of the [seg, edge] group mixes those two columns only
    unit = "s3/cross_stitch/seg+edge"
    assert sorted(dot.of(unit)) == [f"{unit}#edge", f"{unit}#seg"]
    for src in ("s3/seg", "s3/edge"):
        for dst in ("seg", "edge"):
            assert (src, f"{unit}#{dst}") in [(a, b) for a, b, _ in dot.edges]
    assert not dot.linked("s3/depth", unit)
    # a group of one is no exchange: no unit for [depth] and [normal]
    assert [u for u in topo.nodes_of("unit")] == [unit]


def test_auxiliary_task_is_dashed_everywhere(write_spec):
    topo = build_topology(load_spec(write_spec(GROUPS)))
    dot = Dot(topology_dot(topo))
    for n in ("s3/edge", "head/edge", "output/edge"):
        assert "dashed" in dot.nodes[n]["style"]
    assert dot.edge("head/edge", "output/edge")["style"] == "dashed"
    assert "dashed" not in dot.nodes["head/seg"]["style"]


def test_cross_stitch_mixes_every_column_into_every_column(write_spec):
    topo = build_topology(load_spec(write_spec(TINY)))
    dot = Dot(topology_dot(topo))
    unit = "s2/cross_stitch"
    edges = {(a, b) for a, b, _ in dot.edges}
    for t in ("seg", "depth"):
        for s in ("seg", "depth"):
            assert (f"s2/{s}", f"{unit}#{t}") in edges
        assert (f"{unit}#{t}", f"s3/{t}") in edges
        assert dot.nodes[f"{unit}#{t}"]["shape"] == "circle"
    assert f"cluster_{unit}" in dot.clusters
    # separate stage: one box per task, no exchange
    assert dot.row_of("s3/seg") == ["~stage/s3", "s3/seg", "s3/depth"]
    assert not dot.linked("s3/seg", "head/depth")


def test_nddr_is_concat_then_one_conv_per_task(write_spec):
    topo = build_topology(load_spec(write_spec(NDDR)))
    dot = Dot(topology_dot(topo))
    edges = {(a, b) for a, b, _ in dot.edges}
    for t in ("seg", "depth"):
        assert (f"s2/{t}", "s2/nddr#concat") in edges
        assert ("s2/nddr#concat", f"s2/nddr#{t}") in edges
        assert (f"s2/nddr#{t}", f"head/{t}") in edges
        assert "1×1 conv" in dot.nodes[f"s2/nddr#{t}"]["label"]
    assert "concat  2×6 = 12 ch" in dot.nodes["s2/nddr#concat"]["label"]


def _decoder_spec(write_spec, decoder: str, aux: bool = True) -> Path:
    return write_spec(
        f"""\
        mtlc: 1
        name: dec
        input: {{image: [3, 16, 16]}}
        encoder:
          stages:
            s1: [conv(8, 3), relu]
        tasks:
          seg:   {{head: [conv(3, 1)], loss: cross_entropy}}
          depth: {{head: [conv(1, 1)], loss: l1}}
          {"edge:  {head: [conv(1, 1)], loss: bce, auxiliary: true}" if aux else ""}
        decoder: {decoder}
        """
    )


def test_attention_gates_sit_beside_the_shared_trunk(write_spec):
    path = write_spec(
        """\
        mtlc: 1
        name: mtan
        input: {image: [3, 16, 16]}
        encoder:
          stages:
            s1: [conv(8, 3), relu, maxpool(2)]
            s2: [conv(8, 3), relu]
          sharing: {s1: attention, s2: attention}
        tasks:
          seg:   {head: [conv(3, 1)], loss: cross_entropy}
          depth: {head: [conv(1, 1)], loss: l1}
        """
    )
    topo = build_topology(load_spec(path))
    dot = Dot(topology_dot(topo))
    for stage in ("s1", "s2"):
        # one row: seg's gate, the trunk, depth's gate
        assert dot.row_of(f"{stage}/shared") == [
            f"~stage/{stage}",
            f"{stage}/attention/seg",
            f"{stage}/shared",
            f"{stage}/attention/depth",
        ]
        assert float(dot.nodes[f"{stage}/shared"]["width"]) == pytest.approx(COLUMN_WIDTH)
        for t in ("seg", "depth"):
            assert dot.nodes[f"{stage}/attention/{t}"]["shape"] == "invtrapezium"
            assert (f"{stage}/shared", f"{stage}/attention/{t}") in [
                (a, b) for a, b, _ in dot.edges
            ]
    edges = [(a, b) for a, b, _ in dot.edges]
    # each task's chain runs through its own pass of the one shared refinement: a grey
    # box per task, linked to that task's gates only (no box reads as a cross-task fusion)
    for t in ("seg", "depth"):
        part = f"s2/attention/refine#{t}"
        assert [(a, b) for a, b in edges if part in (a, b)] == [
            ("s1/attention/" + t, part),
            (part, "s2/attention/" + t),
        ]
        refine = dot.nodes[part]
        assert refine["fillcolor"] == SHARED_FILL and refine["group"] == t
        assert "refine" in refine["label"] and "3×3 conv-BN-ReLU" in refine["label"]
        assert "shared weights" in refine["label"]
        assert "pool" not in refine["label"]  # s2 keeps s1's 8×8: nothing to pool
    assert sorted(dot.of("s2/attention/refine")) == [
        "s2/attention/refine#depth",
        "s2/attention/refine#seg",
    ]
    assert not any("s2/attention/refine" in n for row in dot.rows for n in row)
    # the module's parameters are written once, not once per task
    counted = Dot(topology_dot(topo, Notes(params={"s2/attention/refine": 4321})))
    labels = [counted.nodes[n]["label"] for n in counted.of("s2/attention/refine")]
    assert sum("4.32k params" in label for label in labels) == 1
    assert ("s1/shared", "s2/shared") in edges


def test_distillation_has_initial_predictions_and_edges_between_tasks(write_spec):
    topo = build_topology(load_spec(_decoder_spec(write_spec, "{type: distillation}")))
    dot = Dot(topology_dot(topo))
    edges = {(a, b) for a, b, _ in dot.edges}
    for t in ("seg", "depth", "edge"):
        assert (f"decoder/{t}/features", f"decoder/{t}/initial") in edges
        assert dot.nodes[f"decoder/{t}/initial"]["shape"] == "note"
    for k in ("seg", "depth"):  # every task's features reach every main task's F°
        for source in ("seg", "depth", "edge"):
            assert (f"decoder/{source}/features", f"decoder/distillation#{k}") in edges
    assert "decoder/distillation#edge" not in dot.nodes  # auxiliary: a source only
    assert ("decoder/edge/initial", "output/edge") in edges


def test_affinity_exchanges_every_matrix_into_every_diffusion(write_spec):
    topo = build_topology(load_spec(_decoder_spec(write_spec, "{type: affinity}")))
    dot = Dot(topology_dot(topo))
    edges = {(a, b) for a, b, _ in dot.edges}
    for i in ("seg", "depth", "edge"):
        assert (f"decoder/{i}/features", f"decoder/affinity#affinity/{i}") in edges
        for j in ("seg", "depth"):
            assert (f"decoder/affinity#affinity/{i}", f"decoder/affinity#{j}") in edges


def test_recursive_is_the_alternating_chain_of_turns(write_spec):
    spec = _decoder_spec(write_spec, "{type: recursive, order: [depth, seg], steps: 3}", aux=False)
    topo = build_topology(load_spec(spec))
    dot = Dot(topology_dot(topo))
    turns = [f"decoder/recursive#{k}/{t}" for k in (1, 2, 3) for t in ("depth", "seg")]
    assert sorted(dot.of("decoder/recursive")) == sorted(turns)
    edges = {(a, b) for a, b, _ in dot.edges}
    for a, b in zip(turns, turns[1:]):
        assert (a, b) in edges  # each turn reads the one before
    assert ("decoder/depth/features", turns[0]) in edges
    assert ("decoder/seg/features", turns[0]) in edges  # seg's state before its first turn
    assert (turns[-2], "head/depth") in edges and (turns[-1], "head/seg") in edges


def test_a_stage_may_share_a_name_with_a_fixed_row(write_spec):
    topo = build_topology(load_spec(write_spec(TINY.replace("s3", "heads"))))
    dot = Dot(topology_dot(topo))
    assert dot.row_of("heads/seg") == ["~stage/heads", "heads/seg", "heads/depth"]
    assert dot.row_of("head/seg") == ["~row/heads", "head/seg", "head/depth"]


class FutureUnit(StageSharing):
    type: Literal["future_unit"]


class FuturePoint(StagePoint):
    """A registered point that draws nothing of its own (the interface's defaults)."""

    Options = FutureUnit


def test_a_sharing_type_without_a_drawing_of_its_own_is_still_drawn(write_spec, monkeypatch):
    """A new sharing point (one file + one registry entry) must not break viz."""
    topo = build_topology(load_spec(write_spec(TINY)))
    monkeypatch.setitem(registry.SHARING, "future_unit", f"{__name__}:FuturePoint")
    topo.graph.nodes["s2/cross_stitch"]["type"] = "future_unit"
    dot = Dot(topology_dot(topo))
    assert dot.nodes["s2/cross_stitch"]["shape"] == "hexagon"
    assert "future_unit · s2" in dot.nodes["s2/cross_stitch"]["label"]
    check_complete(topo, set(dot.nodes), dot.linked)


# -- numbers on the boxes -----------------------------------------------------------------


def test_parameter_counts_match_the_hand_count(write_spec):
    dot = Dot(dot_source(write_spec(TINY)))
    expected = {
        "s1/shared": "112 params",
        "s2/seg": "222 params",
        "s2/depth": "222 params",
        "s3/seg": "42 params",
        "head/seg": "21 params",
        "head/depth": "7 params",
    }
    for node, text in expected.items():
        assert text in dot.nodes[node]["label"], node
    assert "24 params" in dot.text  # α: 2 × 2 × 6, on the unit's box
    legend = dot.nodes["~legend"]["label"]
    # shared: s1 + both s2 copies + α (both tasks read all of them) = 580
    assert "total 692 params (shared 580)" in legend
    assert "643 params" in legend and "629 params" in legend  # 580 + 42 + 21, 580 + 42 + 7
    assert "FLOPs" not in dot.text


def test_cost_adds_flops_per_box(write_spec):
    dot = Dot(dot_source(write_spec(TINY), cost=True))
    # s1: 2 FLOPs × (3·3·3) MACs per output × 4 channels × 8·8 pixels = 13,824
    assert "13.8 kFLOPs" in dot.nodes["s1/shared"]["label"]
    # head seg: 2 × 6 × 3 × 64 = 2,304
    assert "2.3 kFLOPs" in dot.nodes["head/seg"]["label"]


# -- --checkpoint ----------------------------------------------------------------------------


def _checkpoint(path: Path, spec_path: Path, edit, balancer: dict | None = None) -> Path:
    from mtlc.compiler import compile_spec

    compiled = compile_spec(spec_path)
    edit(compiled.supervised)
    torch.save(
        {
            "format": "mtlc-checkpoint",
            "version": 1,
            "spec": compiled.spec.model_dump(mode="json"),
            "model": compiled.supervised.state_dict(),
            "balancer": balancer or {},
            "optimizer": {},
            "epoch": 1,
            "step": 10,
        },
        path,
    )
    return path


def _weights(label: str) -> list[tuple[str, str, str]]:
    """(colour, source, value) of each learned weight written on a box."""
    return re.findall(r'COLOR="(#[0-9a-f]{6})">(\w+) (-?[\d.]+)</FONT>', label)


def test_checkpoint_shows_cross_stitch_alpha_on_the_mixing_nodes(write_spec, tmp_path):
    """α on the Σα box, one line per source in its colour: numbers on T² converging
    edges overlap and cannot be told apart; the edges keep α as their width."""
    spec = write_spec(TINY)
    alpha = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    wiggle = torch.tensor([-0.1, 0.1, -0.05, 0.05, 0.0, 0.0])  # per channel, mean 0

    def edit(gm):
        with torch.no_grad():
            gm.get_parameter("encoder.s2.cross_stitch.alpha").copy_(alpha[..., None] + wiggle)

    ckpt = _checkpoint(tmp_path / "run.pt", spec, edit)
    dot = Dot(dot_source(spec, checkpoint=ckpt))
    unit = "s2/cross_stitch"
    colour = task_colours(["seg", "depth"])
    # α[target, source], averaged over channels
    assert _weights(dot.nodes[f"{unit}#seg"]["label"]) == [
        (colour["seg"], "seg", "0.70"),
        (colour["depth"], "depth", "0.30"),
    ]
    assert _weights(dot.nodes[f"{unit}#depth"]["label"]) == [
        (colour["seg"], "seg", "0.20"),
        (colour["depth"], "depth", "0.80"),
    ]
    pairs = [(s, t) for s in ("seg", "depth") for t in ("seg", "depth")]
    for s, t in pairs:
        assert "label" not in dot.edge(f"s2/{s}", f"{unit}#{t}")
    width = {k: float(dot.edge(f"s2/{k[0]}", f"{unit}#{k[1]}")["penwidth"]) for k in pairs}
    assert width[("depth", "depth")] > width[("seg", "seg")] > width[("depth", "seg")]


def test_checkpoint_shows_nddr_strengths_and_uncertainty_sigma(write_spec, tmp_path):
    spec = write_spec(NDDR)
    eye = torch.eye(6)

    def edit(gm):
        with torch.no_grad():
            for t, (own, other) in {"seg": (0.5, 0.25), "depth": (0.6, 0.1)}.items():
                first, second = (own, other) if t == "seg" else (other, own)
                w = torch.cat([first * eye, -second * eye], dim=1)  # |diag| counts
                gm.get_parameter(f"encoder.s2.nddr.{t}.reduce.weight").copy_(w[..., None, None])

    log_vars = torch.tensor([0.0, 2 * math.log(2.0)])  # s = log σ² → σ = 1 and 2
    ckpt = _checkpoint(tmp_path / "run.pt", spec, edit, {"log_vars": log_vars})
    dot = Dot(dot_source(spec, checkpoint=ckpt))
    colour = task_colours(["seg", "depth"])
    assert _weights(dot.nodes["s2/nddr#seg"]["label"]) == [
        (colour["seg"], "seg", "0.50"),
        (colour["depth"], "depth", "0.25"),
    ]
    assert _weights(dot.nodes["s2/nddr#depth"]["label"]) == [
        (colour["seg"], "seg", "0.10"),
        (colour["depth"], "depth", "0.60"),
    ]
    assert "σ = 1<" in dot.nodes["output/seg"]["label"]
    assert "σ = 2<" in dot.nodes["output/depth"]["label"]


def test_checkpoint_of_another_spec_is_refused(write_spec, tmp_path):
    ckpt = _checkpoint(tmp_path / "run.pt", write_spec(NDDR, "other.yaml"), lambda gm: None)
    out = tmp_path / "t.dot"
    result = CliRunner().invoke(
        main, ["viz", str(write_spec(TINY)), "-o", str(out), "--checkpoint", str(ckpt)]
    )
    assert result.exit_code == 2
    assert "was not trained from spec 'tiny'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


# -- the command: formats and errors --------------------------------------------------------


@pytest.mark.parametrize(
    "suffix", [pytest.param(s, marks=needs_dot) for s in ("svg", "png", "pdf", "html")] + ["dot"]
)
def test_every_format_is_written(write_spec, tmp_path, suffix):
    out = tmp_path / f"t.{suffix}"
    result = CliRunner().invoke(main, ["viz", str(write_spec(TINY)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    magic = {
        "png": b"\x89PNG",
        "pdf": b"%PDF",
        "svg": b"<?xml",
        "dot": b"digraph",
        "html": b"<!DOCTYPE html>",
    }
    assert data.startswith(magic[suffix])
    if suffix == "html":  # self-contained: the svg inline, nothing fetched
        text = data.decode()
        assert "<svg" in text and "s2/cross_stitch#seg" in text
        assert not re.search(r"<script|<link|<img|src=", text)


def test_without_graphviz_only_dot_works(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    spec = str(write_spec(TINY))
    result = CliRunner().invoke(main, ["viz", spec, "-o", str(tmp_path / "t.svg")])
    assert result.exit_code == 1
    assert "apt-get install graphviz" in result.output
    assert "brew install graphviz" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a crash
    assert not (tmp_path / "t.svg").exists()
    result = CliRunner().invoke(main, ["viz", spec, "-o", str(tmp_path / "t.dot")])
    assert result.exit_code == 0
    assert (tmp_path / "t.dot").read_text().startswith("digraph")


def test_unknown_suffix_lists_the_supported_ones(write_spec, tmp_path):
    out = tmp_path / "t.jpg"
    result = CliRunner().invoke(main, ["viz", str(write_spec(TINY)), "-o", str(out)])
    assert result.exit_code == 2
    assert "unsupported format '.jpg'" in result.output
    for suffix in (".svg", ".png", ".pdf", ".dot", ".html"):
        assert suffix in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "spec.yaml"]


def test_an_output_that_cannot_be_written_is_a_one_line_error(write_spec, tmp_path):
    spec = str(write_spec(TINY))
    (tmp_path / "file").write_text("")
    for args in (["viz", spec], ["diff", spec, "--set", "encoder.sharing.s2=nddr"]):
        out = tmp_path / "file" / "t.dot"  # a folder that is a file
        result = CliRunner().invoke(main, [*args, "-o", str(out)])
        assert result.exit_code == 2, result.output
        # checked before drawing, in the words build -o and schema -o use
        assert result.output.startswith(f"error: {out}: cannot be created: "), result.output
        assert "is not a folder" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "spec.yaml"]


def test_spec_that_does_not_compile_is_a_located_error(write_spec, tmp_path):
    bad = write_spec(
        TINY.replace("s2: [conv(6, 3), relu]", "s2: [conv(6, 3), flatten, conv(4, 3)]")
    )
    out = tmp_path / "t.svg"
    result = CliRunner().invoke(main, ["viz", str(bad), "-o", str(out)])
    assert result.exit_code == 2
    assert re.search(r"spec\.yaml:\d+:\d+: ", result.output), result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_set_overrides_reach_the_drawing(write_spec, tmp_path):
    out = tmp_path / "t.dot"
    args = ["viz", str(write_spec(TINY)), "-o", str(out), "--set", "encoder.sharing.s2=nddr"]
    assert CliRunner().invoke(main, args).exit_code == 0
    dot = Dot(out.read_text())
    assert "s2/nddr#concat" in dot.nodes and "s2/cross_stitch#seg" not in dot.nodes


# -- --level ops ------------------------------------------------------------------------------


def test_ops_level_draws_the_fx_graph_clustered_with_shapes(write_spec, tmp_path):
    from mtlc.compiler import compile_spec

    spec = write_spec(TINY)
    out = tmp_path / "ops.dot"
    result = CliRunner().invoke(main, ["viz", str(spec), "-o", str(out), "--level", "ops"])
    assert result.exit_code == 0, result.output
    dot = Dot(out.read_text())
    gm = compile_spec(spec).supervised
    called = [n.name for n in gm.graph.nodes if n.op in ("call_module", "call_function")]
    assert set(called) <= set(dot.nodes)
    for cluster in ("stage/s1", "stage/s2", "stage/heads", "block/s2/seg", "block/s2/cross_stitch"):
        assert f"cluster_{cluster}" in dot.clusters
    # shapes on edges, batch dim dropped: s1's conv makes 4×8×8, s2's 6×8×8
    assert dot.edge("encoder_s1_shared_conv0", "encoder_s1_shared_relu1")["label"] == "4×8×8"
    assert dot.edge("encoder_s2_seg_relu1", "encoder_s2_cross_stitch")["label"] == "6×8×8"
    assert dot.edge("heads_seg_conv0", "output")["label"] == "seg: 3×8×8"
