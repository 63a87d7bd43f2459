"""One colour per task everywhere: the topology drawing, the fx drawing and the plots.

The drawings used tableau colours by spec position while matplotlib's default cycle
coloured the plots by logging order, so depth was red in `viz` and orange in loss.png.
Both now ask mtlc.colors; these tests read the colours back from what each one makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtlc.colors import PALETTE, task_colours, tint
from mtlc.spec import load_spec
from mtlc.topology import build_topology
from mtlc.viz.topology_view import topology_dot

SPEC = Path(__file__).parent.parent / "specs" / "mixed.yaml"


def test_task_colours_follow_the_spec_order():
    assert task_colours(["seg", "depth", "normal", "edge"]) == {
        "seg": "#1f77b4",
        "depth": "#d62728",
        "normal": "#2ca02c",
        "edge": "#ff7f0e",
    }
    many = task_colours(f"t{i}" for i in range(12))
    assert many["t10"] == PALETTE[0]  # the palette repeats past ten tasks
    assert tint("#000000", 0.5) == "#808080" and tint("#ffffff") == "#ffffff"


def _drawn_colours(spec_path: Path) -> dict[str, str]:
    """Each task's output fill colour in the topology drawing."""
    topo = build_topology(load_spec(spec_path))
    dot = topology_dot(topo)
    out = {}
    for t in topo.tasks:
        line = next(x for x in dot.splitlines() if x.strip().startswith(f'"output/{t}" ['))
        out[t] = line.split('fillcolor="')[1].split('"')[0]
    return out


def test_plots_use_the_drawing_colours(tmp_path, monkeypatch):
    """loss.png and weights.png draw each task in its drawing colour, whatever order the
    tasks were logged in (here: reversed)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from mtlc.train.plots import write_plots

    spec = yaml.safe_load(SPEC.read_text())
    tasks = list(spec["tasks"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    logged = list(reversed(tasks))
    rows = [
        {
            "type": "step",
            "step": s,
            "loss": {t: 1.0 / (s + i + 1) for i, t in enumerate(logged)},
            "weights": {t: 1.0 + 0.1 * s * i for i, t in enumerate(logged)},
        }
        for s in range(1, 4)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen: dict[str, dict[str, str]] = {}
    real_savefig = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        # written through the atomic writer (a temporary file): known by its y label
        name = {"balancer weight": "weights.png"}.get(fig.axes[0].get_ylabel(), "loss.png")
        seen[name] = {
            line.get_label().split(" (")[0]: line.get_color() for line in fig.axes[0].lines
        }
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    note = write_plots(tmp_path)
    assert "loss.png" in note and (tmp_path / "loss.png").stat().st_size > 0
    drawn = _drawn_colours(SPEC)
    assert drawn == task_colours(tasks)
    assert drawn["depth"] == "#d62728" and drawn["edge"] == "#ff7f0e"
    for name in ("loss.png", "weights.png"):
        assert seen[name] == drawn, name


def test_the_ops_drawing_uses_the_same_colours():
    """`viz --level ops` fills each task's fx nodes with the tint of the task's colour."""
    from mtlc.viz import dot_source

    text = dot_source(SPEC, level="ops")
    for t, colour in task_colours(load_spec(SPEC).tasks).items():
        assert tint(colour, 0.92) in text or tint(colour) in text, t
