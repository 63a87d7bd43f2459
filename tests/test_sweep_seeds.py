"""``mtlc sweep --seeds N``: each point trained N times, folded into mean ± std, with a plot."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from test_train_commands import run

from mtlc.delta import delta_m
from mtlc.train import command

pytestmark = pytest.mark.usefixtures("one_thread")


def test_seeds_fold_into_mean_and_std_with_baselines_and_a_plot(tiny: Path, tmp_path: Path):  # noqa: F811
    out = tmp_path / "sweep"
    args = [tiny, "--grid", "balancer.type=fixed,pcgrad", "--seeds", 2, "--epochs", 1]
    result = run(command.sweep, *args, "--out", out, "--device", "cpu", "--baselines")
    assert result.exit_code == 0, result.output
    assert "mean ± std over 2 seeds" in " ".join(result.output.split())
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["balancer.type"] for r in rows] == ["fixed", "pcgrad"]
    assert "train.seed" not in rows[0] and rows[0]["seeds"] == "2"
    base = {
        t: json.loads((out / "baselines" / t / "summary.json").read_text())["final"]["metrics"][t]
        for t in ("seg", "depth")
    }
    for r in rows:
        runs = sorted(out.glob(f"*_type={r['balancer.type']}_seed=*"))
        assert len(runs) == 2
        finals = [json.loads((p / "summary.json").read_text())["final"] for p in runs]
        seeds = [json.loads((p / "summary.json").read_text()).get("seed") for p in runs]
        miou = [f["metrics"]["seg"]["miou"] for f in finals]
        assert float(r["seg.miou"]) == pytest.approx(statistics.fmean(miou))
        assert float(r["seg.miou_std"]) == pytest.approx(statistics.stdev(miou))
        deltas = [delta_m(f["metrics"], base) for f in finals]
        assert float(r["delta_m"]) == pytest.approx(statistics.fmean(deltas))
        assert float(r["delta_m_std"]) == pytest.approx(statistics.stdev(deltas))
        assert seeds[0] != seeds[1] or seeds[0] is None
    assert sum(int(r["best"]) for r in rows) == 1
    assert (out / "sweep.png").stat().st_size > 1000


def test_seeds_and_a_seed_grid_are_refused(tiny: Path, tmp_path: Path):  # noqa: F811
    out = tmp_path / "sweep"
    result = run(command.sweep, tiny, "--grid", "train.seed=1,2", "--seeds", 2, "--out", out)
    assert result.exit_code == 2 and "--seeds" in result.output
    assert not out.exists()
