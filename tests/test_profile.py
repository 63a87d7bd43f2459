"""`mtlc profile`: costs worked out by hand, FlopCounterMode agreement, the CLI contract.

Hand counts use FlopCounterMode's convention: a conv costs 2·N·H·W·C_out·C_in·k² FLOPs
and a linear 2·N·in·out (biases are not counted); MACs are half of that.
"""

from __future__ import annotations

import csv
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from mtlc.compiler import compile_spec
from mtlc.compiler.labels import task_sets
from mtlc.compiler.prune import pruned
from mtlc.profile import profile, summarize
from mtlc.profile.command import profile as profile_cmd

SPECS = sorted(Path(__file__).resolve().parents[1].glob("specs/*.yaml"))


def conv(n: int, cout: int, cin: int, k: int, hw: int) -> int:
    return 2 * n * hw * cout * cin * k * k


def spec(stages: dict, heads: dict, *, inp=(3, 8, 8), sharing=None, **extra) -> dict:
    return {
        "mtlc": 1,
        "name": extra.pop("name", "hand"),
        "input": {"image": list(inp)},
        "encoder": {"stages": stages, "sharing": sharing or {}},
        "tasks": {t: {"head": h, "loss": "l1"} for t, h in heads.items()},
        **extra,
    }


HARD = spec({"s1": ["conv(4, 3)", "bn", "relu"]}, {"a": ["conv(2, 1)"], "b": ["conv(3, 1)"]})


def test_hard_sharing_by_hand():
    p = profile(HARD, batch=2).to_json()
    # conv(4,3) on 3 channels: 4·3·9 + 4 = 112; bn(4): 8; heads 2·4+2 = 10 and 3·4+3 = 15
    assert p["params"] | {"shared_by": None} == {
        "total": 145,
        "shared": 120,
        "tasks": {"a": 10, "b": 15},
        "shared_by": None,
        "trainable": 145,
        "bytes": 145 * 4,
    }
    assert p["buffers"]["shared"] == p["buffers"]["total"] == 4 + 4 + 1  # mean, var, count
    shared, a, b = conv(2, 4, 3, 3, 64), conv(2, 2, 4, 1, 64), conv(2, 3, 4, 1, 64)
    assert (shared, a, b) == (27648, 2048, 3072)
    assert p["flops"]["total"] == shared + a + b
    assert p["flops"]["shared"] == shared
    assert p["flops"]["tasks"] == {"a": a, "b": b}
    assert p["macs"]["total"] == (shared + a + b) // 2
    # bn and relu: one op per element of a [2, 4, 8, 8] map each
    assert p["other_ops"]["shared"] == p["other_ops"]["total"] == 2 * 512
    # serving a alone: the shared stage and a's own head, nothing of b
    assert p["serve_alone"] == {"a": shared + a, "b": shared + b}
    assert p["serve_alone_params"] == {"a": 130, "b": 135}


def test_peak_activation_memory_by_hand():
    # Bytes at batch 2: image 1536, conv/bn/relu 2048 each, head a 1024, head b 1536.
    # relu's output lives until head b reads it, and both heads' outputs to the end:
    # running head b holds relu + a + b = 2048 + 1024 + 1536.
    mem = profile(HARD, batch=2).to_json()["memory"]
    assert mem["peak_activation_bytes"] == 4608
    assert mem["peak_at"] == "heads_b_conv0"
    assert mem["activation_bytes"] == 1536 + 3 * 2048 + 1024 + 1536


def test_views_share_their_base_storage():
    # flatten is a view of conv's output: it adds no bytes, and keeps conv's 128 B alive
    # while linear(64) writes its 256 B, so the peak is 384 B at the linear node.
    s = spec({"s1": ["conv(2, 1)"]}, {"a": ["flatten", "linear(64)"]}, inp=(2, 4, 4))
    p = profile(s, batch=1)
    nodes = {n.name: n for n in p.inference.nodes}
    assert nodes["heads_a_flatten0"].out_bytes == 0
    assert nodes["heads_a_linear1"].out_bytes == 256
    assert (p.inference.peak_bytes, p.inference.peak_node) == (384, "heads_a_linear1")


def test_linear_cross_stitch_by_hand():
    s = spec(
        {"s1": ["linear(5)", "relu"], "s2": ["linear(4)"]},
        {"a": ["linear(2)"], "b": ["linear(1)"]},
        inp=(6,),
        sharing={"s2": "cross_stitch"},
    )
    p = profile(s, batch=3).to_json()
    # s1 6·5+5 = 35; two s2 columns 5·4+4 = 24 each; α per channel 2·2·4 = 16; heads 10 and 5.
    # Both columns feed both tasks through the mix, so they are shared.
    assert p["params"]["total"] == 35 + 48 + 16 + 15
    assert p["params"]["shared"] == 35 + 48 + 16
    assert p["params"]["tasks"] == {"a": 10, "b": 5}
    s1, col, a, b = 2 * 3 * 6 * 5, 2 * 3 * 5 * 4, 2 * 3 * 4 * 2, 2 * 3 * 4 * 1
    assert p["flops"]["total"] == s1 + 2 * col + a + b
    assert p["flops"]["shared"] == s1 + 2 * col
    # the mix is element-wise: per target task one multiply then one multiply-add over
    # [3, 4], i.e. T² · N · C = 48 ops, plus relu's 15
    assert p["other_ops"]["total"] == 4 * 3 * 4 + 15
    # serving a alone still runs every column: cross-stitch needs them all
    assert p["serve_alone"] == {"a": s1 + 2 * col + a, "b": s1 + 2 * col + b}
    assert p["serve_alone_params"] == {"a": 99 + 10, "b": 99 + 5}


def test_conv_cross_stitch_by_hand():
    s = spec(
        {"s1": ["conv(4, 3)"]},
        {"a": ["conv(2, 1)"], "b": ["conv(1, 1)"], "c": ["conv(1, 1)"]},
        sharing={"s1": {"type": "cross_stitch", "granularity": "scalar"}},
    )
    p = profile(s, batch=1).to_json()
    col = conv(1, 4, 3, 3, 64)
    heads = {"a": conv(1, 2, 4, 1, 64), "b": conv(1, 1, 4, 1, 64), "c": conv(1, 1, 4, 1, 64)}
    assert p["params"]["shared"] == 3 * 112 + 3 * 3  # three columns, α scalar per task pair
    assert p["flops"]["shared"] == 3 * col
    assert p["flops"]["tasks"] == heads
    assert p["other_ops"]["total"] == 3 * 3 * 4 * 64  # T² · N · C · H · W
    assert p["serve_alone"] == {t: 3 * col + f for t, f in heads.items()}


def test_groups_report_who_shares():
    s = spec(
        {"s1": ["conv(4, 3)"], "s2": ["conv(4, 3)"]},
        {"a": ["conv(1, 1)"], "b": ["conv(1, 1)"], "c": ["conv(1, 1)"]},
        sharing={"s2": {"type": "hard", "groups": [["a", "b"], ["c"]]}},
    )
    params = profile(s).to_json()["params"]
    # s1 112 for all; s2 4·4·9+4 = 148 per copy: one for a+b, one for c alone; heads 5
    assert params["shared_by"] == {"a+b+c": 112, "a+b": 148}
    assert params["shared"] == 260
    assert params["tasks"] == {"a": 5, "b": 5, "c": 148 + 5}


def test_nddr_by_hand():
    pytest.importorskip("mtlc.sharing.nddr")
    s = spec(
        {"s1": ["conv(4, 3)"]}, {"a": ["conv(1, 1)"], "b": ["conv(1, 1)"]}, sharing={"s1": "nddr"}
    )
    p = profile(s).to_json()
    # columns 2·112, shared (both feed the concat); per task a 1×1 conv 8→4 without
    # bias (32) and a BN (8 + buffers 9), read by that task alone; heads 5
    assert p["params"] == p["params"] | {"total": 314, "shared": 224, "tasks": {"a": 45, "b": 45}}
    assert p["buffers"]["tasks"] == {"a": 9, "b": 9}
    own = conv(1, 4, 8, 1, 64) + conv(1, 1, 4, 1, 64)
    assert p["flops"]["shared"] == 2 * conv(1, 4, 3, 3, 64)
    assert p["flops"]["tasks"] == {"a": own, "b": own}


def test_attention_by_hand():
    pytest.importorskip("mtlc.sharing.attention")
    s = spec(
        {"s1": ["conv(4, 3)"], "s2": ["conv(4, 3)", "maxpool(2)"]},
        {"a": ["conv(1, 1)"], "b": ["conv(1, 1)"]},
        sharing={"s1": "attention", "s2": "attention"},
    )
    p = profile(s).to_json()
    # trunk 112 + 148 and the refinement (3×3 conv 148 + BN 8) are shared; per task the
    # masks 4→4→4 (20+8+20+8) and 8→4→4 (36+8+20+8) and a head of 5
    assert p["params"] == p["params"] | {
        "total": 682,
        "shared": 112 + 148 + 156,
        "tasks": {"a": 133, "b": 133},
    }
    # the shared refinement runs once per task, on that task's features: its FLOPs are
    # the task's even though its weights are shared
    own = (
        conv(1, 4, 4, 1, 64) * 2  # stage-1 mask at 8×8
        + conv(1, 4, 4, 3, 64)  # refinement at 8×8, then pooled
        + conv(1, 4, 8, 1, 16)
        + conv(1, 4, 4, 1, 16)  # stage-2 mask at 4×4
        + conv(1, 1, 4, 1, 16)  # head
    )
    assert p["flops"]["shared"] == conv(1, 4, 3, 3, 64) + conv(1, 4, 4, 3, 64)
    assert p["flops"]["tasks"] == {"a": own, "b": own}


DECODERS = {
    "distillation": "mtlc.sharing.distillation",
    "affinity": "mtlc.sharing.affinity",
    "recursive": "mtlc.sharing.recursive",
}


def _decoder_spec(kind: str) -> dict:
    return spec(
        {"s1": ["conv(4, 3)", "bn", "relu"]},
        {"a": ["conv(2, 1)"], "b": ["conv(1, 1)"]},
        decoder={"type": kind, "features": 4},
        name=f"hand-{kind}",
    )


def _check_against_flop_counter(source, batch: int = 2) -> None:
    """Totals equal FlopCounterMode's, parts add up, serving alone is the pruned graph."""
    with torch.device("meta"):
        c = compile_spec(source)
    p = profile(c.spec, batch=batch)
    j = p.to_json()
    x = torch.empty(batch, *c.spec.input_shape, device="meta")

    def counted(gm) -> int:
        gm.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            gm(x)
        return fc.get_total_flops()

    assert j["flops"]["total"] == counted(c.supervised)
    assert j["inference"]["flops"]["total"] == counted(c.model)
    assert j["params"]["total"] == sum(t.numel() for t in c.supervised.parameters())
    assert j["inference"]["params"]["total"] == sum(t.numel() for t in c.model.parameters())
    for section in (j, j["inference"]):
        for metric in ("params", "buffers", "flops", "macs", "other_ops"):
            b = section[metric]
            assert b["shared"] + sum(b["tasks"].values()) + b.get("unused", 0) == b["total"]
            assert sum(b["shared_by"].values()) == b["shared"]
    for task in c.topology.tasks:
        alone = pruned(c.supervised, [task])
        assert j["serve_alone"][task] == counted(alone), task
        assert j["serve_alone_params"][task] == sum(t.numel() for t in alone.parameters())
    # the tasks recomputed from the graph are the compiler's labels on the supervised graph
    _, tasks = task_sets(c.supervised.graph)
    for n in c.supervised.graph.nodes:
        if "mtlc" in n.meta:
            assert tasks[n] == n.meta["mtlc"]["tasks"], n.name
    for by in ("stage", "node", "layer"):
        assert sum(r["flops"] for r in p.rows(by)) == j["flops"]["total"]
        assert sum(r["params"] for r in p.rows(by)) == j["params"]["total"]


@pytest.mark.parametrize("path", SPECS, ids=[s.stem for s in SPECS])
def test_spec_totals_match_flop_counter(path):
    _check_against_flop_counter(path)


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_decoder_totals_match_flop_counter(kind):
    pytest.importorskip(DECODERS[kind])
    _check_against_flop_counter(_decoder_spec(kind))


def test_auxiliary_task_counts_in_training_not_inference():
    s = spec({"s1": ["conv(4, 3)"]}, {"a": ["conv(1, 1)"], "aux": ["conv(1, 1)"]})
    s["tasks"]["aux"]["auxiliary"] = True
    p = profile(s).to_json()
    head = conv(1, 1, 4, 1, 64)
    assert p["tasks"] == ["a", "aux"] and p["outputs"] == ["a"]
    assert p["flops"]["tasks"]["aux"] == head
    assert p["inference"]["flops"]["total"] == p["flops"]["total"] - head
    # in the final model the encoder serves a alone
    assert p["inference"]["flops"]["tasks"] == {"a": conv(1, 4, 3, 3, 64) + head}


def test_summarize_leaves_the_given_model_alone():
    c = compile_spec(HARD)  # real weights on the CPU
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    out = summarize(c, batch=2)
    assert out["flops"]["total"] == profile(HARD, batch=2).to_json()["flops"]["total"]
    assert {k for k in ("params", "flops", "macs", "serve_alone")} <= set(out)
    assert all(torch.equal(v, c.model.state_dict()[k]) for k, v in before.items())
    assert next(c.model.parameters()).device.type == "cpu"


def test_a_billion_parameters_profile_without_allocating():
    wide = 4096
    big = spec(
        {"s1": [f"conv({wide}, 3)"], "s2": [f"conv({wide}, 3)"], "s3": [f"conv({wide}, 3)"]},
        {t: ["adaptive_avgpool(1)", "flatten", "linear(32768)", "linear(10)"] for t in "abc"},
        inp=(64, 8, 8),
        sharing={"s3": "cross_stitch"},
    )
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p = profile(big).to_json()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - kib
    head = wide * 32768 + 32768 + 32768 * 10 + 10
    s1, col = 64 * wide * 9 + wide, wide * wide * 9 + wide
    assert p["params"]["total"] == s1 + 4 * col + 3 * 3 * wide + 3 * head > 10**9
    assert p["flops"]["shared"] == conv(1, wide, 64, 3, 64) + 4 * conv(1, wide, wide, 3, 64)
    assert grown < 2**20  # KiB: far below the 4 GB the weights alone would take


# -- the command ------------------------------------------------------------------------


@pytest.fixture
def files(write_spec):
    hard = write_spec(json.dumps(HARD), "hard.yaml")
    cross = write_spec(
        json.dumps(
            HARD
            | {"name": "cross", "encoder": HARD["encoder"] | {"sharing": {"s1": "cross_stitch"}}}
        ),
        "cross.yaml",
    )
    return hard, cross


def run(*args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(profile_cmd, [str(a) for a in args])


def test_json_for_one_spec(files):
    r = run(files[0], "--json", "--batch", "2")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    for metric in ("params", "flops", "macs"):
        assert {"total", "shared", "tasks"} <= set(data[metric])
    assert data["flops"]["total"] == 27648 + 2048 + 3072
    assert data["serve_alone"] == {"a": 27648 + 2048, "b": 27648 + 3072}
    assert data["name"] == "hand" and data["batch"] == 2


def test_json_for_several_specs_with_a_baseline(files):
    r = run(*files, "--json")
    data = json.loads(r.output)
    assert [d["name"] for d in data] == ["hand", "cross"]
    table = run(*files, "--baseline", files[1])
    assert table.exit_code == 0, table.output
    assert "ratio to cross" in table.output
    lines = table.output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("│ cross "))
    assert lines[row + 1].startswith("│ (baseline) ")  # under the baseline's name


def test_csv_is_written_and_reads_back(files, tmp_path):
    out = tmp_path / "cost.csv"
    r = run(*files, "--by", "node", "--csv", out, "--json")
    assert r.exit_code == 0, r.output
    data = {d["name"]: d for d in json.loads(r.stdout)}
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for name, d in data.items():
        mine = [row for row in rows if row["spec"] == name]
        assert sum(int(row["flops"]) for row in mine) == d["flops"]["total"]
        assert [row["node"] for row in mine] == [x["node"] for x in d["breakdown"]["rows"]]


@pytest.mark.parametrize("by", ["task", "stage", "node", "layer"])
def test_tables_render(files, by):
    r = run(files[1], "--by", by)
    assert r.exit_code == 0, r.output
    assert f"cost by {by}" in r.output and "FLOPs (2/MAC)" in r.output


def test_bad_input_exits_2_with_a_located_message(files, write_spec):
    r = run(files[0], "--batch", "0")
    assert r.exit_code == 2 and "--batch" in r.output
    r = run(files[0], "--by", "tsk")
    assert r.exit_code == 2 and "did you mean 'task'" in r.output
    broken = write_spec(
        """\
        mtlc: 1
        name: x
        input: {image: [3, 8, 8]}
        encoder:
          stages:
            s1: [conv(4, 3), rleu]
        tasks:
          a: {head: [conv(1, 1)], loss: l1}
        """,
        "broken.yaml",
    )
    r = run(broken)
    assert r.exit_code == 2
    assert f"{broken}:6:" in r.output and "did you mean 'relu'" in r.output
    assert "Traceback" not in r.output
    r = run(files[0], "missing.yaml")
    assert r.exit_code == 2 and "missing.yaml" in r.output


def test_latency_names_its_device(files):
    r = run(files[0], "--latency", "--device", "cpu", "--iters", "2", "--batch", "2", "--json")
    assert r.exit_code == 0, r.output
    lat = json.loads(r.output)["latency"]
    assert lat["device"].startswith("cpu") and lat["iterations"] == 2
    for key in ("forward_ms", "forward_backward_ms"):
        s = lat[key]
        assert len(s["samples"]) == 2 and 0 < s["min"] <= s["median"] <= s["max"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_latency_on_missing_cuda_is_a_clean_error(files):
    r = run(files[0], "--latency", "--device", "cuda")
    assert r.exit_code == 2 and "no CUDA device" in r.output


def test_command_module_does_not_import_torch():
    code = "import sys, mtlc.cli, mtlc.profile.command; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_a_csv_that_cannot_be_written_is_a_one_line_error(small_spec: Path, tmp_path: Path):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "rows.csv"  # a folder that is a file
    result = run(small_spec, "--csv", target)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {target}: cannot be created: "), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_latency_times_the_graph_mtlc_train_runs(files, monkeypatch):
    """--latency times the fused graph (train's), or the unfused one with --no-fuse or
    train.fuse: false, and says which; fusion is for the timing device."""
    import mtlc.compiler

    calls = []
    real = mtlc.compiler.compile_spec

    def spy(spec, overrides=(), *, fuse=False, device=None):
        calls.append((fuse, device))
        # lowered as for a GPU so that fusion changes the graph (on the CPU the pass
        # merges only copies computing one value); the grouped ops run on the CPU too
        return real(spec, overrides, fuse=fuse, device="cuda")

    monkeypatch.setattr(mtlc.compiler, "compile_spec", spy)
    cross = files[1]
    args = ("--latency", "--device", "cpu", "--iters", "2", "--batch", "2", "--json")
    fused = json.loads(run(cross, *args).output)["latency"]["graph"]
    assert calls[-1] == (True, "cpu")
    timed = compile_spec(cross, fuse=True, device="cuda")
    assert fused == {
        "fused": True,
        "nodes": len(timed.supervised.graph.nodes),
        "unfused_nodes": len(timed.unfused[1].graph.nodes),
        "why": "as mtlc train",
    }
    assert fused["nodes"] < fused["unfused_nodes"]  # the mix ran as one einsum
    plain = json.loads(run(cross, *args, "--no-fuse").output)["latency"]["graph"]
    assert calls[-1][0] is False
    assert plain == {"fused": False, "nodes": fused["unfused_nodes"]} | {
        "unfused_nodes": fused["unfused_nodes"],
        "why": "--no-fuse",
    }
    off = json.loads(run(cross, *args, "--set", "train.fuse=false").output)["latency"]["graph"]
    assert off["fused"] is False and off["why"] == "train.fuse is false"
    text = run(cross, *args[:-1]).output
    assert "fused graph mtlc train runs" in " ".join(text.split())
