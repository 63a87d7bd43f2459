"""Scaling of `mtlc train --nproc N` on the CPU: samples/s of 1, 2, ... processes (gloo).

Each run is the real command (`python -m mtlc train specs/hard.yaml --nproc N --device
cpu`, one thread per process) with the same global batch, and its speed is the samples/s
it reports in summary.json (the time of the per-batch loop on rank 0: slicing, the step
with DDP's all-reduce and the loss all-reduce, logging; start-up, validation and
checkpoints excluded). "plain" is the same run without torchrun (one process, no process
group), the reference the others are compared with. Runs are interleaved, the order
rotating each repetition, so a noisy neighbour slows every configuration alike; the
speed-up of N processes is the median over repetitions of its samples/s divided by the
plain run's of the same repetition.

    python benchmarks/bench_distributed_scaling.py [--procs 1,2] [--reps 15]
        [--train 512] [--size 32] [--batch 32] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = Path(__file__).resolve().parent.parent / "specs" / "hard.yaml"


def run(nproc: int | None, out: Path, args: argparse.Namespace) -> float:
    """One training run; its samples/s (rank 0's loop)."""
    cmd = [sys.executable, "-m", "mtlc", "train", str(SPEC), "--device", "cpu", "--force"]
    cmd += ["--out", str(out), "--epochs", str(args.epochs)]
    for setting in (
        f"train.data.train={args.train}",
        f"train.data.val={args.batch}",
        f"train.data.size={args.size}",
        f"input.image=[3, {args.size}, {args.size}]",
        f"train.batch_size={args.batch}",
    ):
        cmd += ["--set", setting]
    if nproc is not None:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())["train_samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2", help="process counts, e.g. 1,2,4")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    configs: list[int | None] = [None, *(int(p) for p in args.procs.split(","))]
    speed: dict[int | None, list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = configs[rep % len(configs) :] + configs[: rep % len(configs)]
            for c in order:
                speed[c].append(run(c, Path(tmp) / f"run-{c}", args))
    print(
        f"specs/hard.yaml, {args.train} scenes of {args.size}x{args.size}, global batch "
        f"{args.batch}, {args.epochs} epoch(s), {args.reps} interleaved repetitions, "
        f"{os.cpu_count()} CPU cores, one thread per process"
    )
    plain = speed[None]
    for c in configs:
        values = speed[c]
        name = "plain (no torchrun)" if c is None else f"--nproc {c}"
        ratios = [v / p for v, p in zip(values, plain)]
        print(
            f"{name:>20}: median {statistics.median(values):7.1f} samples/s "
            f"(min {min(values):.1f}, max {max(values):.1f}); vs plain: median "
            f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
