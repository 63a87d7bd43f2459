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

import yaml

from mtlc.atomic import atomic_open
from mtlc.colors import task_colours
from mtlc.train import runfolder

MISSING = "plots skipped: matplotlib is not installed (pip install 'mtlc[plots]')"
CONSTANT = "weights.png skipped: the balancer's weights never changed"


Line = tuple[str, str, list[int], list[float], bool]  # label, task, steps, values, per epoch


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def plot_lines(records: list[dict[str, Any]]) -> dict[str, list[Line]]:
    """What each PNG draws, from metrics.jsonl's records: file name -> its lines.

    ``loss.png``: per task, the training loss at every step and the validation loss at
    the end of every epoch. ``weights.png``: per task, the balancer's weight at every
    step, left out when no weight ever changed.
    """
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    if not steps:
        return {}
    tasks = list(steps[-1].get("loss", {}))
    x = [r["step"] for r in steps]
    loss: list[Line] = []
    for t in tasks:
        loss.append((f"{t} (train)", t, x, [_number(r["loss"].get(t)) for r in steps], False))
        val = [_number(r.get("val_loss", {}).get(t)) for r in epochs]
        if any(v == v for v in val):  # not all NaN
            loss.append((f"{t} (val)", t, [r["step"] for r in epochs], val, True))
    out = {"loss.png": loss}
    first = steps[0].get("weights", {})
    if any(r.get("weights", {}) != first for r in steps):
        out["weights.png"] = [
            (t, t, x, [_number(r.get("weights", {}).get(t)) for r in steps], False) for t in tasks
        ]
    return out


def write_plots(run_dir: str | Path) -> str:
    """Write loss.png (and weights.png unless the weights are constant); a one-line note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return MISSING
    run_dir = Path(run_dir)
    plots = plot_lines(runfolder.read_metrics(run_dir))
    if not plots:
        return "plots skipped: no training step was logged"
    order = list(dict.fromkeys(task for _, task, *_ in plots["loss.png"]))
    colour = _colours(run_dir, order)
    ylabels = {"loss.png": "loss (per task)", "weights.png": "balancer weight"}
    for name, lines in plots.items():
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for label, task, x, y, per_epoch in lines:
            style = {"ls": "--", "marker": "o", "ms": 4} if per_epoch else {"lw": 1}
            ax.plot(x, y, color=colour[task], label=label, **style)
        values = [v for *_, y, _ in lines for v in y if v == v]
        if name == "loss.png" and values and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabels[name])
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title(f"{run_dir.name}: {ylabels[name]}")
        fig.tight_layout()
        try:
            with atomic_open(run_dir / name, "wb") as fh:
                fig.savefig(fh, format="png")
        finally:
            plt.close(fig)
    notes = [] if "weights.png" in plots else [CONSTANT]
    return "; ".join([f"plots: {', '.join(str(run_dir / n) for n in plots)}", *notes])


def _colours(run_dir: Path, tasks: list[str]) -> dict[str, str]:
    """The drawings' task colours, by each task's place in the run's spec.yaml."""
    try:
        spec = yaml.safe_load((run_dir / runfolder.SPEC).read_text(encoding="utf-8"))
        order = list(spec["tasks"])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        order = []
    colours = task_colours(order + [t for t in tasks if t not in order])
    return colours
