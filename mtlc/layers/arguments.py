"""The values a layer argument may take, and the limits on them.

Every argument is checked here before shape inference sees it: `None` only where the
parameter's default is None (a rule such as `padding = k // 2`), numbers finite (a NaN
momentum would train to "completed" with NaN losses), sizes and channels bounded so
that a typo cannot ask for terabytes.
"""

from __future__ import annotations

import math
from typing import Any

REQUIRED = object()


class LayerError(ValueError):
    """A layer that cannot be parsed or cannot take its input shape."""


_POSITIVE_INT = {"out", "k", "stride", "dilation", "first_dilation", "groups", "size", "planes"}
_CHANNELS = {"out", "groups", "planes"}
_NON_NEGATIVE_INT = {"padding"}
# torch refuses sizes past int64 with a TypeError deep in a module's constructor; 2**31
# is far beyond any real layer and keeps every size a 32-bit int
MAX_SIZE = 2**31 - 1
# elements of one sample's feature map (4 TiB of float32): past this torch's storage
# size overflows int64 once a batch and the element size multiply in
MAX_ELEMENTS = 2**40
# channels of one layer (and of the decoders' features): a 65 536-channel 3×3 conv
# already holds 38·10⁹ weights; past this a typo allocates terabytes
MAX_CHANNELS = 2**16
# weights of one layer (8 GiB of float32): refused here rather than by the allocator
MAX_WEIGHTS = 2**31
_CHOICES = {"mode": ("nearest", "bilinear", "bicubic")}


def check_value(layer: str, key: str, value: Any, default: Any) -> Any:
    if value is None:
        if default is None or default is REQUIRED:  # `padding=None`: the default rule
            if default is REQUIRED:
                raise LayerError(f"{layer}: {key} must be given, got None")
            return value
        raise LayerError(f"{layer}: {key} cannot be None (leave it out for {default!r})")
    if key == "size" and isinstance(value, (list, tuple)) and len(value) == 2:
        return tuple(check_value(layer, key, v, default) for v in value)  # [H, W]
    if key in _POSITIVE_INT | _NON_NEGATIVE_INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LayerError(f"{layer}: {key} must be an integer, got {value!r}")
        if value < (1 if key in _POSITIVE_INT else 0):
            raise LayerError(
                f"{layer}: {key} must be {'positive' if key in _POSITIVE_INT else '>= 0'}, got {value}"
            )
        limit = MAX_CHANNELS if key in _CHANNELS else MAX_SIZE
        if value > limit:
            raise LayerError(f"{layer}: {key}={value} is past mtlc's limit: at most {limit}")
    elif key in ("bias", "affine"):
        if not isinstance(value, bool):
            raise LayerError(f"{layer}: {key} must be true or false, got {value!r}")
    elif key == "rates":
        rates = tuple(value) if isinstance(value, (list, tuple)) else None
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) for r in rates):
            raise LayerError(f"{layer}: rates must be a non-empty list of integers, got {value!r}")
        if len(rates) > 64 or not all(1 <= r <= MAX_SIZE for r in rates):
            raise LayerError(
                f"{layer}: rates must be at most 64 integers in [1, {MAX_SIZE}], got {list(rates)}"
            )
        return rates
    elif key in ("p", "momentum", "eps", "scale", "dropout"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LayerError(f"{layer}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise LayerError(f"{layer}: {key} must be a finite number, got {value}")
        if key in ("p", "dropout") and not 0 <= value < 1:
            raise LayerError(f"{layer}: {key} must be in [0, 1), got {value}")
        if key not in ("p", "dropout") and value <= 0:
            raise LayerError(f"{layer}: {key} must be positive, got {value}")
        if key == "momentum" and value > 1:
            raise LayerError(f"{layer}: momentum must be in (0, 1], got {value}")
        if key == "scale" and value > MAX_SIZE:
            raise LayerError(f"{layer}: scale={value} is past mtlc's limit: at most {MAX_SIZE}")
    elif key in _CHOICES and value not in _CHOICES[key]:
        raise LayerError(f"{layer}: {key} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    return value
