"""`encoder.init` (each column from a single-task run) and `encoder.freeze` (fixed stages)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from mtlc.cli import main
from mtlc.compiler import compile_spec
from mtlc.data.batches import iterate_batches
from mtlc.errors import SpecError
from mtlc.spec import load_spec
from mtlc.train.baselines import single_task_spec
from mtlc.train.checkpoint import save_checkpoint
from mtlc.train.trainer import Trainer

MULTI = """\
mtlc: 1
name: cols
input: {{image: [3, 16, 16]}}
encoder:
  stages:
    s1: [conv(8, 3), bn, relu, maxpool(2)]
    s2: [conv(8, 3), bn, relu]
  sharing: {{s1: {s1}, s2: cross_stitch}}
{extra}
tasks:
  seg:   {{head: [conv(5, 1), upsample(2)], loss: cross_entropy, metrics: [miou]}}
  depth: {{head: [conv(1, 1), upsample(2)], loss: l1, metrics: [abs_err]}}
train:
  data: {{name: shapes, train: 8, val: 8, size: 16}}
  batch_size: 8
"""


def multi(write_spec, extra="", s1="separate", name="spec.yaml"):
    return write_spec(MULTI.format(extra=extra, s1=s1), name)


def run_of(spec, task, path, seed):
    """A checkpoint as `mtlc train` writes it, of `task`'s single-task baseline, random weights."""
    single = single_task_spec(spec, task)
    torch.manual_seed(seed)
    model = compile_spec(single).supervised
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.uniform_(0.5, 1.5)
    save_checkpoint({"spec": single.model_dump(mode="json"), "model": model.state_dict()}, path)
    return model.state_dict()


def test_each_column_starts_from_its_run(write_spec, tmp_path):
    spec = load_spec(multi(write_spec))
    runs = {t: run_of(spec, t, tmp_path / f"{t}.pt", i) for i, t in enumerate(spec.tasks)}
    init = (
        "  init: {seg: " + str(tmp_path / "seg.pt") + ", depth: " + str(tmp_path / "depth.pt") + "}"
    )
    torch.manual_seed(0)
    fresh = compile_spec(multi(write_spec, name="fresh.yaml")).supervised.state_dict()
    torch.manual_seed(0)
    sd = compile_spec(multi(write_spec, init)).supervised.state_dict()
    for t in spec.tasks:
        for stage in ("s1", "s2"):
            ours = {k: v for k, v in sd.items() if k.startswith(f"encoder.{stage}.{t}.")}
            assert ours
            for key, value in ours.items():
                assert torch.equal(value, runs[t][key]), key  # single-task block `s/t`
    # heads and the cross-stitch α keep their own initialisation
    assert torch.equal(sd["heads.seg.conv0.weight"], fresh["heads.seg.conv0.weight"])
    alpha = [k for k in sd if k.startswith("encoder.s2.cross_stitch")]
    assert alpha and all(torch.equal(sd[k], fresh[k]) for k in alpha)


def test_init_refusals(write_spec, tmp_path):
    spec = load_spec(multi(write_spec))
    run_of(spec, "seg", tmp_path / "seg.pt", 0)
    other = load_spec(multi(write_spec, name="other.yaml"), ["encoder.stages.s2=[conv(4, 3)]"])
    run_of(other, "seg", tmp_path / "other.pt", 0)
    cases = [
        (
            f"  init: {{seg: {tmp_path / 'other.pt'}}}",
            "is a run of spec 'cols-seg', not of this one: its stage 's2' has other layers",
        ),
        (f"  init: {{seg: {tmp_path / 'nope.pt'}}}", "no such checkpoint file"),
        (f"  init: {{sge: {tmp_path / 'seg.pt'}}}", "unknown task 'sge' \\(did you mean 'seg'"),
        ("  freeze: [s3]", "unknown stage 's3'"),
    ]
    for extra, message in cases:
        path = multi(write_spec, extra)
        result = CliRunner().invoke(main, ["build", str(path)])
        assert result.exit_code == 2, result.output
        assert "spec.yaml:9:" in result.output, result.output
        import re

        assert re.search(message, " ".join(result.output.split())), result.output
    with pytest.raises(SpecError, match="this spec has none"):
        path = write_spec(
            MULTI.format(extra=f"  init: {{seg: {tmp_path / 'seg.pt'}}}", s1="hard").replace(
                "s2: cross_stitch", "s2: hard"
            )
        )
        compile_spec(path)


def test_frozen_stage_stays_fixed(write_spec):
    spec = load_spec(multi(write_spec, "  freeze: [s1]"))
    trainer = Trainer(spec, device="cpu")
    model = trainer.model
    s1 = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoder.s1.")}
    s2 = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoder.s2.")}
    frozen = {id(p) for k, p in model.named_parameters() if k.startswith("encoder.s1.")}
    assert frozen and all(
        not p.requires_grad for k, p in model.named_parameters() if k.startswith("encoder.s1.")
    )
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not frozen & optimised
    batch = next(iterate_batches(trainer.train_data, 8, shuffle=False))
    for _ in range(2):
        trainer.train_step(batch)
    after = model.state_dict()
    for k, v in s1.items():  # weights and BN running statistics alike
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in s2.items())
