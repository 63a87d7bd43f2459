"""The field's balancers inside the trainer: each trains a compiled spec and lowers its loss,
the gradient-level ones on the shared parameters and on the shared representation, every
spec in specs/ takes a gradient method, stateful ones resume exactly from a checkpoint,
and the trainer's hooks (after_step, end_epoch) reach the balancer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlc.data.batches import iterate_batches
from mtlc.errors import SpecError
from mtlc.registry import BALANCERS, resolve
from mtlc.spec import load_spec
from mtlc.train.checkpoint import load_checkpoint
from mtlc.train.run import train
from mtlc.train.trainer import Trainer
from tests.conftest import TINY_TRAIN
from tests.test_train import SPECS, raw_losses, tiny_overrides

GRADIENT = [n for n in BALANCERS if resolve(BALANCERS, n).level == "gradient"]
ON_REPR = [n for n in GRADIENT if n != "mgda" and resolve(BALANCERS, n).allows_representation]


pytestmark = pytest.mark.usefixtures("one_thread")


def lowers(spec) -> list[dict]:
    trainer = Trainer(spec, device="cpu")
    batch = next(iterate_batches(trainer.train_data, 8, shuffle=False))
    records = [trainer.train_step(batch) for _ in range(8)]
    first = sum(raw_losses(r) for r in records[:2]) / 2
    last = sum(raw_losses(r) for r in records[-2:]) / 2
    assert last < first, [round(raw_losses(r), 4) for r in records]
    assert set(records[-1]["weights"]) == set(spec.tasks)
    return records


@pytest.mark.parametrize("name", [n for n in BALANCERS if n not in ("fixed", "uncertainty", "dtp")])
def test_each_new_balancer_lowers_the_loss(tiny: Path, name: str):
    lowers(load_spec(tiny, [f"balancer={{type: {name}}}"]))


@pytest.mark.parametrize("name", ON_REPR)
def test_gradient_methods_on_the_shared_representation(tiny: Path, name: str):
    spec = load_spec(tiny, [f"balancer={{type: {name}, wrt: representation}}"])
    trainer = Trainer(spec, device="cpu")
    assert trainer.use_shared_repr
    lowers(spec)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_takes_a_gradient_method(path: Path):
    overrides = tiny_overrides(path)
    if overrides is None:
        pytest.skip(f"{path.name}: its data set needs files")
    lowers(load_spec(path, [*overrides, "balancer={type: upgrad}"]))
    spec = load_spec(path, [*overrides, "balancer={type: pcgrad, wrt: representation}"])
    from mtlc.compiler import compile_spec

    if compile_spec(spec).topology.shared_repr is None:
        with pytest.raises(SpecError, match="wrt 'representation' needs one shared representation"):
            Trainer(spec, device="cpu")
        return
    lowers(spec)


@pytest.mark.parametrize("name", ["famo", "dwa", "gradvac", "nash_mtl", "moco", "db_mtl"])
def test_stateful_balancers_resume_exactly(tiny: Path, tmp_path: Path, name: str):
    """Three epochs straight equal two epochs, a checkpoint, and a resumed third."""
    over = [f"balancer={{type: {name}}}"]
    train(tiny, out=tmp_path / "a", device="cpu", overrides=[*over, "train.epochs=3"])
    train(tiny, out=tmp_path / "b", device="cpu", overrides=[*over, "train.epochs=2"])
    train(tiny, out=tmp_path / "b", device="cpu", overrides=[*over, "train.epochs=3"], resume=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for part in ("model", "balancer"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    if name == "dwa":  # three epochs: the third used the loss ratios of the first two
        assert float(a["balancer"]["epochs"]) == 3
        assert not torch.equal(a["balancer"]["history"][0], a["balancer"]["history"][1])


def test_famo_updates_its_logits_after_each_step(tiny: Path):
    trainer = Trainer(load_spec(tiny, ["balancer={type: famo}"]), device="cpu")
    batch = next(iterate_batches(trainer.train_data, 8, shuffle=False))
    trainer.train_step(batch)
    assert float(trainer.balancer.adam_step) == 1
    assert not torch.equal(trainer.balancer.logits, torch.zeros(3, dtype=torch.float64))


def test_on_representation_on_a_spec_without_one_is_located(write_spec):
    text = TINY_TRAIN.replace(
        "    s2: [conv(8, 3), bn, relu]",
        "    s2: [conv(8, 3), bn, relu]\n  sharing: {s2: separate}",
    ).replace("balancer: {type: fixed}", "balancer: {type: upgrad, wrt: representation}")
    path = write_spec(text, "sep.yaml")
    with pytest.raises(
        SpecError, match=r"sep.yaml:\d+:\d+: balancer.wrt: upgrad wrt 'representation'"
    ):
        Trainer(load_spec(path), device="cpu")


ONE_TASK = """\
mtlc: 1
name: one
input: {image: [3, 16, 16]}
encoder:
  stages:
    s1: [conv(8, 3), relu]
tasks:
  seg: {head: [conv(5, 1)], loss: cross_entropy}
balancer: {type: pcgrad}
"""


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "one.yaml:9:18: balancer.type: 'pcgrad' combines the gradients of two or more tasks"),
        (["--set", "balancer.type=pcgard"], "unknown balancer 'pcgard' (did you mean 'pcgrad'?)"),
        (["--set", "balancer={type: cagrad, c: -1}"], "balancer.c: input should be greater"),
        (["--set", "balancer={type: nash_mtl, optim_niter: x}"], "balancer.optim_niter"),
        (["--set", "balancer={type: moco, wrt: representation}"], "shared parameters only"),
    ],
)
def test_bad_balancers_are_located_errors_with_exit_2(write_spec, args, expected):
    from click.testing import CliRunner

    from mtlc.cli import main

    path = write_spec(ONE_TASK, "one.yaml")
    if args and "moco" in args[-1]:  # needs two tasks to get past the one-task check
        path = write_spec(TINY_TRAIN, "one.yaml")
        cmd = ["train", str(path), "--device", "cpu", *args]
    else:
        cmd = ["build", str(path), *args]
    result = CliRunner().invoke(main, cmd)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error:") and "Traceback" not in result.output
    assert expected in line, line
