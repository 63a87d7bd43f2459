"""PyTorch's (and Keras') names for layers, mapped to mtlc's, for "did you mean" hints.

Someone who writes `batchnorm` or `Conv2d` knows the layer, not mtlc's short name;
difflib finds no close match for `batchnorm` → `bn`, so the common spellings are
listed. Keys are lower case without `_`; only hints use this, never parsing.
"""

from __future__ import annotations

ALIASES: dict[str, str] = {
    "batchnorm": "bn",
    "batchnorm1d": "bn",
    "batchnorm2d": "bn",
    "batchnormalization": "bn",
    "syncbatchnorm": "bn",
    "layernorm": "ln",
    "layernormalization": "ln",
    "conv2d": "conv",
    "convolution": "conv",
    "convolution2d": "conv",
    "convtranspose2d": "deconv",
    "conv2dtranspose": "deconv",
    "transposedconv": "deconv",
    "dense": "linear",
    "fc": "linear",
    "fullyconnected": "linear",
    "maxpool2d": "maxpool",
    "maxpooling2d": "maxpool",
    "avgpool2d": "avgpool",
    "averagepooling2d": "avgpool",
    "adaptiveavgpool2d": "adaptive_avgpool",
    "globalavgpool": "adaptive_avgpool",
    "globalaveragepooling2d": "adaptive_avgpool",
    "dropout2d": "dropout",
    "upsampling2d": "upsample",
    "interpolate": "upsample",
    "basicblock": "resblock",
    "residual": "resblock",
    "swish": "silu",
}


def mtlc_name(name: str) -> str | None:
    """mtlc's name for a layer written the PyTorch way (`BatchNorm2d` → `bn`), if known."""
    return ALIASES.get(str(name).lower().replace("_", ""))
