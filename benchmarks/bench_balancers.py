"""Step time of every gradient-level balancer against a fixed-weight step, and against
LibMTL's implementation of the same method on the same model.

One process, one compiled model per method (specs/hard.yaml, shrunk by the options), one
fixed batch. Each repetition times one full training step (forward, the balancer's backward,
optimizer step) of every method in turn, so a noisy neighbour slows them alike; the table
gives the median and the spread (min–max) over the repetitions, and the median ratio to
the fixed step of the same repetition.

LibMTL (``--libmtl PATH``, a checkout's root) is loaded without its package ``__init__``
(which imports its whole trainer): empty ``LibMTL`` and ``LibMTL.weighting`` packages are
put in ``sys.modules`` with their paths, so ``LibMTL.weighting.<Method>`` imports only
``abstract_weighting``. Its weighting is bound to mtlc's compiled model (shared parameters
= mtlc's, LibMTL's defaults from its config.py) and driven exactly as LibMTL's trainer does:
``weighting.backward(losses, **kwargs)`` then the optimizer step.

    python benchmarks/bench_balancers.py [--reps 15] [--size 32] [--batch 16]
        [--methods pcgrad,upgrad,...] [--libmtl /path/to/LibMTL]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from mtlc.compiler import compile_spec
from mtlc.compiler.labels import shared_parameters
from mtlc.data.batches import iterate_batches
from mtlc.registry import BALANCERS, resolve
from mtlc.spec import load_spec
from mtlc.train.trainer import Trainer

SPEC = Path(__file__).resolve().parent.parent / "specs" / "hard.yaml"

# mtlc name -> (LibMTL module/class, LibMTL's default kwargs from its config.py)
LIBMTL = {
    "fixed": ("EW", {}),
    "mgda": ("MGDA", {"mgda_gn": "loss+"}),
    "pcgrad": ("PCGrad", {}),
    "gradvac": ("GradVac", {"GradVac_beta": 0.5, "GradVac_group_type": 0}),
    "cagrad": ("CAGrad", {"calpha": 0.5, "rescale": 1}),
    "nash_mtl": ("Nash_MTL", {"update_weights_every": 1, "optim_niter": 20, "max_norm": 1.0}),
    "aligned_mtl": ("Aligned_MTL", {}),
    "upgrad": ("UPGrad", {"UPGrad_norm_eps": 1e-4, "UPGrad_reg_eps": 1e-4}),
    "moco": (
        "MoCo",
        {
            "MoCo_beta": 0.5,
            "MoCo_beta_sigma": 0.5,
            "MoCo_gamma": 0.1,
            "MoCo_gamma_sigma": 0.5,
            "MoCo_rho": 0,
        },
    ),
    "db_mtl": ("DB_MTL", {"DB_beta": 0.9, "DB_beta_sigma": 0}),
}


def load_libmtl(root: Path, name: str):
    """``LibMTL.weighting.<name>``'s class, without running LibMTL's package __init__."""
    for pkg, path in (
        ("LibMTL", root / "LibMTL"),
        ("LibMTL.weighting", root / "LibMTL" / "weighting"),
    ):
        if pkg not in sys.modules:
            module = types.ModuleType(pkg)
            module.__path__ = [str(path)]
            sys.modules[pkg] = module
    return getattr(importlib.import_module(f"LibMTL.weighting.{name}"), name)


class LibMTLStep:
    """A LibMTL weighting bound to mtlc's compiled model, driven as LibMTL's trainer does."""

    def __init__(self, root: Path, method: str, trainer: Trainer) -> None:
        cls_name, self.kwargs = LIBMTL[method]
        base = load_libmtl(root, cls_name)
        shared = trainer.shared
        encoder = torch.nn.Module()
        encoder.params = torch.nn.ParameterList(shared)

        class Bound(base):  # type: ignore[misc, valid-type]
            def get_share_params(self):
                return shared

            def zero_grad_share_params(self):
                encoder.zero_grad(set_to_none=False)

        self.weighting = Bound()
        w = self.weighting
        w.task_num, w.task_name = len(trainer.tasks), list(trainer.tasks)
        w.device, w.rep_grad, w.epoch, w.encoder = torch.device("cpu"), False, 0, encoder
        w.init_param()
        self.trainer = trainer

    def step(self, batch) -> None:
        t = self.trainer
        t.model.train()
        _, per_task, _ = t.forward_losses(batch)
        t.optimizer.zero_grad(set_to_none=False)
        losses = torch.stack([per_task[name] for name in t.tasks])
        self.weighting.backward(losses, **self.kwargs)
        t.optimizer.step()


def build(spec_overrides: list[str], name: str) -> Trainer:
    spec = load_spec(SPEC, [*spec_overrides, f"balancer={{type: {name}}}"])
    torch.manual_seed(0)
    return Trainer(spec, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="")
    parser.add_argument("--libmtl", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gradient = [n for n in BALANCERS if resolve(BALANCERS, n).level == "gradient"]
    methods = ["fixed", *(args.methods.split(",") if args.methods else gradient)]
    over = [
        f"input.image=[3, {args.size}, {args.size}]",
        f"train.data.size={args.size}",
        f"train.data.train={args.batch}",
        "train.data.val=4",
        f"train.batch_size={args.batch}",
    ]
    steps = {}
    for m in dict.fromkeys(methods):
        trainer = build(over, m)
        batch = next(iterate_batches(trainer.train_data, args.batch, shuffle=False))
        steps[f"mtlc {m}"] = lambda t=trainer, b=batch: t.train_step(b)
        if args.libmtl is not None and m in LIBMTL:
            try:
                lib = LibMTLStep(args.libmtl, m, build(over, "fixed"))
                lib.step(batch)  # one trial step: a method that cannot run here is left out
                steps[f"LibMTL {m}"] = lambda s=lib, b=batch: s.step(b)
            except Exception as exc:  # a method LibMTL cannot run here: say so, go on
                print(f"LibMTL {m}: not run ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    n_shared = sum(
        p.numel() for p in shared_parameters(compile_spec(load_spec(SPEC, over)).supervised)
    )
    times: dict[str, list[float]] = {k: [] for k in steps}
    for rep in range(args.warmup + args.reps):
        for key, fn in steps.items():
            start = time.perf_counter()
            fn()
            if rep >= args.warmup:
                times[key].append(time.perf_counter() - start)
    fixed = times["mtlc fixed"]
    print(
        f"specs/hard.yaml at {args.size}x{args.size}, batch {args.batch}, {n_shared} shared "
        f"parameters, {args.reps} interleaved reps, {args.threads} thread(s)"
    )
    print(f"{'step':<22} {'median ms':>10} {'min–max ms':>16} {'× fixed':>8} {'× LibMTL':>9}")
    for key, ts in times.items():
        ratio = statistics.median(t / f for t, f in zip(ts, fixed))
        lib = times.get("LibMTL " + key.split(" ", 1)[1]) if key.startswith("mtlc") else None
        vs = f"{statistics.median(t / x for t, x in zip(ts, lib)):.2f}" if lib else ""
        print(
            f"{key:<22} {1e3 * statistics.median(ts):>10.1f} "
            f"{1e3 * min(ts):>7.1f}–{1e3 * max(ts):<8.1f} {ratio:>8.2f} {vs:>9}"
        )


if __name__ == "__main__":
    main()
