"""Any fx-traceable model as a backbone: trace it, cut it at the stages' module names.

`encoder.backbone: {import: "pkg.module:factory", kwargs: {...}, weights: file}` builds
the user's model (only with `--allow-import pkg`), loads the weights into it, and traces
it with `torch.fx.symbolic_trace`. Each stage lists module names of that model in
forward order; a stage runs from where the previous one ended up to the last call of its
last listed module, so `s1: layer1` takes the stem too. Exactly one tensor may cross
each cut (the stage's output): a skip connection that jumps over a cut has no place in
a stage-by-stage network and is refused. The compiler then inlines each piece's nodes
as the stage's own (one copy per task where the stage has columns), so every sharing
point applies between any model's blocks, and the modules keep the model's names under
the copy's prefix (`encoder.s2.seg.layer2.0.conv1.weight`). A module that the forward
calls in two stages is copied into each (its weights are no longer tied across them).

This module imports torch; the topology imports it only for specs with `import:`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from mtlc.errors import unknown
from mtlc.imports import ImportRefused, allowed_imports, resolve_callable
from mtlc.spec.schema import Spec


@dataclass
class TracedPiece:
    """The nodes of one stage in the traced graph, with the values entering and leaving."""

    nodes: list[fx.Node]
    input: fx.Node
    output: fx.Node
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    modules: list[str] = field(default_factory=list)  # module targets called, in order


@dataclass
class TracedBackbone:
    module: fx.GraphModule  # the trace; the compiler copies its modules and nodes
    pieces: dict[str, TracedPiece]
    original: nn.Module  # what the factory built (weights loaded)


def _err(spec: Spec, path: tuple, message: str):
    from mtlc.spec.load import spec_error

    return spec_error(spec, path, message)


def _first_line(exc: BaseException) -> str:
    while exc.__cause__ is not None:  # fx's ShapeProp wraps the op's own error
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _build(spec: Spec) -> nn.Module:
    bb = spec.encoder.backbone
    where = ("encoder", "backbone", "import")
    try:
        factory = resolve_callable(bb.import_, allowed_imports(), "factory")
    except ImportRefused as exc:
        raise _err(spec, where, str(exc)) from None
    try:
        model = factory(**bb.kwargs)
    except Exception as exc:  # the user's factory may fail in any way
        raise _err(spec, where, f"{bb.import_} raised {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise _err(spec, where, f"{bb.import_} returned {type(model).__name__}, not an nn.Module")
    if bb.weights is not None:
        _load(spec, model)
    return model.eval()


def _load(spec: Spec, model: nn.Module) -> None:
    from mtlc.compiler.weights import read_state_dict

    bb = spec.encoder.backbone
    where = ("encoder", "backbone", "weights")
    try:
        state = read_state_dict(bb.weights)
    except ValueError as exc:
        raise _err(spec, where, str(exc)) from None
    ours = model.state_dict()
    missing = [k for k in ours if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in ours]
    wrong = [k for k in ours if k in state and state[k].shape != ours[k].shape]
    if missing or extra or wrong:
        from mtlc.compiler.weights import few

        what = "; ".join(
            text
            for text in (
                f"missing keys {few(missing)}" if missing else "",
                f"unexpected {few(extra)}" if extra else "",
                f"shapes differ: {few(wrong)}" if wrong else "",
            )
            if text
        )
        raise _err(spec, where, f"{bb.weights} does not fit {bb.import_} ({what})")
    with torch.no_grad():
        for k, v in ours.items():
            if k in state:
                v.copy_(state[k])


class _Shapes(fx.Interpreter):
    """Runs the trace once, noting the shape of every tensor a node makes."""

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            n.meta["mtlc_shape"] = tuple(out.shape)
        return out


def _calls(nodes: list[fx.Node], name: str) -> list[int]:
    """Positions of the nodes that run inside module `name`'s forward (fx's module stack)."""

    def inside(n: fx.Node) -> bool:
        stack = n.meta.get("nn_module_stack") or {}
        if any(k == name or k.split("@")[0] == name for k in stack):
            return True
        target = str(n.target)
        return n.op == "call_module" and (target == name or target.startswith(name + "."))

    return [i for i, n in enumerate(nodes) if inside(n)]


def trace_backbone(spec: Spec) -> TracedBackbone:
    """Build, trace and cut the spec's imported backbone; located SpecErrors otherwise."""
    from mtlc.topology.backbone import stage_items

    bb = spec.encoder.backbone
    model = _build(spec)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, … on dynamic control flow
        raise _err(
            spec,
            ("encoder", "backbone", "import"),
            f"torch.fx cannot trace {bb.import_} ({_first_line(exc)}); "
            "a backbone needs a forward without data-dependent control flow",
        ) from None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise _err(
            spec,
            ("encoder", "backbone", "import"),
            f"{bb.import_}'s forward takes {len(placeholders)} inputs; a backbone takes one tensor",
        )
    (inp,) = placeholders
    try:
        with torch.no_grad():
            _Shapes(gm).run(torch.zeros(1, *spec.input_shape))
    except Exception as exc:
        raise _err(
            spec,
            ("input", spec.input_name),
            f"{bb.import_} fails on an input of {list(spec.input_shape)} ({_first_line(exc)})",
        ) from None
    body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    names = dict(model.named_modules())  # the trace keeps only the modules it calls
    pieces: dict[str, TracedPiece] = {}
    end, entering = -1, inp
    for stage in spec.encoder.stages:
        items = stage_items(spec, stage)
        single = isinstance(spec.encoder.stages[stage], str)
        last = end
        for i, item in enumerate(items):
            path = ("encoder", "stages", stage) + (() if single else (i,))
            if not isinstance(item, str) or item not in names or not item:
                shown = [n for n in names if n]
                raise _err(spec, path, unknown(f"module of {bb.import_}", str(item), shown))
            calls = _calls(body, item)
            if not calls:
                raise _err(spec, path, f"module '{item}' is not called by the traced forward")
            if calls[0] <= end:
                raise _err(
                    spec,
                    path,
                    f"module '{item}' runs before the previous stage ends; stages must follow the forward's order",
                )
            last = max(last, calls[-1])
        nodes = body[end + 1 : last + 1]
        out = body[last]
        later = set(body[last + 1 :])
        crossing = [n for n in [inp, *body[: last + 1]] if any(u in later for u in n.users)]
        if later and crossing != [out]:
            extra = [n.name for n in crossing if n is not out]
            raise _err(
                spec,
                ("encoder", "stages", stage),
                f"the cut after stage '{stage}' is crossed by {len(crossing)} values "
                f"({', '.join(extra[:4])} besides the stage's output); cut where one tensor flows",
            )
        if "mtlc_shape" not in out.meta:
            raise _err(
                spec, ("encoder", "stages", stage), f"stage '{stage}' does not end in one tensor"
            )
        pieces[stage] = TracedPiece(
            nodes,
            entering,
            out,
            entering.meta["mtlc_shape"][1:],
            out.meta["mtlc_shape"][1:],
            [str(n.target) for n in nodes if n.op == "call_module"],
        )
        end, entering = last, out
    return TracedBackbone(gm, pieces, model)
