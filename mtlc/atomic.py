"""Writing files so that a crash never leaves half of one, and never through a link.

Everything mtlc writes (checkpoints, run-folder files, plots, saved models, drawings,
CSV tables, the schema) goes to a temporary file beside the target and is renamed over
it: `os.replace` is atomic on POSIX and Windows, so a kill, a Ctrl-C or a full disk
leaves the previous file whole and never an empty or truncated one. The file then gets
the mode a plain `open()` would have given it, not mkstemp's private 0600.

Links are never followed: a target that is a symbolic link is refused (writing through
it would overwrite whatever it points at, e.g. a `loss.png -> ~/notes`), and the one
file written in place, metrics.jsonl, is opened with ``O_NOFOLLOW``. A failed write is a
:class:`WriteError` naming the file and the reason (exit 1: the command was right, the
machine failed); a path that cannot be written at all is an :class:`OutputError`,
found by :func:`check_output` before any work is done (exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mtlc.errors import MtlcError

# `.<target name>.<8 random characters>.tmp`: what mkstemp below names a temporary file
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


class OutputError(MtlcError):
    """An output path that cannot be written (a link, a folder, too long, read-only)."""


class WriteError(MtlcError):
    """Writing a file failed part way (full disk, I/O error); the old file is intact."""

    exit_code = 1

    def __init__(self, path: str | Path, exc: OSError):
        self.path, self.errno = Path(path), exc.errno
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = "; free some space and run again" if exc.errno in DISK_FULL else ""
        super().__init__(f"cannot write '{path}': {reason}{hint}")


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def file_mode() -> int:
    """The mode a plain `open()` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fdopen(fd: int, mode: str) -> IO:
    """`os.fdopen`, one place for tests to simulate a full disk."""
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def refuse_link(path: Path) -> None:
    """Raise OutputError when ``path`` is a symbolic link (dangling or not)."""
    if path.is_symlink():
        raise OutputError(
            f"{path}: is a symbolic link; mtlc never writes through a link "
            "(remove it or choose another path)"
        )


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):
        return default


def _lexists(path: Path) -> bool:
    """Whether an entry (a link too) is at ``path``; False when it cannot be looked up."""
    try:
        os.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def check_output(path: str | Path, *, folder: bool = False) -> None:
    """Raise OutputError unless ``path`` can be written as a file (or created as a folder).

    Checked before any work so that a bad ``-o``/``--out`` costs nothing and writes
    nothing: not a link (a file or a folder: mtlc never writes through one, and a run
    folder that is a link would let ``--force`` clean wherever it points), not a folder
    where a file is wanted (or the reverse), names within the file system's limits, and
    the nearest existing folder writable. Links among the parents are the user's own
    layout (``/tmp -> /private/tmp``) and are followed.
    """
    path = Path(path)
    # the nearest entry that exists: its file system's limits apply (a name too long
    # for it cannot even be looked up, so the names are checked before `path` is)
    existing = next((p for p in path.parents if _lexists(p)), Path("."))
    base = existing if existing.is_dir() else existing.parent
    name_max = _limit(base, "PC_NAME_MAX", 255)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise OutputError(
                f"{path}: the name '{part[:24]}…' is {size} bytes long; this file system "
                f"allows at most {name_max}"
            )
    path_max = _limit(base, "PC_PATH_MAX", 4096)
    if len(os.fsencode(os.path.abspath(path))) >= path_max:
        raise OutputError(f"{path}: the path is longer than this file system allows ({path_max})")
    if _lexists(path):
        existing = path
    refuse_link(path)  # a folder too: its files would land wherever the link points
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    if not folder and path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    if existing == path:
        target = path if folder else path.parent
    elif not existing.is_dir():
        raise OutputError(f"{path}: cannot be created: {existing} is not a folder")
    else:
        target = existing
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write in {target} (permission denied or read-only)")


def make_folder(path: str | Path) -> None:
    """Create ``path`` and its parents (an OSError becomes a one-line OutputError)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the folder ({exc.strerror or exc})") from None


@contextlib.contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary file beside `path` to write by name; on a clean exit it replaces `path`.

    For writers that want a file name rather than an open file, and for checking the
    written file before it takes the target's place (raise inside the block and `path`
    is never touched). On any error (or Ctrl-C) the temporary file is removed; an
    OSError (a full disk) becomes a :class:`WriteError`. A `path` that is a link is
    refused. `keep_suffix` ends the temporary name with the target's suffix, for readers
    that go by it (torch.export.load wants `.pt2`); such names are not :data:`TEMP_NAME`'s.
    """
    path = Path(path)
    refuse_link(path)
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteError(path, exc) from None
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)  # renames over a link itself, never writes to its target
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(path, exc) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path`.

    On any error (or Ctrl-C) the temporary file is removed and `path` is untouched; an
    OSError (a full disk) becomes a :class:`WriteError`. `fsync` flushes the data to disk
    before the rename, for files a resume depends on. A `path` that is a link is refused.
    """
    flags = os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    with atomic_path(path) as tmp, _fdopen(os.open(tmp, flags), mode) as fh:
        yield fh
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


class AppendFile:
    """A text file appended to in place (metrics.jsonl), opened without following a link.

    Each :meth:`write` is flushed so ``tail -f`` follows it; a failed write (a full disk)
    is a :class:`WriteError`. A torn last line is what a crash can leave, and readers
    skip it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        refuse_link(self.path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse_link(self.path)
            raise WriteError(self.path, exc) from None
        self._fh = _fdopen(fd, "a")

    def write(self, text: str) -> None:
        try:
            self._fh.write(text)
            self._fh.flush()
        except OSError as exc:
            raise WriteError(self.path, exc) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # what could not be flushed was reported already
            self._fh.close()


def remove_stale_temps(folder: Path, targets: tuple[str, ...]) -> list[str]:
    """Delete temporary files a killed writer left for ``targets`` in ``folder``; their names.

    Only regular files named as :func:`atomic_open` names them are removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = TEMP_NAME.match(entry.name)
        if m and m["target"] in targets and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed
