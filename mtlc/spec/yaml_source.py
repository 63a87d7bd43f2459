"""Safe YAML reading that remembers where every key and value came from.

PyYAML's safe constructor turns a document into plain dicts and lists but forgets
positions; validation errors must point at `file:line:col`, so we compose the node
tree ourselves and record the mark of each path on the way down.

A spec is untrusted data, so reading it is bounded: at most `MAX_BYTES` of text,
`MAX_DEPTH` levels of nesting, and `MAX_NODES` values once aliases are expanded (a
1 KB "billion laughs" document of nested `*alias` references would otherwise expand
without end). Each limit is a located error naming the limit.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import yaml

from mtlc.errors import Location, SpecError

Path_ = tuple[str | int, ...]

MAX_BYTES = 1 << 20  # a spec is a page of YAML; 1 MiB is far beyond any real one
MAX_NODES = 100_000  # values in the document after aliases are expanded
MAX_DEPTH = 64  # nesting of mappings and lists


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


class _Budget:
    """Counts the values built so far (an alias is built again each time it is used)."""

    def __init__(self) -> None:
        self.nodes = 0


def _build(
    node: yaml.Node, path: Path_, pos: Positions, loader: yaml.SafeLoader, budget: _Budget
) -> Any:
    budget.nodes += 1
    if budget.nodes > MAX_NODES:
        raise SpecError(
            f"the document expands to more than {MAX_NODES} values (mtlc's limit; "
            "aliases that repeat aliases?)",
            dotted(path),
            Location(pos.file, *_mark(node)),
        )
    if len(path) > MAX_DEPTH:
        raise SpecError(
            f"nested more than {MAX_DEPTH} levels deep (mtlc's limit)",
            dotted(path),
            Location(pos.file, *_mark(node)),
        )
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
            key = _build(key_node, path + ("<key>",), pos, loader, budget)
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
            out[key] = _build(value_node, path + (key,), pos, loader, budget)
        pos.values.pop(path + ("<key>",), None)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, path + (i,), pos, loader, budget)
            for i, item in enumerate(_rejoin_calls(node.value))
        ]
    try:
        value = loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError:
        raise SpecError(
            f"YAML tag {node.tag!r} is not allowed: a spec is plain data",
            dotted(path),
            Location(pos.file, *_mark(node)),
        ) from None
    except ValueError as exc:  # an integer past Python's 4300-digit conversion limit
        raise SpecError(
            f"a number of {len(node.value)} digits is too long to read ({exc})".split(":")[0] + ")",
            dotted(path),
            Location(pos.file, *_mark(node)),
        ) from None
    return _unprotect(value) if isinstance(value, str) else value


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
        if isinstance(part, str) and (not part.isprintable() or len(part) > 80):
            part = repr(part[:80]) + ("…" if len(part) > 80 else "")  # one line, bounded
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def set_location(text: str) -> Location:
    """Where a `--set` override is reported: its text, cut to one readable line."""
    shown = text if len(text) <= 120 and text.isprintable() else repr(text[:120])[1:-1] + "…"
    return Location(f"--set {shown}")


# Characters that stand in for brackets, braces and commas inside a layer call while
# YAML reads a flow list (private-use code points: one character each, so every
# column YAML reports stays exact); `_build` turns them back.
_STAND_INS = str.maketrans("[]{},", "\ue000\ue001\ue002\ue003\ue004")
_BACK = str.maketrans("\ue000\ue001\ue002\ue003\ue004", "[]{},")
_CALL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\(")
_CLOSE = {"(": ")", "[": "]", "{": "}"}


def _unprotect(text: str) -> str:
    return text.translate(_BACK)


def _protect_calls(text: str) -> str | None:
    """`[conv(4, 1), upsample(size=[64, 64])]` with the call's inner `[]{},` stood in for.

    In a flow list YAML reads `[` inside `upsample(size=[64, 64])` as a nested list
    and the document fails to parse. Only text that failed is rewritten: every
    `name(` whose brackets balance (before the line or document ends) gets its inner
    brackets, braces and commas replaced one for one. None when nothing changed.
    """
    if any(c in text for c in "\ue000\ue001\ue002\ue003\ue004"):
        return None
    out, i, changed = list(text), 0, False
    while (m := _CALL.search(text, i)) is not None:
        start = m.end() - 1  # the "("
        stack, j, quote = ["("], start + 1, None
        while j < len(text) and stack:
            c = text[j]
            if quote:
                quote = None if c == quote else quote
            elif c in "'\"":
                quote = c
            elif c in _CLOSE:
                stack.append(c)
            elif c in ")]}":
                if _CLOSE[stack[-1]] != c:
                    break
                stack.pop()
            elif c in "\n#":
                break
            j += 1
        if stack:  # unbalanced: leave it to YAML's own error
            i = m.end()
            continue
        for k in range(start + 1, j - 1):
            if out[k] in "[]{},":
                out[k] = out[k].translate(_STAND_INS)
                changed = True
        i = j
    return "".join(out) if changed else None


def parse_yaml(text: str, file: str = "<spec>") -> tuple[Any, Positions]:
    """Parse one YAML document safely; return the data and the positions of its paths."""
    if len(text) > MAX_BYTES:
        raise SpecError(
            f"the spec is {len(text)} characters long; mtlc's limit is {MAX_BYTES}",
            "",
            Location(file),
        )
    try:
        return _parse(text, file)
    except SpecError as exc:
        if not exc.message.startswith("YAML syntax error"):
            raise
        protected = _protect_calls(text)
        if protected is None:
            raise
        try:
            return _parse(protected, file)
        except SpecError:
            raise exc from None


def _parse(text: str, file: str) -> tuple[Any, Positions]:
    pos = Positions(file)
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader already rejects control characters
        node = loader.get_single_node()
        if node is None:
            return None, pos
        return _build(node, (), pos, loader, _Budget()), pos
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        problem = _unprotect(exc.problem or exc.context or "invalid YAML")
        raise SpecError(f"YAML syntax error: {problem}", "", where) from None
    except yaml.reader.ReaderError as exc:  # a character YAML forbids, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise SpecError(
            f"YAML syntax error: character U+{exc.character:04X} is not allowed",
            "",
            Location(file, line, col),
        ) from None
    except RecursionError:
        raise SpecError(
            f"YAML nested too deeply (mtlc's limit is {MAX_DEPTH} levels)", "", Location(file)
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML syntax error: {exc}", "", Location(file)) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> tuple[Any, Positions]:
    """Read a spec file; a missing, unreadable, non-regular or too large file is a SpecError.

    Only a regular file is opened (a FIFO or device would block or never end), and at
    most `MAX_BYTES` + 1 bytes are read.
    """
    path = Path(path)
    where = Location(str(path))
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise SpecError("is a directory, not a spec file", "", where)
        if not stat.S_ISREG(mode):
            raise SpecError("is not a regular file (a pipe or device?)", "", where)
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise SpecError(f"is larger than mtlc's limit of {MAX_BYTES} bytes", "", where)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", "", where) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SpecError(f"cannot read: {exc}", "", where) from None
    return parse_yaml(text, str(path))
