"""Which outputs an export serves, and the program that computes exactly those.

Only a spec's outputs can be exported: auxiliary tasks and intermediate predictions
(`seg:initial`, `depth:step2`) are supervision, trained but never served. The program
for a set of tasks is the supervised graph pruned to their final predictions with the
compiler's own pruning (`mtlc.compiler.prune`), the same cut `mtlc profile` measures
for its serve-alone figures; for every output together it is the final model.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import fx

from mtlc.compiler import Compiled
from mtlc.compiler.labels import task_sets
from mtlc.compiler.prune import pruned
from mtlc.errors import MtlcError, unknown


def choose_tasks(compiled: Compiled, requested: Sequence[str] = ()) -> list[str]:
    """The tasks to export, in the spec's order: `requested`, or every output when empty."""
    topo = compiled.topology
    outputs = list(topo.outputs)
    for task in requested:
        if task in outputs:
            continue
        if task in topo.tasks:
            raise MtlcError(
                f"task '{task}' is auxiliary in spec '{topo.spec.name}': it is trained, "
                f"never served (outputs: {', '.join(outputs)})"
            )
        raise MtlcError(unknown("task", task, outputs) + f" in spec '{topo.spec.name}'")
    return [t for t in outputs if not requested or t in requested]


def serving_graph(compiled: Compiled, tasks: Sequence[str]) -> fx.GraphModule:
    """The graph computing only `tasks`' predictions (it shares `compiled`'s modules).

    Its node labels get their own copy of `tasks`: the tasks of *this* graph that
    depend on the node (the supervised graph's labels also name auxiliary tasks).
    """
    gm = pruned(compiled.supervised, list(tasks))
    _, users = task_sets(gm.graph)
    for node in gm.graph.nodes:
        if "mtlc" in node.meta:
            node.meta["mtlc"] = {**node.meta["mtlc"], "tasks": users[node]}
    gm.meta["mtlc"] = {**gm.meta.get("mtlc", {}), "outputs": list(tasks)}
    return gm


__all__ = ["choose_tasks", "serving_graph"]
