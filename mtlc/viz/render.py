"""DOT source → the file the user asked for, chosen by its suffix.

`.dot` is the source itself and needs nothing installed; svg, png and pdf go through
graphviz's `dot` binary; `.html` is one self-contained page with the svg inline (no
scripts, no external files), for sharing a drawing by mail or in CI artifacts. The file
is written whole or not at all: a failed render leaves no half-written file behind.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

from mtlc.atomic import atomic_open, check_output, make_folder
from mtlc.errors import MtlcError

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".html": "html"}
INSTALL_HINT = (
    "the graphviz 'dot' program is needed for {fmt} output but was not found on PATH; "
    "install graphviz (Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz; "
    "conda: conda install graphviz), or write a .dot file, which needs no binary"
)


class RenderError(MtlcError):
    """The output cannot be produced as asked (exit 2 unless it is `GraphvizMissing`)."""


class GraphvizMissing(RenderError):
    """The `dot` binary is not installed: an environment problem, not a spec problem."""


def output_format(path: str | Path) -> str:
    """The format a path's suffix asks for; a clear error listing the supported ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        supported = ", ".join(FORMATS)
        got = f"'{suffix}'" if suffix else "no suffix"
        raise RenderError(
            f"cannot write '{path}': unsupported format {got} (supported: {supported})"
        )
    return FORMATS[suffix]


def check_path(path: str | Path) -> str:
    """The format `path` asks for, after checking it can be written (before any drawing)."""
    fmt = output_format(path)
    check_output(path)
    return fmt


def to_bytes(source: str | Sequence[str], fmt: str, title: str = "mtlc") -> bytes:
    """Render DOT `source` as `fmt` (one of FORMATS' values).

    Several sources are layouts of one drawing, most constrained first: each is tried
    until graphviz lays one out (see `topology_view.topology_dot`'s `loose`).
    A `.dot` file gets the first.
    """
    sources = [source] if isinstance(source, str) else list(source)
    if fmt == "dot":
        return sources[0].encode()
    import graphviz

    for i, text in enumerate(sources):
        try:
            svg_or_image = graphviz.Source(text).pipe(
                format="svg" if fmt == "html" else fmt, quiet=True
            )
            break
        except graphviz.ExecutableNotFound:
            raise GraphvizMissing(INSTALL_HINT.format(fmt=fmt)) from None
        except graphviz.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode(errors="replace").strip()
            if "trouble in init_rank" in detail and i < len(sources) - 1:
                continue
            first = detail.splitlines()[0] if detail else f"exit status {exc.returncode}"
            raise RenderError(f"graphviz failed to render the drawing: {first}") from None
    if fmt == "html":
        return html_page(svg_or_image.decode(), title).encode()
    return svg_or_image


def html_page(svg: str, title: str) -> str:
    """A standalone page: the svg inline, without its XML prolog and doctype."""
    svg = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    svg = re.sub(r"<!--.*?-->\s*", "", svg, flags=re.S)
    t = html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{t}</title>\n"
        "<style>body{font-family:Helvetica,Arial,sans-serif;margin:1.5em}"
        "svg{max-width:100%;height:auto}</style>\n</head>\n<body>\n"
        f"<h1>{t}</h1>\n{svg}\n</body>\n</html>\n"
    )


def write(source: str | Sequence[str], path: str | Path, title: str = "mtlc") -> Path:
    """Render `source` (or the first of several layouts that works) into `path`, atomically."""
    path = Path(path)
    data = to_bytes(source, check_path(path), title)
    make_folder(path.parent)
    with atomic_open(path, "wb") as fh:  # a full disk: WriteError, the old file kept
        fh.write(data)
    return path
