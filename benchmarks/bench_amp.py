"""Mixed precision and memory layout (issue 12): run on demand, `python benchmarks/bench_amp.py`.

One trainer step (`Trainer.train_step`: forward, losses, backward, optimizer) of the
largest spec in specs/ that trains on generated data (by forward FLOPs, unless `--spec`
names one; the ResNet-50 NYUv2 spec needs the data set on disk) in four settings:
fp32, `amp: bf16`, `channels_last: true`, and both. Steps are interleaved (the order
rotates every round) on the same batch; the figure is the median step time and the
speed-up over fp32, with the 10th–90th percentile of the per-round ratios.

    python benchmarks/bench_amp.py [--device cpu|cuda] [--reps 15] [--batch 32] [--spec PATH]
        [--set KEY=VALUE ...]

`--set` overrides the spec as `mtlc train --set` does; the ResNet-50 spec trains on
generated scenes with `--spec specs/nyuv2_resnet50_hps.yaml --set "train.data={name:
shapes}" --size 96` (its own data set is not needed to time a step).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from spread import median_p10_p90

from mtlc.compiler import compile_spec
from mtlc.data.batches import iterate_batches
from mtlc.devices import resolve_device
from mtlc.profile import summarize
from mtlc.spec import load_spec
from mtlc.train.trainer import Trainer

SPECS = Path(__file__).resolve().parent.parent / "specs"
GENERATED = ("shapes", "correlated")
SETTINGS = {
    "fp32": [],
    "bf16": ["train.amp=bf16"],
    "channels_last": ["train.channels_last=true"],
    "bf16+channels_last": ["train.amp=bf16", "train.channels_last=true"],
}


def largest_spec() -> Path:
    """The spec of most forward FLOPs among those training on generated data (no download)."""
    flops = {
        p: summarize(compile_spec(p), batch=1)["flops"]["total"]
        for p in SPECS.glob("*.yaml")
        if load_spec(p).train is not None and load_spec(p).train.data.name in GENERATED
    }
    return max(flops, key=flops.get)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=0, help="data size (0: the spec's)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--spec", type=Path, default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    spec_path = args.spec or largest_spec()
    data = [
        *args.sets,
        f"train.batch_size={args.batch}",
        f"train.data.train={args.batch}",
        f"train.data.val={args.batch}",
    ]
    if args.size:
        data += [f"train.data.size={args.size}", f"input.image=[3,{args.size},{args.size}]"]
    trainers, batches = {}, {}
    for name, sets in SETTINGS.items():
        tr = Trainer(load_spec(spec_path, sets + data), device=device, progress=False)
        trainers[name] = tr
        batches[name] = tr._to_device(
            next(iterate_batches(tr.train_data, args.batch, shuffle=False))
        )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(SETTINGS)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.warmup + args.reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            start = time.perf_counter()
            trainers[name].train_step(batches[name])
            sync()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"{spec_path.name}, trainer step, batch {args.batch}, {args.reps} interleaved reps "
        f"({where}, torch {torch.__version__})"
    )
    for name in names:
        ratios = [a / b for a, b in zip(times["fp32"], times[name], strict=True)]
        mid, p10, p90 = median_p10_p90(ratios)
        print(
            f"  {name:<20} median {1e3 * statistics.median(times[name]):8.2f} ms   "
            f"speed-up {mid:.3f} (p10 {p10:.3f}, p90 {p90:.3f})"
        )


if __name__ == "__main__":
    main()
