"""`mtlc viz --checkpoint` on a mixture-of-experts spec whose validation data needs
`--allow-import` (a `callable` data set) or is not on this machine: with the flag the
gates' mean weights come from that data; without it, or with the files gone, the picture
is drawn without them and one line says why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtlc.cli import main
from mtlc.compiler import compile_spec
from mtlc.spec import load_spec
from mtlc.train.checkpoint import load_checkpoint

SPEC = Path(__file__).resolve().parents[1] / "specs" / "mmoe.yaml"
SMALL = ["train.data.train=32", "train.data.val=24", "train.batch_size=16", "train.epochs=1"]

USER_DATA = """
import torch

def make(split, seed):
    g = torch.Generator().manual_seed(7)
    n = 10 if split == "val" else 16
    x = torch.randn(n, 100, generator=g)
    return {"x": x, "y1": x[:, :1], "y2": x[:, 1:2]}
"""
CALLABLE = "train.data={name: callable, function: 'userdata:make'}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from mtlc.train.run import train

    out = tmp_path_factory.mktemp("gates") / "run"
    run = train(SPEC, overrides=SMALL, out=out, device="cpu", progress=False)
    return next(run.run_dir.glob("*.pt"))


@pytest.fixture
def userdata(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(USER_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userdata", raising=False)


def viz(out: Path, ckpt: Path, *extra: str):
    args = [str(SPEC), "-o", str(out), "--checkpoint", str(ckpt), *extra]
    return CliRunner().invoke(main, ["viz", *args])


def test_allow_import_lets_viz_read_a_callable_data_set(tmp_path, checkpoint, userdata):
    out = tmp_path / "g.dot"
    result = viz(out, checkpoint, "--set", CALLABLE, "--allow-import", "userdata")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    dot = out.read_text()
    assert "mean of 10 val samples" in dot  # the callable's val split, not correlated's 24
    # the weights drawn are the gate's softmax averaged over the callable's 10 samples
    sys.path.insert(0, str(tmp_path))
    import userdata as mod

    x = mod.make("val", 0)["x"]
    spec = load_spec(SPEC, SMALL)
    compiled = compile_spec(spec)
    gm = compiled.supervised
    gm.load_state_dict(load_checkpoint(checkpoint)["model"])
    gm.eval()
    seen = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.meta.get("mtlc", {}).get("block") == "experts/mmoe/y1":
            module = gm.get_submodule(node.target)
            module.register_forward_hook(lambda _m, _a, o: seen.update(w=o.mean(0)))
    with torch.no_grad():
        gm(x)
    experts = compiled.topology.graph.nodes["experts/mmoe/y1"]["experts"]
    for e, value in zip(experts, seen["w"].tolist()):
        assert f"{e.split('/', 1)[1]} {value:.2f}" in dot


def test_without_allow_import_the_picture_is_drawn_without_gate_weights(
    tmp_path, checkpoint, userdata
):
    out = tmp_path / "g.dot"
    result = viz(out, checkpoint, "--set", CALLABLE)
    assert result.exit_code == 0, result.output
    assert result.stderr == (  # located at the --set that gave the option
        f"note: gate weights not shown: --set {CALLABLE}: train.data.function: importing "
        "'userdata' needs --allow-import userdata.\n"
    )
    assert result.stdout == f"wrote {out}\n"
    dot = out.read_text()
    assert "val samples" not in dot and "experts/mmoe/y1" in dot
    assert "userdata" not in sys.modules  # nothing was imported


def test_missing_data_files_leave_the_gate_weights_out(tmp_path, checkpoint):
    out = tmp_path / "g.dot"
    table = tmp_path / "gone.csv"
    data = f"train.data={{name: csv, path: '{table}', targets: {{y1: a, y2: b}}}}"
    result = viz(out, checkpoint, "--set", data)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: gate weights not shown: ")
    assert "gone.csv" in lines[0]
    assert "val samples" not in out.read_text()


def test_a_checkpoint_of_another_model_is_still_an_error(tmp_path, userdata):
    from mtlc.train.run import train

    other = train(
        SPEC,
        overrides=[*SMALL, "encoder.sharing.experts.experts=2"],
        out=tmp_path / "other",
        device="cpu",
        progress=False,
    )
    ckpt = next(other.run_dir.glob("*.pt"))
    result = viz(tmp_path / "g.dot", ckpt, "--set", CALLABLE)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "g.dot").exists()
