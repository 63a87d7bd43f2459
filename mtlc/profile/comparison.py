"""Several specs side by side: `mtlc profile A.yaml B.yaml … --baseline A.yaml`.

One row per spec, each figure with its ratio to the baseline. The table has to stay
readable at 80 columns, where rich would squeeze the name column first: names lose the
prefix they share and, when the console is too narrow for the boxed table, a compact
one is printed whose name column gets the room the figures do not need.
"""

from __future__ import annotations

from typing import Any

from mtlc.profile.report import Profile, graph_costs, ms, nbytes, si


def short_names(names: list[str]) -> tuple[list[str], str]:
    """The names without the prefix they all share (cut at a `-`, `_`, `.` or space),
    and that prefix: `shapes-hard`, `shapes-nddr` → `hard`, `nddr` and `shapes-`.

    A narrow table squeezes its first column first; names that differ only at the end
    would all read `shape…`. One name, or a prefix that is a whole name, is kept as is.
    """
    if len(names) < 2:
        return list(names), ""
    common = names[0]
    for name in names[1:]:
        while not name.startswith(common):
            common = common[:-1]
    cut = max(common.rfind(c) for c in "-_. ") + 1
    prefix = common[:cut]
    if not prefix or any(len(n) == len(prefix) for n in names):
        return list(names), ""
    return [n[len(prefix) :] for n in names], prefix


def comparison(profiles: list[Profile], baseline: int = 0):
    """One row per spec; each figure with its ratio to the baseline spec (×).

    Spec names lose the prefix they share (`short_names`). On a console too narrow for
    the table, a compact one is printed instead (space-separated columns, shorter
    headers, long names folded onto a second line): rich would otherwise squeeze the
    name column first and every row would read `shape…`.
    """
    base = profiles[baseline]
    labels, prefix = short_names([p.name for p in profiles])
    title = f"comparison (batch {base.batch}; × = ratio to {labels[baseline]}"
    title += f"; spec names without '{prefix}')" if prefix else ")"
    metrics = _comparison_metrics(base)
    rows = []
    for i, p in enumerate(profiles):
        cells = [labels[i] + ("\n(baseline)" if i == baseline else "")]
        for _, get, fmt in metrics:
            value, ref = get(p), get(base)
            if fmt == "share":
                cells.append(f"{value:.0%}")
            else:
                ratio = f" ×{value / ref:.2f}" if ref else ""
                cells.append(fmt(value) + ratio)
        rows.append(cells)
    headers = ["spec"] + [label for label, _, _ in metrics]
    return _Fitting(title, headers, rows)


# compact headers; the convention (2 FLOPs per multiply-add) is printed under the table
_SHORT = {"FLOPs (2/MAC)": "FLOPs", "inference FLOPs": "infer. FLOPs"}


class _Fitting:
    """The comparison as a rich table that fits the console it is printed on.

    With room, the usual boxed table. Without, a compact one: columns separated by a
    space, each as wide as its longest word, and the name column gets the rest (at
    least 8, long names folding onto a second line rather than ending in "…").
    """

    def __init__(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        self.title, self.headers, self.rows = title, headers, rows

    def __rich_console__(self, console: Any, options: Any):
        from rich import box
        from rich.measure import Measurement
        from rich.table import Table

        wide = Table(title=self.title, title_justify="left")
        for i, h in enumerate(self.headers):
            wide.add_column(h, justify="right" if i else "left")
        for row in self.rows:
            wide.add_row(*row)
        if (
            Measurement.get(console, options.update_width(10_000), wide).maximum
            <= options.max_width
        ):
            yield wide
            return

        # a figure and its ratio on two lines, each kept whole ("68.3 M" never splits)
        rows = [[row[0]] + [c.replace(" ×", "\n×") for c in row[1:]] for row in self.rows]
        heads = [_SHORT.get(h, h) for h in self.headers[1:]]
        widths = [
            1
            + max(
                [len(w) for w in h.split()]
                + [len(line) for row in rows for line in row[i].splitlines()]
            )
            for i, h in enumerate(heads, 1)
        ]
        name = max(len(line) for row in self.rows for line in row[0].splitlines()) + 1
        room = options.max_width - sum(widths) - len(widths)
        compact = Table(
            title=self.title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            padding=(0, 0, 0, 1),
            show_edge=False,
        )
        compact.add_column("spec", width=max(8, min(name, room)), overflow="fold")
        for h, w in zip(heads, widths):
            compact.add_column(h, justify="right", width=w)
        for row in rows:
            compact.add_row(*row)
        yield compact


def _comparison_metrics(base: Profile) -> list[tuple[str, Any, Any]]:
    """(column, getter, formatter or "share") of the comparison table."""

    def total(metric: str, graph: str = "supervised"):
        return lambda p: graph_costs(getattr(p, graph))[metric]["total"]

    def share(metric: str):
        def get(p: Profile) -> float:
            c = graph_costs(p.supervised)[metric]
            return c["shared"] / c["total"] if c["total"] else 0.0

        return get

    metrics = [
        ("params", total("params"), si),
        ("shared params", share("params"), "share"),
        ("FLOPs (2/MAC)", total("flops"), si),
        ("MACs", total("macs"), si),
        ("shared FLOPs", share("flops"), "share"),
        ("inference FLOPs", total("flops", "inference"), si),
        ("other ops", total("other_ops"), si),
        ("peak act. memory", lambda p: p.inference.peak_bytes, nbytes),
    ]
    if base.latency is not None:
        metrics += [
            ("forward", lambda p: p.latency["forward_ms"]["median"], ms),
            ("fwd+bwd", lambda p: p.latency["forward_backward_ms"]["median"], ms),
        ]
    return metrics
