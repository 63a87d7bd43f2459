"""`encoder.backbone: {import: ...}`: any fx-traceable model, cut at its module names.

The models live in tests/traced_models (a package importable from the tests folder), so
the refusal without `--allow-import traced_models` and the traced path are both real.
"""

from __future__ import annotations

import re

import pytest
import torch
import traced_models
from click.testing import CliRunner

from mtlc import allow_import
from mtlc.cli import main
from mtlc.compiler import compile_spec
from mtlc.errors import SpecError

SPEC = """\
mtlc: 1
name: traced
input: {{image: [3, 16, 16]}}
encoder:
  backbone: {{import: "traced_models:{factory}", kwargs: {{width: 8}}{weights}}}
  stages: {{s1: [stem, block1], s2: [down, block2]}}
  sharing: {{s2: {{type: cross_stitch, init: [1.0, 0.0]}}}}
tasks:
  seg:   {{head: [conv(4, 1), upsample(2)], loss: cross_entropy}}
  depth: {{head: [conv(1, 1), upsample(2)], loss: l1}}
"""


def write(write_spec, factory="tiny", weights="", **replace):
    text = SPEC.format(factory=factory, weights=weights)
    for old, new in replace.items():
        text = text.replace(old, new)
    return write_spec(text)


def test_refused_without_allow_import(write_spec):
    path = write(write_spec)
    result = CliRunner().invoke(main, ["build", str(path)])
    assert result.exit_code == 2
    assert re.search(
        r"spec.yaml:5:\d+: encoder.backbone.import: importing 'traced_models' needs --allow-import traced_models",
        result.output,
    ), result.output


def test_traced_pieces_inlined_per_column(write_spec):
    path = write(write_spec)
    result = CliRunner().invoke(main, ["build", str(path), "--allow-import", "traced_models"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["--allow-import", "traced_models", "profile", str(path)])
    assert result.exit_code == 0, result.output
    with allow_import("traced_models"):
        c = compile_spec(path)
    keys = set(c.model.state_dict())
    assert "encoder.s1.shared.stem.0.weight" in keys
    for t in ("seg", "depth"):  # each column its own copy, under the model's names
        assert f"encoder.s2.{t}.block2.conv.weight" in keys
        assert f"encoder.s2.{t}.scale" in keys
    assert not any(".fc." in k for k in keys)  # after the last cut: not part of the backbone
    g = c.topology.graph
    assert g.nodes["s1/shared"]["out_shape"] == (8, 16, 16)
    assert g.nodes["s2/seg"]["out_shape"] == (16, 8, 8)
    assert g.nodes["s2/seg"]["traced"] == ["down", "block2.conv", "block2.bn"]
    # the labels see the traced nodes as the stage's own: the add of block1 is in s1
    adds = [n for n in c.model.graph.nodes if n.op == "call_function" and "add" in n.name]
    assert {n.meta["mtlc"]["block"] for n in adds} >= {"s1/shared", "s2/seg", "s2/depth"}
    # every column computes what the original model computes (α = I)
    ref = c.topology.traced.original
    x = torch.randn(2, 3, 16, 16)
    c.model.eval()
    with torch.no_grad():
        want = traced_models.Tiny.features(ref, x)
        for t in ("seg", "depth"):
            column = c.supervised.encoder.s2.get_submodule(t)
            assert torch.equal(column.scale, ref.scale)
        out = c.supervised(x)
    head = c.model.heads.seg
    assert torch.allclose(out["seg"], head.upsample1(head.conv0(want)), atol=1e-6)


def test_weights_load_into_the_model(write_spec, tmp_path):
    torch.manual_seed(3)
    donor = traced_models.Tiny(8)
    with torch.no_grad():
        donor.block2.conv.weight.uniform_(-1, 1)
    torch.save(donor.state_dict(), tmp_path / "tiny.pth")
    path = write(write_spec, weights=f", weights: {tmp_path / 'tiny.pth'}")
    with allow_import("traced_models"):
        c = compile_spec(path)
    sd = c.model.state_dict()
    for t in ("seg", "depth"):
        assert torch.equal(sd[f"encoder.s2.{t}.block2.conv.weight"], donor.block2.conv.weight)
    torch.save({"stem.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    path = write(write_spec, weights=f", weights: {tmp_path / 'bad.pth'}")
    with (
        allow_import("traced_models"),
        pytest.raises(SpecError, match="missing keys .*shapes differ: stem.0.weight"),
    ):
        compile_spec(path)


@pytest.mark.parametrize(
    ("factory", "replace", "message"),
    [
        (
            "tiny",
            {"[stem, block1]": "[stem, blok1]"},
            r"encoder.stages.s1\[1\]: unknown module of traced_models:tiny 'blok1' \(did you mean 'block1'",
        ),
        (
            "tiny",
            {"[stem, block1]": "[stem, block2]", "[down, block2]": "[block1]"},
            r"encoder.stages.s2\[0\]: module 'block1' runs before the previous stage ends",
        ),
        ("skip", {"[stem, block1]": "[stem, fc]"}, r"module 'fc' is not called"),
        ("skip", {}, r"encoder.stages.s1: the cut after stage 's1' is crossed by 2 values"),
        (
            "dynamic",
            {},
            r"encoder.backbone.import: torch.fx cannot trace traced_models:dynamic \(TraceError",
        ),
        ("broken", {}, r"traced_models:broken raised RuntimeError: no such checkpoint"),
        ("nothing", {}, r"module 'traced_models' has no attribute 'nothing'"),
        (
            "tiny",
            {"kwargs: {width: 8}": "kwargs: {width: 8}, output_stride: 8"},
            r"encoder.backbone.output_stride: output_stride applies to named backbones",
        ),
        (
            "tiny",
            {"[3, 16, 16]": "[1, 16, 16]"},
            r"input.image: traced_models:tiny fails on an input of \[1, 16, 16\]",
        ),
    ],
)
def test_bad_imports(write_spec, factory, replace, message):
    if factory in ("broken", "nothing", "skip", "dynamic"):  # factories without arguments
        replace = {"kwargs: {width: 8}": "kwargs: {}", **replace}
    path = write(write_spec, factory=factory, **replace)
    result = CliRunner().invoke(main, ["build", str(path), "--allow-import", "traced_models"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert re.search(message, " ".join(result.output.split())), result.output
