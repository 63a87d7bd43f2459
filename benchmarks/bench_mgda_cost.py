"""MGDA's cost per training step: `mode: ub` and `mode: exact` against fixed weights.

The step is the trainer's own (``Trainer.train_step``: forward, per-task losses, the
balancer's backward, optimizer step) on specs/hard.yaml, with T = 2, 3 and 4 tasks
(seg, depth, normal, edge; the first T). The three balancers are timed in rounds on the
same batch, interleaved, and the median step time is reported, with the spread of the
per-round ratios (10th–90th percentile, over ``--steps`` rounds). MGDA-UB should cost at
most 1.3× a fixed-weight step (T head backwards to the shared representation plus one
full backward); ``exact`` adds T backward passes through the shared encoder, reported as
its extra cost per task: (exact − fixed) / T.

    python benchmarks/bench_mgda_cost.py [--device cpu|cuda] [--steps 15] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from mtlc.data.batches import iterate_batches
from mtlc.devices import resolve_device
from mtlc.spec import load_spec
from mtlc.train import trainer as trainer_module

SPEC = Path(__file__).resolve().parent.parent / "specs" / "hard.yaml"
BALANCERS = {
    "fixed": {"type": "fixed"},
    "ub": {"type": "mgda", "mode": "ub"},
    "exact": {"type": "mgda", "mode": "exact"},
}


def spec_with(tasks: int, balancer: dict, size: int, batch: int):
    data = yaml.safe_load(SPEC.read_text())
    data["tasks"] = dict(list(data["tasks"].items())[:tasks])
    for task in data["tasks"].values():
        task["auxiliary"] = False
    data["balancer"] = balancer
    data["input"] = {"image": [3, size, size]}
    data["train"]["data"].update(train=batch, val=batch, size=size)
    data["train"]["batch_size"] = batch
    return load_spec(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch threads {torch.get_num_threads()}, {args.size}x{args.size}")
    print(f"batch {args.batch}, median of {args.steps} interleaved steps\n")
    print(
        "| T | fixed ms | ub ms | ub / fixed (p10–p90) | exact ms | exact / fixed (p10–p90) |"
        " exact extra per task ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for tasks in (2, 3, 4):
        trainers = {}
        for key, balancer in BALANCERS.items():
            trainer = trainer_module.Trainer(
                spec_with(tasks, balancer, args.size, args.batch), device=device
            )
            batch = next(iterate_batches(trainer.train_data, args.batch, shuffle=False))
            trainers[key] = (trainer, trainer._to_device(batch))
        times: dict[str, list[float]] = {k: [] for k in BALANCERS}
        for step in range(args.steps + 3):
            for key, (trainer, batch) in trainers.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                trainer.train_step(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= 3:  # warm-up steps are not timed
                    times[key].append(time.perf_counter() - start)
        fixed, ub, exact = (statistics.median(times[k]) * 1000 for k in BALANCERS)
        print(
            f"| {tasks} | {fixed:.1f} | {ub:.1f} | {ub / fixed:.2f} ({ratio_spread(times, 'ub')})"
            f" | {exact:.1f} | {exact / fixed:.2f} ({ratio_spread(times, 'exact')}) |"
            f" {(exact - fixed) / tasks:.1f} |"
        )


def ratio_spread(times: dict[str, list[float]], key: str) -> str:
    """The 10th–90th percentile of the per-round ratios key / fixed (the range below 10)."""
    ratios = [a / b for a, b in zip(times[key], times["fixed"], strict=True)]
    if len(ratios) < 10:
        return f"{min(ratios):.2f}–{max(ratios):.2f}"
    deciles = statistics.quantiles(ratios, n=10)
    return f"{deciles[0]:.2f}–{deciles[-1]:.2f}"


if __name__ == "__main__":
    main()
