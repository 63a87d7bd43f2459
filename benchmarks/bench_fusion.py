"""Column fusion (issue 12): run on demand, `python benchmarks/bench_fusion.py`.

One training step (forward + backward) of `specs/cross_stitch.yaml` (3 tasks), four ways
carrying the same weights (outputs checked equal first):

- `unfused`: the compiled graph as the spec says it (`compile_spec(..., fuse=False)`);
- `fused`: the column fusion pass for the device being measured (`fuse(gm, device)`);
- `fused-grouped`: the pass as for a GPU (grouped convolutions) run on this device;
- `hand`: the plain hand-written model of `bench_sharing_overhead.py`;
- `fused+torch.compile` (with `--torch-compile`): the fused model under `torch.compile`.

Targets: fused / unfused ≥ 1.5× faster on a GPU and never slower on the CPU; fused /
hand ≤ 0.8 on a GPU, ≤ 1.0 on the CPU. Repetitions are interleaved (the order rotates
every round) so drift in machine load hits all alike; the figure is the median, the
spread the 10th–90th percentile of the per-round ratios.

Options: `--device cuda`, `--batch N`, `--reps N`, `--warmup N`, `--threads N`, `--tasks N`,
`--torch-compile`
(a cross-stitch spec with N copies of the tasks; the hand model exists for 3 only).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from pathlib import Path

import torch
import yaml
from spread import median_p10_p90
from timing import step

from mtlc.compiler import compile_spec
from mtlc.compiler.fuse import fuse

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "specs" / "cross_stitch.yaml"


def _sharing_overhead():
    """`bench_sharing_overhead.py`, for its hand-written cross-stitch model."""
    loaded = importlib.util.spec_from_file_location("bench_so", HERE / "bench_sharing_overhead.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def spec_with(tasks: int) -> dict:
    spec = yaml.safe_load(SPEC.read_text())
    if tasks != 3:
        base = list(spec["tasks"].values())
        spec["tasks"] = {f"t{i}": dict(base[i % 3]) for i in range(tasks)}
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="also time the fused model under torch.compile (compiles first: minutes on a CPU)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    unfused = compile_spec(spec_with(args.tasks), fuse=False).model
    with torch.no_grad():  # random mixing weights, so a mis-wired unit would show
        for name, p in unfused.named_parameters():
            if "cross_stitch" in name:
                p.uniform_(0, 1)
    models = {
        "unfused": unfused,
        "fused": fuse(unfused, device.type),
        "fused-grouped": fuse(unfused, "cuda"),
    }
    if args.tasks == 3:
        so = _sharing_overhead()
        hand = so.HandCrossStitch()
        hand.load_state_dict({hand.translate(k): v for k, v in unfused.state_dict().items()})
        models["hand"] = hand
    x = torch.rand(args.batch, 3, 64, 64)
    reference = unfused(x)
    for name, m in models.items():
        out = m(x)
        for t in reference:
            torch.testing.assert_close(out[t], reference[t], rtol=1e-4, atol=1e-4, msg=name)
    for m in models.values():
        m.to(device).train()
    x = x.to(device)
    if args.torch_compile:
        models["fused+torch.compile"] = torch.compile(models["fused"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(models)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.warmup + args.reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t = step(models[name], x, sync)
            if r >= args.warmup:
                times[name].append(t)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"cross-stitch, {args.tasks} tasks, forward+backward, batch {args.batch} of 3×64×64, "
        f"{args.reps} interleaved reps ({where}, torch {torch.__version__})"
    )
    for name in names:
        med = statistics.median(times[name])
        print(f"  {name:<14} median {1e3 * med:8.2f} ms")
    for a, b in (
        ("fused", "unfused"),
        ("fused-grouped", "unfused"),
        ("fused", "hand"),
        ("fused+torch.compile", "hand"),
    ):
        if a not in times or b not in times:
            continue
        ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
        mid, p10, p90 = median_p10_p90(ratios)
        print(f"  {a} / {b}: median {mid:.3f} (p10 {p10:.3f}, p90 {p90:.3f})")


if __name__ == "__main__":
    main()
