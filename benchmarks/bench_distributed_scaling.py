"""Scaling of `mtlc train --nproc N`: samples/s of a plain run, --nproc 1, 2 (and 4).

Configurations, all training specs/hard.yaml on the same data with the same global batch:

* **plain**: :func:`mtlc.train.run.train` called in this process (no torchrun, no process
  group, one thread on the CPU): the reference every ratio is taken against.
* **--nproc N**: the real command, ``python -m mtlc train ... --nproc N`` (torchrun's
  launcher; gloo and one thread per process on the CPU, NCCL and one GPU per process
  with ``--device cuda``). ``--nproc 1`` is the cost of the distributed machinery alone
  (DDP's all-reduce and the loss all-reduce with a world of one).

A run's speed is the samples/s it reports in summary.json: the time of rank 0's
per-batch loop (slicing, the step with its all-reduces, logging); start-up, validation
and checkpoints are excluded, so a short run measures the steady loop. The
configurations are interleaved (the order rotating each repetition, so a noisy
neighbour slows all alike); reported: the median samples/s with its p10–p90 spread, and
the median of the per-repetition ratio to plain with its p10–p90.

CPU (default ``--procs 1,2``, plus 4 where the machine has 4 cores; a count above the
cores is skipped with a note)::

    python benchmarks/bench_distributed_scaling.py --reps 15

GPU (``--device cuda``: plain on cuda:0 against ``--nproc 1``, NCCL with a world size of
one, and more processes where the GPUs exist; without CUDA it says so and exits 0)::

    python benchmarks/bench_distributed_scaling.py --device cuda --reps 15 --size 64 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spread import median_p10_p90

SPEC = Path(__file__).resolve().parent.parent / "specs" / "hard.yaml"


def settings(args: argparse.Namespace) -> list[str]:
    """The spec's overrides: a small data set, the given global batch, few log reads."""
    return [
        f"train.data.train={args.train}",
        f"train.data.val={args.batch}",
        f"train.data.size={args.size}",
        f"input.image=[3, {args.size}, {args.size}]",
        f"train.batch_size={args.batch}",
        f"train.epochs={args.epochs}",
    ]


def run_plain(out: Path, args: argparse.Namespace) -> float:
    """The plain run, in this process; its samples/s."""
    import torch

    from mtlc.train.run import train

    if args.device == "cpu":
        torch.set_num_threads(1)
    result = train(
        SPEC,
        overrides=settings(args),
        out=out,
        device=args.device,
        console=None,
        progress=False,
    )
    return result.summary["train_samples_per_s"]


def run_nproc(nproc: int, out: Path, args: argparse.Namespace) -> float:
    """``mtlc train --nproc N`` in fresh processes; rank 0's samples/s."""
    cmd = [sys.executable, "-m", "mtlc", "train", str(SPEC), "--device", args.device]
    cmd += ["--out", str(out), "--nproc", str(nproc)]
    for setting in settings(args):
        cmd += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())["train_samples_per_s"]


def process_counts(args: argparse.Namespace) -> list[int]:
    """The --nproc counts to run: those asked for that this machine can hold."""
    asked = [1, 2, 4] if args.procs is None else [int(p) for p in args.procs.split(",")]
    if args.device == "cuda":
        import torch

        room, what = torch.cuda.device_count(), "GPU(s)"
    else:
        room, what = len(os.sched_getaffinity(0)), "CPU core(s)"
    kept = [n for n in asked if n <= room]
    for n in asked:
        if n > room:
            print(f"--nproc {n} skipped: this machine has {room} {what}, one per process")
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default=None, help="process counts (default 1,2,4 as fit)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--train", type=int, default=256, help="training scenes")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="the global batch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device here; the GPU comparison was not run")
            return
    counts = process_counts(args)
    configs: list[int | None] = [None, *counts]
    speed: dict[int | None, list[float]] = {c: [] for c in configs}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = configs[rep % len(configs) :] + configs[: rep % len(configs)]
            for c in order:
                out = Path(tmp) / f"rep{rep}-{'plain' if c is None else c}"
                speed[c].append(run_plain(out, args) if c is None else run_nproc(c, out, args))
    wall = time.perf_counter() - start
    steps = -(-args.train // args.batch) * args.epochs
    print(
        f"specs/hard.yaml on {args.device}, {args.train} scenes of {args.size}x{args.size}, "
        f"global batch {args.batch}, {steps} steps per run, {args.reps} interleaved "
        f"repetitions, {len(os.sched_getaffinity(0))} CPU cores"
        + (", one thread per process" if args.device == "cpu" else "")
        + f"; load average {os.getloadavg()[0]:.1f}; {wall:.0f} s in all"
    )
    plain = speed[None]
    print(f"{'run':>22}  samples/s median (p10-p90)   vs plain: median (p10-p90)")
    for c in configs:
        values = speed[c]
        name = "plain (in-process)" if c is None else f"--nproc {c}"
        ratios = [v / p for v, p in zip(values, plain)]
        m, lo, hi = median_p10_p90(values)
        rm, rlo, rhi = median_p10_p90(ratios)
        print(f"{name:>22}  {m:8.1f} ({lo:.1f}-{hi:.1f})   {rm:.2f}x ({rlo:.2f}-{rhi:.2f})")


if __name__ == "__main__":
    main()
