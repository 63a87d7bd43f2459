"""Small pieces of DOT writing that every drawing (and every sharing point's) uses.

Constants of the topology picture, number and shape texts, HTML-like labels and a
minimal DOT writer. Imports nothing of mtlc but the colours, so a sharing point's file
can draw without importing the drawer.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

STATUS = {"added": "#1a9641", "removed": "#d7191c", "changed": "#f39c12"}
UNCHANGED = "#9e9e9e"  # a diff's colour for what both specs have alike
STATUS_MEANING = {
    "added": "only in B",
    "removed": "only in A",
    "changed": "in both, different",
    "unchanged": "in both, the same",
}
COLUMN_WIDTH = 2.3  # inches; a block serving k tasks is k columns wide
NODESEP = 0.3
# Exchanges between tasks: a task's own stream thick, what it takes from others thin
# (dashes are kept for auxiliary tasks).
OWN_WIDTH = 2.2
CROSS_WIDTH = 1.0


def si(n: float, unit: str = "") -> str:
    """12345 -> '12.3k': three significant digits are what a picture has room for."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            text = f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
            return f"{text}{suffix}{unit}" if not unit else f"{text} {suffix}{unit}"
    return f"{n:g}" + (f" {unit}" if unit else "")


def shape_text(shape: Iterable[int]) -> str:
    return "×".join(str(s) for s in shape)


def layer_text(layer) -> str:
    """Short layer text for a box: convs show their kernel, which `str(layer)` hides."""
    a = layer.args
    if layer.name in ("conv", "deconv"):
        k = a["k"]
        text = f"{layer.name}{k}×{k} {a['out']}"
        if a.get("stride", 1) != 1:
            text += f" /{a['stride']}" if layer.name == "conv" else f" ×{a['stride']}"
        return text
    if layer.name in ("maxpool", "avgpool"):
        return f"{layer.name}{a['k']}×{a['k']}"
    if layer.name in ("bottleneck", "resblock"):
        width = a["planes"] * 4 if layer.name == "bottleneck" else a["out"]
        text = f"{layer.name} {width}" if width else layer.name
        text += f" /{a['stride']}" if a["stride"] != 1 else ""
        return text + (f" d{a['dilation']}" if a["dilation"] != 1 else "")
    return str(layer)


_STEM = ("conv1", "bn1", "relu", "maxpool")


def traced_text(modules: list[str]) -> str:
    """A traced backbone piece: its top-level modules, in order (`traced: layer2 · layer3`)."""
    tops: list[str] = []
    for name in modules:
        if name.split(".")[0] not in tops:
            tops.append(name.split(".")[0])
    return f"traced: {' · '.join(tops)}" if tops else ""


def layers_text(layers: list) -> str:
    """A box's layers, short enough for a 100-layer backbone stage.

    A backbone's parts collapse to their names (`stem · layer3: 6× bottleneck 1024 d2`,
    the dilation of the stage's later blocks); runs of identical layers to `n× layer`.
    """
    runs: list[tuple[str, int, str]] = []  # (key, count, text)
    for layer in layers:
        module = getattr(layer, "module", None) or ""
        if module in _STEM:
            key, text = "stem", "stem"
        elif module.startswith("layer"):
            key, text = module.split(".")[0], layer_text(layer).split(" /")[0]
        else:
            key, text = str(layer), layer_text(layer)
        if runs and runs[-1][0] == key:
            k, n, _ = runs[-1]
            runs[-1] = (k, n if key == "stem" else n + 1, text)
        else:
            runs.append((key, 1, text))
    out = []
    for key, n, text in runs:
        count = f"{n}× {text}" if n > 1 else text
        out.append(f"{key}: {count}" if key.startswith("layer") and key != text else count)
    return " · ".join(out)


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_attrs(attrs: dict[str, object]) -> str:
    parts = []
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, str) and v.startswith("<") and v.endswith(">"):
            parts.append(f"{k}={v}")  # an HTML-like label
        elif isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        else:
            parts.append(f"{k}={quote(str(v))}")
    return " [" + ", ".join(parts) + "]" if parts else ""


def html_label(lines: list[tuple[str, str]]) -> str:
    """An HTML-like label from (style, text) lines: 'b' bold title, 's' small, '' plain,
    'html' markup already made (a weight in its task's colour: `Drawer.weight`)."""
    out = []
    for style, text in lines:
        t = text if style == "html" else html.escape(text, quote=False)
        if style == "b":
            out.append(f"<B>{t}</B>")
        elif style == "s":
            out.append(f'<FONT POINT-SIZE="9">{t}</FONT>')
        else:
            out.append(t)
    return "<" + "<BR/>".join(out) + ">"


class DotWriter:
    """Just enough of a DOT writer: statements, nested subgraphs, quoting."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1

    def add(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def node(self, name: str, **attrs: object) -> None:
        self.add(quote(name) + dot_attrs(attrs))

    def edge(self, a: str, b: str, **attrs: object) -> None:
        self.add(f"{quote(a)} -> {quote(b)}" + dot_attrs(attrs))

    def open(self, name: str = "", **attrs: object) -> None:
        self.add(f"subgraph {quote(name)} {{" if name else "{")
        self.depth += 1
        for k, v in attrs.items():
            self.add(
                f"{k}={v}" if isinstance(v, str) and v.startswith("<") else f"{k}={quote(str(v))}"
            )

    def close(self) -> None:
        self.depth -= 1
        self.add("}")


def small_cell(text: str) -> str:
    """A legend cell in small type; empty when there is nothing to say (graphviz refuses
    an empty <FONT>)."""
    return f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9">{text}</FONT></TD>' if text else "<TD></TD>"
