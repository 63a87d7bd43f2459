"""What torch.fx re-traces when a whole pickled mtlc model is loaded.

``torch.save(model)`` pickles a GraphModule as its generated Python code, and
``torch.load`` rebuilds the graph by tracing that code again (torch.fx's
``_deserialize_graph_module``), every submodule kept as a leaf. The functions mtlc's
graphs call (``call_function`` nodes: an MMoE gate's weighted sum, a fused column op)
would be traced *through* there, and some cannot be: they loop over or read the shape
of their inputs (``Proxy object cannot be iterated``). A graph made by :func:`new_graph`
names :class:`ReloadTracer` as its tracer, which keeps every mtlc function a
``call_function`` node, as in the graph that was saved: the loaded model has the same
nodes, arguments and outputs. torch.fx keeps no node metadata through a pickle, so mtlc's
labels (``node.meta["mtlc"]``: block, owner, tasks) and the class name are not in the
loaded copy; ``build``, ``profile`` and ``viz`` compile from the spec and never read one.
mtlc's own checkpoints are state dicts and never need this.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn


def _mtlc_function(value: Any) -> bool:
    module = getattr(value, "__module__", None) or ""
    return callable(value) and not isinstance(value, type) and module.startswith("mtlc.")


class ReloadTracer(fx.Tracer):
    """A tracer that keeps the functions of mtlc modules as leaves (``call_function``).

    fx's ``autowrap_functions`` must be known before tracing; the functions a generated
    ``forward`` calls are its globals, so they are read from there at ``trace`` time.
    """

    def trace(self, root: nn.Module | Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        fn = root.forward if isinstance(root, nn.Module) else root
        found = {id(v) for v in getattr(fn, "__globals__", {}).values() if _mtlc_function(v)}
        self._autowrap_function_ids.update(found)
        return super().trace(root, concrete_args)


def new_graph() -> fx.Graph:
    """An empty fx graph whose GraphModule survives ``torch.save`` / ``torch.load``."""
    return fx.Graph(tracer_cls=ReloadTracer)
