"""``callable``: a data set made by the user's own function.

Spec::

    train:
      data: {name: callable, function: "mypkg.data:make_data", size: 128}

``function`` is ``"module.path:attribute"``. The module is imported only when its
top-level package is named with ``--allow-import`` (importing runs arbitrary code); the
function is then called as ``fn(split=split, seed=seed, **extra)`` with the remaining keys
as ``extra``, and must return a :class:`~mtlc.data.TensorData` or a dict of tensors that
share their first dimension.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mtlc.data import DataError, TensorData, check_split
from mtlc.imports import ImportRefused, resolve_callable

__all__ = ["load", "resolve_function"]


def resolve_function(spec: Any, allow_import: frozenset[str]) -> Any:
    """Import ``"pkg.module:attr"`` if ``pkg`` is allowed and return the attribute."""
    try:
        return resolve_callable(spec, allow_import)
    except ImportRefused as exc:
        raise DataError(f"train.data.function: {exc}.") from exc


def load(
    split: str,
    *,
    seed: int = 0,
    allow_import: frozenset[str] = frozenset(),
    function: Any = None,
    **extra: Any,
) -> TensorData:
    """Call the user's function for ``split`` and validate what it returns."""
    check_split(split)
    if function is None:
        raise DataError("train.data.function: data set 'callable' needs this option.")
    fn = resolve_function(function, frozenset(allow_import))
    try:
        result = fn(split=split, seed=seed, **extra)
    except Exception as exc:  # report the user's failure as one line, like any data error
        raise DataError(
            f"train.data.function: {function!r} raised {type(exc).__name__} for the {split} "
            f"split: {exc}"
        ) from exc
    if isinstance(result, TensorData):
        return result
    if not isinstance(result, Mapping):
        raise DataError(
            f"train.data.function: {function!r} returned {type(result).__name__}; "
            "expected a dict of tensors or a TensorData."
        )
    for key, value in result.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(
                f"train.data.function: {function!r} returned entry {key!r} of type "
                f"{type(value).__name__}; expected str keys and torch.Tensor values."
            )
    try:
        return TensorData(dict(result), {})
    except DataError as exc:
        raise DataError(f"train.data.function: {function!r} returned bad data: {exc}") from exc
