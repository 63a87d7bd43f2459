"""`--set key.path=value` overrides, applied to the raw spec before validation.

Values are read as YAML scalars or flow collections (safely), so `--set
'balancer={type: mgda}'` replaces a whole section. Applying overrides to the raw
data means they are validated exactly like the file, and an unknown path is caught
by the same did-you-mean machinery.
"""

from __future__ import annotations

from typing import Any

import yaml

from mtlc.errors import Location, SpecError


def parse_override(text: str) -> tuple[tuple[str | int, ...], Any]:
    """Split `a.b[0].c=value` (or `a.b.0.c=value`) into a key path and a parsed value."""
    where = Location(f"--set {text}")
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError("expected KEY.PATH=VALUE", "", where)
    parts: list[str | int] = []
    for piece in key.strip().replace("[", ".").replace("]", "").split("."):
        if not piece:
            raise SpecError(f"empty segment in key path '{key}'", "", where)
        parts.append(int(piece) if piece.isdigit() else piece)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise SpecError(f"cannot read value {raw!r}: {exc}", key, where) from None
    return tuple(parts), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[tuple, str]:
    """Apply overrides in place; return {path: override text} for locating errors."""
    applied: dict[tuple, str] = {}
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise SpecError(
                        f"no item {part} in a list of {len(node)}",
                        ".".join(map(str, path[: i + 1])),
                        Location(f"--set {text}"),
                    )
                node = node[part]
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        last = path[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last > len(node):
                raise SpecError(
                    f"no item {last} in a list of {len(node)}",
                    ".".join(map(str, path)),
                    Location(f"--set {text}"),
                )
            if last == len(node):
                node.append(value)
            else:
                node[last] = value
        else:
            node[last] = value
        applied[path] = text
    return applied
