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
