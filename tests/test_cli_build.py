"""`mtlc build`, `schema`, `list` and `--set` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtlc.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_build_prints_stages_tasks_and_totals(small_spec):
    result = run("build", str(small_spec))
    assert result.exit_code == 0, result.output
    out = result.output
    for word in (
        "s1",
        "s2",
        "seg",
        "depth",
        "shared",
        "16×8×8",
        "total 1,525",
        "shared 1,440",
        "seg 68",
        "depth 17",
    ):
        assert word in out, word


def test_build_json(small_spec):
    result = run("build", str(small_spec), "--json")
    report = json.loads(result.output)
    assert report["name"] == "small" and report["tasks"] == ["seg", "depth"]
    assert report["params"] == {"total": 1525, "shared": 1440, "tasks": {"seg": 68, "depth": 17}}
    assert report["outputs"] == {"seg": [4, 16, 16], "depth": [1, 16, 16]}
    # multiply-adds per sample: s1 conv 8·3·9·16·16 = 55296, s2 conv 16·8·9·8·8 = 73728,
    # heads 4·16·8·8 = 4096 and 1·16·8·8 = 1024; a multiply-add is 2 FLOPs
    assert report["flops"]["total"] == 2 * (55296 + 73728 + 4096 + 1024)
    assert report["flops"]["shared"] == 2 * (55296 + 73728)
    assert report["flops"]["tasks"] == {"seg": 2 * 4096, "depth": 2 * 1024}
    assert report["macs"]["total"] == report["flops"]["total"] // 2


def test_build_code_prints_the_graph_module(small_spec):
    result = run("build", str(small_spec), "--code")
    assert (
        "def forward(self, image):" in result.output
        and "self.encoder.s1.shared.conv0(image)" in result.output
    )


def test_build_saves_a_model_torch_load_gives_back(small_spec, tmp_path):
    path = tmp_path / "model.pt"
    assert run("build", str(small_spec), "-o", str(path)).exit_code == 0
    model = torch.load(path, weights_only=False)
    from mtlc.atomic import file_mode

    assert path.stat().st_mode & 0o777 == file_mode()  # what a plain open() gives, not 0600
    assert model(torch.randn(1, 3, 16, 16))["seg"].shape == (1, 4, 16, 16)


def test_build_does_not_overwrite_without_force(small_spec, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"precious")
    result = CliRunner().invoke(main, ["build", str(small_spec), "-o", str(path)])
    assert result.exit_code == 2 and "exists" in result.output
    assert path.read_bytes() == b"precious"


def test_set_overrides_on_build(small_spec):
    result = run("build", str(small_spec), "--json", "--set", "tasks.seg.head[0]=conv(6, 1)")
    assert json.loads(result.output)["outputs"]["seg"] == [6, 16, 16]


def test_set_unknown_path_is_located(small_spec):
    result = CliRunner().invoke(
        main, ["build", str(small_spec), "--set", "encoder.stage.s1=[relu]"]
    )
    assert result.exit_code == 2
    assert (
        "--set encoder.stage.s1=[relu]: encoder.stage: unknown key 'stage' (did you mean 'stages'?)"
        in result.output
    )


def test_schema_is_json_schema_of_the_format():
    doc = json.loads(run("schema").output)
    assert doc["title"].startswith("mtlc spec")
    assert set(doc["required"]) >= {"mtlc", "name", "input", "encoder", "tasks"}
    sharing = doc["$defs"]["Encoder"]["properties"]["sharing"]["additionalProperties"]["anyOf"][0][
        "enum"
    ]
    assert {"hard", "separate", "cross_stitch", "nddr", "attention"} <= set(sharing)


def test_packaged_schema_is_in_step_with_the_models():
    from mtlc.commands import SCHEMA_FILE, schema_text

    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), "run `make schema`"


def test_list_shows_every_kind():
    names = json.loads(run("list", "--json").output)
    assert (
        "resblock" in names["layers"]
        and "cross_stitch" in names["sharing"]
        and "mgda" in names["balancers"]
    )
    assert "recursive" in names["decoders"] and "within_11.25" in names["metrics"]


def test_help_and_schema_do_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mtlc.cli import main\n"
        "for args in (['--help'], ['schema'], ['list', '--json']):\n"
        "    r = CliRunner().invoke(main, args)\n"
        "    assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_every_example_spec_builds(tmp_path):
    from pathlib import Path

    specs = sorted(Path(__file__).parent.parent.glob("specs/*.yaml"))
    assert specs, "specs/ holds the example specs"
    for spec in specs:
        result = CliRunner().invoke(main, ["build", str(spec), "--json"])
        assert result.exit_code == 0, f"{spec}: {result.output}"


def test_schema_accepts_what_the_loader_accepts():
    """Editors validate with the published schema: shorthands the loader takes must pass it."""
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    from mtlc.commands import SCHEMA_FILE

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    specs = sorted(Path(__file__).parent.parent.glob("specs/*.yaml"))
    assert specs
    for path in specs:
        data = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(data)), path
    data["decoder"], data["balancer"] = "distillation", "mgda"
    data["encoder"]["sharing"] = {"s1": "nddr", "s2": {"groups": [[t] for t in data["tasks"]]}}
    assert not list(validator.iter_errors(data))
    data["decoder"] = "distilation"
    assert list(validator.iter_errors(data))
