"""Writing a file so that a crash never leaves half of one where a whole one was.

Everything mtlc writes that a user keeps (checkpoints, run-folder files, saved models,
drawings) goes to a temporary file beside the target and is renamed over it:
`os.replace` is atomic on POSIX and Windows. The file then gets the mode a plain
`open()` would have given it, not mkstemp's private 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def file_mode() -> int:
    """The mode a plain `open()` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it replaces `path`.

    For writers that want a file name rather than an open file (and for checking the
    written file before it takes the target's place: raise inside the block and the
    target is never touched). On any error (or Ctrl-C) the temporary file is removed.
    `keep_suffix` ends the temporary name with the target's suffix, for readers that
    go by it (torch.export.load wants `.pt2`).
    """
    path = Path(path)
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path`.

    On any error (or Ctrl-C) the temporary file is removed and `path` is untouched.
    `fsync` flushes the data to disk before the rename, for files a resume depends on.
    """
    kwargs = {} if "b" in mode else {"encoding": "utf-8"}
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
