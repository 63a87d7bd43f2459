"""The CUDA path: run where a device exists, skipped elsewhere (CI has none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtlc.cli import main
from mtlc.compiler import compile_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SPECS = sorted(Path(__file__).parent.parent.glob("specs/*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_every_spec_matches_the_cpu_on_cuda(spec):
    torch.manual_seed(0)
    compiled = compile_spec(spec)
    cpu = compiled.supervised.eval()
    x = torch.randn(2, 3, 64, 64)
    want = cpu(x)
    gpu = cpu.to("cuda")
    got = gpu(x.cuda())
    for key, value in want.items():
        torch.testing.assert_close(got[key].cpu(), value, rtol=1e-3, atol=1e-3)
    gpu.train()
    out = gpu(x.cuda())
    sum(v.float().mean() for k, v in out.items() if not k.startswith("@")).backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in gpu.parameters() if p.requires_grad)


def test_torch_compile_on_cuda_matches_eager():
    model = compile_spec(SPECS[0]).model.eval().cuda()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    want = model(x)
    got = torch.compile(model)(x)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-3, atol=1e-3)


def test_profile_latency_reports_the_cuda_device():
    result = CliRunner().invoke(
        main, ["profile", str(SPECS[0]), "--latency", "--device", "cuda", "--batch", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "cuda" in json.dumps(json.loads(result.output)).lower()


# -- issue 12: fusion, speed switches, read-backs, MGDA on the device --------------------


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_fused_grouped_model_matches_unfused_on_cuda(spec):
    from mtlc.compiler.fuse import fuse

    torch.manual_seed(0)
    plain = compile_spec(spec).supervised.cuda()
    fused = fuse(plain, "cuda")
    x = torch.randn(4, 3, 64, 64, device="cuda")
    for mode in (False, True):
        plain.train(mode)
        fused.train(mode)
        state = {k: v.clone() for k, v in plain.state_dict().items()}
        want = plain(x)
        plain.load_state_dict(state)
        got = fused(x)
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "sets",
    [
        ["train.amp=fp16"],
        ["train.amp=bf16", "train.channels_last=true"],
        ["train.compile={mode: reduce-overhead}"],
    ],
)
def test_speed_switches_train_on_cuda(sets):
    from mtlc.data.batches import iterate_batches
    from mtlc.spec import load_spec
    from mtlc.train.trainer import Trainer

    extra = ["train.data.train=64", "train.data.val=16", "train.batch_size=16"]
    tr = Trainer(load_spec(SPECS[0].parent / "cross_stitch.yaml", sets + extra), device="cuda")
    assert all(v.is_cuda for v in tr.train_data.tensors.values())  # kept on the device
    batch = tr._to_device(next(iterate_batches(tr.train_data, 16, shuffle=False)))
    records = [tr.train_step(batch) for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in records)


def test_mgda_step_never_waits_for_the_host_on_cuda():
    from mtlc.balancers.mgda import MGDA

    torch.manual_seed(0)
    shared = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh()).cuda()
    heads = torch.nn.ModuleList(torch.nn.Linear(16, 1) for _ in range(4)).cuda()
    x = torch.randn(32, 8, device="cuda")
    kinds = dict.fromkeys("abcd", "regression")
    for mode in ("exact", "ub"):
        z = shared(x)
        losses = {t: h(z).pow(2).mean() for t, h in zip("abcd", heads)}
        balancer = MGDA(tuple("abcd"), kinds, mode=mode).cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            balancer.backward(losses, shared_params=list(shared.parameters()), shared_repr=z)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert balancer.batched is True


@pytest.mark.parametrize("balancer", ["fixed", "uncertainty", "mgda", "dwa", "gls", "rlw"])
def test_a_trainer_step_never_waits_for_the_device_on_cuda(balancer):
    """launch_step (forward, balancer, its log, optimizer) queues work and returns: no
    host sync, whatever the balancer keeps on the device; the read-back comes later."""
    import warnings

    from mtlc.data.batches import iterate_batches
    from mtlc.spec import load_spec
    from mtlc.train.trainer import Trainer

    extra = [f"balancer={{type: {balancer}}}", "train.data.train=32", "train.batch_size=16"]
    tr = Trainer(load_spec(SPECS[0].parent / "cross_stitch.yaml", extra), device="cuda")
    batch = tr._to_device(next(iterate_batches(tr.train_data, 16, shuffle=False)))
    tr.train_step(batch)  # warm-up: allocator, cuDNN plans, the pinned buffers
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            launched = [tr.launch_step(batch) for _ in range(3)]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    assert syncs == [], syncs
    records = list(tr.finish_steps(launched))
    assert [r["step"] for r in records] == [2, 3, 4]
    assert set(records[-1]["weights"]) == set(tr.tasks)
