"""User code named in a spec (`"pkg.module:factory"`), imported only when allowed.

Importing runs arbitrary code, so a spec alone never does it: the top-level package must
be named with `--allow-import PKG` on the command line, or in Python with
`with mtlc.allow_import("pkg"): ...`. The data sets' `callable` and the `import:`
backbone both resolve their names here.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

_ALLOWED: ContextVar[frozenset[str]] = ContextVar("mtlc_allowed_imports", default=frozenset())


class ImportRefused(ValueError):
    """A name that may not or cannot be imported; the message is one line."""


@contextlib.contextmanager
def allow_import(packages: Iterable[str] | str) -> Iterator[None]:
    """Let specs compiled inside this block import from the top-level `packages`."""
    extra = {packages} if isinstance(packages, str) else set(packages)
    token = _ALLOWED.set(_ALLOWED.get() | frozenset(extra))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def allowed_imports() -> frozenset[str]:
    return _ALLOWED.get()


def resolve_callable(text: Any, allow: frozenset[str], what: str = "function") -> Any:
    """Import `"pkg.module:attr"` if `pkg` is in `allow` and return the callable attribute."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise ImportRefused(f"expected 'package.module:{what}', got {text!r}")
    module_name, attr = text.split(":")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".")):
        raise ImportRefused(f"expected 'package.module:{what}', got {text!r}")
    top = module_name.split(".")[0]
    if top not in allow:
        raise ImportRefused(f"importing {top!r} needs --allow-import {top}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while it loads
        raise ImportRefused(
            f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ImportRefused(f"module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ImportRefused(f"{text!r} is not callable")
    return fn
