"""Safe YAML reading that remembers where every key and value came from.

PyYAML's safe constructor turns a document into plain dicts and lists but forgets
positions; validation errors must point at `file:line:col`, so we compose the node
tree ourselves and record the mark of each path on the way down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtlc.errors import Location, SpecError

Path_ = tuple[str | int, ...]


class Positions:
    """Maps a key path to the position of its value and of its key."""

    def __init__(self, file: str):
        self.file = file
        self.values: dict[Path_, tuple[int, int]] = {}
        self.keys: dict[Path_, tuple[int, int]] = {}

    def locate(self, path: Path_, *, key: bool = False) -> Location:
        """The position of `path` (its key when `key`), or of its nearest recorded parent."""
        path = tuple(path)
        while True:
            table = self.keys if key and path in self.keys else self.values
            if path in table:
                line, col = table[path]
                return Location(self.file, line, col)
            if not path:
                return Location(self.file)
            path = path[:-1]


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


_PLAIN_TAGS = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


def _build(node: yaml.Node, path: Path_, pos: Positions, loader: yaml.SafeLoader) -> Any:
    pos.values[path] = _mark(node)
    plain = _PLAIN_TAGS.get(type(node))
    if plain is not None and node.tag != plain:
        raise SpecError(
            f"YAML tag {node.tag!r} is not allowed: a spec is plain data",
            dotted(path),
            Location(pos.file, *_mark(node)),
        )
    if isinstance(node, yaml.MappingNode):
        # keys written in this mapping; `<<: *anchor` merges may be overridden by them
        own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        written: set[Any] = set()
        for key_node, value_node in node.value:
            key = _build(key_node, path + ("<key>",), pos, loader)
            if not isinstance(key, (str, int, float, bool)):
                raise SpecError(
                    "a key must be a plain name",
                    dotted(path),
                    Location(pos.file, *_mark(key_node)),
                )
            if key in written and id(key_node) in own:
                raise SpecError(
                    f"duplicate key '{key}'",
                    dotted(path + (key,)),
                    Location(pos.file, *_mark(key_node)),
                )
            if id(key_node) in own:
                written.add(key)
            pos.keys[path + (key,)] = _mark(key_node)
            out[key] = _build(value_node, path + (key,), pos, loader)
        pos.values.pop(path + ("<key>",), None)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, path + (i,), pos, loader)
            for i, item in enumerate(_rejoin_calls(node.value))
        ]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError:
        raise SpecError(
            f"YAML tag {node.tag!r} is not allowed: a spec is plain data",
            dotted(path),
            Location(pos.file, *_mark(node)),
        ) from None


def _rejoin_calls(items: list[yaml.Node]) -> list[yaml.Node]:
    """Undo YAML's split of `[conv(64, 3), bn]` into `conv(64`, `3)`, `bn`.

    In a flow sequence a comma always separates items, even inside parentheses, yet
    call-like layers are the natural way to write a stage. Scalars whose parentheses
    do not balance are joined (from their raw text) with the items that close them.
    """
    out: list[yaml.Node] = []
    pending: list[yaml.ScalarNode] = []
    for item in items:
        if pending:
            if not isinstance(item, yaml.ScalarNode):
                out.extend(pending)
                pending = []
            else:
                pending.append(item)
                text = ", ".join(p.value for p in pending)
                if text.count("(") <= text.count(")"):
                    out.append(
                        yaml.ScalarNode(
                            "tag:yaml.org,2002:str", text, pending[0].start_mark, item.end_mark
                        )
                    )
                    pending = []
                continue
        if (
            isinstance(item, yaml.ScalarNode)
            and item.style is None
            and item.value.count("(") > item.value.count(")")
        ):
            pending = [item]
        else:
            out.append(item)
    return out + pending


def dotted(path: Path_) -> str:
    """`encoder.stages.s1[0]`: how error messages name a key path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_yaml(text: str, file: str = "<spec>") -> tuple[Any, Positions]:
    """Parse one YAML document safely; return the data and the positions of its paths."""
    pos = Positions(file)
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader already rejects control characters
        node = loader.get_single_node()
        if node is None:
            return None, pos
        return _build(node, (), pos, loader), pos
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"YAML syntax error: {problem}", "", where) from None
    except yaml.reader.ReaderError as exc:  # a character YAML forbids, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise SpecError(
            f"YAML syntax error: character U+{exc.character:04X} is not allowed",
            "",
            Location(file, line, col),
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML syntax error: {exc}", "", Location(file)) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> tuple[Any, Positions]:
    """Read a spec file; a missing or unreadable file is a located SpecError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", "", Location(str(path))) from None
    except IsADirectoryError:
        raise SpecError("is a directory, not a spec file", "", Location(str(path))) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read: {exc}", "", Location(str(path))) from None
    return parse_yaml(text, str(path))
