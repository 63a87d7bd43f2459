"""One rank of the 2-process job tests/test_distributed.py starts with torchrun.

Each case trains the spec with one balancer through ``Trainer.fit`` on the job's ranks;
rank r trains into ``<out>/<case>/rank<r>`` (only rank 0 may write there) and reports
what the test compares (its model, its balancer's state and weights, how the run ended)
in ``<out>/<case>-rank<r>.pt``, a file of the test's own; the ``masked`` cases first
ignore a different number of pixels in every sample (:func:`mask_pixels`). Then: a NaN
in rank 1's loss alone, a Ctrl-C on rank 1 alone followed by a resume in a shared folder, and the spec
with BatchNorm on vectors (the third argument).
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path

import torch

from mtlc.clitools import exit_without_teardown
from mtlc.spec import load_spec
from mtlc.train import distributed
from mtlc.train.errors import Diverged, Interrupted
from mtlc.train.trainer import Trainer

MASKED = ["tasks.depth.loss={type: l1, ignore_zero: true}"]
CASES = {
    "fixed": ["balancer={type: fixed, weights: {seg: 1.0, depth: 0.5}}"],
    "uncertainty": ["balancer={type: uncertainty}"],
    "mgda_exact": ["balancer={type: mgda, mode: exact}"],
    "mgda_ub": ["balancer={type: mgda, mode: ub}"],
    "dtp": ["balancer={type: dtp}"],
    # ignored pixels, a different number in every sample (mask_pixels)
    "masked_fixed": ["balancer={type: fixed, weights: {seg: 1.0, depth: 0.5}}", *MASKED],
    "masked_mgda_exact": ["balancer={type: mgda, mode: exact}", *MASKED],
}


def mask_pixels(trainer: Trainer) -> None:
    """Ignore a different number of pixels in every sample: sample i loses its first
    (5i mod 16) rows of segmentation (label -1) and first (7i mod 16) columns of depth
    (0 = no measurement); sample 3 has no valid segmentation pixel at all. Every rank
    (and the 1-process reference) holds the same data, so all mask it alike."""
    for data in (trainer.train_data, trainer.val_data):
        seg, depth = data.tensors["seg"], data.tensors["depth"]
        for i in range(seg.shape[0]):
            seg[i, : (5 * i) % 16] = -1
            depth[i, :, :, : (7 * i) % 16] = 0.0
        seg[3] = -1


def report(path: Path, trainer: Trainer, **extra: object) -> None:
    torch.save(
        {
            "model": trainer.model.state_dict(),
            "balancer": trainer.balancer.state_dict(),
            "weights": trainer.balancer.weights(),
            "step": trainer.step,
            **extra,
        },
        path,
    )


def folder(path: Path, rank: int) -> Path:
    """A run folder as `mtlc train` prepares it: by rank 0 alone."""
    if rank == 0:
        path.mkdir(parents=True)
    return path


def main() -> None:
    out, spec_path = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    ranks, device = distributed.join("cpu")
    r = ranks.rank
    for case, overrides in CASES.items():
        trainer = Trainer(load_spec(spec_path, overrides), device=device, ranks=ranks)
        if case.startswith("masked"):
            mask_pixels(trainer)
        result = trainer.fit(folder(out / case / f"rank{r}", r))
        report(out / f"{case}-rank{r}.pt", trainer, summary=result.summary)

    # a NaN in rank 1's depth loss from the second step on
    trainer = Trainer(load_spec(spec_path), device=device, ranks=ranks)
    if r == 1:
        real = trainer.losses["depth"]
        trainer.losses["depth"] = lambda p, t: real(p, t) * (math.nan if trainer.step else 1.0)
    try:
        trainer.fit(folder(out / "nan" / f"rank{r}", r))
        outcome = "completed"
    except Diverged as exc:
        outcome = f"diverged at step {exc.step} on task {exc.task}"
    report(out / f"nan-rank{r}.pt", trainer, outcome=outcome)

    # Ctrl-C on rank 1 alone during the second step, then a resume in one shared folder
    shared = folder(out / "resume", r)
    trainer = Trainer(load_spec(spec_path), device=device, ranks=ranks)
    if r == 1:
        real = trainer.losses["depth"]

        def ctrl_c(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() and trainer.step == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return real(p, t)

        trainer.losses["depth"] = ctrl_c
    try:
        trainer.fit(shared)
        outcome = "completed"
    except Interrupted as exc:
        outcome = f"interrupted at step {exc.step}"
    ranks.barrier()  # rank 0 has written last.pt
    resumed = Trainer(load_spec(spec_path), device=device, ranks=ranks)
    resumed.fit(shared, resume=True)
    report(out / f"resume-rank{r}.pt", resumed, outcome=outcome)

    # BatchNorm on vectors: the last batch, 1 sample per process, is dropped on both
    trainer = Trainer(load_spec(sys.argv[3]), device=device, ranks=ranks)
    trainer.fit(folder(out / "batchnorm" / f"rank{r}", r))
    report(out / f"batchnorm-rank{r}.pt", trainer, outcome="completed")
    distributed.leave()


if __name__ == "__main__":
    exit_without_teardown(main)  # as `python -m mtlc` does in a torchrun job
