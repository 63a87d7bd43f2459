"""The benchmarks still run (at toy sizes): they are run on demand, so nothing else would notice them rot.

Only the exit status is checked; the figures at these sizes mean nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
        "--scale",
        "3",
        "--sines",
        "4",
        "--sine-params",
        "integer",
        "--first-seed",
        "7",
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
    # bench_distributed_scaling.py runs `mtlc train --nproc`, which test_distributed runs;
    # gpu_check.py runs the others on a GPU (its CPU run is tested below);
    # spread.py is the scripts' shared median/p10/p90 (tested below), timing.py their timed
    # step (run by bench_fusion's and bench_sharing_overhead's toy runs)
    assert {p.name for p in (ROOT / "benchmarks").glob("*.py")} - set(TOY) == {
        "bench_startup_compile.py",
        "bench_distributed_scaling.py",
        "gpu_check.py",
        "spread.py",
        "timing.py",
    }


def test_spread_is_the_median_and_the_inclusive_deciles():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from spread import median_p10_p90
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # 0..10: the deciles of eleven evenly spaced values are the values 1 and 9
    assert median_p10_p90([float(v) for v in range(10, -1, -1)]) == (5.0, 1.0, 9.0)
    assert median_p10_p90([3.0]) == (3.0, 3.0, 3.0)


def test_gpu_check_without_cuda_runs_nothing_and_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine would run the whole check")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "no CUDA device: nothing was run" in summary
    for script in ("test_gpu.py", "bench_fusion.py", "bench_trainer_overhead.py", "bench_amp.py"):
        assert script in summary
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]


def test_gpu_check_reads_each_benchmark_s_figures_against_its_target():
    """The summary's parser on the benchmarks' own output lines (as printed on a GPU)."""
    import importlib.util

    loaded = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    check = importlib.util.module_from_spec(loaded)
    sys.modules["gpu_check"] = check  # its dataclass looks its module up there
    loaded.loader.exec_module(check)
    fusion = check.judge(
        "fusion",
        "  fused / unfused: median 0.500 (p10 0.450, p90 0.550)\n"
        "  fused / hand: median 0.900 (p10 0.800, p90 1.000)\n",
    )
    assert [(r[1].split()[0], r[2]) for r in fusion] == [("0.500", True), ("0.900", False)]
    trainer = check.judge(
        "trainer",
        "trainer / hand = 0.960 (ratio of medians; per-round ratios: median 0.950 "
        "(p10 0.900, p90 0.990))",
    )
    assert trainer == [
        ("trainer / hand samples/s (target ≥ 0.95)", "0.960 (p10 0.900, p90 0.990)", True)
    ]
    mgda = check.judge(
        "mgda", "| 3 | 10.0 | 14.0 | 1.40 (1.30–1.50) | 20.0 | 2.00 (1.9–2.1) | 3.3 |"
    )
    assert mgda == [("MGDA ub / fixed, T=3 (target ≤ 1.3×)", "1.40 (1.30–1.50)", False)]
    tests = check.judge("tests", "....\n12 passed, 3 skipped in 40.0s\n")
    assert tests[0][2] is True
    assert check.judge("amp", "garbage")[0][2] is False  # no figure is a miss, not a pass


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
        titles = ("learning-rate search", "final validation MSE", "training MSE", "paired ratio")
        for title in (*titles, "after"):
            assert title in out
        # a row in the search, final, training and ratio tables, one per correlation in the curve
        # and the direction table
        assert out.count("| mmoe") == 7 and out.count("| shared_bottom") == 7
        assert "dim 8, c 3, m 4, integer α and β, noise std 0.1;" in out  # reach the data
        assert "2 seeds (7–8)" in out and " higher, p = " in out
        assert ", median " in out  # medians beside the means
        assert "over p = [0.0] on 1 tuning seed" in out  # --tune-at
        assert "| shared_bottom, p = 0.0 |" in out and "| 1 steps | 3 steps |" in out


def test_mmoe_study_passes_the_data_constants_to_the_data():
    # --scale/--sines/--noise must reach the correlated data set: the generated targets
    # follow its formula with these c, m and noise (checked against a direct computation)
    import importlib.util

    from mtlc.spec import load_spec
    from mtlc.train.trainer import Trainer

    path = ROOT / "benchmarks" / "bench_mmoe_synthetic.py"
    loader = importlib.util.spec_from_file_location("bench_mmoe_synthetic", path)
    bench = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench)
    args = bench.argparse.Namespace(
        dim=6,
        train=40,
        val=8,
        batch=8,
        bottom=4,
        scale=3.0,
        sines=2,
        noise=0.0,
        sine_params="normal",
    )
    data = load_spec(bench.spec_dict("mmoe", args, 0.0, 5, 1e-3)).train.data
    assert (data.options["scale"], data.options["sines"], data.options["noise"]) == (3.0, 2, 0.0)
    d = Trainer(load_spec(bench.spec_dict("shared_bottom", args, 0.0, 5, 1e-3))).train_data
    w, a, b = (d.info[k].double() for k in ("task_weights", "alphas", "betas"))
    assert torch.allclose(w.norm(dim=1), torch.full((2,), 3.0, dtype=torch.float64), atol=1e-5)
    assert a.shape == (2,)
    lin = d["x"].double() @ w.T
    y = lin + torch.sin(lin.unsqueeze(-1) * a + b).sum(-1)  # noise 0: exactly the formula
    assert torch.allclose(torch.cat([d["y1"], d["y2"]], 1).double(), y, atol=1e-4)
    args.sine_params = "integer"
    d = Trainer(load_spec(bench.spec_dict("mmoe", args, 0.0, 5, 1e-3))).train_data
    assert d.info["alphas"].tolist() == [1, 2] and d.info["betas"].tolist() == [0, 1]


def test_mmoe_study_sign_test():
    # the exact two-sided sign test, by hand: 5 of 5 higher → 2 / 2^5; 4 of 5 → 2·6/32;
    # ties are dropped (the third pair), and all ties give no test
    import importlib.util

    path = ROOT / "benchmarks" / "bench_mmoe_synthetic.py"
    loader = importlib.util.spec_from_file_location("bench_mmoe_synthetic", path)
    bench = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench)
    assert bench.sign_test([2, 2, 2, 2, 2], [1] * 5) == "5 of 5 higher, p = 0.062"
    assert bench.sign_test([2, 2, 1, 2, 0, 2], [1] * 6) == "4 of 5 higher, p = 0.38"
    assert bench.sign_test([0, 0], [0, 0]) == "–"
    nan = float("nan")  # a diverged run is the worse of its pair, both ways round
    assert bench.sign_test([nan, 2, 2, 2, 2], [1] * 5) == "5 of 5 higher, p = 0.062"
    assert bench.sign_test([1] * 5, [nan, 2, 2, 2, 2]) == "0 of 5 higher, p = 0.062"
    assert bench.sign_test([nan], [nan]) == "–"
