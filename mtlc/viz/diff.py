"""What changed between two specs, at three levels: keys, topology, cost.

- Spec level: the resolved specs (defaults filled in, a stage without sharing shown as
  `hard`, layers written canonically so `conv(64, 3)` equals `{conv: {out: 64, k: 3}}`)
  compared key by key, reported as dotted paths. Layer lists are aligned like lines of
  text, so inserting one layer reads as one addition, not as every later layer changed.
- Topology level: nodes (blocks, units, predictors, heads, outputs) matched by their
  stable ids; a node present on both sides is *changed* when its layers, shapes, type,
  options, parameter count or the tasks it serves differ. Serving a task that only one
  spec has is not a change of its own (the input is not "changed" because B drops a
  task): that task's nodes are added or removed. Links (edges) are compared too.
- Cost: parameters and FLOPs of the supervised graph (what a training forward
  computes; batch 1, 2 FLOPs per multiply-add) in total and serving each task alone,
  absolute and relative, from the same roll-up `mtlc viz` and `mtlc profile` use.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtlc.layers.parse import parse_layers, rejoin_calls
from mtlc.spec import Spec
from mtlc.topology import Topology, build_topology
from mtlc.topology.backbone import backbone_stages

if TYPE_CHECKING:
    from mtlc.viz.costs import Costs

_SKIPPED_KINDS = ("loss",)  # a loss node only repeats its output's loss name
# A block's `sharing` names its stage's type: the unit added or removed already says so.
_SKIPPED_FIELDS = ("sharing",)


@dataclass
class Change:
    path: str
    change: str  # added | removed | changed
    a: Any = None
    b: Any = None


@dataclass
class NodeChange:
    node: str
    kind: str
    fields: dict[str, tuple[Any, Any]]


@dataclass
class Comparison:
    """The differences between spec A and spec B, and how to show them."""

    a_name: str
    b_name: str
    spec: list[Change]
    added: list[str]
    removed: list[str]
    changed: list[NodeChange]
    links_added: list[tuple[str, str]]
    links_removed: list[tuple[str, str]]
    topo_a: Topology
    topo_b: Topology
    cost_a: Costs
    cost_b: Costs

    @property
    def identical(self) -> bool:
        return not (
            self.spec
            or self.added
            or self.removed
            or self.changed
            or self.links_added
            or self.links_removed
        )

    # -- cost -----------------------------------------------------------------------
    def cost_table(self) -> dict[str, Any]:
        """Per metric `{"total", "tasks": {t: …}}` (params also `shared`), each a `_delta`."""
        ca, cb = self.cost_a, self.cost_b
        out: dict[str, Any] = {}
        for metric in ("params", "flops"):
            tasks = {}
            per_a, per_b = getattr(ca, f"task_{metric}"), getattr(cb, f"task_{metric}")
            for t in list(per_a) + [t for t in per_b if t not in per_a]:
                tasks[t] = _delta(per_a.get(t), per_b.get(t))
            out[metric] = {
                "total": _delta(getattr(ca, f"total_{metric}"), getattr(cb, f"total_{metric}")),
                "tasks": tasks,
            }
        out["params"]["shared"] = _delta(ca.shared_params, cb.shared_params)
        return out

    # -- output ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a_name,
            "b": self.b_name,
            "identical": self.identical,
            "spec": [
                {"path": c.path, "change": c.change}
                | ({"a": c.a} if c.change != "added" else {})
                | ({"b": c.b} if c.change != "removed" else {})
                for c in self.spec
            ],
            "topology": {
                "added": [{"id": n, "kind": self._kind(n)} for n in self.added],
                "removed": [{"id": n, "kind": self._kind(n)} for n in self.removed],
                "changed": [
                    {
                        "id": c.node,
                        "kind": c.kind,
                        "fields": {k: {"a": a, "b": b} for k, (a, b) in c.fields.items()},
                    }
                    for c in self.changed
                ],
                "links_added": [list(e) for e in self.links_added],
                "links_removed": [list(e) for e in self.links_removed],
            },
            "cost": self.cost_table(),
            "cost_convention": "supervised graph, batch 1; FLOPs = 2 per multiply-add "
            "(torch.utils.flop_counter); per task = serving that task alone",
        }

    def _kind(self, node: str) -> str:
        g = self.topo_b.graph if node in self.topo_b.graph else self.topo_a.graph
        d = g.nodes[node]
        return d.get("type") or d["kind"]

    def text(self) -> str:
        lines = [f"--- {self.a_name}", f"+++ {self.b_name}"]
        if self.identical:
            return "\n".join([*lines, "no differences", ""])
        lines.append(f"spec: {len(self.spec)} change{'s' if len(self.spec) != 1 else ''}")
        for c in self.spec:
            if c.change == "added":
                lines.append(f"  + {c.path}: {_show(c.b)}")
            elif c.change == "removed":
                lines.append(f"  - {c.path}: {_show(c.a)}")
            else:
                lines.append(f"  ~ {c.path}: {_show(c.a)} → {_show(c.b)}")
        n = len(self.added) + len(self.removed) + len(self.changed)
        lines.append(f"topology: {n} node change{'s' if n != 1 else ''}")
        pa, pb = self.cost_a.params, self.cost_b.params
        for sign, nodes, params in (("+", self.added, pb), ("-", self.removed, pa)):
            for node in nodes:
                cost = f", {params[node]:,} params" if node in params else ""
                lines.append(f"  {sign} {node} ({self._kind(node)}{cost})")
        for c in self.changed:
            what = "; ".join(f"{k} {_show(a)} → {_show(b)}" for k, (a, b) in c.fields.items())
            cost = ""
            if pa.get(c.node, 0) != pb.get(c.node, 0) and "params" not in c.fields:
                cost = f" [{pa.get(c.node, 0):,} → {pb.get(c.node, 0):,} params]"
            lines.append(f"  ~ {c.node}: {what}{cost}")
        for sign, links in (("+", self.links_added), ("-", self.links_removed)):
            line = f"  {sign} links"
            for i, (a, b) in enumerate(links):
                item = f" {a} → {b}" + ("," if i < len(links) - 1 else "")
                if len(line) + len(item) > 100:
                    lines.append(line)
                    line = "     "
                line += item
            if links:
                lines.append(line)
        table = self.cost_table()
        lines.append("cost (supervised graph, batch 1; FLOPs = 2 per multiply-add):")
        rows = [("total", table["params"]["total"], table["flops"]["total"])]
        rows.append(("shared", table["params"]["shared"], None))
        for t, d in table["params"]["tasks"].items():
            rows.append((f"{t} alone", d, table["flops"]["tasks"][t]))
        width = max(len(r[0]) for r in rows)
        lines.append(f"  {'':{width}}  {'params':<38}  FLOPs")
        for name, p, f in rows:
            lines.append(f"  {name:<{width}}  {_delta_text(p):<38}  {_delta_text(f) if f else ''}")
        return "\n".join(lines).rstrip() + "\n"

    def dot(self) -> list[str]:
        """The union of both topologies (added green, removed red, changed amber), as
        layouts from most to least constrained for `render.write`."""
        from mtlc.viz.topology_view import Notes, topology_sources, union_topology

        status = dict.fromkeys(self.added, "added") | dict.fromkeys(self.removed, "removed")
        status |= {c.node: "changed" for c in self.changed}
        edges = dict.fromkeys(self.links_added, "added") | dict.fromkeys(
            self.links_removed, "removed"
        )
        params = dict(self.cost_a.params) | dict(self.cost_b.params)
        ta, tb = self.topo_a.tasks, self.topo_b.tasks
        tasks = {t: "added" for t in tb if t not in ta} | {t: "removed" for t in ta if t not in tb}
        notes = Notes(
            params=params,
            status=status,
            edge_status=edges,
            task_status=tasks,
            caption=f"{self.a_name} → {self.b_name}",
        )
        return topology_sources(union_topology(self.topo_a, self.topo_b), notes)


def _delta(a: int | None, b: int | None) -> dict[str, Any]:
    """`{a, b, delta, relative}`; a task on one side only has just `a` and `b`."""
    out: dict[str, Any] = {"a": a, "b": b}
    if a is not None and b is not None:
        out["delta"] = b - a
        out["relative"] = (b - a) / a if a else None
    return out


def _delta_text(d: dict[str, Any]) -> str:
    a, b = d["a"], d["b"]
    if a is None:
        return f"(new) {b:,}"
    if b is None:
        return f"{a:,} (gone)"
    if a == b:
        return f"{a:,} (same)"
    rel = f", {d['relative'] * 100:+.1f}%" if d["relative"] is not None else ""
    return f"{a:,} → {b:,} ({d['delta']:+,}{rel})"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    text = json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= 100 else text[:97] + "..."


# -- spec level -------------------------------------------------------------------------


def resolved(spec: Spec) -> dict[str, Any]:
    """The spec as plain data with everything implicit made explicit, for comparing."""
    data = spec.model_dump(mode="json")
    data["encoder"]["sharing"] = {
        s: spec.sharing_of(s).model_dump(mode="json") for s in spec.encoder.stages
    }
    cut = backbone_stages(spec)
    for s, items in spec.encoder.stages.items():
        data["encoder"]["stages"][s] = (
            [str(layer) for layer in cut[s]] if cut is not None else _layers(items)
        )
    for t, task in spec.tasks.items():
        data["tasks"][t]["head"] = _layers(task.head)
    return data


def _layers(items: list) -> list[str]:
    return [str(layer) for item in rejoin_calls(list(items)) for layer in parse_layers(item)]


def spec_changes(a: Any, b: Any, path: str = "") -> list[Change]:
    """Dotted-path differences from `a` to `b` (plain JSON-like data)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in b:
                out.append(Change(sub, "removed", a=a[key]))
            elif key not in a:
                out.append(Change(sub, "added", b=b[key]))
            else:
                out += spec_changes(a[key], b[key], sub)
        return out
    if isinstance(a, list) and isinstance(b, list) and _flat(a) and _flat(b):
        return _list_changes(a, b, path)
    return [] if a == b else [Change(path, "changed", a=a, b=b)]


def _flat(items: list) -> bool:
    return all(not isinstance(x, (dict, list)) for x in items)


def _list_changes(a: list, b: list, path: str) -> list[Change]:
    """Align two lists like lines of text: index paths are a's for removals, b's otherwise."""
    out = []
    matcher = difflib.SequenceMatcher(a=[json.dumps(x) for x in a], b=[json.dumps(x) for x in b])
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        if op == "replace" and i2 - i1 == j2 - j1:
            out += [
                Change(f"{path}.{j1 + k}", "changed", a[i1 + k], b[j1 + k]) for k in range(i2 - i1)
            ]
            continue
        out += [Change(f"{path}.{i}", "removed", a=a[i]) for i in range(i1, i2)]
        out += [Change(f"{path}.{j}", "added", b=b[j]) for j in range(j1, j2)]
    return out


# -- topology level -----------------------------------------------------------------------


def _node_view(attrs: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """A node's attributes as plain comparable data (layers as text, tuples as lists),
    the tasks it serves narrowed to `tasks` (those both specs have)."""
    out = {}
    for k, v in attrs.items():
        if k in _SKIPPED_FIELDS:
            continue
        if k == "layers":
            v = [str(layer) for layer in v]
        elif k == "tasks":
            v = [t for t in v if t in tasks]
        out[k] = json.loads(json.dumps(v, default=str))
    return out


def topology_changes(
    a: Topology, b: Topology
) -> tuple[list[str], list[str], list[NodeChange], list[tuple[str, str]], list[tuple[str, str]]]:
    ga, gb = a.graph, b.graph
    both = [t for t in a.tasks if t in b.tasks]
    keep_a = [n for n, d in ga.nodes(data=True) if d["kind"] not in _SKIPPED_KINDS]
    keep_b = [n for n, d in gb.nodes(data=True) if d["kind"] not in _SKIPPED_KINDS]
    added = [n for n in keep_b if n not in ga]
    removed = [n for n in keep_a if n not in gb]
    changed = []
    for n in keep_b:
        if n not in ga:
            continue
        va, vb = _node_view(ga.nodes[n], both), _node_view(gb.nodes[n], both)
        fields = {k: (va.get(k), vb.get(k)) for k in list(va) + [k for k in vb if k not in va]}
        fields = {k: ab for k, ab in fields.items() if ab[0] != ab[1]}
        if fields:
            changed.append(NodeChange(n, gb.nodes[n].get("type") or gb.nodes[n]["kind"], fields))

    def links(g) -> list[tuple[str, str]]:
        return [(u, v) for u, v in g.edges if g.nodes[v]["kind"] not in _SKIPPED_KINDS]

    la, lb = links(ga), links(gb)
    links_added = [e for e in lb if e not in ga.edges]
    links_removed = [e for e in la if e not in gb.edges]
    return added, removed, changed, links_added, links_removed


def compare(a: Spec, b: Spec, a_name: str = "a", b_name: str = "b") -> Comparison:
    """Everything `mtlc diff` reports about going from spec `a` to spec `b`."""
    from mtlc.viz.costs import compile_meta, measure

    topo_a, topo_b = build_topology(a), build_topology(b)
    added, removed, changed, la, lr = topology_changes(topo_a, topo_b)
    cost_a, cost_b = measure(compile_meta(a)), measure(compile_meta(b))
    # a unit that grows with a task added elsewhere has the same fields but more weights
    seen = {c.node for c in changed}
    for n in topo_b.graph:
        pa, pb = cost_a.params.get(n), cost_b.params.get(n)
        if n in topo_a.graph and n not in seen and pa is not None and pb is not None and pa != pb:
            kind = topo_b.graph.nodes[n].get("type") or topo_b.graph.nodes[n]["kind"]
            changed.append(NodeChange(n, kind, {"params": (pa, pb)}))
    return Comparison(
        a_name=a_name,
        b_name=b_name,
        spec=spec_changes(resolved(a), resolved(b)),
        added=added,
        removed=removed,
        changed=changed,
        links_added=la,
        links_removed=lr,
        topo_a=topo_a,
        topo_b=topo_b,
        cost_a=cost_a,
        cost_b=cost_b,
    )
