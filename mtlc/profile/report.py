"""Roll node costs up into what users compare: shared vs per task, per stage, per layer.

A parameter or FLOP is *shared* when two or more tasks use it and belongs to its task
otherwise (mtlc's cost words, the same in build, profile, viz and diff). The headline
figures come from the supervised graph, so auxiliary tasks and intermediate predictions
(deep supervision) are counted: that is what a training forward computes. The final
model's figures (the outputs only, what inference runs) are reported beside them, and
"serving t alone" is the supervised graph pruned to t's final prediction.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlc.atomic import make_folder, write_bytes
from mtlc.profile.counting import GraphCost, NodeCost, count

CONVENTION = (
    "FLOPs follow torch.utils.flop_counter (2 per multiply-add, matmul-like ops only); "
    "MACs = FLOPs / 2 (what fvcore, thop and ptflops report); other ops = one per element "
    "of the largest tensor of each op FLOPs do not count (norms, activations, pooling, "
    "resizing, element-wise gates and mixes, softmax)"
)


def split(items: Iterable[tuple[tuple[str, ...], int]], tasks: list[str]) -> dict[str, Any]:
    """`{"total", "shared", "tasks": {t: n}, "shared_by": {"a+b": n}}` from (tasks, amount) pairs.

    `unused` appears only when something serves no task (a weight no node reads).
    """
    out: dict[str, Any] = {"total": 0, "shared": 0, "tasks": dict.fromkeys(tasks, 0)}
    shared_by: dict[str, int] = {}
    unused = 0
    for who, n in items:
        out["total"] += n
        if len(who) >= 2:
            out["shared"] += n
            key = "+".join(who)
            shared_by[key] = shared_by.get(key, 0) + n
        elif who:
            out["tasks"][who[0]] += n
        else:
            unused += n
    out["shared_by"] = shared_by
    if unused:
        out["unused"] = unused
    return out


def graph_costs(g: GraphCost) -> dict[str, dict[str, Any]]:
    params = [s for s in g.state if not s.buffer]
    buffers = [s for s in g.state if s.buffer]
    out = {
        "params": split(((s.tasks, s.numel) for s in params), g.tasks),
        "buffers": split(((s.tasks, s.numel) for s in buffers), g.tasks),
        "flops": split(((n.tasks, n.flops) for n in g.nodes), g.tasks),
        "macs": split(((n.tasks, n.macs) for n in g.nodes), g.tasks),
        "other_ops": split(((n.tasks, n.other_ops) for n in g.nodes), g.tasks),
    }
    out["params"]["trainable"] = sum(s.numel for s in params if s.trainable)
    out["params"]["bytes"] = sum(s.nbytes for s in params)
    out["buffers"]["bytes"] = sum(s.nbytes for s in buffers)
    return out


@dataclass
class Profile:
    """A spec's costs: the supervised graph (headline), the final model, serving alone."""

    name: str
    source: str | None
    batch: int
    supervised: GraphCost
    inference: GraphCost
    latency: dict[str, Any] | None = None

    def serve_alone(self, task: str) -> dict[str, int]:
        """FLOPs, MACs, other ops and parameters of the graph pruned to `task`'s prediction."""
        g = self.supervised
        needed = g.depends[task]
        nodes = [n for n in g.nodes if n.name in needed]
        return {
            "flops": sum(n.flops for n in nodes),
            "macs": sum(n.macs for n in nodes),
            "other_ops": sum(n.other_ops for n in nodes),
            "params": sum(
                s.numel for s in g.state if not s.buffer and any(u in needed for u in s.users)
            ),
        }

    def to_json(self, by: str | None = None) -> dict[str, Any]:
        sup, inf = self.supervised, self.inference
        alone = {t: self.serve_alone(t) for t in sup.tasks}
        out: dict[str, Any] = {
            "name": self.name,
            "spec": self.source,
            "batch": self.batch,
            "input": {k: list(v) for k, v in sup.inputs.items()},
            "graph": "supervised",
            "tasks": list(sup.tasks),
            "outputs": list(inf.tasks),
            **graph_costs(sup),
            "serve_alone": {t: a["flops"] for t, a in alone.items()},
            "serve_alone_macs": {t: a["macs"] for t, a in alone.items()},
            "serve_alone_params": {t: a["params"] for t, a in alone.items()},
            "memory": {
                "peak_activation_bytes": inf.peak_bytes,
                "peak_at": inf.peak_node,
                "activation_bytes": sum(n.out_bytes for n in inf.nodes),
                "weight_bytes": sum(s.nbytes for s in inf.state),
                "note": "inference forward of the final model, input included, at node granularity",
            },
            "inference": {"graph": "final model", **graph_costs(inf)},
            "convention": CONVENTION,
        }
        if by is not None:
            out["breakdown"] = {"by": by, "rows": self.rows(by)}
        if self.latency is not None:
            out["latency"] = self.latency
        return out

    def rows(self, by: str) -> list[dict[str, Any]]:
        """The `--by` table as plain rows of exact numbers (also what --csv writes)."""
        if by == "task":
            return self._task_rows()
        if by == "node":
            return [_node_row(n) for n in self.supervised.nodes]
        if by not in ("stage", "layer"):
            raise ValueError(f"cannot break the cost down by {by!r}")
        key = _stage_of if by == "stage" else (lambda n: n.layer)
        groups: dict[str, list[NodeCost]] = {}
        for n in self.supervised.nodes:
            groups.setdefault(key(n), []).append(n)
        return [
            {
                by: name,
                "nodes": len(nodes),
                **_sums(nodes),
                "shared_flops": sum(n.flops for n in nodes if len(n.tasks) >= 2),
            }
            for name, nodes in groups.items()
        ]

    def _task_rows(self) -> list[dict[str, Any]]:
        c = graph_costs(self.supervised)
        parts = ["shared", *self.supervised.tasks] + (["unused"] if "unused" in c["params"] else [])
        rows = []
        for part in parts:
            row: dict[str, Any] = {"task": part}
            for metric in ("params", "buffers", "flops", "macs", "other_ops"):
                bucket = c[metric]
                row[metric] = (
                    bucket["tasks"][part] if part in bucket["tasks"] else bucket.get(part, 0)
                )
            if part in self.supervised.tasks:
                alone = self.serve_alone(part)
                row["serve_alone_flops"] = alone["flops"]
                row["serve_alone_params"] = alone["params"]
            rows.append(row)
        return rows


def _stage_of(n: NodeCost) -> str:
    if n.stage is not None:
        return n.stage
    return {"head": "heads", None: "-"}.get(n.kind, n.kind)


def _sums(nodes: list[NodeCost]) -> dict[str, int]:
    return {
        "params": sum(n.params for n in nodes),
        "buffers": sum(n.buffers for n in nodes),
        "flops": sum(n.flops for n in nodes),
        "macs": sum(n.macs for n in nodes),
        "other_ops": sum(n.other_ops for n in nodes),
        "out_bytes": sum(n.out_bytes for n in nodes),
    }


def _node_row(n: NodeCost) -> dict[str, Any]:
    return {
        "node": n.name,
        "block": n.block,
        "kind": n.kind,
        "layer": n.layer,
        "tasks": "+".join(n.tasks),
        "shape": "x".join(map(str, n.shape)) if n.shape else "",
        **_sums([n]),
    }


def profile_spec(
    spec: Any, *, batch: int = 1, overrides: list[str] | tuple[str, ...] = ()
) -> Profile:
    """Compile `spec` with every module on the meta device and measure both graphs.

    Nothing is allocated for weights or activations, so the cost of profiling does not
    grow with the model's size.
    """
    import torch

    from mtlc.compiler import compile_spec
    from mtlc.spec import load_spec

    loaded = load_spec(spec, overrides)
    with torch.device("meta"):
        compiled = compile_spec(loaded)
    inputs = {loaded.input_name: (batch, *loaded.input_shape)}
    source = str(spec) if isinstance(spec, (str, Path)) else None
    return Profile(
        loaded.name,
        source,
        batch,
        count(compiled.supervised, inputs),
        count(compiled.model, inputs),
    )


# -- text -------------------------------------------------------------------------------


def si(n: float) -> str:
    """1234567 → '1.23 M': three significant figures, so columns stay readable."""
    for suffix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {suffix}"
    return f"{n:.3g}"


def nbytes(n: int) -> str:
    for suffix, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {suffix}"
    return f"{n} B"


_HEADERS = {
    "params": "params",
    "buffers": "buffers",
    "flops": "FLOPs (2/MAC)",
    "macs": "MACs",
    "other_ops": "other ops",
    "serve_alone_flops": "alone: FLOPs",
    "serve_alone_params": "alone: params",
    "out_bytes": "output bytes",
    "shared_flops": "shared FLOPs",
}


def table(profile: Profile, by: str):
    """The `--by` rows as a rich table, every column labelled with its unit."""
    from rich.table import Table

    rows = profile.rows(by)
    title = f"{profile.name}: cost by {by} (batch {profile.batch}, supervised graph)"
    t = Table(title=title, title_justify="left")
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    for col in columns:
        t.add_column(_HEADERS.get(col, col), justify="right" if col in _HEADERS else "left")
    for row in rows:
        t.add_row(*[_cell(col, row.get(col, "")) for col in columns])
    if by == "task":
        c = graph_costs(profile.supervised)
        t.add_section()
        t.add_row(
            "total",
            *[_cell(col, c[col]["total"]) if col in c else "" for col in columns[1:]],
            style="bold",
        )
    return t


def _cell(col: str, value: Any) -> str:
    if value == "":
        return ""
    if col == "out_bytes":
        return nbytes(value)
    if col in _HEADERS:
        return si(value)
    return str(value)


def summary_lines(profile: Profile) -> list[str]:
    """What the tables do not show: inference totals, memory, latency, the convention."""
    data = profile.to_json()
    inf, mem = data["inference"], data["memory"]
    shape = ", ".join(f"{k} {v}" for k, v in data["input"].items())
    lines = [
        f"input {shape}; supervised graph: auxiliary tasks and intermediate predictions included",
        f"inference (final model, outputs {', '.join(data['outputs'])}): "
        f"params {si(inf['params']['total'])} · FLOPs {si(inf['flops']['total'])} · "
        f"MACs {si(inf['macs']['total'])} · other ops {si(inf['other_ops']['total'])}",
        f"memory: peak activations {nbytes(mem['peak_activation_bytes'])} at {mem['peak_at']} "
        f"(inference forward, node granularity) · weights {nbytes(mem['weight_bytes'])}",
    ]
    if profile.latency is not None:
        lines.append(latency_line(profile.latency))
    lines.append(CONVENTION + ".")
    return lines


def ms(v: float) -> str:
    return f"{v:,.0f} ms" if v >= 100 else f"{v:.3g} ms"


def latency_line(lat: dict[str, Any]) -> str:
    def one(key: str) -> str:
        s = lat[key]
        return f"{ms(s['median'])} (min {ms(s['min'])}, max {ms(s['max'])}, IQR {ms(s['iqr'])})"

    return (
        f"latency on {lat['device']} of the {graph_words(lat)}, batch {lat['batch']}, "
        f"median of {lat['iterations']} after {lat['warmup']} warm-up: "
        f"forward {one('forward_ms')} · "
        f"forward+backward {one('forward_backward_ms')}"
    )


def graph_words(lat: dict[str, Any]) -> str:
    """Which graph a latency timed, in words ("fused graph (41 → 35 nodes)")."""
    g = lat.get("graph")
    if g is None:
        return "model"
    if g["fused"] and g["nodes"] == g["unfused_nodes"]:
        return f"graph mtlc train runs (nothing to fuse here: {g['nodes']} nodes)"
    if g["fused"]:
        return f"fused graph mtlc train runs ({g['unfused_nodes']} → {g['nodes']} nodes)"
    return f"unfused graph ({g['why']})"


def write_csv(path: str | Path, profiles: list[Profile], by: str) -> None:
    """The `--by` rows of every spec, one CSV, a `spec` column first; exact numbers."""
    rows = [{"spec": p.name, **row} for p in profiles for row in p.rows(by)]
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    make_folder(Path(path).parent)
    write_bytes(path, buffer.getvalue().encode("utf-8"))  # whole or not at all, no link


__all__ = [
    "CONVENTION",
    "Profile",
    "profile_spec",
    "si",
    "split",
    "summary_lines",
    "table",
    "write_csv",
]
