"""The layer vocabulary: parsing without eval, and shape inference that matches torch."""

from __future__ import annotations

import re

import pytest
import torch

from mtlc.layers.modules import build_module
from mtlc.layers.parse import parse_layer, rejoin_calls
from mtlc.layers.vocab import LAYERS, LayerError, infer_shape

MAP = (6, 12, 12)
VEC = (24,)
CASES = [
    ("conv(8, 3)", MAP),
    ("conv(8, 5, stride=2)", MAP),
    ("conv(8, 3, padding=0)", MAP),
    ("conv(6, 3, dilation=2, groups=3)", MAP),
    ("conv(8, 1, bias=False)", MAP),
    ("deconv(4)", MAP),
    ("deconv(4, 3, 2)", MAP),
    ("deconv(4, 4, 2)", MAP),
    ("deconv(4, 3, 1)", MAP),
    ("linear(5)", VEC),
    ("linear(5)", MAP),
    ("bn", MAP),
    ("bn", VEC),
    ("ln", MAP),
    ("ln", VEC),
    ("relu", MAP),
    ("gelu", VEC),
    ("silu", MAP),
    ("sigmoid", VEC),
    ("tanh", MAP),
    ("identity", VEC),
    ("maxpool(2)", MAP),
    ("maxpool(3, stride=2, padding=1)", MAP),
    ("avgpool(4)", MAP),
    ("adaptive_avgpool(1)", MAP),
    ("adaptive_avgpool(3)", MAP),
    ("flatten", MAP),
    ("dropout(0.1)", VEC),
    ("upsample(2)", MAP),
    ("upsample(size=7)", MAP),
    ("upsample(3, mode='nearest')", MAP),
    ("resblock", MAP),
    ("resblock(8, stride=2)", MAP),
    ("resblock(8, stride=2, dilation=2, first_dilation=1)", MAP),
    ("bottleneck(2)", MAP),
    ("bottleneck(4, stride=2, dilation=2)", MAP),
    ("aspp(8)", MAP),
    ("aspp(8, rates=[1, 2], dropout=0.1)", MAP),
    ({"conv": {"out": 8, "k": 3}}, MAP),
    ({"maxpool": 2}, MAP),
    ({"relu": None}, MAP),
]


@pytest.mark.parametrize("item,shape", CASES, ids=[str(c[0]) for c in CASES])
def test_inferred_shape_matches_the_module(item, shape):
    layer = parse_layer(item)
    module = build_module(layer, shape).eval()
    out = module(torch.randn(2, *shape))
    assert tuple(out.shape[1:]) == infer_shape(layer, shape)
    assert not any(
        isinstance(p, torch.nn.parameter.UninitializedParameter) for p in module.parameters()
    )


def test_every_layer_of_the_vocabulary_is_covered():
    covered = {parse_layer(item).name for item, _ in CASES}
    assert covered == set(LAYERS)


def test_conv_keeps_size_at_stride_1_and_counts_parameters():
    layer = parse_layer("conv(64, 3)")
    assert infer_shape(layer, (32, 16, 16)) == (64, 16, 16)
    assert (
        sum(p.numel() for p in build_module(layer, (32, 16, 16)).parameters()) == 64 * 32 * 9 + 64
    )


@pytest.mark.parametrize(
    "text,message",
    [
        ("conv(64, 3, strid=2)", "unknown argument 'strid' (did you mean 'stride'?)"),
        ("conv", "conv needs `out`"),
        ("conv(0)", "out must be positive"),
        ("conv(6.5)", "out must be an integer"),
        ("dropout(1.5)", "p must be in [0, 1)"),
        ("__import__('os').system('x')", "cannot parse layer"),
        ("conv(open('f'))", "arguments must be literal"),
        ("conv(64, 3, 1, 1)", "at most 3 positional"),
        ("upsample(2, mode='cubic')", "mode must be one of"),
        ("relu(", "cannot parse layer"),
    ],
)
def test_bad_layers(text, message):
    with pytest.raises(LayerError, match=re.escape(message)):
        parse_layer(text)


def test_shape_errors():
    with pytest.raises(LayerError, match=r"conv needs a feature map \[C, H, W\] but gets \[24\]"):
        infer_shape(parse_layer("conv(8)"), VEC)
    with pytest.raises(LayerError, match="shrinks the feature map to nothing"):
        infer_shape(parse_layer("conv(8, 5, padding=0)"), (3, 2, 2))
    with pytest.raises(LayerError, match="groups=4 must divide"):
        infer_shape(parse_layer("conv(8, 3, groups=4)"), MAP)


def test_rejoin_calls_mends_what_yaml_split():
    assert rejoin_calls(["conv(64", 3, "stride=2)", "bn"]) == ["conv(64, 3, stride=2)", "bn"]
    assert rejoin_calls(["relu", {"conv": {"out": 4}}]) == ["relu", {"conv": {"out": 4}}]


def test_layer_prints_back_to_what_it_parses_from():
    for text in ["conv(64, 5, 2)", "conv(64, stride=2)", "maxpool", "upsample(size=8)"]:
        assert str(parse_layer(text)) == text
        assert parse_layer(str(parse_layer(text))) == parse_layer(text)


@pytest.mark.parametrize("k", range(1, 7))
@pytest.mark.parametrize("stride", range(1, 5))
def test_deconv_scales_by_exactly_its_stride_or_says_why_not(k, stride):
    layer = parse_layer(f"deconv(4, {k}, {stride})")
    if stride == 1 and k % 2 == 0:  # (H − 1) + k − 2p is H only for odd k
        with pytest.raises(LayerError, match="even kernel"):
            infer_shape(layer, (3, 5, 7))
        return
    out = build_module(layer, (3, 5, 7))(torch.randn(1, 3, 5, 7))
    assert infer_shape(layer, (3, 5, 7)) == tuple(out.shape[1:]) == (4, 5 * stride, 7 * stride)


@pytest.mark.parametrize(
    "text,shape,message",
    [
        ("upsample(0.05)", MAP, "upsample shrinks the feature map to nothing"),
        ("maxpool(2, padding=2)", MAP, "maxpool: padding must be at most k/2"),
        ("avgpool(3, padding=2)", MAP, "avgpool: padding must be at most k/2"),
        ("upsample(size=2000000000)", MAP, "more than 1099511627776 values"),
    ],
)
def test_shapes_torch_would_refuse_are_refused_here(text, shape, message):
    with pytest.raises(LayerError, match=re.escape(message)):
        infer_shape(parse_layer(text), shape)


def test_fractional_upsample_floors_like_torch():
    layer = parse_layer("upsample(1.5)")
    out = build_module(layer, (2, 5, 7))(torch.randn(1, 2, 5, 7))
    assert infer_shape(layer, (2, 5, 7)) == tuple(out.shape[1:]) == (2, 7, 10)


@pytest.mark.parametrize(
    "text,message",
    [
        ("conv(2147483648)", "out=2147483648 is past mtlc's limit: at most 65536"),
        ("bn(momentum=2)", "momentum must be in (0, 1]"),
    ],
)
def test_values_torch_would_refuse_are_refused_here(text, message):
    with pytest.raises(LayerError, match=re.escape(message)):
        parse_layer(text)
