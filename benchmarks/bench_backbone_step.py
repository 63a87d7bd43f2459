"""Backbone overhead (issue 9): run on demand, `python benchmarks/bench_backbone_step.py`.

Target: one training step (forward, backward, SGD step) of the compiled
`specs/nyuv2_resnet50_hps.yaml` (ResNet-50 at output stride 8, a DeepLab head per task)
no slower than a hand-written torchvision-style model of the same architecture and
weights (tests/reference_resnet.py: torchvision's ResNet and DeepLabHead written out,
one backbone, a ModuleDict of heads, bilinear resize to the input): time ratio
compiled / hand-written ≤ 1.05.

The hand-written model takes the compiled model's weights through a name translation
(`encoder.s3.shared.layer3.2.conv2.weight` → `backbone.layer3.2.conv2.weight`), and the
outputs of both are checked equal before timing. Repetitions are interleaved (the order
flipped every round) so that drift in machine load hits both alike; the figure is the
median, with the spread (min–max of the per-round ratios).

Options: `--size H` (input H×W, W ≈ 4H/3, both multiples of 8; default 96), `--batch N`, `--reps N`, `--warmup N`,
`--threads N`, `--device cuda`, `--backbone resnet18` (a quick smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reference_resnet import RefMultiTask  # noqa: E402

from mtlc.compiler import compile_spec  # noqa: E402

SPEC = ROOT / "specs" / "nyuv2_resnet50_hps.yaml"
CHANNELS = {"seg": 13, "depth": 1, "normal": 3}
_HEAD = {"aspp0": "0", "conv1": "1", "bn2": "2", "conv4": "4"}


def reference_state(compiled_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The compiled model's state dict under the hand-written model's names."""
    out = {}
    for key, value in compiled_state.items():
        parts = key.split(".")
        if parts[0] == "encoder":  # encoder.<stage>.shared.<torchvision key>
            out["backbone." + ".".join(parts[3:])] = value
        elif parts[0] == "heads":  # heads.<task>.<layer><i>.… → heads.<task>.<i>.…
            out[".".join(["heads", parts[1], _HEAD[parts[2]], *parts[3:]])] = value
    return out


def step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = sum(v.float().square().mean() for v in out.values())
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="resnet50", help="resnet18 for a quick smoke run (tests)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.size, args.size * 4 // 3 // 8 * 8  # heads upsample(8): sizes divisible by 8
    device = torch.device(args.device)
    torch.manual_seed(0)
    overrides = [f"input.image=[3, {h}, {w}]", f"encoder.backbone.name={args.backbone}"]
    compiled = compile_spec(SPEC, overrides).model
    ref = RefMultiTask(args.backbone, CHANNELS)
    ref.load_state_dict(reference_state(compiled.state_dict()), strict=False)
    missing = set(ref.state_dict()) - set(reference_state(compiled.state_dict()))
    assert missing <= {"backbone.fc.weight", "backbone.fc.bias"}, sorted(missing)[:5]
    compiled, ref = compiled.to(device), ref.to(device)
    x = torch.randn(args.batch, 3, h, w, device=device)
    compiled.eval(), ref.eval()
    with torch.no_grad():
        a, b = compiled(x), ref(x)
        for t in CHANNELS:
            assert torch.allclose(a[t], b[t], atol=1e-4, rtol=1e-4), t
    compiled.train(), ref.train()
    steps = {
        "compiled": step_fn(compiled, torch.optim.SGD(compiled.parameters(), lr=1e-6), x),
        "hand-written": step_fn(ref, torch.optim.SGD(ref.parameters(), lr=1e-6), x),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for rep in range(args.reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            sync()
            t0 = time.perf_counter()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    ratios = [c / r for c, r in zip(times["compiled"], times["hand-written"])]
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(
        f"{args.backbone} OS8 + 3 DeepLab heads, input {args.batch}×3×{h}×{w}, {args.device}, "
        f"{torch.get_num_threads()} threads, {args.reps} interleaved reps"
    )
    print(f"compiled     median {med['compiled']:.1f} ms")
    print(f"hand-written median {med['hand-written']:.1f} ms")
    print(
        f"ratio {med['compiled'] / med['hand-written']:.3f} (of medians); per-round ratios "
        f"median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
