"""A compiled graph cut down to some of its outputs: what serving those tasks runs.

One function for everyone who needs "the graph pruned to task t": the profile's
serve-alone figures and `mtlc export --task t` both read it, so the program a user
exports is exactly the one whose cost the profile reported.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import fx

from mtlc.compiler.labels import output_keys
from mtlc.compiler.reload import new_graph


def ancestors(gm: fx.GraphModule, key: str) -> set[str]:
    """Names of the nodes output `key` depends on: the graph pruned to that output."""
    target = output_keys(gm.graph)[key]
    seen: set[fx.Node] = set()
    stack = [target]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return {n.name for n in seen}


def pruned(gm: fx.GraphModule, keys: Iterable[str]) -> fx.GraphModule:
    """A GraphModule computing only the outputs `keys` (what serving them alone runs).

    The copy holds the *same* module objects as `gm` (no weights are copied); modules
    no kept node calls are dropped from it.
    """
    graph = new_graph()
    remap: dict[fx.Node, fx.Node] = {}
    outputs = output_keys(gm.graph)
    graph.graph_copy(gm.graph, remap)
    graph.output({k: remap[outputs[k]] for k in keys})
    out = fx.GraphModule(gm, graph, class_name=type(gm).__name__ + "Pruned")
    out.graph.eliminate_dead_code()
    out.delete_all_unused_submodules()
    out.recompile()
    out.meta.update(gm.meta)
    return out


__all__ = ["ancestors", "pruned"]
