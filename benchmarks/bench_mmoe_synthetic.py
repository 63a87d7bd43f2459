"""The MMoE paper's synthetic study: how sharing copes as the tasks' correlation falls.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, sections 3.2, 3.3 and 5.1 (figures 3 and 4): two regression
tasks on the ``correlated`` data (mtlc/data/correlated.py, the paper's construction:
``y_t = w_tᵀx + Σ_j sin(α_j w_tᵀx + β_j) + ε_t`` with cos(w_1, w_2) = p), trained at
task correlations p = 1.0, 0.5 and 0.0. The paper's finding: the shared-bottom model gets
clearly worse as p falls, while MMoE loses much less (its per-task gates can give the
tasks different mixtures of the experts).

The models are the paper's (section 5.1): 100 inputs; MMoE with 8 experts of one ReLU
layer of 16 units and a softmax gate per task reading the input; every task a tower of
one ReLU layer of 8 units and a linear output; the shared bottom one ReLU layer of
13056 / (100 + 8·2) ≈ 113 units, the paper's match of MMoE's expert + tower weights
(``--bottom``). CGC splits the 8 experts into 4 shared and 2 of each task's own (Tang et
al. 2020), PLE stacks two such levels (4+2+2 then 2+1+1). All train with Adam, as the
paper; its learning rate was "grid searched from [0.0001, 0.001, 0.01]": with ``--lr-grid``
this script does the same, per model, on seeds of their own (``--tune-seeds``, numbered
from 1000, never among the study's seeds), and picks the rate with the lowest mean final
validation loss over the correlations. The paper gives no batch size, step count or data
size; they are options here.

Each run draws its own task (directions, sines), data and initialisation from its seed;
every model and correlation of a seed sees the same draw but for the angle between w_1
and w_2. The data constants the paper leaves open (c, m, α, β and the noise) are
``--scale``, ``--sines``, ``--sine-params`` and ``--noise``. The defaults are the run in
benchmarks/RESULTS.md that reproduces the finding: ``--sine-params integer`` (α_j = j,
β_j = (j − 1)², the public generator's values), whose wiggly targets bind the models'
capacity, 200,000 training samples (fewer let the shared bottom overfit), 10,000 steps
and 20 seeds from 100 (seeds 0–2 chose the regime; ``--first-seed``). With ``normal``
α, β the finding does not show (at c = 1 every model nears the noise floor at every p). A
larger c makes the sine terms of
higher frequency in x and
so the tasks harder to fit. Reported: the final validation MSE (mean over the two tasks)
per model and correlation, mean ± standard deviation, median (min–max) over the seeds (a
few runs stuck on a plateau pull the mean, hence the median); the training MSE over the
last 100 steps, the same way (the paper plots training loss); each model's validation
loss at p divided by its loss at the first correlation for the same seed (the paired
ratio, which takes out how hard each seed's draw is); and the mean validation loss at
``--curve`` points of training, to show whether the runs have converged.

The MoE rows need the ``mmoe``, ``cgc`` and ``ple`` sharing points; an mtlc without them
runs the shared-bottom row and says which rows it skipped.

    python benchmarks/bench_mmoe_synthetic.py [--seeds 20] [--first-seed 100] [--steps 10000]
        [--batch 512] [--lr-grid 0.0001,0.001,0.01 --tune-seeds 1 --tune-at 0.5 | --lr 0.001]
        [--train 200000]
        [--val 5000] [--correlations 1.0,0.5,0.0] [--models shared_bottom,mmoe,cgc,ple]
        [--scale 1] [--sines 10] [--sine-params integer] [--noise 0.1] [--jobs 2]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import shlex
import statistics
import sys
import time
from typing import Any

import torch

from mtlc.data.batches import iterate_batches
from mtlc.errors import SpecError
from mtlc.spec import load_spec
from mtlc.train.trainer import Trainer

TOWER = ["linear(8)", "relu", "linear(1)"]
EXPERT = ["linear(16)", "relu"]
TUNE_SEED = 1000  # tuning seeds start here, so they never repeat a study seed


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


def spec_dict(
    name: str, args: argparse.Namespace, correlation: float, seed: int, lr: float
) -> dict:
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
                "scale": args.scale,
                "sines": args.sines,
                "sine_params": args.sine_params,
                "noise": args.noise,
                "seed": seed,
            },
            "epochs": 1,  # unused: run() counts steps
            "batch_size": args.batch,
            "optimizer": {"type": "adam", "lr": lr},
            "seed": seed,
        },
    }


TRAIN_WINDOW = 100  # the training loss reported: mean over this many last steps


def run(spec_data: dict, steps: int, points: list[int]) -> tuple[list[float], int, float]:
    """Train ``steps`` steps; the validation loss (mean over tasks) after each of ``points``.

    Also returns the training loss (mean over tasks) averaged over the last
    ``TRAIN_WINDOW`` steps: the paper's figures plot training loss.
    """
    trainer = Trainer(load_spec(spec_data), device="cpu")
    curve: list[float] = []
    recent: list[float] = []
    step = 0
    while step < steps:
        for batch in iterate_batches(
            trainer.train_data,
            trainer.spec.train.batch_size,
            shuffle=True,
            generator=trainer.generator,
            drop_last=trainer.drop_last,
        ):
            record = trainer.train_step(batch)
            step += 1
            if step > steps - TRAIN_WINDOW:
                recent.append(statistics.fmean(record["loss"].values()))
            if step in points:
                curve.append(statistics.fmean(trainer.validate()[0].values()))
                trainer.model.train()
            if step == steps:
                break
    params = sum(p.numel() for p in trainer.model.parameters())
    return curve, params, statistics.fmean(recent)


def run_all(jobs: list[tuple[dict, int, list[int]]], workers: int, threads: int) -> list:
    """``run`` over ``jobs``, in order; in ``workers`` processes of ``threads`` threads each.

    The runs are independent (each seeds its own data and initialisation), so spreading
    them over processes changes how long the study takes, not what it measures.
    """
    if workers <= 1:
        return [run(*job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        return pool.starmap(run, jobs, chunksize=1)


def spread(xs: list[float], fmt: str) -> str:
    """``mean ± std, median (min–max)`` of ``xs``: a few runs stuck on a plateau pull the mean."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    mean, med = statistics.fmean(xs), statistics.median(xs)
    return f"{mean:{fmt}} ± {sd:{fmt}}, median {med:{fmt}} ({min(xs):{fmt}}–{max(xs):{fmt}})"


def worse(x: float, ref: float) -> bool:
    """``x`` is a higher loss than ``ref``; a diverged run (NaN) is worse than any other."""
    if math.isnan(x) or math.isnan(ref):
        return math.isnan(x) and not math.isnan(ref)
    return x > ref


def sign_test(xs: list[float], refs: list[float]) -> str:
    """``k of n higher, p = …``: the exact two-sided sign test of ``xs`` against ``refs``.

    Paired by seed, so each seed's draw (how hard its task is) cancels. Ties are dropped,
    as the sign test does; at the reference correlation every pair ties. A run that
    diverged (NaN) counts as the worse of its pair.
    """
    higher = sum(worse(x, r) for x, r in zip(xs, refs))
    n = higher + sum(worse(r, x) for x, r in zip(xs, refs))
    if n == 0:
        return "–"
    tail = sum(math.comb(n, i) for i in range(min(higher, n - higher) + 1)) / 2**n
    return f"{higher} of {n} higher, p = {min(1.0, 2 * tail):.2g}"


def table(title: str, rows: dict[str, list[str]], columns: list[str]) -> None:
    print(f"\n{title}")
    print("| model | " + " | ".join(columns) + " |")
    print("|" + "---|" * (1 + len(columns)))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


def tune(
    models: list[str], args: argparse.Namespace, correlations: list[float], grid: list[float]
) -> dict[str, float]:
    """Each model's learning rate from ``grid``: lowest mean final loss on the tuning seeds."""
    chosen: dict[str, float] = {}
    rows: dict[str, list[str]] = {}
    keys = [
        (name, lr, p, TUNE_SEED + s)
        for name in models
        for lr in grid
        for s in range(args.tune_seeds)
        for p in correlations
    ]  # the correlations the search averages over (--tune-at, else the study's)
    jobs = [(spec_dict(n, args, p, seed, lr), args.steps, [args.steps]) for n, lr, p, seed in keys]
    finals: dict[tuple[str, float], list[float]] = {}
    for (name, lr, _, _), (curve, _, _) in zip(keys, run_all(jobs, args.jobs, args.threads)):
        finals.setdefault((name, lr), []).append(curve[-1])
    for name in models:
        means = [statistics.fmean(finals[name, lr]) for lr in grid]
        chosen[name] = grid[min(range(len(grid)), key=means.__getitem__)]
        rows[name] = [f"{m:.4f}" for m in means] + [f"{chosen[name]:g}"]
    table(
        f"learning-rate search: mean final validation MSE over p = {correlations} on "
        f"{args.tune_seeds} tuning seed(s) from {TUNE_SEED}",
        rows,
        [f"lr {lr:g}" for lr in grid] + ["chosen"],
    )
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--curve", type=int, default=4, help="validation points per run")
    parser.add_argument("--train", type=int, default=200000)
    parser.add_argument("--val", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, help="one rate for every model (no search)")
    parser.add_argument(
        "--lr-grid", default="0.0001,0.001,0.01", help="rates to search (the paper's grid)"
    )
    parser.add_argument("--tune-seeds", type=int, default=1)
    parser.add_argument(
        "--tune-at", default="0.5", help="correlations of the search ('': the study's)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="the data's c = |w_t|")
    parser.add_argument("--sines", type=int, default=10, help="the data's m (sine terms)")
    parser.add_argument("--noise", type=float, default=0.1, help="the data's noise std")
    parser.add_argument(
        "--sine-params",
        default="integer",
        choices=("integer", "normal"),
        help="the data's α, β: integer (α_j = j) or normal",
    )
    parser.add_argument(
        "--first-seed", type=int, default=100, help="the study's seeds: this and the next ones"
    )
    parser.add_argument("--bottom", type=int, default=113, help="shared-bottom width")
    parser.add_argument("--correlations", default="1.0,0.5,0.0")
    parser.add_argument("--models", default="shared_bottom,mmoe,cgc,ple")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    correlations = [float(c) for c in args.correlations.split(",")]
    points = sorted({max(1, args.steps * (i + 1) // args.curve) for i in range(args.curve)})
    start = time.perf_counter()
    print("command: python " + shlex.join(["benchmarks/bench_mmoe_synthetic.py", *sys.argv[1:]]))
    models = []
    for name in args.models.split(","):
        try:
            load_spec(spec_dict(name, args, correlations[0], 0, 1e-3))
        except SpecError as exc:
            print(f"{name}: skipped, this mtlc cannot build it ({str(exc).splitlines()[0]})")
            continue
        models.append(name)
    if args.lr is not None:
        lrs = dict.fromkeys(models, args.lr)
    else:
        tune_at = [float(c) for c in args.tune_at.split(",")] if args.tune_at else correlations
        lrs = tune(models, args, tune_at, [float(v) for v in args.lr_grid.split(",")])

    curves: dict[str, dict[float, list[list[float]]]] = {
        m: {p: [] for p in correlations} for m in models
    }
    params: dict[str, int] = {}
    trains: dict[str, dict[float, list[float]]] = {m: {p: [] for p in correlations} for m in models}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    keys = [(name, p, seed) for seed in seeds for p in correlations for name in models]
    jobs = [(spec_dict(n, args, p, seed, lrs[n]), args.steps, points) for n, p, seed in keys]
    results = run_all(jobs, args.jobs, args.threads)
    for (name, p, _), (curve, params[name], train_loss) in zip(keys, results):
        curves[name][p].append(curve)
        trains[name][p].append(train_loss)
    took = time.perf_counter() - start
    print(
        f"\ncorrelated: {args.train} train / {args.val} val samples, dim {args.dim}, "
        f"c {args.scale:g}, m {args.sines}, {args.sine_params} α and β, noise std "
        f"{args.noise:g}; {args.steps} steps of batch {args.batch} (Adam); {args.seeds} seeds "
        f"({seeds.start}–{seeds.stop - 1}); "
        f"{args.jobs} process(es) of {args.threads} thread(s); {took:.0f} s in all"
    )
    finals = {m: {p: [c[-1] for c in cs] for p, cs in by_p.items()} for m, by_p in curves.items()}
    columns = [f"p = {p}" for p in correlations]
    table(
        "final validation MSE (mean of the two tasks): mean ± std, median (min–max) over the seeds",
        {
            f"{m} ({params[m]} parameters, lr {lrs[m]:g})": [
                spread(finals[m][p], ".4f") for p in correlations
            ]
            for m in models
        },
        columns,
    )
    table(
        f"training MSE (mean of the two tasks and the last {TRAIN_WINDOW} steps): "
        "mean ± std, median (min–max) over the seeds",
        {m: [spread(trains[m][p], ".4f") for p in correlations] for m in models},
        columns,
    )
    ref = correlations[0]
    table(
        f"paired ratio: validation loss at p / at p = {ref}, same seed: "
        "mean ± std, median (min–max)",
        {
            m: [
                spread([x / r for x, r in zip(finals[m][p], finals[m][ref])], ".2f")
                for p in correlations
            ]
            for m in models
        },
        columns,
    )
    table(
        f"direction: in how many seeds the validation loss at p is higher than at p = {ref}, "
        "and the two-sided sign test's p-value (no effect: higher in half the seeds)",
        {m: [sign_test(finals[m][p], finals[m][ref]) for p in correlations] for m in models},
        columns,
    )
    table(
        "convergence: mean validation MSE over the seeds after each number of steps",
        {
            f"{m}, p = {p}": [
                f"{statistics.fmean(c[i] for c in curves[m][p]):.4f}" for i in range(len(points))
            ]
            for m in models
            for p in correlations
        },
        [f"{s} steps" for s in points],
    )


if __name__ == "__main__":
    main()
