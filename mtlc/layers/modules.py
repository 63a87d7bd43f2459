"""Layers of the vocabulary as torch modules, sized by shape inference (no Lazy modules)."""

from __future__ import annotations

from torch import nn

from mtlc.layers.blocks import ASPP, BasicBlock, Bottleneck
from mtlc.layers.vocab import Layer, Shape, conv_padding, deconv_padding, infer_shape

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def build_module(layer: Layer, shape: Shape) -> nn.Module:
    """The module for `layer` when its input has `shape` (no batch dim)."""
    a, name = layer.args, layer.name
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]()
    if name == "conv":
        return nn.Conv2d(
            shape[0],
            a["out"],
            a["k"],
            a["stride"],
            conv_padding(a),
            a["dilation"],
            a["groups"],
            a["bias"],
        )
    if name == "deconv":
        pad, out_pad = deconv_padding(a)
        return nn.ConvTranspose2d(
            shape[0], a["out"], a["k"], a["stride"], pad, out_pad, bias=a["bias"]
        )
    if name == "linear":
        return nn.Linear(shape[-1], a["out"], a["bias"])
    if name == "bn":
        cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return cls(shape[0], eps=a["eps"], momentum=a["momentum"], affine=a["affine"])
    if name == "ln":
        return (
            nn.GroupNorm(1, shape[0], eps=a["eps"])
            if len(shape) == 3
            else nn.LayerNorm(shape[0], eps=a["eps"])
        )
    if name == "maxpool":
        return nn.MaxPool2d(a["k"], a["stride"] or a["k"], a["padding"])
    if name == "avgpool":
        return nn.AvgPool2d(a["k"], a["stride"] or a["k"], a["padding"])
    if name == "adaptive_avgpool":
        return nn.AdaptiveAvgPool2d(a["size"])
    if name == "flatten":
        return nn.Flatten()
    if name == "dropout":
        return nn.Dropout(a["p"])
    if name == "upsample":
        size = infer_shape(layer, shape)[1:]
        align = False if a["mode"] in ("bilinear", "bicubic") else None
        return nn.Upsample(size=size, mode=a["mode"], align_corners=align)
    if name == "resblock":
        return BasicBlock(
            shape[0], a["out"] or shape[0], a["stride"], a["dilation"], a["first_dilation"] or 0
        )
    if name == "bottleneck":
        return Bottleneck(shape[0], a["planes"], a["stride"], a["dilation"])
    if name == "aspp":
        return ASPP(shape[0], a["out"], a["rates"], a["dropout"])
    raise AssertionError(f"layer '{name}' is in the vocabulary but has no module")
