"""Training speed switches and the trainer's host read-backs (issue 12).

Each switch trains a few steps on the CPU: bf16 autocast really runs the convolutions
in bf16, channels_last really stores NHWC, torch.compile really compiles (and falls back,
said once, when it cannot); fp16 is refused on the CPU with a located error and exit 2;
the fp16 loss scaler is exact with a power-of-two scale for every balancer level;
read-backs happen once per `train.log_every` steps while every step keeps its own record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtlc.balancers.base import Balancer
from mtlc.cli import main
from mtlc.data.batches import iterate_batches
from mtlc.spec import load_spec
from mtlc.train import runfolder, speed
from mtlc.train.run import train
from mtlc.train.setup import fits_on_device
from mtlc.train.trainer import Trainer

# cross-stitch between two task columns: amp, channels-last and compile on a real mix
STITCHED = """\
mtlc: 1
name: tiny
input: {image: [3, 16, 16]}
encoder:
  stages:
    s1: [conv(8, 3), bn, relu, maxpool(2)]
    s2: [conv(8, 3), bn, relu]
  sharing:
    s2: cross_stitch
tasks:
  seg:   {head: [conv(5, 1), upsample(2)], loss: cross_entropy, metrics: [miou]}
  depth: {head: [conv(1, 1), upsample(2)], loss: l1, metrics: [abs_err]}
balancer: {type: fixed}
train:
  data: {name: shapes, train: 24, val: 8, size: 16}
  epochs: 1
  batch_size: 8
  optimizer: {type: adam, lr: 0.01}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def stitched(write_spec) -> Path:
    return write_spec(STITCHED, "stitched.yaml")


def trainer(spec: Path, *sets: str) -> Trainer:
    return Trainer(load_spec(spec, list(sets)), device="cpu", progress=False)


def first_batch(tr: Trainer) -> dict[str, torch.Tensor]:
    return tr._to_device(next(iterate_batches(tr.train_data, 8, shuffle=False)))


def test_defaults_are_off(stitched):
    t = load_spec(stitched).train
    assert (t.amp, t.channels_last, t.compile, t.compile_mode) == ("off", False, False, None)


def test_bf16_autocast_runs_the_convolutions_in_bf16_and_trains(stitched):
    tr = trainer(stitched, "train.amp=bf16")
    seen = []
    conv = tr.compiled.plain[1].get_submodule("encoder.s1.shared.conv0")
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    batch = first_batch(tr)
    records = [tr.train_step(batch) for _ in range(3)]
    assert seen == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # weights stay fp32
    assert records[-1]["total"] < records[0]["total"]  # it learns
    tr.validate()  # validation runs the plain float32 model
    assert seen[-1] == torch.float32


def test_channels_last_stores_nhwc_and_computes_the_same(stitched):
    plain, nhwc = trainer(stitched), trainer(stitched, "train.channels_last=true")
    weight = nhwc.model.get_submodule("encoder.s1.shared.conv0").weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    batch = first_batch(nhwc)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        a, b = plain.train_step(first_batch(plain)), nhwc.train_step(batch)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_fp16_on_the_cpu_is_refused_before_anything_is_written(stitched, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["train", str(stitched), "--device", "cpu", "--out", str(out), "--set", "train.amp=fp16"],
    )
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "train.amp" in line and "CUDA" in line and "bf16" in line
    assert not out.exists()


def test_a_missing_compiler_is_said_once_and_training_runs_eager(stitched, monkeypatch):
    monkeypatch.setattr(speed, "compiler_missing", lambda device: "no C++ compiler found")
    import mtlc.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "compiler_missing", speed.compiler_missing)
    with pytest.warns(UserWarning, match="train.compile: no C\\+\\+ compiler found") as said:
        tr = trainer(stitched, "train.compile=true")
    assert tr.train_forward is tr.model
    tr.train_step(first_batch(tr))
    assert len(said) == 1


def test_a_compiler_failure_falls_back_once_and_the_run_continues(stitched, monkeypatch):
    def broken(model, mode):
        def call(*args):
            raise RuntimeError("backend exploded\nlong trace")

        return call

    monkeypatch.setattr(speed.torch, "compile", broken)
    tr, eager = trainer(stitched, "train.compile={mode: reduce-overhead}"), trainer(stitched)
    assert load_spec(stitched, ["train.compile={mode: reduce-overhead}"]).train.compile_mode == (
        "reduce-overhead"
    )
    batch = first_batch(tr)
    with pytest.warns(UserWarning, match="torch.compile failed \\(backend exploded\\)") as said:
        got = [tr.train_step(batch) for _ in range(3)]
    want = [eager.train_step(batch) for _ in range(3)]
    assert len(said) == 1
    assert [g["loss"] for g in got] == [w["loss"] for w in want]


@pytest.mark.slow
def test_torch_compile_trains_like_eager(stitched):
    if speed.compiler_missing(torch.device("cpu")):
        pytest.skip("no C++ compiler for torch.compile on the CPU")
    tr, eager = trainer(stitched, "train.compile=true"), trainer(stitched)
    batch = first_batch(tr)
    for _ in range(2):
        a, b = tr.train_step(batch), eager.train_step(batch)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert isinstance(tr.train_forward, speed.CompiledForward) and not tr.train_forward.failed


@pytest.mark.parametrize("balancer", ["fixed", "uncertainty", "mgda"])
def test_loss_scaler_is_exact_with_a_power_of_two_scale(stitched, balancer):
    # The scaler (what fp16 uses) multiplies the gradients entering the model by 2^16
    # and divides them back: exact in float32, so training is unchanged for any balancer.
    scaled, plain = (trainer(stitched, f"balancer.type={balancer}") for _ in range(2))
    scaled.scaler = speed.LossScaler()
    batch = first_batch(plain)
    for _ in range(3):
        a, b = scaled.train_step(batch), plain.train_step(batch)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["weights"] == pytest.approx(b["weights"], rel=1e-6)
    for (name, p), q in zip(scaled.model.named_parameters(), plain.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_loss_scaler_skips_an_overflowing_step_and_halves_the_scale(stitched):
    tr = trainer(stitched)
    tr.scaler = speed.LossScaler(init=2.0**16)
    before = {k: v.clone() for k, v in tr.model.state_dict().items() if "weight" in k}
    # every gradient overflows float32; finite, so the halving shows (inf / 2 is inf)
    tr.scaler.scale = 2.0**200
    tr.train_step(first_batch(tr))
    assert tr.scaler.scale == 2.0**199 and tr.scaler.good == 0
    for k, v in before.items():
        assert torch.equal(tr.model.state_dict()[k], v), k  # the step was skipped
    tr.scaler.scale = 4.0
    tr.scaler.interval = 2
    tr.train_step(first_batch(tr))
    tr.train_step(first_batch(tr))
    assert tr.scaler.scale == 8.0  # grows after `interval` clean steps


@pytest.mark.parametrize("balancer", ["uncertainty", "mgda", "rlw"])
def test_read_backs_happen_once_per_log_interval_with_every_step_logged(
    tmp_path, stitched, monkeypatch, balancer
):
    # uncertainty's s_t and MGDA's α are tensors: the log takes copies at each step and
    # reads them with the losses; RLW draws its weights on the host: read there, no wait
    spec = STITCHED.replace("train: 24", "train: 56").replace("epochs: 1", "epochs: 2")
    spec = spec.replace("{type: fixed}", f"{{type: {balancer}}}")
    path = tmp_path / "s.yaml"
    path.write_text(spec)
    sizes: list[int] = []
    real = Trainer.finish_steps

    def counting(self, pending):
        sizes.append(len(pending))
        return real(self, pending)

    monkeypatch.setattr(Trainer, "finish_steps", counting)
    cls = type(trainer(path).balancer)
    now: list[str] = []  # reads of the balancer's values at once (a wait on a device)
    for name in ("weights", "extra_state_for_log"):
        method = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, m=method, n=name: now.append(n) or m(self))
    runs = {}
    for every in (1, 3):
        sizes.clear()
        now.clear()
        out = tmp_path / f"run{every}"
        train(path, out=out, device="cpu", progress=False, overrides=[f"train.log_every={every}"])
        runs[every] = ([s for s in sizes if s], runfolder.read_metrics(out), list(now))
    assert runs[1][0] == [1] * 14
    assert runs[3][0] == [3, 3, 1] * 2  # 7 steps per epoch: 3 + 3 + the rest
    host = cls.log_tensors is Balancer.log_tensors  # weights() are host numbers
    for every in (1, 3):
        # device-held values are read only at the epochs' ends (their summary lines)
        assert runs[every][2].count("weights") == (14 + 2 if host else 2)
    # the same records, byte for byte, whatever the interval: the balancer's values of
    # every step (MGDA's α, uncertainty's s_t and σ_t, RLW's draw) included
    assert runs[1][1] == runs[3][1]
    steps = [r for r in runs[3][1] if r["type"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 15))
    assert len({json.dumps(r["weights"]) for r in steps}) > 1  # they change per step
    if balancer == "uncertainty":
        assert {f"s_{t}" for t in ("seg", "depth")} <= set(steps[0]["balancer"])


def test_data_lives_on_the_device_only_when_it_fits(stitched):
    assert fits_on_device(100, 400) and not fits_on_device(101, 400)
    # on the CPU batches are slices of the host tensors: nothing moves
    tr = trainer(stitched)
    assert all(v.device.type == "cpu" for v in tr.train_data.tensors.values())


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["train.amp=bf61"], "train.amp"),
        (["train.compile={mode: fast}"], "train.compile"),
        (["train.log_every=0"], "train.log_every"),
        (["train.channels_last=maybe"], "train.channels_last"),
    ],
)
def test_bad_switch_values_are_located_errors(stitched, sets, key):
    args = ["build", str(stitched)] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert key in line and "Traceback" not in result.output


def test_fp16_loss_scale_is_checkpointed_and_resume_continues_from_it(
    stitched, tmp_path, monkeypatch
):
    # fp16 autocast runs on the CPU too (only the spec check refuses it there, for speed),
    # so the real fp16 path runs here with a scaler that changes its scale every 2 steps
    import mtlc.train.trainer as trainer_module
    from mtlc.train.checkpoint import load_checkpoint
    from mtlc.train.errors import Interrupted

    monkeypatch.setattr(trainer_module, "check_speed", lambda spec, device: None)
    monkeypatch.setattr(
        trainer_module, "LossScaler", lambda: speed.LossScaler(init=2.0**10, interval=2)
    )
    sets = ["train.amp=fp16", "train.epochs=2", "balancer={type: uncertainty}"]
    train(stitched, out=tmp_path / "a", device="cpu", progress=False, overrides=sets)
    real = Trainer._end_epoch

    def end_epoch_then_stop(self, *args):
        real(self, *args)
        self.request_stop()

    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch_then_stop)
    with pytest.raises(Interrupted):
        train(stitched, out=tmp_path / "b", device="cpu", progress=False, overrides=sets)
    monkeypatch.setattr(Trainer, "_end_epoch", real)
    stopped = load_checkpoint(tmp_path / "b" / "last.pt")
    steps = stopped["step"]  # the stop is honoured after the next step: 4
    assert 3 < steps < 6
    assert stopped["scaler"] == {"scale": 2.0 ** (10 + steps // 2), "good": steps % 2}
    train(stitched, out=tmp_path / "b", device="cpu", progress=False, overrides=sets, resume=True)
    a, b = (load_checkpoint(tmp_path / r / "last.pt") for r in "ab")
    assert a["scaler"] == b["scaler"] == {"scale": 2.0**13, "good": 0}  # 6 steps: 3 doublings
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert runfolder.read_metrics(tmp_path / "a") == runfolder.read_metrics(tmp_path / "b")
