"""`mtlc train | eval | sweep | compare` end to end: exit codes, one-line errors that lose
nothing, the sweep's CSV read back, Δm of made-up run folders worked out by hand."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtlc import losses
from mtlc.train import command, runfolder, sweep, sweep_results
from mtlc.train.checkpoint import load_checkpoint
from mtlc.train.compare import compare_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def run(cmd, *args: str):
    return CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- train --------------------------------------------------------------------------------------


def test_train_prints_final_metrics_and_refuses_an_existing_folder(tiny: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = run(command.train, tiny, "--out", out, "--epochs", 1, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "final validation metrics (epoch 1)" in result.output
    assert "miou" in result.output and f"run folder: {out}" in result.output
    before = files(out)

    again = run(command.train, tiny, "--out", out, "--epochs", 1, "--device", "cpu")
    assert again.exit_code == 2
    assert again.output.strip().splitlines() == [
        f"error: {out}: a run folder already exists; pass --resume to continue it or "
        "--force to start over"
    ]
    assert files(out) == before


def test_ctrl_c_exits_130_and_resume_finishes(tiny: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "run"
    real = losses.l1
    calls = {"n": 0}

    def l1_then_ctrl_c(pred, target, **kw):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return real(pred, target, **kw)

    monkeypatch.setattr(losses, "l1", l1_then_ctrl_c)
    result = run(command.train, tiny, "--out", out, "--device", "cpu")
    assert result.exit_code == 130
    assert "interrupted at step 2 (epoch 1)" in result.output
    assert load_checkpoint(out / "last.pt")["step"] == 2
    monkeypatch.setattr(losses, "l1", real)
    done = run(command.train, tiny, "--out", out, "--device", "cpu", "--resume")
    assert done.exit_code == 0, done.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_nan_exits_1_with_the_task_and_step(tiny: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(losses, "bce", lambda pred, target, **kw: pred.sum() * float("inf"))
    result = run(command.train, tiny, "--out", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 1
    assert "error: the loss of task 'edge' is inf at step 1 (epoch 1)" in result.output
    assert "no checkpoint was written before it" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.data={name: nyuv2, root: /nonexistent}"], "train.data.root"),
        (["--set", "train.epochs=zero"], "train.epochs"),
        (["--resume"], "nothing to resume"),
        (["--device", "tpu"], "--device tpu"),
        (
            ["--set", "balancer={type: mgda, mode: ub}", "--set", "encoder.sharing.s2=separate"],
            "balancer.mode: mgda mode 'ub'",
        ),
    ],
)
def test_train_errors_are_one_line_exit_2_and_write_nothing(
    tiny: Path, tmp_path: Path, args, message
):
    out = tmp_path / "run"
    result = run(command.train, tiny, "--out", out, "--device", "cpu", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not out.exists() or not runfolder.is_run_folder(out)


def test_baselines_train_once_and_give_delta_m(tiny: Path, tmp_path: Path):
    out = tmp_path / "run"
    args = [tiny, "--out", out, "--epochs", 1, "--device", "cpu", "--baselines"]
    result = run(command.train, *args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["baselines"]) == {"seg", "depth"}  # edge is auxiliary
    for t in ("seg", "depth"):
        base = json.loads((out / "baselines" / t / "summary.json").read_text())
        assert base["tasks"] == [t] and base["balancer"] == "fixed"
        assert summary["baselines"][t] == base["final"]["metrics"][t]
    from mtlc.delta import delta_m

    expected = delta_m(summary["final"]["metrics"], summary["baselines"])
    assert summary["final"]["delta_m"] == pytest.approx(expected)
    assert "Δm vs single-task baselines" in result.output
    cached = files(out / "baselines")
    again = run(command.train, *args, "--force")
    assert again.exit_code == 0, again.output
    assert "baseline 1/2: seg (cached in" in again.output
    assert files(out / "baselines") == cached


# -- eval ---------------------------------------------------------------------------------------


def test_eval_reports_the_checkpoint_metrics(tiny: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert run(command.train, tiny, "--out", out, "--epochs", 1, "--device", "cpu").exit_code == 0
    result = run(
        command.evaluate, tiny, "--checkpoint", out / "last.pt", "--device", "cpu", "--json"
    )
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    final = json.loads((out / "summary.json").read_text())["final"]
    assert scored["epoch"] == 1
    for t, metrics in final["metrics"].items():
        assert scored["metrics"][t] == pytest.approx(metrics)
    missing = run(command.evaluate, tiny, "--checkpoint", tmp_path / "nope.pt")
    assert missing.exit_code == 2
    assert missing.output.strip() == f"error: {tmp_path / 'nope.pt'}: no such checkpoint file"
    other = run(
        command.evaluate,
        tiny,
        "--checkpoint",
        out / "last.pt",
        "--set",
        "tasks.depth.head=[conv(1, 3), upsample(2)]",  # a 3×3 conv where the run had 1×1
    )
    assert other.exit_code == 2
    assert (
        "does not fit this spec's model: 1 of another shape (e.g. heads.depth.conv0.weight)"
        in other.output
    )


# -- sweep --------------------------------------------------------------------------------------


def test_sweep_writes_a_csv_that_reads_back(tiny: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    args = [tiny, "--grid", "balancer.weights.seg=0.5,2", "--grid", "train.optimizer.lr=0.01,0.001"]
    args += ["--epochs", 1, "--out", out, "--device", "cpu"]
    result = run(command.sweep, *args)
    assert result.exit_code == 0, result.output
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["balancer.weights.seg"], r["train.optimizer.lr"]) for r in rows] == [
        ("0.5", "0.01"),
        ("0.5", "0.001"),
        ("2", "0.01"),
        ("2", "0.001"),
    ]
    for r in rows:
        summary = json.loads((Path(r["run"]) / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert float(r["seg.miou"]) == summary["final"]["metrics"]["seg"]["miou"]
        assert float(r["depth.abs_err"]) == summary["final"]["metrics"]["depth"]["abs_err"]
        saved = load_checkpoint(Path(r["run"]) / "last.pt")["spec"]
        assert saved["balancer"]["weights"]["seg"] == float(r["balancer.weights.seg"])
    assert sum(int(r["best"]) for r in rows) == 1
    best = next(r for r in rows if r["best"] == "1")
    assert best["pareto"] == "1"  # the best by mean rank is never dominated
    assert "delta_m" not in rows[0]
    # a second sweep reuses the finished points
    before = files(out)
    again = run(command.sweep, *args)
    assert again.exit_code == 0 and again.output.count("finished earlier, reused") == 4
    assert {k: v for k, v in files(out).items() if k != "sweep.csv"} == {
        k: v for k, v in before.items() if k != "sweep.csv"
    }


def test_sweep_checks_every_grid_point_before_training(tiny: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    result = run(command.sweep, tiny, "--grid", "balancer.wieghts.seg=1,2", "--out", out)
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("error: --grid balancer.wieghts.seg=1,2:")
    assert "unknown key 'wieghts'" in line and "did you mean 'weights'" in line
    late = run(command.sweep, tiny, "--grid", "train.epochs=1,-1", "--out", out)
    assert late.exit_code == 2 and "--grid train.epochs=1,-1" in late.output
    assert not out.exists()


def test_grid_values_split_on_top_level_commas():
    assert sweep.split_values("0.5,1,2") == ["0.5", "1", "2"]
    assert sweep.split_values("[0.9, 0.1],[0.5,0.5]") == ["[0.9, 0.1]", "[0.5,0.5]"]
    assert sweep.split_values("{type: mgda, mode: ub},fixed") == ["{type: mgda, mode: ub}", "fixed"]


def _row(name: str, miou: float, acc: float, err: float) -> sweep_results.SweepRow:
    metrics = {"seg": {"miou": miou, "pixel_acc": acc}, "depth": {"abs_err": err}}
    return sweep_results.SweepRow(name, Path(name), {}, metrics)


def test_mean_rank_and_pareto_front_on_made_up_points():
    cols = [("seg", "miou"), ("seg", "pixel_acc"), ("depth", "abs_err")]
    rows = [
        _row("a", 0.5, 0.8, 2.0),
        _row("b", 0.6, 0.9, 3.0),
        _row("c", 0.4, 0.7, 1.0),
        _row("d", 0.4, 0.7, 2.5),  # as good as c on seg, worse on depth: dominated
    ]
    # seg ranks (both metrics alike): b 1, a 2, c and d tie for 3rd and 4th → 3.5 each
    # depth ranks (abs_err, lower is better): c 1, a 2, d 3, b 4
    # mean rank = (seg + depth) / 2: a 2, b 2.5, c 2.25, d 3.25 → a is best
    assert sweep_results.mean_ranks(rows, cols) == [2.0, 2.5, 2.25, 3.25]
    assert sweep_results.pareto_front(rows, cols) == [True, True, True, False]
    assert sweep_results.ranks([1.0, float("nan"), 3.0], higher_is_better=True) == [2.0, 3.0, 1.0]
    sweep_results.mark_best(rows, cols, by_delta=False)
    assert [r.best for r in rows] == [True, False, False, False]


# -- compare ------------------------------------------------------------------------------------


def _summary(folder: Path, metrics: dict, outputs=None, baselines=None) -> Path:
    folder.mkdir(parents=True)
    summary = {
        "name": folder.name,
        "status": "completed",
        "outputs": outputs or list(metrics),
        "final": {"epoch": 3, "metrics": metrics},
        "best": {"epoch": 2, "metrics": metrics},
        "baselines": baselines,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_compare_delta_m_on_made_up_run_folders(tmp_path: Path):
    seg = _summary(tmp_path / "seg", {"seg": {"miou": 0.5, "pixel_acc": 0.8}})
    depth = _summary(tmp_path / "depth", {"depth": {"abs_err": 2.0}})
    mtl = _summary(
        tmp_path / "mtl",
        {"seg": {"miou": 0.55, "pixel_acc": 0.76}, "depth": {"abs_err": 1.5}, "edge": {}},
        outputs=["seg", "depth"],
    )
    # seg: miou +10 %, pixel_acc −5 % → +2.5;  depth: abs_err lower by 25 % → +25
    # Δm = (2.5 + 25) / 2 = 13.75 (the survey's sign: positive = better than single-task)
    result = compare_runs([mtl], [seg, depth])
    assert result.rows[0].per_task == pytest.approx({"seg": 2.5, "depth": 25.0})
    assert result.rows[0].delta_m == pytest.approx(13.75)
    printed = run(command.compare, mtl, "--baseline", seg, "--baseline", depth)
    assert printed.exit_code == 0, printed.output
    assert "+13.75" in printed.output and "+2.50" in printed.output

    own = _summary(
        tmp_path / "own",
        {"seg": {"miou": 0.45, "pixel_acc": 0.8}},
        baselines={"seg": {"miou": 0.5, "pixel_acc": 0.8}},
    )
    assert compare_runs([own]).rows[0].delta_m == pytest.approx(-5.0)  # (−10 + 0) / 2

    for args, message in (
        ([mtl, "--baseline", seg], "no baseline for task(s) depth"),
        ([mtl], "no baselines: pass --baseline"),
        ([mtl, "--baseline", seg, "--baseline", seg], "task 'seg' has a baseline in both"),
        ([tmp_path / "nothing"], "not a run folder"),
    ):
        failed = run(command.compare, *args)
        assert failed.exit_code == 2 and message in failed.output, failed.output


def test_command_module_does_not_import_torch():
    code = "import sys, mtlc.train.command; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sweep_with_baselines_ranks_by_delta_m(tiny: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    args = [tiny, "--grid", "balancer.weights.depth=0.1,10", "--epochs", 1, "--out", out]
    result = run(command.sweep, *args, "--device", "cpu", "--baselines")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "baselines").iterdir()) == ["depth", "seg"]
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    from mtlc.delta import delta_m

    base = {
        t: json.loads((out / "baselines" / t / "summary.json").read_text())["final"]["metrics"][t]
        for t in ("seg", "depth")
    }
    for r in rows:
        final = json.loads((Path(r["run"]) / "summary.json").read_text())["final"]
        assert float(r["delta_m"]) == pytest.approx(delta_m(final["metrics"], base))
        assert final["delta_m"] == pytest.approx(float(r["delta_m"]))
    best = max(rows, key=lambda r: float(r["delta_m"]))
    assert [r["best"] for r in rows] == ["1" if r is best else "0" for r in rows]


def test_tensorboard_logs_scalars(tiny: Path, tmp_path: Path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    result = run(
        command.train, tiny, "--out", out, "--epochs", 1, "--device", "cpu", "--tensorboard"
    )
    assert result.exit_code == 0, result.output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss/seg", "weight/depth", "lr", "val/seg/miou"} <= set(scalars)
    assert [e.step for e in events.Scalars("loss/seg")] == [1, 2, 3]


# -- a run that cannot start: one line, exit 2, nothing written or removed -------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "tasks.depth.head=[conv(3, 1), upsample(2)]",
            "tasks.depth.head: 'depth' predicts [3, 16, 16] per sample, which does not fit "
            "batch entry 'depth'",
        ),
        ("tasks.depth.target=normal", "batch entry 'normal' of data set 'shapes' ([3, 16, 16]"),
        (  # upsample(4): the logits are 32×32, the labels 16×16
            "tasks.seg.head=[conv(5, 1), upsample(4)]",
            "tasks.seg.head: 'seg' predicts [5, 32, 32] per sample",
        ),
        ("tasks.seg.head=[conv(3, 1), upsample(2)]", "tasks.seg.head: 'seg' predicts [3, 16, 16]"),
        (
            "balancer.weights.seg=-2",
            "balancer.weights.seg: input should be greater than or equal to 0",
        ),
    ],
)
def test_a_run_that_cannot_start_fails_in_one_line_and_force_removes_nothing(
    tiny: Path, tmp_path: Path, override: str, message: str
):
    out = tmp_path / "run"
    assert run(command.train, tiny, "--out", out, "--epochs", 1, "--device", "cpu").exit_code == 0
    before = files(out)
    result = CliRunner().invoke(
        command.train, [str(tiny), "--out", str(out), "--force", "--set", override]
    )
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert files(out) == before  # --force starts over only once everything was checked
    fresh = tmp_path / "fresh"
    again = CliRunner().invoke(command.train, [str(tiny), "--out", str(fresh), "--set", override])
    assert again.exit_code == 2 and not fresh.exists()


USER_DATA = """
import torch

def raises(split, seed):
    raise RuntimeError("no such table")

def ints(split, seed):
    return {"image": torch.zeros(4, 3, 16, 16, dtype=torch.long), "seg": torch.zeros(4, 16, 16)}

def empty(split, seed):
    return {"image": torch.zeros(0, 3, 16, 16), "seg": torch.zeros(0, 16, 16)}

def late_class(split, seed):  # the probe's first two samples look fine; the fourth does not
    seg = torch.zeros(4, 16, 16, dtype=torch.long)
    seg[3, 0, 0] = 5
    return {"image": torch.zeros(4, 3, 16, 16), "seg": seg}
"""


@pytest.mark.parametrize(
    "function, message",
    [
        ("raises", "'userdata:raises' raised RuntimeError for the train split: no such table"),
        ("ints", "input.image: data set 'callable' gives 'image' as torch.int64"),
        ("empty", "data set 'callable' has no samples in its train split"),
        (
            "late_class",
            "tasks.seg.head: 'seg' predicts 5 classes, but batch entry 'seg' of data set "
            "'callable' holds class id 5 (ids must lie in [0, 4], or be the ignore index -1)",
        ),
    ],
)
def test_a_callable_data_set_that_misbehaves_is_a_one_line_error(
    tiny: Path, tmp_path: Path, monkeypatch, function: str, message: str
):
    (tmp_path / "userdata.py").write_text(USER_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userdata", raising=False)
    data = f"train.data={{name: callable, function: 'userdata:{function}'}}"
    seg_only = "tasks={seg: {head: ['conv(5, 1)', 'upsample(2)'], loss: cross_entropy}}"
    args = ["--out", tmp_path / "run", "--allow-import", "userdata", "--set", data]
    result = CliRunner().invoke(command.train, [str(a) for a in [tiny, *args, "--set", seg_only]])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not (tmp_path / "run").exists()


def test_eval_and_compare_reject_files_that_are_not_what_they_claim(tiny: Path, tmp_path: Path):
    fake = tmp_path / "fake.pt"
    torch.save({"format": "mtlc-checkpoint", "version": 1, "epoch": 3}, fake)
    result = CliRunner().invoke(command.evaluate, [str(tiny), "--checkpoint", str(fake)])
    assert result.exit_code == 2
    assert result.output == f"error: {fake}: an incomplete mtlc checkpoint (no model)\n"
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").write_text("[1, 2]")
    result = CliRunner().invoke(command.compare, [str(folder), "--baseline", str(folder)])
    assert result.exit_code == 2
    assert result.output == f"error: {folder / 'summary.json'}: not a run summary (a JSON object)\n"


def test_sweep_checks_each_points_balancer_before_training_any(tiny: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        command.sweep,
        [str(tiny), "--grid", "balancer.weights.seg=1,-2", "--out", str(out), "--device", "cpu"],
    )
    assert result.exit_code == 2, result.output
    assert result.output == (
        "error: --grid balancer.weights.seg=1,-2: balancer.weights.seg: "
        "input should be greater than or equal to 0\n"
    )
    assert not out.exists()
