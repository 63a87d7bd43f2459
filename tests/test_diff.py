"""`mtlc diff`: known edits of a spec give the changes and the cost deltas worked out by hand.

The base spec is tests/test_viz.py's TINY (692 parameters, counted there): a shared s1,
a cross-stitch s2 and a separate s3 for two tasks.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from test_viz import TINY, needs_dot

from mtlc.cli import main
from mtlc.colors import SHARED, tint
from mtlc.spec import load_spec
from mtlc.viz.diff import Change, compare, spec_changes
from mtlc.viz.topology_view import STATUS, UNCHANGED

NORMAL = "  normal: {head: [conv(3, 1)], loss: cosine}\n"


@pytest.fixture
def base(write_spec):
    return write_spec(TINY, "a.yaml")


def _compare(a, b):
    return compare(load_spec(a), load_spec(b), str(a), str(b))


def test_a_spec_against_itself_has_no_differences(base):
    result = _compare(base, base)
    assert result.identical
    assert result.text().splitlines()[-1] == "no differences"
    cli = CliRunner().invoke(main, ["diff", str(base), str(base), "--exit-code"])
    assert cli.exit_code == 0
    assert "no differences" in cli.output


def test_a_task_added(base, write_spec):
    b = write_spec(TINY + NORMAL, "b.yaml")
    r = _compare(base, b)
    assert [(c.path, c.change) for c in r.spec] == [("tasks.normal", "added")]
    assert r.spec[0].b["loss"] == "cosine"
    assert sorted(r.added) == ["head/normal", "output/normal", "s2/normal", "s3/normal"]
    assert r.removed == []
    # the input and s1 now also serve normal, but nothing about them changed: serving a
    # task only B has is that task's addition, not a change. α grows 2·2·6 → 3·3·6.
    changed = {c.node: c.fields for c in r.changed}
    assert changed == {"s2/cross_stitch": {"params": (24, 54)}}
    assert "  ~ s2/cross_stitch: params 24 → 54\n" in r.text()
    cost = r.cost_table()
    # normal brings its s2 copy (222), a bigger α (3·3·6 − 2·2·6 = 30), its s3 copy (42)
    # and its head (6·3 + 3 = 21): +315
    assert cost["params"]["total"] == {"a": 692, "b": 1007, "delta": 315, "relative": 315 / 692}
    assert cost["params"]["tasks"]["normal"] == {"a": None, "b": 895}
    # seg alone: s1 112 + three s2 copies 666 + α 54 (all mixed into seg) + s3 42 + head 21
    assert cost["params"]["tasks"]["seg"]["b"] == 895
    assert cost["params"]["tasks"]["seg"]["delta"] == 895 - 643


def test_cross_stitch_replaced_by_nddr(base, write_spec):
    b = write_spec(TINY.replace("s2: cross_stitch", "s2: nddr"), "b.yaml")
    r = _compare(base, b)
    assert [(c.path, c.change, c.a, c.b) for c in r.spec] == [
        ("encoder.sharing.s2.type", "changed", "cross_stitch", "nddr"),
        ("encoder.sharing.s2.granularity", "removed", "channel", None),
        ("encoder.sharing.s2.bn_momentum", "added", None, 0.05),
    ]
    assert r.added == ["s2/nddr"] and r.removed == ["s2/cross_stitch"]
    assert r.changed == []  # the task copies around the unit are the same
    assert sorted(r.links_added) == sorted(
        [
            ("s2/seg", "s2/nddr"),
            ("s2/depth", "s2/nddr"),
            ("s2/nddr", "s3/seg"),
            ("s2/nddr", "s3/depth"),
        ]
    )
    assert len(r.links_removed) == 4
    # NDDR per task: 1×1 conv 12→6 without bias (72) + BN (12) = 84, two tasks 168;
    # the cross-stitch α it replaces had 2·2·6 = 24
    delta = r.cost_table()["params"]["total"]
    assert (delta["a"], delta["b"], delta["delta"]) == (692, 836, 144)
    text = r.text()
    assert "  ~ encoder.sharing.s2.type: cross_stitch → nddr" in text
    assert "  + s2/nddr (nddr, 168 params)" in text
    assert "  - s2/cross_stitch (cross_stitch, 24 params)" in text
    assert "692 → 836 (+144, +20.8%)" in text


def test_a_stage_widened(base, write_spec):
    b = write_spec(TINY.replace("s2: [conv(6, 3), relu]", "s2: [conv(8, 3), relu]"), "b.yaml")
    r = _compare(base, b)
    assert [(c.path, c.a, c.b) for c in r.spec] == [("encoder.stages.s2.0", "conv(6)", "conv(8)")]
    changed = {c.node: c.fields for c in r.changed}
    assert set(changed) == {"s2/seg", "s2/depth", "s2/cross_stitch", "s3/seg", "s3/depth"}
    assert changed["s2/seg"]["out_shape"] == ([6, 8, 8], [8, 8, 8])
    assert changed["s2/seg"]["layers"] == (["conv(6)", "relu"], ["conv(8)", "relu"])
    assert changed["s3/depth"] == {"in_shape": ([6, 8, 8], [8, 8, 8])}
    assert r.added == r.removed == []
    cost = r.cost_table()
    # s2 per task 4·8·9+8 = 296 (was 222), α 2·2·8 = 32 (was 24), s3 per task 8·6+6 = 54
    # (was 42): 2·74 + 8 + 2·12 = +180
    assert cost["params"]["total"]["delta"] == 180
    assert cost["params"]["total"]["b"] == 872
    # FLOPs (2 per multiply-add, 8·8 pixels): s2 conv 2·36·(8−6)·64 = 9,216 per task,
    # s3 1×1 conv 2·(8−6)·6·64 = 1,536 per task; the α mix counts none
    assert cost["flops"]["total"]["delta"] == 2 * 9216 + 2 * 1536
    assert cost["flops"]["tasks"]["seg"]["delta"] == 2 * 9216 + 1536
    text = r.text()
    assert "  ~ s2/seg: layers" in text and "[222 → 296 params]" in text


def test_an_inserted_layer_is_one_addition():
    a = {"stages": {"s1": ["conv(4)", "relu", "maxpool"]}}
    b = {"stages": {"s1": ["conv(4)", "bn", "relu", "maxpool"]}}
    assert spec_changes(a, b) == [Change("stages.s1.1", "added", b="bn")]
    assert spec_changes(b, a) == [Change("stages.s1.1", "removed", a="bn")]


def test_layers_compare_by_meaning_not_spelling(base, write_spec):
    b = write_spec(TINY.replace("conv(4, 3)", "{conv: {out: 4, k: 3}}"), "b.yaml")
    assert _compare(base, b).identical


def test_json_and_exit_code(base, write_spec):
    b = write_spec(TINY.replace("s2: cross_stitch", "s2: nddr"), "b.yaml")
    cli = CliRunner().invoke(main, ["diff", str(base), str(b), "--json"])
    assert cli.exit_code == 0
    data = json.loads(cli.output)
    assert data["identical"] is False
    assert data["spec"][0] == {
        "path": "encoder.sharing.s2.type",
        "change": "changed",
        "a": "cross_stitch",
        "b": "nddr",
    }
    assert data["topology"]["added"] == [{"id": "s2/nddr", "kind": "nddr"}]
    assert data["cost"]["params"]["total"]["delta"] == 144
    assert CliRunner().invoke(main, ["diff", str(base), str(b), "--exit-code"]).exit_code == 1


def test_set_applies_to_b_and_b_defaults_to_a(base):
    cli = CliRunner().invoke(
        main, ["diff", str(base), "--set", "encoder.sharing.s2=nddr", "--json"]
    )
    assert cli.exit_code == 0, cli.output
    data = json.loads(cli.output)
    assert [n["id"] for n in data["topology"]["added"]] == ["s2/nddr"]
    assert [n["id"] for n in data["topology"]["removed"]] == ["s2/cross_stitch"]


def _strokes(svg_path) -> dict[str, set[str]]:
    """Node title → the stroke colours of its shapes, from a graphviz SVG."""
    ns = "{http://www.w3.org/2000/svg}"
    out: dict[str, set[str]] = {}
    for g in ET.parse(svg_path).getroot().iter(f"{ns}g"):
        title = g.find(f"{ns}title")
        if g.get("class") == "node" and title is not None:
            out[title.text] = {el.get("stroke") for el in g if el.get("stroke")}
    return out


@needs_dot
def test_drawing_marks_added_removed_and_changed(base, write_spec, tmp_path):
    b = write_spec(
        TINY.replace("s2: cross_stitch", "s2: nddr").replace(
            "s3: [conv(6, 1), relu]", "s3: [conv(6, 1), bn, relu]"
        ),
        "b.yaml",
    )
    out = tmp_path / "diff.svg"
    cli = CliRunner().invoke(main, ["diff", str(base), str(b), "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    strokes = _strokes(out)
    for part in ("s2/nddr#concat", "s2/nddr#seg", "s2/nddr#depth"):
        assert STATUS["added"] in strokes[part]
    for part in ("s2/cross_stitch#seg", "s2/cross_stitch#depth"):
        assert STATUS["removed"] in strokes[part]
    assert STATUS["changed"] in strokes["s3/seg"]  # bn added: 12 more parameters
    assert not {STATUS["changed"], STATUS["added"], STATUS["removed"]} & strokes["s1/shared"]


def test_bad_output_suffix_writes_nothing(base, tmp_path):
    out = tmp_path / "diff.gif"
    cli = CliRunner().invoke(main, ["diff", str(base), str(base), "-o", str(out)])
    assert cli.exit_code == 2
    assert "supported: .svg, .png, .pdf, .dot, .html" in cli.output
    assert not out.exists()


@needs_dot
def test_union_that_trips_graphviz_ranking_still_renders(write_spec, tmp_path):
    """NDDR vs a decoder over three tasks: graphviz 2.43 fails to rank the strict layout
    ('trouble in init_rank'); the drawing falls back to a looser one rather than failing."""
    tasks = """\
tasks:
  seg:    {head: [conv(3, 1)], loss: cross_entropy}
  depth:  {head: [conv(1, 1)], loss: l1}
  normal: {head: [conv(3, 1)], loss: cosine}
"""
    head = "mtlc: 1\nname: {}\ninput: {{image: [3, 8, 8]}}\nencoder:\n  stages:\n    s1: [conv(4, 3)]\n"
    a = write_spec(head.format("a") + "  sharing: {s1: nddr}\n" + tasks, "a.yaml")
    b = write_spec(
        head.format("b") + tasks + "decoder: {type: recursive, features: 4, steps: 2}\n", "b.yaml"
    )
    out = tmp_path / "diff.svg"
    cli = CliRunner().invoke(main, ["diff", str(a), str(b), "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    nodes = set(_strokes(out))
    assert {"s1/nddr#concat", "decoder/recursive#2/normal", "head/seg", "output/normal"} <= nodes


def _fills(svg_path) -> dict[str, set[str]]:
    """Node title → the fill colours of its shapes (legend cells included)."""
    ns = "{http://www.w3.org/2000/svg}"
    out: dict[str, set[str]] = {}
    for g in ET.parse(svg_path).getroot().iter(f"{ns}g"):
        title = g.find(f"{ns}title")
        if g.get("class") == "node" and title is not None:
            out[title.text] = {el.get("fill") for el in g.iter() if el.get("fill")}
    return out


@needs_dot
def test_drawing_of_a_task_added_keeps_unchanged_nodes_unchanged(base, write_spec, tmp_path):
    """Only what differs is coloured: the input and the shared s1 serve the new task too
    but stay grey; the grown cross-stitch is amber, its part for the new task green; the
    legend is the key to the status colours, not grey task swatches."""
    b = write_spec(TINY + NORMAL, "b.yaml")
    out = tmp_path / "diff.svg"
    cli = CliRunner().invoke(main, ["diff", str(base), str(b), "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    strokes = _strokes(out)
    for node in ("input/image", "s1/shared", "s2/seg", "head/depth", "output/seg"):
        assert strokes[node] <= {UNCHANGED, SHARED}, node
    assert STATUS["changed"] in strokes["s2/cross_stitch#seg"]
    assert STATUS["changed"] in strokes["s2/cross_stitch#depth"]
    assert STATUS["added"] in strokes["s2/cross_stitch#normal"]
    for node in ("s2/normal", "s3/normal", "head/normal", "output/normal"):
        assert STATUS["added"] in strokes[node], node
    legend = _fills(out)["~legend"]
    for colour in (*STATUS.values(), UNCHANGED):
        assert tint(colour, 0.6) in legend
    text = out.read_text()
    for word in ("added", "removed", "changed", "unchanged", "task normal"):
        assert f">{word}<" in text
