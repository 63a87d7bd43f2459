"""One colour per task, shared by everything mtlc draws: topology and fx drawings, plots.

A task keeps its colour everywhere (its blocks, edges, head, output, legend entry, loss
and weight curves), so a reader who learnt "depth is red" in a drawing finds depth red
in the training plots too. The colour is the task's position in the spec, never the
order something happens to list the tasks in. No imports: drawing code and the trainer
both read this module, neither imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable

# Tableau 10: distinct, print-safe, and the order most readers know from matplotlib.
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
SHARED = "#555555"  # what every task uses: a hard-shared box, the trunk's edges
SHARED_FILL = "#eeeeee"


def task_colours(tasks: Iterable[str]) -> dict[str, str]:
    """Task → colour, by the task's position in the spec (pass the spec's task order)."""
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(tasks)}


def tint(colour: str, amount: float = 0.82) -> str:
    """`colour` mixed with white, for fills that keep black text readable."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in rgb)
