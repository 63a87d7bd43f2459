"""Reading a layer as a spec writes it: `conv(64, 3, stride=2)`, `relu`, `{conv: {out: 64}}`.

Layers are written as call-like strings or one-key dicts, and a run of identical blocks
as `bottleneck(64) * 3`. Strings are parsed with `ast` and only literal arguments are
accepted, so a spec can never run code. This module only turns that text into
:class:`~mtlc.layers.vocab.Layer` values; what a layer is (its parameters, defaults and
shape rule) is the vocabulary's job, in :mod:`mtlc.layers.vocab`, which does not import
this module.
"""

from __future__ import annotations

import ast
from typing import Any

from mtlc.layers.arguments import LayerError
from mtlc.layers.vocab import Layer, make_layer


def parse_layer(item: Any) -> Layer:
    """Parse `conv(64, 3, stride=2)`, `relu`, or `{conv: {out: 64, k: 3}}` into a Layer."""
    if isinstance(item, dict):
        if len(item) != 1:
            raise LayerError(f"a layer dict has exactly one key, the layer name; got {list(item)}")
        ((name, args),) = item.items()
        if args is None:
            args = {}
        if isinstance(args, list):
            return make_layer(str(name), tuple(args))
        if not isinstance(args, dict):
            return make_layer(str(name), (args,))
        return make_layer(str(name), (), args)
    if not isinstance(item, str):
        raise LayerError(f"a layer is a string like 'conv(64, 3)' or a one-key dict, got {item!r}")
    layers = parse_layers(item)
    if len(layers) != 1:
        raise LayerError(f"layer {item!r}: a repeat (`* n`) is not allowed here")
    return layers[0]


# a run of identical blocks is `bottleneck(64) * 3`; more than this is surely a typo
MAX_REPEAT = 1000


def parse_layers(item: Any) -> list[Layer]:
    """Parse one layer item, or a repeat `bottleneck(256) * 3`, into its list of layers."""
    if not isinstance(item, str):
        return [parse_layer(item)]
    text = item.strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise LayerError(f"cannot parse layer {item!r}: expected name or name(args)") from None
    times = 1
    if isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Mult):
        count, tree = tree.right, tree.left
        if isinstance(count, (ast.Name, ast.Call)):  # `3 * bottleneck(64)` reads as well
            count, tree = tree, count
        times = count.value if isinstance(count, ast.Constant) else None
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_REPEAT:
            raise LayerError(
                f"layer {item!r}: a repeat is `layer * n` with an integer n in [1, {MAX_REPEAT}]"
            )
    return [_parse_call(item, tree)] * times


_YAML_BOOLS = {"true": True, "false": False}


def _literal(node: ast.expr) -> Any:
    """A literal argument; YAML's `true`/`false` are accepted beside Python's spelling."""
    if isinstance(node, ast.Name) and node.id in _YAML_BOOLS:
        return _YAML_BOOLS[node.id]
    return ast.literal_eval(node)


def _parse_call(item: str, tree: ast.expr) -> Layer:
    if isinstance(tree, ast.Name):
        return make_layer(tree.id)
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
        raise LayerError(f"cannot parse layer {item!r}: expected name or name(args)")
    try:
        args = tuple(_literal(a) for a in tree.args)
        kwargs = {kw.arg: _literal(kw.value) for kw in tree.keywords if kw.arg}
    except (ValueError, SyntaxError):
        raise LayerError(
            f"layer {item!r}: arguments must be literal numbers, strings or booleans"
        ) from None
    if any(kw.arg is None for kw in tree.keywords) or any(
        isinstance(a, ast.Starred) for a in tree.args
    ):
        raise LayerError(f"layer {item!r}: no * or ** arguments")
    return make_layer(tree.func.id, args, kwargs)


def rejoin_calls(items: list[Any]) -> list[Any]:
    """Join `['conv(64', 3, '1)']` back into `['conv(64, 3, 1)']`.

    `yaml.safe_load` splits the flow list `[conv(64, 3, 1), bn]` at every comma; specs
    read from files are mended with exact positions while parsing, and this mends
    dicts that a user loaded with PyYAML before handing them to mtlc.
    """
    out: list[Any] = []
    pending: list[str] = []
    for item in items:
        if pending:
            pending.append(str(item))
            text = ", ".join(pending)
            if text.count("(") <= text.count(")"):
                out.append(text)
                pending = []
        elif isinstance(item, str) and item.count("(") > item.count(")"):
            pending = [item]
        else:
            out.append(item)
    return out + pending
