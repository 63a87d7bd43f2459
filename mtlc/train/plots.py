"""PNG plots of a run: per-task loss and balancer weights over the training steps.

matplotlib is an optional extra (``pip install 'mtlc[plots]'``): training must not
depend on a plotting library, so without it the plots are skipped and the caller gets a
note saying so instead of an error.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mtlc.colors import task_colours
from mtlc.train import runfolder

MISSING = "plots skipped: matplotlib is not installed (pip install 'mtlc[plots]')"


def write_plots(run_dir: str | Path) -> str:
    """Write loss.png and weights.png from metrics.jsonl; returns a one-line note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return MISSING
    run_dir = Path(run_dir)
    steps = [r for r in runfolder.read_metrics(run_dir) if r.get("type") == "step"]
    if not steps:
        return "plots skipped: no training step was logged"
    written = []
    colour = _colours(run_dir, steps)
    for name, key, ylabel, log in (
        ("loss.png", "loss", "training loss (per task)", True),
        ("weights.png", "weights", "balancer weight", False),
    ):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        tasks = list(steps[-1][key])
        x = [r["step"] for r in steps]
        for t in tasks:
            y = [r[key].get(t) for r in steps]
            y = [float("nan") if v is None else v for v in y]
            ax.plot(x, y, label=t, linewidth=1, color=colour.get(t))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log and all(v is None or v > 0 for r in steps for v in r[key].values()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"{run_dir.name}: {ylabel}")
        fig.tight_layout()
        fig.savefig(run_dir / name)
        plt.close(fig)
        written.append(name)
    return f"plots: {', '.join(str(run_dir / n) for n in written)}"


def _colours(run_dir: Path, steps: list[dict]) -> dict[str, str]:
    """The drawings' task colours, by each task's place in the run's spec.yaml."""
    try:
        spec = yaml.safe_load((run_dir / runfolder.SPEC).read_text(encoding="utf-8"))
        tasks = list(spec["tasks"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        tasks = list(steps[-1]["loss"])
    return task_colours(tasks)
