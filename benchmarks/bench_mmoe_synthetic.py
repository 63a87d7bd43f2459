"""The MMoE paper's synthetic study: how sharing copes as the tasks' correlation falls.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, section 3 (figure 4): two regression tasks on the
``correlated`` data (mtlc/data/correlated.py, the paper's construction: targets
``y_t = w_tᵀx + Σ_j sin(α_j w_tᵀx + β_j) + ε`` with cos(w_1, w_2) = p), trained at task
correlations p = 1.0, 0.5 and 0.0. The paper's finding: the shared-bottom model gets
clearly worse as p falls, while MMoE loses much less (its gates can give the tasks
different mixtures of the experts).

The models follow the paper's sizes: 100 inputs; MMoE with 8 experts of one ReLU layer of
16 units and a softmax gate per task; the shared bottom one ReLU layer wide enough to have
about MMoE's parameter count (``--bottom``); every task a tower of one ReLU layer of 8
units and a linear output. CGC splits the 8 experts into 4 shared and 2 of each task's
own (Tang et al. 2020), and PLE stacks two such levels (4+2+2 then 2+1+1). Each run draws
its own data set and initialisation from its seed; every model of a seed sees the same
data. The figure is the final validation loss (MSE, mean over the two tasks) after
``--epochs`` epochs with Adam at lr 1e-3: mean ± standard deviation over the seeds, and
the (min–max) range; then each model's loss at every correlation divided by its loss at
the first correlation for the same seed (the same sines and directions: only the angle
between the tasks changes), which takes out how hard each seed's draw happens to be.

The MoE rows need the ``mmoe``, ``cgc`` and ``ple`` sharing points; an mtlc without them
runs the shared-bottom row and says which rows it skipped.

    python benchmarks/bench_mmoe_synthetic.py [--seeds 3] [--epochs 10] [--train 8000]
        [--val 2000] [--correlations 1.0,0.5,0.0] [--models shared_bottom,mmoe,cgc,ple]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from mtlc.data.batches import iterate_batches
from mtlc.errors import SpecError
from mtlc.spec import load_spec
from mtlc.train.trainer import Trainer

TOWER = ["linear(8)", "relu", "linear(1)"]
EXPERT = ["linear(16)", "relu"]


def model_parts(name: str, bottom: int) -> dict[str, Any]:
    """The ``encoder`` section of one model of the study."""
    if name == "shared_bottom":
        return {"stages": {"bottom": [f"linear({bottom})", "relu"]}}
    if name == "mmoe":
        return {
            "stages": {"experts": EXPERT},
            "sharing": {"experts": {"type": "mmoe", "experts": 8}},
        }
    if name == "cgc":
        sharing = {"type": "cgc", "shared_experts": 4, "task_experts": 2}
        return {"stages": {"experts": EXPERT}, "sharing": {"experts": sharing}}
    if name == "ple":
        return {
            "stages": {"level1": EXPERT, "level2": EXPERT},
            "sharing": {
                "level1": {"type": "ple", "shared_experts": 4, "task_experts": 2},
                "level2": {"type": "ple", "shared_experts": 2, "task_experts": 1},
            },
        }
    raise SystemExit(f"unknown model {name!r}; choose shared_bottom, mmoe, cgc or ple")


def spec_dict(name: str, args: argparse.Namespace, correlation: float, seed: int) -> dict:
    return {
        "mtlc": 1,
        "name": f"mmoe-study-{name}",
        "input": {"x": [args.dim]},
        "encoder": model_parts(name, args.bottom),
        "tasks": {t: {"head": TOWER, "loss": "mse"} for t in ("y1", "y2")},
        "train": {
            "data": {
                "name": "correlated",
                "train": args.train,
                "val": args.val,
                "dim": args.dim,
                "correlation": correlation,
                "seed": seed,
            },
            "epochs": args.epochs,
            "batch_size": args.batch,
            "optimizer": {"type": "adam", "lr": args.lr},
            "seed": seed,
        },
    }


def run(spec_data: dict, epochs: int) -> tuple[float, int]:
    """Train ``epochs`` epochs; the final validation loss (mean over tasks) and parameters."""
    trainer = Trainer(load_spec(spec_data), device="cpu")
    for _ in range(epochs):
        for batch in iterate_batches(
            trainer.train_data,
            trainer.spec.train.batch_size,
            shuffle=True,
            generator=trainer.generator,
            drop_last=trainer.drop_last,
        ):
            trainer.train_step(batch)
    val_loss, _ = trainer.validate()
    params = sum(p.numel() for p in trainer.model.parameters())
    return statistics.fmean(val_loss.values()), params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bottom", type=int, default=128, help="shared-bottom width")
    parser.add_argument("--correlations", default="1.0,0.5,0.0")
    parser.add_argument("--models", default="shared_bottom,mmoe,cgc,ple")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    correlations = [float(c) for c in args.correlations.split(",")]
    models = args.models.split(",")
    start = time.perf_counter()
    losses: dict[str, dict[float, list[float]]] = {}
    params: dict[str, int] = {}
    for name in models:
        try:
            load_spec(spec_dict(name, args, correlations[0], 0))
        except SpecError as exc:
            print(f"{name}: skipped, this mtlc cannot build it ({str(exc).splitlines()[0]})")
            continue
        losses[name] = {p: [] for p in correlations}
    for seed in range(args.seeds):
        for p in correlations:
            for name in losses:
                loss, params[name] = run(spec_dict(name, args, p, seed), args.epochs)
                losses[name][p].append(loss)
    took = time.perf_counter() - start
    print(
        f"correlated: {args.train} train / {args.val} val samples, dim {args.dim}; "
        f"{args.epochs} epochs, batch {args.batch}, Adam lr {args.lr}; {args.seeds} seeds; "
        f"{args.threads} thread(s); {took:.0f} s in all"
    )
    print("final validation MSE (mean of the two tasks): mean ± std (min–max) over the seeds")
    header = "| model | parameters | " + " | ".join(f"p = {p}" for p in correlations) + " |"
    print(header)
    print("|" + "---|" * (2 + len(correlations)))
    for name, by_p in losses.items():
        cells = []
        for p in correlations:
            xs = by_p[p]
            spread = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.fmean(xs):.4f} ± {spread:.4f} ({min(xs):.4f}–{max(xs):.4f})")
        print(f"| {name} | {params[name]} | " + " | ".join(cells) + " |")
    # A seed fixes the task's sines (α, β) and its directions, so the same seed at another
    # correlation is the same problem but for cos(w_1, w_2): the paired ratio removes the
    # seeds' difference in difficulty, which dominates the spread above.
    ref = correlations[0]
    print(f"\nloss at p / loss at p = {ref}, same seed: median (min–max) over the seeds")
    print(header)
    print("|" + "---|" * (2 + len(correlations)))
    for name, by_p in losses.items():
        cells = []
        for p in correlations:
            ratios = [x / r for x, r in zip(by_p[p], by_p[ref])]
            cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
        print(f"| {name} | {params[name]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
