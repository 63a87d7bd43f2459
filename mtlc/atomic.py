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
def atomic_open(path: str | Path, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path`.

    On any error (or Ctrl-C) the temporary file is removed and `path` is untouched.
    `fsync` flushes the data to disk before the rename, for files a resume depends on.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
