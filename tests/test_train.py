"""The training loop: every balancer on every spec learns, resume is exact, NaN stops
cleanly, the run folder holds what it promises, and the pieces (shared parameters,
parameter groups, DTP KPIs, uncertainty weights, best.pt rule) do what they say."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from mtlc import losses
from mtlc.compiler.labels import shared_parameters
from mtlc.data.batches import iterate_batches
from mtlc.errors import SpecError
from mtlc.spec import load_spec
from mtlc.train import best, run, runfolder
from mtlc.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtlc.train.errors import Diverged, Interrupted, TrainError
from mtlc.train.run import train
from mtlc.train.trainer import Trainer
from tests.conftest import TINY_TRAIN

SPECS = sorted(Path(__file__).resolve().parent.parent.glob("specs/*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_overrides(path: Path) -> list[str]:
    """Shrink a spec's data so a few steps take milliseconds (None: data set not built in)."""
    spec = load_spec(path)
    data = spec.train.data
    if data.name == "shapes":
        channels = spec.input_shape[0]
        return [
            "train.data.train=8",
            "train.data.val=8",
            "train.data.size=16",
            f"input.{spec.input_name}=[{channels}, 16, 16]",
            "train.batch_size=8",
        ]
    if data.name == "correlated":
        return ["train.data.train=32", "train.data.val=16", "train.batch_size=16"]
    return None


def raw_losses(record: dict) -> float:
    return sum(record["loss"].values())


# -- every balancer on every spec -------------------------------------------------------------

BALANCERS = {
    "fixed": "{type: fixed}",
    "uncertainty": "{type: uncertainty}",
    "dtp": "{type: dtp}",
    "mgda-exact": "{type: mgda, mode: exact}",
    "mgda-ub": "{type: mgda, mode: ub}",
}


@pytest.mark.parametrize("balancer", list(BALANCERS))
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_each_balancer_lowers_the_loss_on_each_spec(path: Path, balancer: str):
    overrides = tiny_overrides(path)
    if overrides is None:
        pytest.skip(f"{path.name}: its data set needs files")
    spec = load_spec(path, [*overrides, f"balancer={BALANCERS[balancer]}"])
    if balancer == "mgda-ub":
        from mtlc.compiler import compile_spec

        if compile_spec(spec).topology.shared_repr is None:
            with pytest.raises(SpecError, match="mode 'ub' needs one shared representation"):
                Trainer(spec, device="cpu")
            return
    trainer = Trainer(spec, device="cpu")
    batch = next(iterate_batches(trainer.train_data, 8, shuffle=False))
    records = [trainer.train_step(batch) for _ in range(8)]
    first = sum(raw_losses(r) for r in records[:2]) / 2
    last = sum(raw_losses(r) for r in records[-2:]) / 2
    assert last < first, [round(raw_losses(r), 4) for r in records]
    assert set(records[-1]["weights"]) == set(spec.tasks)


# -- run folder ---------------------------------------------------------------------------------


def test_run_folder_holds_spec_metrics_checkpoints_and_summary(tiny: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = train(tiny, out=out, device="cpu")
    spec = load_spec(tiny)

    saved = yaml.safe_load((out / "spec.yaml").read_text())
    assert saved == spec.model_dump(mode="json")
    assert load_spec(saved).model_dump() == spec.model_dump()

    records = runfolder.read_metrics(out)
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 7))  # 24 scenes / 8 × 2 epochs
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in steps:
        assert set(r["loss"]) == set(r["weights"]) == {"seg", "depth", "edge"}
        assert r["weights"] == {"seg": 1.0, "depth": 1.0, "edge": 1.0}
        assert r["total"] == pytest.approx(sum(r["loss"].values()), rel=1e-5)
    # epoch train loss = sample-weighted mean of that epoch's step losses (equal batches)
    mean_seg = sum(r["loss"]["seg"] for r in steps[:3]) / 3
    assert epochs[0]["train_loss"]["seg"] == pytest.approx(mean_seg, rel=1e-6)
    assert set(epochs[1]["metrics"]) == {"seg", "depth"}
    assert set(epochs[1]["metrics"]["seg"]) == {"miou", "pixel_acc"}

    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(runfolder.finite(result.summary)))
    assert summary["status"] == "completed"
    assert summary["epochs"] == 2 and summary["steps"] == 6
    assert summary["final"]["metrics"] == epochs[1]["metrics"]
    assert summary["outputs"] == ["seg", "depth"]
    best_epoch = max(r["epoch"] for r in epochs if r["best"])
    assert summary["best"]["epoch"] == best_epoch

    last = load_checkpoint(out / "last.pt")
    assert last["format"] == "mtlc-checkpoint" and last["version"] == 1
    assert (last["epoch"], last["step"], last["batch"]) == (2, 6, 0)
    assert last["spec"] == saved
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == best_epoch
    # the checkpoint's weights are the supervised model's: they score the same as the summary
    scored = run.evaluate(tiny, out / "last.pt", device="cpu")
    for t, metrics in summary["final"]["metrics"].items():
        assert scored["metrics"][t] == pytest.approx(metrics)


def test_existing_run_folder_is_refused_and_untouched(tiny: Path, tmp_path: Path):
    out = tmp_path / "run"
    train(tiny, out=out, device="cpu", overrides=["train.epochs=1"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(runfolder.RunFolderError, match="already exists.*--resume.*--force"):
        train(tiny, out=out, device="cpu", overrides=["train.epochs=1"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    train(tiny, out=out, device="cpu", overrides=["train.epochs=1", "train.seed=3"], force=True)
    assert load_checkpoint(out / "last.pt")["spec"]["train"]["seed"] == 3


def test_resume_needs_a_checkpoint_and_the_same_spec(tiny: Path, tmp_path: Path):
    with pytest.raises(runfolder.RunFolderError, match="nothing to resume"):
        train(tiny, out=tmp_path / "none", device="cpu", resume=True)
    out = tmp_path / "run"
    train(tiny, out=out, device="cpu", overrides=["train.epochs=1"])
    with pytest.raises(TrainError, match=r"spec differs .*train\.batch_size"):
        train(tiny, out=out, device="cpu", resume=True, overrides=["train.batch_size=4"])


# -- resume -------------------------------------------------------------------------------------


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return {**state["model"], **{f"balancer.{k}": v for k, v in state["balancer"].items()}}


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a / "last.pt"), _weights(b / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert runfolder.read_metrics(a) == runfolder.read_metrics(b)
    assert load_checkpoint(a / "last.pt")["optimizer"]["state"].keys() == (
        load_checkpoint(b / "last.pt")["optimizer"]["state"].keys()
    )


RESUME_SET = ["balancer={type: uncertainty}", "train.scheduler=cosine"]


def test_resume_after_an_epoch_equals_an_uninterrupted_run(tiny: Path, tmp_path: Path, monkeypatch):
    train(tiny, out=tmp_path / "a", device="cpu", overrides=[*RESUME_SET, "train.epochs=2"])
    # The cosine schedule spans the epochs the spec asks for, so stop the 2-epoch run
    # right after its first epoch, as a Ctrl-C during validation would.
    original = Trainer._end_epoch

    def end_epoch_then_stop(self, *args):
        original(self, *args)
        self.request_stop()

    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch_then_stop)
    with pytest.raises(Interrupted):
        train(tiny, out=tmp_path / "b", device="cpu", overrides=[*RESUME_SET, "train.epochs=2"])
    monkeypatch.setattr(Trainer, "_end_epoch", original)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    train(tmp_path / "b" / "spec.yaml", out=tmp_path / "b", device="cpu", resume=True)
    _assert_same_run(tmp_path / "a", tmp_path / "b")


def test_extending_a_finished_run_equals_training_longer(tiny: Path, tmp_path: Path):
    train(tiny, out=tmp_path / "a", device="cpu", overrides=["train.epochs=2"])
    train(tiny, out=tmp_path / "b", device="cpu", overrides=["train.epochs=1"])
    # records of a run killed after its last checkpoint: the resumed run replays them
    with open(tmp_path / "b" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"type": "step", "epoch": 2, "step": 4, "loss": {}}) + "\n")
        fh.write(json.dumps({"type": "epoch", "epoch": 2, "step": 6}) + "\n")
    train(tiny, out=tmp_path / "b", device="cpu", overrides=["train.epochs=2"], resume=True)
    _assert_same_run(tmp_path / "a", tmp_path / "b")


def test_ctrl_c_mid_epoch_saves_and_resume_is_exact(tiny: Path, tmp_path: Path, monkeypatch):
    train(tiny, out=tmp_path / "a", device="cpu", overrides=RESUME_SET)
    real = losses.l1
    calls = {"n": 0}

    def l1_then_ctrl_c(pred, target, **kw):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 4:  # the first step of epoch 2 (3 steps per epoch)
                os.kill(os.getpid(), signal.SIGINT)
        return real(pred, target, **kw)

    monkeypatch.setattr(losses, "l1", l1_then_ctrl_c)
    with pytest.raises(Interrupted, match="interrupted at step 4 .*--resume"):
        train(tiny, out=tmp_path / "b", device="cpu", overrides=RESUME_SET)
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (state["epoch"], state["step"], state["batch"]) == (1, 4, 1)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(losses, "l1", real)
    train(tiny, out=tmp_path / "b", device="cpu", overrides=RESUME_SET, resume=True)
    _assert_same_run(tmp_path / "a", tmp_path / "b")


# -- NaN ----------------------------------------------------------------------------------------


def test_nan_loss_stops_naming_task_and_step_and_keeps_last_good_checkpoint(
    tiny: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "run"
    real = losses.l1
    calls = {"n": 0}

    def l1_nan_at_step_5(pred, target, **kw):
        loss = real(pred, target, **kw)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(losses, "l1", l1_nan_at_step_5)
    with pytest.raises(Diverged, match=r"loss of task 'depth' is nan at step 5 \(epoch 2\)") as err:
        train(tiny, out=out, device="cpu")
    assert err.value.task == "depth" and err.value.step == 5
    assert "last.pt (epoch 1) is the last good checkpoint" in str(err.value)
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 3)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs"] == 1
    steps = [r for r in runfolder.read_metrics(out) if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # the bad step is not logged


# -- pieces -------------------------------------------------------------------------------------


def test_shared_parameters_are_the_encoder_of_a_hard_spec():
    from mtlc.compiler import compile_spec

    gm = compile_spec("specs/hard.yaml").supervised
    shared = shared_parameters(gm)
    # s1 conv 3→16 k3 + BN(16), s2 16→32 + BN(32), s3 32→64 + BN(64)
    expected = (16 * 3 * 9 + 16 + 32) + (32 * 16 * 9 + 32 + 64) + (64 * 32 * 9 + 64 + 128)
    assert sum(p.numel() for p in shared) == expected == 23_808
    encoder = {id(p) for n, p in gm.named_parameters() if n.startswith("encoder.")}
    assert {id(p) for p in shared} == encoder


def test_cross_stitch_units_get_their_lr_mult_group(write_spec):
    path = write_spec(
        TINY_TRAIN.replace(
            "tasks:",
            "  sharing:\n    s1: {type: cross_stitch, lr_mult: 100}\n    s2: separate\ntasks:",
        ),
        "cs.yaml",
    )
    spec = load_spec(path)
    trainer = Trainer(spec, device="cpu")
    groups = trainer.optimizer.param_groups
    stitch = [g for g in groups if g["lr"] == pytest.approx(1.0)]
    assert len(stitch) == 1
    alpha = trainer.model.get_submodule("encoder.s1.cross_stitch").alpha
    assert [id(p) for p in stitch[0]["params"]] == [id(alpha)]
    assert groups[0]["lr"] == pytest.approx(0.01)
    # with T = 3 tasks, every column of s1 feeds every task through the unit: all shared
    shared = {id(p) for p in shared_parameters(trainer.model)}
    assert id(alpha) in shared
    assert {id(p) for p in trainer.model.get_submodule("encoder.s1").parameters()} <= shared


def test_uncertainty_weights_are_logged_before_the_step_and_s_learns(tiny: Path):
    trainer = Trainer(load_spec(tiny, ["balancer={type: uncertainty, init: 0.5}"]), device="cpu")
    batch = next(iterate_batches(trainer.train_data, 8, shuffle=False))
    record = trainer.train_step(batch)
    # c_t e^{-s}: 1 for classification (seg, edge: bce), 1/2 for regression (depth)
    assert record["weights"]["seg"] == pytest.approx(math.exp(-0.5))
    assert record["weights"]["edge"] == pytest.approx(math.exp(-0.5))
    assert record["weights"]["depth"] == pytest.approx(0.5 * math.exp(-0.5))
    total = sum(record["weights"][t] * v + 0.25 for t, v in record["loss"].items())
    assert record["total"] == pytest.approx(total, rel=1e-5)
    assert not torch.allclose(trainer.balancer.log_vars, torch.full((3,), 0.5))


def test_dtp_observes_the_batch_kpi_of_each_tasks_metric(tiny: Path):
    from mtlc.metrics import build_metric, kpi

    spec = load_spec(tiny, ["balancer={type: dtp, momentum: 0.5, kpi: {depth: abs_err}}"])
    trainer = Trainer(spec, device="cpu")
    assert trainer.task_metrics["edge"] == []  # edge has no metric: its κ̄ stays at init
    batch = next(iterate_batches(trainer.train_data, 8, shuffle=False))
    trainer.model.train()
    torch.manual_seed(1)
    out = trainer.model(batch["image"])  # the step's own forward (same seed for the dropout)
    expected = {}
    for t, name in (("seg", "miou"), ("depth", "abs_err")):
        m = build_metric(name)
        m.update(out[t], batch[t])
        expected[t] = 0.5 * 0.5 + 0.5 * kpi(name, m.compute())
    torch.manual_seed(1)
    trainer.train_step(batch)
    avg = dict(zip(trainer.balancer.tasks, trainer.balancer.kpi_avg.tolist()))
    assert avg["seg"] == pytest.approx(expected["seg"])
    assert avg["depth"] == pytest.approx(expected["depth"])
    assert avg["edge"] == 0.5


def test_best_rule_without_baselines_is_the_pairwise_mean_rank():
    old = {"seg": {"miou": 0.5, "pixel_acc": 0.8}, "depth": {"abs_err": 2.0}}
    # seg: one up, one down → 0; depth: better → +1; mean over tasks 0.5 > 0
    new = {"seg": {"miou": 0.6, "pixel_acc": 0.7}, "depth": {"abs_err": 1.9}}
    assert best.pairwise_score(new, old) == pytest.approx(0.5)
    # a zero metric (no pixel within 11.25° yet) neither breaks nor dominates the rule
    zero = {"normal": {"within_11.25": 0.0, "angle_mean": 40.0}}
    assert best.pairwise_score({"normal": {"within_11.25": 0.1, "angle_mean": 41.0}}, zero) == 0
    assert best.is_better({"reference": new}, {"reference": old}, None)
    assert not best.is_better({"reference": old}, {"reference": new}, None)
    with_base = {"seg": {"miou": 0.4}}
    assert best.is_better({"delta_m": 2.0}, {"delta_m": 1.0}, with_base)
    assert not best.is_better({"delta_m": None}, {"delta_m": 1.0}, with_base)


def test_data_that_does_not_fit_the_spec_is_a_located_error(tiny: Path):
    with pytest.raises(SpecError, match=r"input\.image.*\[3, 16, 16\].*\[3, 32, 32\]"):
        Trainer(load_spec(tiny, ["train.data.size=32"]), device="cpu")
    with pytest.raises(SpecError, match="reads batch entry 'labels'"):
        Trainer(load_spec(tiny, ["tasks.seg.target=labels"]), device="cpu")
    with pytest.raises(TrainError, match="train.data.root"):
        Trainer(load_spec(tiny, ["train.data={name: nyuv2, root: /nonexistent}"]), device="cpu")


def test_checkpoints_are_atomic_and_checked(tmp_path: Path):
    path = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint({"epoch": 2, "bad": Boom()}, path)
    assert load_checkpoint(path)["epoch"] == 1  # the old file survived the failed write
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an mtlc checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_plots_are_written_or_skipped_with_a_note(tiny: Path, tmp_path: Path, monkeypatch):
    import importlib.util

    from mtlc.train.plots import CONSTANT, MISSING, plot_lines, write_plots

    out = tmp_path / "run"
    result = train(tiny, out=out, device="cpu", overrides=["train.epochs=2"])
    if importlib.util.find_spec("matplotlib") is None:
        assert result.summary["plots"] == MISSING
    else:
        # a fixed balancer's weights never change: no weights.png, and the note says why
        assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not (out / "weights.png").exists() and CONSTANT in result.summary["plots"]
    lines = plot_lines(runfolder.read_metrics(out))
    assert list(lines) == ["loss.png"]
    epochs = [r for r in runfolder.read_metrics(out) if r["type"] == "epoch"]
    val = {label: (x, y) for label, _, x, y, per_epoch in lines["loss.png"] if per_epoch}
    # the validation loss of every task, one point per epoch, at the epoch's last step
    assert set(val) == {"seg (val)", "depth (val)", "edge (val)"}
    assert val["depth (val)"] == (
        [r["step"] for r in epochs],
        [r["val_loss"]["depth"] for r in epochs],
    )
    learned = train(
        tiny, out=tmp_path / "u", device="cpu", overrides=["train.epochs=1", "balancer=uncertainty"]
    )
    assert set(plot_lines(runfolder.read_metrics(tmp_path / "u"))) == {"loss.png", "weights.png"}
    if importlib.util.find_spec("matplotlib") is not None:
        assert CONSTANT not in learned.summary["plots"]
        assert (tmp_path / "u" / "weights.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert write_plots(out) == MISSING


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_and_resuming(tiny: Path, tmp_path: Path):
    train(tiny, out=tmp_path / "a", device="cuda", overrides=["train.epochs=1"])
    result = train(
        tiny, out=tmp_path / "a", device="cuda", overrides=["train.epochs=2"], resume=True
    )
    assert result.summary["device"].startswith("cuda")
    assert result.summary["steps"] == 6
    assert all(math.isfinite(v) for v in result.summary["final"]["val_loss"].values())
    scored = run.evaluate(tiny, tmp_path / "a" / "last.pt", device="cpu")
    assert scored["metrics"]["seg"]["miou"] == pytest.approx(
        result.summary["final"]["metrics"]["seg"]["miou"], abs=1e-3
    )


def test_training_the_baselines_first_leaves_the_run_unchanged(tiny: Path, tmp_path: Path):
    # The run's trainer is built (data and model checked) before its baselines train, and
    # their dropout draws from the same global generator: fit() must rewind it.
    first = train(
        tiny, out=tmp_path / "a", device="cpu", overrides=["train.epochs=1"], baselines=True
    )
    given = first.summary["baselines"]
    assert sorted(given) == ["depth", "seg"]
    train(tiny, out=tmp_path / "b", device="cpu", overrides=["train.epochs=1"], baselines=given)
    _assert_same_run(tmp_path / "a", tmp_path / "b")
