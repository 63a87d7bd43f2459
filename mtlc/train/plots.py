"""PNG plots of a run: per-task loss and balancer weights over the training steps.

``loss.png`` draws each task's training loss per step (a thin line) and its validation
loss per epoch (dots joined by a dashed line, in the task's colour), so over-fitting
shows where the two part. ``weights.png`` draws the balancer's weights; weights that
never change (a fixed balancer) would be flat lines saying nothing, so it is then not
drawn and the note says why.

matplotlib is an optional extra (``pip install 'mtlc[plots]'``, what ``make install``
installs): training must not depend on a plotting library, so without it the plots
are skipped and the caller gets a note saying so instead of an error. Each PNG goes
through the atomic writer: a full disk never leaves an empty file, a link is never
written through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlc.atomic import atomic_open
from mtlc.train import runfolder

MISSING = "plots skipped: matplotlib is not installed (pip install 'mtlc[plots]')"
CONSTANT = "weights.png skipped: the balancer's weights never changed"


def _constant(steps: list[dict[str, Any]]) -> bool:
    first = steps[0].get("weights", {})
    return all(r.get("weights", {}) == first for r in steps)


def write_plots(run_dir: str | Path) -> str:
    """Write loss.png (and weights.png unless the weights are constant); a one-line note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return MISSING
    run_dir = Path(run_dir)
    records = runfolder.read_metrics(run_dir)
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    if not steps:
        return "plots skipped: no training step was logged"
    tasks = list(steps[-1].get("loss", {}))
    colour = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
    written, notes = [], []
    plots = [("loss.png", "loss", "loss (per task)", True)]
    if _constant(steps):
        notes.append(CONSTANT)
    else:
        plots.append(("weights.png", "weights", "balancer weight", False))
    for name, key, ylabel, log in plots:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        values = []
        x = [r["step"] for r in steps]
        for t in tasks:
            y = [r.get(key, {}).get(t) for r in steps]
            values += [v for v in y if v is not None]
            ax.plot(
                x,
                [float("nan") if v is None else v for v in y],
                color=colour[t],
                lw=1,
                label=f"{t} (train)" if key == "loss" else t,
            )
            if key == "loss" and epochs:
                val = [r.get("val_loss", {}).get(t) for r in epochs]
                if any(isinstance(v, (int, float)) for v in val):
                    values += [v for v in val if isinstance(v, (int, float))]
                    ax.plot(
                        [r["step"] for r in epochs],
                        [v if isinstance(v, (int, float)) else float("nan") for v in val],
                        color=colour[t],
                        ls="--",
                        marker="o",
                        ms=4,
                        label=f"{t} (val)",
                    )
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log and values and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title(f"{run_dir.name}: {ylabel}")
        fig.tight_layout()
        try:
            with atomic_open(run_dir / name, "wb") as fh:
                fig.savefig(fh, format="png")
        finally:
            plt.close(fig)
        written.append(name)
    return "; ".join([f"plots: {', '.join(str(run_dir / n) for n in written)}", *notes])
