"""The layer vocabulary: every layer's parameters, defaults and shape rule, without torch.

A :class:`Layer` is a name with its bound arguments (:func:`make_layer` checks names,
count and values); reading one from the spec's text (`conv(64, 3, stride=2)`) is
:mod:`mtlc.layers.parse`. Shape inference is plain arithmetic here, so a spec whose
stages cannot feed each other is rejected at validation time, with the layer's
position, before torch is imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mtlc.errors import unknown
from mtlc.layers.aliases import mtlc_name
from mtlc.layers.arguments import (
    MAX_CHANNELS,
    MAX_ELEMENTS,
    MAX_SIZE,
    MAX_WEIGHTS,
    REQUIRED,
    LayerError,
    check_value,
)

__all__ = ["MAX_CHANNELS", "MAX_ELEMENTS", "MAX_SIZE", "REQUIRED", "Layer", "LayerError"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layer:
    """One parsed layer: its name and every argument, defaults filled in."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    # the module's attribute name when it must be a given one (a backbone's `layer3.2`,
    # so that checkpoints load by torchvision's keys); None: `<name><index>`
    module: str | None = None

    def __str__(self) -> str:
        spec = LAYERS[self.name]
        shown, in_order = [], True
        for i, (key, value) in enumerate(self.args.items()):
            if spec.params[key] is not REQUIRED and value == spec.params[key]:
                in_order = False
                continue
            shown.append(repr(value) if in_order and i < spec.positional else f"{key}={value!r}")
        return f"{self.name}({', '.join(shown)})" if shown else self.name


@dataclass(frozen=True)
class LayerSpec:
    params: dict[str, Any]
    infer: Callable[[Shape, dict[str, Any]], Shape]
    doc: str
    positional: int = 0  # how many params may be given without a keyword


def _need_map(name: str, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise LayerError(
            f"{name} needs a feature map [C, H, W] but gets {list(shape)}"
            + (" (a spatial layer after flatten/linear?)" if len(shape) == 1 else "")
        )
    return shape  # type: ignore[return-value]


def _weights(name: str, count: int) -> None:
    """Refuse a layer whose weight tensor alone would pass `MAX_WEIGHTS`."""
    if count > MAX_WEIGHTS:
        raise LayerError(
            f"{name} would hold {count:.3g} weights ({count * 4 / 2**30:.3g} GiB of float32); "
            f"mtlc's limit is {MAX_WEIGHTS:.3g} per layer"
        )


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """`size=64` or `size=[64, 48]` as (H, W)."""
    return tuple(size) if isinstance(size, tuple) else (size, size)  # type: ignore[return-value]


def _spatial(name: str, size: int) -> int:
    if size < 1:
        raise LayerError(f"{name} shrinks the feature map to nothing")
    return size


def conv_out(size: int, k: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def conv_padding(a: dict[str, Any]) -> int:
    """Padding that keeps the size at stride 1 (`k // 2`, times the dilation) unless set."""
    return a["padding"] if a["padding"] is not None else (a["k"] // 2) * a["dilation"]


def deconv_padding(a: dict[str, Any]) -> tuple[int, int]:
    """Padding and output padding that make a transposed conv scale H by exactly its stride.

    The output is `(H − 1)·s − 2p + k + op`, so `op = s − k + 2p` gives `H·s`; the
    smallest p ≥ 0 with op ≥ 0 leaves op ≤ 1 (or s − k when k < s), which torch accepts
    as long as op < s. Only an even k at stride 1 has no such p: `_deconv` rejects it.
    """
    if a["padding"] is not None:
        return a["padding"], 0
    k, s = a["k"], a["stride"]
    pad = max((k - s + 1) // 2, 0)
    return pad, s - k + 2 * pad


def _conv(shape: Shape, a: dict[str, Any]) -> Shape:
    c, h, w = _need_map("conv", shape)
    if c % a["groups"] or a["out"] % a["groups"]:
        raise LayerError(
            f"conv groups={a['groups']} must divide both {c} input and {a['out']} output channels"
        )
    _weights("conv", a["out"] * (c // a["groups"]) * a["k"] ** 2)
    p = conv_padding(a)
    return (
        a["out"],
        _spatial("conv", conv_out(h, a["k"], a["stride"], p, a["dilation"])),
        _spatial("conv", conv_out(w, a["k"], a["stride"], p, a["dilation"])),
    )


def _deconv(shape: Shape, a: dict[str, Any]) -> Shape:
    c, h, w = _need_map("deconv", shape)
    _weights("deconv", c * a["out"] * a["k"] ** 2)
    p, op = deconv_padding(a)
    if op >= a["stride"]:
        raise LayerError(
            f"deconv with an even kernel k={a['k']} at stride {a['stride']} cannot keep the size; "
            "use an odd k or give padding="
        )
    size = lambda n: (n - 1) * a["stride"] - 2 * p + a["k"] + op  # noqa: E731
    return (a["out"], _spatial("deconv", size(h)), _spatial("deconv", size(w)))


def _pool(name: str) -> Callable[[Shape, dict[str, Any]], Shape]:
    def infer(shape: Shape, a: dict[str, Any]) -> Shape:
        c, h, w = _need_map(name, shape)
        if 2 * a["padding"] > a["k"]:  # torch's own limit, found here rather than at run time
            raise LayerError(
                f"{name}: padding must be at most k/2, got padding={a['padding']}, k={a['k']}"
            )
        s = a["stride"] or a["k"]
        return (
            c,
            _spatial(name, conv_out(h, a["k"], s, a["padding"])),
            _spatial(name, conv_out(w, a["k"], s, a["padding"])),
        )

    return infer


def _adaptive(shape: Shape, a: dict[str, Any]) -> Shape:
    c, _, _ = _need_map("adaptive_avgpool", shape)
    return (c, *_hw(a["size"]))


def _upsample(shape: Shape, a: dict[str, Any]) -> Shape:
    c, h, w = _need_map("upsample", shape)
    if a["size"] is not None:
        return (c, *_hw(a["size"]))
    return (
        c,
        _spatial("upsample", math.floor(h * a["scale"])),
        _spatial("upsample", math.floor(w * a["scale"])),
    )


def _linear(shape: Shape, a: dict[str, Any]) -> Shape:
    _weights("linear", shape[-1] * a["out"])
    return shape[:-1] + (a["out"],)


def _norm(name: str) -> Callable[[Shape, dict[str, Any]], Shape]:
    def infer(shape: Shape, a: dict[str, Any]) -> Shape:
        if len(shape) not in (1, 3):
            raise LayerError(
                f"{name} takes a vector [F] or a feature map [C, H, W], not {list(shape)}"
            )
        return shape

    return infer


def _same(shape: Shape, a: dict[str, Any]) -> Shape:
    return shape


def _flatten(shape: Shape, a: dict[str, Any]) -> Shape:
    return (math.prod(shape),)


def _resblock(shape: Shape, a: dict[str, Any]) -> Shape:
    c, h, w = _need_map("resblock", shape)
    _weights("resblock", 9 * (a["out"] or c) * (c + (a["out"] or c)))
    s, d = a["stride"], a["first_dilation"] or a["dilation"]
    return (
        a["out"] or c,
        _spatial("resblock", conv_out(h, 3, s, d, d)),
        _spatial("resblock", conv_out(w, 3, s, d, d)),
    )


def _bottleneck(shape: Shape, a: dict[str, Any]) -> Shape:
    c, h, w = _need_map("bottleneck", shape)
    p = a["planes"]
    _weights("bottleneck", p * c + 9 * p * p + p * p * BOTTLENECK_EXPANSION)
    s, d = a["stride"], a["dilation"]
    return (
        a["planes"] * BOTTLENECK_EXPANSION,
        _spatial("bottleneck", conv_out(h, 3, s, d, d)),
        _spatial("bottleneck", conv_out(w, 3, s, d, d)),
    )


def _aspp(shape: Shape, a: dict[str, Any]) -> Shape:
    c, h, w = _need_map("aspp", shape)
    _weights("aspp", a["out"] * c * (2 + 9 * len(a["rates"])))
    return (a["out"], h, w)


_ACT = "elementwise activation"
LAYERS: dict[str, LayerSpec] = {
    "conv": LayerSpec(
        {
            "out": REQUIRED,
            "k": 3,
            "stride": 1,
            "padding": None,
            "dilation": 1,
            "groups": 1,
            "bias": True,
        },
        _conv,
        "2-D convolution; pads k//2 so stride alone sets the size",
        positional=3,
    ),
    "deconv": LayerSpec(
        {"out": REQUIRED, "k": 2, "stride": 2, "padding": None, "bias": True},
        _deconv,
        "transposed convolution; scales H and W by exactly `stride`",
        positional=3,
    ),
    "linear": LayerSpec(
        {"out": REQUIRED, "bias": True}, _linear, "fully connected on the last dim", positional=1
    ),
    "bn": LayerSpec(
        {"momentum": 0.1, "eps": 1e-5, "affine": True},
        _norm("bn"),
        "batch norm (1-D or 2-D by input)",
    ),
    "ln": LayerSpec({"eps": 1e-5}, _norm("ln"), "layer norm; GroupNorm(1, C) on feature maps"),
    "relu": LayerSpec({}, _same, _ACT),
    "gelu": LayerSpec({}, _same, _ACT),
    "silu": LayerSpec({}, _same, _ACT),
    "sigmoid": LayerSpec({}, _same, _ACT),
    "tanh": LayerSpec({}, _same, _ACT),
    "identity": LayerSpec({}, _same, "passes its input through"),
    "maxpool": LayerSpec(
        {"k": 2, "stride": None, "padding": 0},
        _pool("maxpool"),
        "max pooling (stride defaults to k)",
        positional=2,
    ),
    "avgpool": LayerSpec(
        {"k": 2, "stride": None, "padding": 0},
        _pool("avgpool"),
        "average pooling (stride defaults to k)",
        positional=2,
    ),
    "adaptive_avgpool": LayerSpec(
        {"size": 1}, _adaptive, "average pooling to a fixed size", positional=1
    ),
    "flatten": LayerSpec({}, _flatten, "everything but the batch dim into one"),
    "dropout": LayerSpec({"p": 0.5}, _same, "dropout", positional=1),
    "upsample": LayerSpec(
        {"scale": 2, "size": None, "mode": "bilinear"},
        _upsample,
        "resize by `scale` or to `size`",
        positional=1,
    ),
    "resblock": LayerSpec(
        {"out": None, "stride": 1, "dilation": 1, "first_dilation": None},
        _resblock,
        "ResNet basic block (two 3x3 conv-bn, shortcut); torchvision's names, timm's dilation",
        positional=2,
    ),
    "bottleneck": LayerSpec(
        {"planes": REQUIRED, "stride": 1, "dilation": 1},
        _bottleneck,
        "ResNet bottleneck (1x1, 3x3 with stride/dilation, 1x1 to 4*planes), torchvision's",
        positional=2,
    ),
    "aspp": LayerSpec(
        {"out": 256, "rates": (12, 24, 36), "dropout": 0.5},
        _aspp,
        "DeepLab-v3 ASPP: 1x1, dilated 3x3 per rate, image pooling; 1x1 projection (torchvision's)",
        positional=2,
    ),
}
BOTTLENECK_EXPANSION = 4


def make_layer(
    name: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> Layer:
    """Bind arguments to a layer's parameters, checking names, count and values."""
    if name not in LAYERS:
        alias = mtlc_name(name)
        if alias is not None:
            raise LayerError(
                f"unknown layer '{name}' (did you mean '{alias}'? that is mtlc's name for it)"
            )
        raise LayerError(unknown("layer", name, LAYERS))
    spec = LAYERS[name]
    kwargs = dict(kwargs or {})
    names = list(spec.params)
    if len(args) > spec.positional:
        raise LayerError(
            f"{name} takes at most {spec.positional} positional argument(s) ({', '.join(names[: spec.positional]) or 'none'}), got {len(args)}"
        )
    bound = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in spec.params:
            raise LayerError(f"{name}: {unknown('argument', key, names)}")
        if key in bound:
            raise LayerError(f"{name}: {key} given twice")
        bound[key] = value
    out = {}
    for key, default in spec.params.items():
        if key not in bound and default is REQUIRED:
            raise LayerError(f"{name} needs `{key}`, e.g. {name}(64)")
        out[key] = check_value(name, key, bound.get(key, default), default)
    return Layer(name, out)


def infer_shape(layer: Layer, shape: Shape) -> Shape:
    """The output shape (no batch dim) of `layer` applied to `shape`."""
    out = tuple(LAYERS[layer.name].infer(tuple(shape), layer.args))
    if math.prod(out) > MAX_ELEMENTS:
        raise LayerError(f"{layer.name} outputs {list(out)}: more than {MAX_ELEMENTS} values")
    return out
