"""The tables users read: `mtlc build`'s stages × tasks and `mtlc profile`'s comparison,
rendered as a terminal would show them, and the example specs `mtlc compare` reads."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console

from mtlc.commands import _table, build_report
from mtlc.profile.comparison import _Fitting, comparison, short_names
from mtlc.profile.report import profile_spec
from tests.conftest import NDDR

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))

# NDDR (tests/conftest.py) parameters by hand: s1 shared 3·4·9+4 = 112; s2 per task
# 4·6·9+6 = 222 (both shared: NDDR mixes each column into the other task); NDDR per task
# a 1×1 conv 12→6 without bias (72) + BN (12) = 84, used by that task alone; heads
# 6·3+3 = 21 and 6·1+1 = 7.


def _cells(table) -> dict[str, dict[str, str]]:
    """Row label → column header → cell text of a rich table."""
    columns = table.columns
    labels = list(columns[0]._cells)
    return {
        label: {str(c.header): str(c._cells[i]) for c in columns[1:]}
        for i, label in enumerate(labels)
    }


def test_build_table_counts_every_parameter_once(write_spec):
    report, compiled = build_report(str(write_spec(NDDR)))
    cells = _cells(_table(report, compiled))
    assert list(cells) == ["s1", "s2", "s2 ⨯ nddr", "head", "total"]
    assert cells["s1"] == {"shared": "shared 4×8×8\n112", "seg": "", "depth": ""}
    # the task columns feeding NDDR are shared weights: counted there, once
    assert cells["s2"]["shared"] == "444"
    assert cells["s2"]["seg"] == "seg 6×8×8\nin shared"
    # the unit's 168 is not written under every task: each task's 1×1 conv under it
    assert cells["s2 ⨯ nddr"] == {"shared": "nddr 6×8×8\nper task", "seg": "84", "depth": "84"}
    assert cells["head"] == {"shared": "", "seg": "seg 3×8×8\n21", "depth": "depth 1×8×8\n7"}
    total = cells["total"]
    assert total == {"shared": "556", "seg": "105", "depth": "91"}
    assert 556 + 105 + 91 == report["params"]["total"] == 752
    assert report["params"]["shared"] == 556
    assert report["params"]["tasks"] == {"seg": 105, "depth": 91}


def test_build_table_columns_sum_to_the_totals_for_every_spec():
    for spec in SPECS:
        report, compiled = build_report(str(spec))
        cells = _cells(_table(report, compiled))
        total = {
            c.removesuffix(" (aux)"): int(v.replace(",", "")) for c, v in cells["total"].items()
        }
        p = report["params"]
        assert total == {"shared": p["shared"], **p["tasks"]}, spec.name
        assert sum(total.values()) == p["total"], spec.name
        owners = report["owners"]
        for c in total:  # what each column's cells say, re-added from the owners
            assert sum(o.get(c, 0) for o in owners.values()) == total[c], (spec.name, c)


def test_short_names_drop_the_shared_prefix_only():
    assert short_names(["shapes-hard", "shapes-nddr"]) == (["hard", "nddr"], "shapes-")
    # cut at a separator: "shapes-a…" would leave "ttention"
    assert short_names(["shapes-attention", "shapes-affinity"]) == (
        ["attention", "affinity"],
        "shapes-",
    )
    assert short_names(["shapes", "shapes-x"]) == (["shapes", "shapes-x"], "")
    assert short_names(["a-x", "b-x"]) == (["a-x", "b-x"], "")
    assert short_names(["only-one"]) == (["only-one"], "")


def _render(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_profile_comparison_keeps_spec_names_apart_at_80_columns():
    """Every row used to read `shape…` at 80 columns: the names now lose their shared
    `shapes-` and get the room the figures do not need; a long one folds, whole."""
    chosen = [p for p in SPECS if p.stem in ("hard", "attention", "attention_distillation")]
    profiles = [profile_spec(p) for p in chosen]
    names = [p.name for p in profiles]
    assert names == ["shapes-attention", "shapes-attention-distillation", "shapes-hard"]
    table = comparison(profiles, baseline=2)
    assert isinstance(table, _Fitting)
    text = _render(table, 80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text and "shape…" not in text
    assert "ratio to hard" in text and "spec names without 'shapes-'" in text
    # the name column (its width from the table printed), read back under the header rule
    console = Console(width=80, file=open("/dev/null", "w"))  # noqa: SIM115
    (compact,) = table.__rich_console__(console, console.options)
    width = compact.columns[0].width
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    first = [line[:width].strip() for line in lines[rule + 1 :] if line[:width].strip()]
    assert first == ["attention", "attention-dist", "illation", "hard", "(baseline)"]
    # with room, the usual boxed table, names whole on one line
    wide = _render(table, 200)
    assert "│ attention-distillation " in wide and "FLOPs (2/MAC)" in wide


def test_example_specs_ask_the_same_metrics_of_the_same_task():
    """`mtlc compare` needs the same metrics in every run: a task name, and a loss,
    asks for the same list in every spec of specs/."""
    by_task: dict[str, set[tuple[str, ...]]] = {}
    by_loss: dict[str, set[tuple[str, ...]]] = {}
    for spec in SPECS:
        for name, task in yaml.safe_load(spec.read_text())["tasks"].items():
            metrics = tuple(task.get("metrics") or ())
            by_task.setdefault(name, set()).add(metrics)
            if not task.get("auxiliary"):
                by_loss.setdefault(str(task["loss"]), set()).add(metrics)
    assert all(len(v) == 1 for v in by_task.values()), by_task
    assert all(len(v) == 1 for v in by_loss.values()), by_loss
    assert by_task["normal"] == {
        ("angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30")
    }
