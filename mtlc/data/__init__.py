"""Built-in data sets and the small container they all return.

Every loader is a function ``load(split, *, seed=0, **options) -> TensorData``: ``split``
is ``"train"`` or ``"val"`` and ``options`` are the keys written under ``train.data`` in the
spec (except ``name``). A data set is held in memory as pre-built CPU tensors that share
their first dimension; :func:`mtlc.data.batches.iterate_batches` slices them into batches.

``load_dataset(options, split)`` looks ``options["name"]`` up in
:data:`mtlc.registry.DATASETS`. A ``seed`` key in the options overrides the ``seed``
argument. Bad options raise :class:`DataError` with one sentence naming the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mtlc.errors import did_you_mean

__all__ = ["DataError", "TensorData", "check_options", "load_dataset", "option_path"]

SPLITS = ("train", "val")


class DataError(Exception):
    """A data set option, file or folder is wrong; the message names it."""


def option_path(key: str) -> str:
    """The dotted spec path of a data option, as used in error messages."""
    return f"train.data.{key}"


@dataclass
class TensorData:
    """A whole split held as pre-built tensors with a common first dimension N.

    ``tensors`` maps batch keys (``image``, ``seg``, ``x``, ``y1``…) to CPU tensors;
    ``info`` carries what a model needs to know, e.g. ``{"num_classes": {"seg": 5},
    "inputs": {"image": [3, 64, 64]}}``.
    """

    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, Mapping) or not self.tensors:
            raise DataError("a data set must hold at least one tensor, got none.")
        sizes = {}
        for key, value in self.tensors.items():
            if not isinstance(key, str):
                raise DataError(f"data set keys must be strings, got {key!r}.")
            if not isinstance(value, torch.Tensor):
                raise DataError(
                    f"data set entry {key!r} must be a torch.Tensor, got {type(value).__name__}."
                )
            if value.dim() == 0:
                raise DataError(f"data set entry {key!r} is a scalar; it needs a first dim N.")
            sizes[key] = value.shape[0]
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{k}: {n}" for k, n in sizes.items())
            raise DataError(f"data set tensors must share their first dimension, got {listed}.")
        self.tensors = dict(self.tensors)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]


# --- option checking -------------------------------------------------------------------

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # bool is an int subclass; never accept it as a number
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def check_options(
    dataset: str,
    options: Mapping[str, Any],
    schema: Mapping[str, tuple[type | tuple[type, ...], Any]],
    *,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Validate loader options against ``schema`` (key -> (type or types, default)).

    ``None`` in a tuple of types allows ``None``. Returns the options with defaults filled
    in and floats coerced. Raises :class:`DataError` naming the offending key.
    """
    for key in options:
        if key not in schema:
            hint = did_you_mean(str(key), schema)
            valid = ", ".join(sorted(schema))
            raise DataError(
                f"{option_path(str(key))}: unknown option for data set {dataset!r}{hint}; "
                f"valid options are {valid}."
            )
    for key in required:
        if options.get(key) is None:
            raise DataError(f"{option_path(key)}: data set {dataset!r} needs this option.")
    out: dict[str, Any] = {}
    for key, (kinds, default) in schema.items():
        value = options.get(key, default)
        kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
        if value is None and type(None) in kinds_t:
            out[key] = None
            continue
        real = [k for k in kinds_t if k is not type(None)]
        if not any(_type_ok(value, k) for k in real):
            words = " or ".join(_TYPE_WORDS.get(k, k.__name__) for k in real)
            if type(None) in kinds_t:
                words += " or null"
            raise DataError(
                f"{option_path(key)}: expected {words}, got {value!r} ({type(value).__name__})."
            )
        if float in real and int not in real and not isinstance(value, float):
            value = float(value)
        out[key] = value
    return out


def check_range(key: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Raise DataError unless lo <= value <= hi."""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            want = f"between {lo} and {hi}"
        elif lo is not None:
            want = f"at least {lo}"
        else:
            want = f"at most {hi}"
        raise DataError(f"{option_path(key)}: expected a value {want}, got {value!r}.")


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """Raise DataError (with a did-you-mean) unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise DataError(
            f"{option_path(key)}: expected one of {', '.join(choices)}, got {value!r}"
            f"{did_you_mean(value, choices)}."
        )


def check_memory(key: str, what: str, needed: float) -> None:
    """Raise DataError when building ``what`` needs more memory than is available.

    Checked before allocating: an allocation that cannot succeed would otherwise be a
    traceback from the allocator, or an hour of swapping before one.
    """
    from mtlc.memory import available_memory, human_bytes

    free = available_memory()
    if free is not None and needed > free:
        raise DataError(
            f"{option_path(key)}: {what} need about {human_bytes(needed)} of memory, but "
            f"only {human_bytes(free)} is available; make the data set smaller."
        )


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'val', got {split!r}.")
    return split


def derived_seed(seed: int, *words: str) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and some words."""
    import hashlib

    text = "/".join([str(int(seed)), *words]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


# --- dispatch ------------------------------------------------------------------------


def load_dataset(
    options: Mapping[str, Any],
    split: str,
    *,
    seed: int = 0,
    allow_import: frozenset[str] = frozenset(),
) -> TensorData:
    """Load one split of the data set that ``options`` (the spec's ``train.data``) names."""
    from mtlc import registry

    if not isinstance(options, Mapping):
        raise DataError(
            f"train.data: expected a mapping with a 'name' key, got {type(options).__name__}."
        )
    opts = dict(options)
    name = opts.pop("name", None)
    if name is None:
        valid = ", ".join(sorted(registry.DATASETS))
        raise DataError(f"train.data.name: missing; choose one of {valid}.")
    if not isinstance(name, str) or name not in registry.DATASETS:
        hint = did_you_mean(str(name), registry.DATASETS)
        valid = ", ".join(sorted(registry.DATASETS))
        raise DataError(f"train.data.name: unknown data set {name!r}{hint}; known: {valid}.")
    if "seed" in opts:
        seed = opts.pop("seed")
        if not _type_ok(seed, int):
            raise DataError(f"train.data.seed: expected an integer, got {seed!r}.")
    for reserved in ("split", "allow_import"):
        if reserved in opts:
            raise DataError(
                f"{option_path(reserved)}: this key is reserved and cannot be set here."
            )
    check_split(split)
    loader = registry.resolve(registry.DATASETS, name)
    kwargs: dict[str, Any] = {"seed": seed}
    if "allow_import" in inspect.signature(loader).parameters:
        kwargs["allow_import"] = frozenset(allow_import)
    data = loader(split, **kwargs, **opts)
    if not isinstance(data, TensorData):
        raise DataError(f"data set {name!r} returned {type(data).__name__}, not TensorData.")
    return data
