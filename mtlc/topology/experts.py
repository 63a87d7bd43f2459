"""The topology of a mixture-of-experts stage (mtlc.sharing.mmoe and the points built on it).

A mixture stage (mtlc.sharing.mmoe's `MixturePoint.build`) becomes expert blocks and gate units:

- shared experts `s/expert0 …` (owner None) read the input every task shares;
- each task's own experts `s/<task>_expert0 …` (owner the task) read that task's input;
- one gate unit per task `s/<type>/<task>` (role "gate", owner the task) mixes the shared
  experts and the task's own; from there on each task has a feature of its own, so the
  stage's output is per task (a later hard or attention stage is refused, as after any
  per-task stage);
- a chaining type (PLE) whose next stage has the same type also gets a shared gate
  `s/ple/shared` (role "shared", owner None) over every expert of the stage; the next
  level's shared experts read it, each task's own experts and gate read that task's gate.

A gate unit carries `reads` (the node whose value the gate looks at), `experts` (the
expert blocks it mixes, in order) and `in_shape` (the shape it reads). Experts are the
stage's layers `experts` times, or one layer list each; all must output one shape,
since a gate sums them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtlc.layers.vocab import Shape

if TYPE_CHECKING:
    from mtlc.topology.stage import StageBuild


def expert_stage(b: StageBuild) -> Shape:
    """Add stage `b.stage`'s experts and gates; return its output shape.

    The options are a `mtlc.sharing.mmoe.MixtureOfExperts`; `b.carry` is the previous
    level's shared gate (PLE), and this level leaves its own there when the next stage
    has the same type.
    """
    spec, g, stage, items, shape = b.spec, b.g, b.stage, b.items, b.shape
    stream, feature, origin, link = b.stream, b.feature, b.origin, b.link
    sharing: Any = b.sharing
    where = b.where
    tasks = list(spec.tasks)
    kind = sharing.type
    chain = b.carry
    last = b.next_type != kind
    if len(tasks) < 2:
        raise b.error(
            where,
            f"'{kind}' gates experts between tasks, but the spec has one task ('{tasks[0]}'); "
            "use hard sharing",
        )
    if chain is None and len(set(feature.values())) > 1:
        raise b.merge_error(tasks, f"{kind} experts read one shared input")
    shared_src = chain or stream[tasks[0]]
    shared, own = sharing.expert_sets()
    keys = sharing.expert_keys

    def expert_layers(value: Any, key: str) -> list[tuple[Any, tuple]]:
        """(layer items, location) of each expert of one set."""
        if isinstance(value, int):
            return [(items, ("encoder", "stages", stage))] * value
        if items and not hasattr(items, "out_shape"):
            raise b.error(
                ("encoder", "stages", stage),
                f"stage '{stage}' lists layers and its sharing lists its experts' layers "
                f"under '{key}'; give the stage [] or give '{key}' a count",
            )
        if hasattr(items, "out_shape"):
            raise b.error(where + (key,), "a traced backbone's stage takes a count of experts")
        return [(layers, where + (key, i)) for i, layers in enumerate(value)]

    sets = {None: expert_layers(shared, keys[0])}
    for t in tasks:
        sets[t] = expert_layers(own, keys[1]) if own else []
    out: Shape | None = None
    first: tuple | None = None
    ids: dict[str | None, list[str]] = {}
    for owner, experts in sets.items():
        ids[owner] = []
        for i, (layer_items, path) in enumerate(experts):
            layers, shape_out = b.layers(layer_items, path, shape)
            if out is None:
                out, first = shape_out, path
            elif tuple(shape_out) != tuple(out):
                raise b.error(
                    path,
                    f"this expert outputs {list(shape_out)}, but the first expert ({_where(first)}) "
                    f"outputs {list(out)}: a gate sums experts of one shape",
                )
            block = f"{stage}/expert{i}" if owner is None else f"{stage}/{owner}_expert{i}"
            _fresh(b, block)
            members = tuple(tasks) if owner is None else (owner,)
            b.add_block(block, owner, members, layers, shape, shape_out)
            link(shared_src if owner is None else stream[owner], block, members)
            ids[owner].append(block)
    assert out is not None
    options = sharing.model_dump(exclude={"type", "groups"})
    gates: dict[str, tuple[str | None, list[str]]] = {t: (t, ids[None] + ids[t]) for t in tasks}
    if sharing.chains and not last:
        gates["shared"] = (None, [e for experts in ids.values() for e in experts])
    for name, (owner, experts) in gates.items():
        if sharing.top_k is not None and sharing.top_k > len(experts):
            whose = "the shared gate" if owner is None else f"task '{name}''s gate"
            raise b.error(
                where + ("top_k",),
                f"top_k is {sharing.top_k}, but {whose} mixes {len(experts)} expert(s)",
            )
        unit = f"{stage}/{kind}/{name}"
        if owner is None and name in tasks:
            raise b.error(
                ("tasks", name),
                f"task name '{name}' would share its node id with the shared gate '{unit}'; "
                "rename the task",
                key=True,
            )
        _fresh(b, unit)
        members = (owner,) if owner else tuple(tasks)
        reads = stream[owner] if owner else shared_src
        g.add_node(
            unit,
            kind="unit",
            type=kind,
            role="gate" if owner else "shared",
            stage=stage,
            owner=owner,
            tasks=members,
            shape=out,
            in_shape=shape,
            options=options,
            reads=reads,
            experts=list(experts),
        )
        link(reads, unit, members)
        for e in experts:  # an expert's edge carries the tasks whose values it holds
            link(e, unit, members if owner else g.nodes[e]["tasks"])
    for t in tasks:
        stream[t] = feature[t] = f"{stage}/{kind}/{t}"
        origin.setdefault(t, stage)
    b.carry = f"{stage}/{kind}/shared" if "shared" in gates else None
    return out


def _where(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _fresh(b: StageBuild, node: str) -> None:
    """Refuse a node id some task's node already took (a task called `expert0_expert0`…)."""
    if node in b.g:
        raise b.error(
            ("encoder", "sharing", node.split("/")[0]),
            f"the node id '{node}' is taken by another node; rename the task",
        )
