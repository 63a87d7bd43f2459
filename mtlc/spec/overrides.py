"""`--set key.path=value` overrides, applied to the raw spec before validation.

Values are read as YAML scalars or flow collections with the spec file's own reader
(safe, bounded against alias bombs, layer calls rejoined), so `--set
'balancer={type: mgda}'` replaces a whole section. Applying overrides to the raw
data means they are validated exactly like the file, and an unknown path is caught
by the same did-you-mean machinery.
"""

from __future__ import annotations

from typing import Any

from mtlc.errors import SpecError
from mtlc.spec.yaml_source import dotted, parse_yaml, set_location


def parse_override(text: str) -> tuple[tuple[str | int, ...], Any]:
    """Split `a.b[0].c=value` (or `a.b.0.c=value`) into a key path and a parsed value."""
    where = set_location(text)
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError("expected KEY.PATH=VALUE", "", where)
    parts: list[str | int] = []
    for piece in key.strip().replace("[", ".").replace("]", "").split("."):
        if not piece:
            raise SpecError(f"empty segment in key path '{key}'", "", where)
        parts.append(int(piece) if piece.isdigit() else piece)
    if raw.strip():
        try:
            value, _ = parse_yaml(raw, where.file)
        except SpecError as exc:  # one line: `--set a=[: YAML syntax error: … (column 2)`
            col = f" (column {exc.location.col})" if exc.location.col else ""
            raise SpecError(f"{exc.message}{col}", key.strip(), where) from None
    else:
        value = None
    return tuple(parts), value


def _step(node: Any, part: str | int, path: tuple, text: str, *, last: bool) -> None:
    """Check that `node` (the value at `path`) can hold `part`; raise a located error if not.

    A list takes an existing index, or the next one for the last part (to append); a
    mapping takes any key; a scalar takes nothing, so `--set name.x=1` is an error
    rather than silently turning the name into a mapping.
    """
    if isinstance(node, list):
        limit = len(node) + (1 if last else 0)
        if not isinstance(part, int) or part >= limit:
            raise SpecError(
                f"no item {part} in a list of {len(node)}",
                dotted(path + (part,)),
                set_location(text),
            )
    elif not isinstance(node, dict):
        raise SpecError(
            f"cannot set '{part}' inside {node!r}: it is not a mapping or a list",
            dotted(path),
            set_location(text),
        )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[tuple, str]:
    """Apply overrides in place; return {path: override text} for locating errors."""
    applied: dict[tuple, str] = {}
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            _step(node, part, path[:i], text, last=False)
            if isinstance(node, dict) and node.get(part) is None:  # absent or `key: ~`
                node[part] = [] if isinstance(path[i + 1], int) else {}
            node = node[part]
        last = path[-1]
        _step(node, last, path[:-1], text, last=True)
        if isinstance(node, list) and last == len(node):
            node.append(value)
        else:
            node[last] = value
        applied[path] = text
    return applied
