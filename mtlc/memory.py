"""How much memory there is, and what an allocator's refusal says it wanted.

Shared by the data sets (which check what they need before building), the trainer and
`profile --latency` (which turn an allocator's refusal into one line saying how much was
asked for). No torch import at module level: the data sets' checks run before torch
does anything.
"""

from __future__ import annotations

import os
import re


def available_memory() -> int | None:
    """Bytes of memory this process can still get (MemAvailable on Linux), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def human_bytes(n: float) -> str:
    """``20.7 kB``, ``163.8 TB``: decimal units, one decimal."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's refusal (CPU or CUDA), not a bug."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def allocation(exc: BaseException) -> str:
    """`` (one allocation alone needed 49.2 TB)`` from an allocator's message, or ''."""
    m = re.search(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]iB)", str(exc))
    if not m:
        return ""
    scale = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[m[2]]
    return f" (one allocation alone needed {human_bytes(float(m[1]) * scale)})"
