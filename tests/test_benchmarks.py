"""The benchmarks still run (at toy sizes): they are run on demand, so nothing else would notice them rot.

Only the exit status is checked; the figures at these sizes mean nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TOY = {
    "bench_amp.py": [
        "--reps",
        "1",
        "--warmup",
        "0",
        "--batch",
        "2",
        "--size",
        "16",
        "--spec",
        "specs/hard.yaml",
    ],
    "bench_fusion.py": ["--batch", "2", "--reps", "1", "--warmup", "0"],
    "bench_mgda_cost.py": ["--steps", "1", "--size", "16", "--batch", "4"],
    "bench_mmoe_synthetic.py": [
        "--seeds",
        "2",
        "--steps",
        "3",
        "--curve",
        "2",
        "--lr-grid",
        "0.001,0.01",
        "--tune-at",
        "0.0",
        "--train",
        "64",
        "--val",
        "16",
        "--dim",
        "8",
        "--batch",
        "32",
        "--correlations",
        "1.0,0.0",
    ],
    "bench_balancers.py": [
        "--reps",
        "1",
        "--warmup",
        "0",
        "--size",
        "16",
        "--batch",
        "4",
        "--methods",
        "pcgrad",
    ],
    "bench_sharing_overhead.py": ["--batch", "2", "--reps", "1", "--warmup", "0"],
    "bench_trainer_overhead.py": ["--reps", "1", "--train", "16", "--size", "16", "--batch", "8"],
    "trivial_shapes.py": ["--train", "32", "--val", "16", "--size", "16"],
    "bench_profile_large.py": [],
    "bench_export.py": ["--reps", "2", "--warmup", "0", "--formats", ".pt2"],
    "bench_backbone_step.py": [
        "--size",
        "16",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--backbone",
        "resnet18",
    ],
}


def test_every_benchmark_has_a_toy_run():
    # bench_startup_compile.py times fresh processes only; test_cli_build covers what it checks;
    # bench_distributed_scaling.py runs `mtlc train --nproc`, which test_distributed runs
    assert {p.name for p in (ROOT / "benchmarks").glob("*.py")} - set(TOY) == {
        "bench_startup_compile.py",
        "bench_distributed_scaling.py",
    }


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TOY))
def test_benchmark_runs(script):
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *TOY[script]],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if script == "bench_mmoe_synthetic.py":  # every table, a row per model, the command
        out = proc.stdout
        assert out.startswith("command: python benchmarks/bench_mmoe_synthetic.py --seeds 2")
        for title in ("learning-rate search", "final validation MSE", "paired ratio", "after"):
            assert title in out
        # a row in the search, final and ratio tables, and one per correlation in the curve
        assert out.count("| mmoe") == 5 and out.count("| shared_bottom") == 5
        assert "over p = [0.0] on 1 tuning seed" in out  # --tune-at
        assert "| shared_bottom, p = 0.0 |" in out and "| 1 steps | 3 steps |" in out
