"""Trainer overhead: samples/s of `mtlc train`'s loop vs a minimal hand-written loop.

Both loops train the same compiled model (specs/hard.yaml, fixed weights) on the same
pre-built tensors with the same batch size, in one process, interleaved epoch by epoch so
that a noisy neighbour slows both alike. The trainer side is the real thing —
``Trainer.fit`` into a run folder, with the rich progress bar rendering to a terminal,
metrics.jsonl written every step, the NaN check, the balancer's backward — and its speed
is the samples/s it reports in summary.json (the time of its per-batch loop: slicing,
step, logging, progress; validation and checkpoints excluded, as the hand loop has none).
The hand loop is: forward, sum of the losses, zero_grad, backward, step, on the model the
trainer trains (the same fused graph: `compile_spec(..., fuse=True)` for the device), so
the ratio is the trainer's own overhead. Target: trainer / hand ≥ 0.95 on a GPU. The
figures are medians; the spread is the 10th–90th percentile of each side and of the
per-round ratios (each round is one epoch of each, in turn).

    python benchmarks/bench_trainer_overhead.py [--device cpu|cuda] [--reps 15]
        [--train 512] [--size 64] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from mtlc.compiler import compile_spec
from mtlc.data.batches import iterate_batches
from mtlc.devices import resolve_device
from mtlc.spec import load_spec
from mtlc.train import runfolder, setup
from mtlc.train import trainer as trainer_module

SPEC = Path(__file__).resolve().parent.parent / "specs" / "hard.yaml"


def hand_epoch(spec, data, device: torch.device) -> float:
    """One epoch of the minimal loop on a freshly compiled model; returns samples/s."""
    torch.manual_seed(spec.train.seed)
    model = compile_spec(spec, fuse=True, device=device.type).supervised.to(device)
    fns = setup.loss_functions(spec)
    targets = {t: task.target or t for t, task in spec.tasks.items()}
    opt = torch.optim.Adam(model.parameters(), lr=spec.train.optimizer.lr)
    gen = torch.Generator().manual_seed(spec.train.seed)
    model.train()
    n = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in iterate_batches(data, spec.train.batch_size, shuffle=True, generator=gen):
        if device.type == "cuda":
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        out = model(batch[spec.input_name])
        loss = sum(fns[t](out[t], batch[targets[t]]) for t in spec.tasks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += batch[spec.input_name].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def trainer_epoch(spec, splits, device: torch.device, folder: Path) -> float:
    """One epoch of Trainer.fit (progress rendered to a fake terminal); its samples/s."""
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    original = trainer_module.load_split
    trainer_module.load_split = lambda spec, split, allow: splits[
        split
    ]  # same tensors, no re-render
    try:
        trainer = trainer_module.Trainer(spec, device=device, console=console, progress=True)
    finally:
        trainer_module.load_split = original
    runfolder.prepare(folder, resume=False, force=False)
    return trainer.fit(folder).summary["train_samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    spec = load_spec(
        SPEC,
        [
            f"train.data.train={args.train}",
            "train.data.val=32",
            f"train.data.size={args.size}",
            f"input.image=[3, {args.size}, {args.size}]",
            f"train.batch_size={args.batch}",
            "train.epochs=1",
        ],
    )
    splits = {s: setup.load_split(spec, s, frozenset()) for s in ("train", "val")}
    hand_epoch(spec, splits["train"], device)  # warm-up (allocator, oneDNN/cuDNN plans)
    hand, mtlc = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            mtlc.append(trainer_epoch(spec, splits, device, Path(tmp) / f"run{rep}"))
            hand.append(hand_epoch(spec, splits["train"], device))
    h, m = statistics.median(hand), statistics.median(mtlc)
    ratios = [a / b for a, b in zip(mtlc, hand, strict=True)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch threads {torch.get_num_threads()}, {args.train} samples/epoch")
    print(f"{args.size}x{args.size}, batch {args.batch}, {args.reps} interleaved epochs each")
    print(f"hand-written loop: median {h:.1f} samples/s  {spread(hand, '.0f')}")
    print(f"mtlc trainer:      median {m:.1f} samples/s  {spread(mtlc, '.0f')}")
    print(
        f"trainer / hand = {m / h:.3f} (ratio of medians; per-round ratios: median "
        f"{statistics.median(ratios):.3f} {spread(ratios, '.3f')})"
    )


def spread(values: list[float], fmt: str) -> str:
    """The 10th–90th percentile of `values` (their range below 10 values)."""
    if len(values) < 10:
        return f"(min {min(values):{fmt}}, max {max(values):{fmt}})"
    deciles = statistics.quantiles(values, n=10)
    return f"(p10 {deciles[0]:{fmt}}, p90 {deciles[-1]:{fmt}})"


if __name__ == "__main__":
    main()
