"""Named ResNet backbones, bottleneck/basic blocks with dilation, ASPP and repeats.

Parameter counts are worked out by hand (below, from the layer widths, not from mtlc's
code); outputs are compared with a hand-written torchvision-style ResNet
(tests/reference_resnet.py) whose state dict is a checkpoint in torchvision's layout, and
with torchvision itself where it imports.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from reference_resnet import RefASPP, RefResNet

from mtlc.cli import main
from mtlc.compiler import compile_spec
from mtlc.errors import SpecError
from mtlc.layers.parse import parse_layer, parse_layers
from mtlc.layers.vocab import LayerError, infer_shape

DEPTHS = {"resnet18": (False, [2, 2, 2, 2]), "resnet34": (False, [3, 4, 6, 3])}
DEPTHS |= {"resnet50": (True, [3, 4, 6, 3]), "resnet101": (True, [3, 4, 23, 3])}
STAGES = {"s1": ["stem", "layer1"], "s2": "layer2", "s3": "layer3", "s4": "layer4"}


def bn(c: int) -> int:
    return 2 * c


def hand_count(bottleneck: bool, blocks: list[int]) -> int:
    """torchvision's ResNet without fc, counted from its widths (all convs bias-free)."""
    total = 3 * 64 * 7 * 7 + bn(64)  # conv1, bn1
    cin = 64
    for width, count in zip((64, 128, 256, 512), blocks):
        cout = width * 4 if bottleneck else width
        for i in range(count):
            if bottleneck:
                total += cin * width + bn(width)  # conv1 1×1
                total += width * width * 9 + bn(width)  # conv2 3×3
                total += width * cout + bn(cout)  # conv3 1×1
            else:
                total += cin * width * 9 + bn(width) + width * width * 9 + bn(width)
            if i == 0 and cin != cout or i == 0 and width != 64:
                total += cin * cout + bn(cout)  # downsample: 1×1 conv + BN
            cin = cout
    return total


def spec(name="resnet18", os=32, *, hw=32, sharing=None, weights=None, heads=None, stages=None):
    backbone = {"name": name, "output_stride": os}
    if weights is not None:
        backbone["weights"] = str(weights)
    return {
        "mtlc": 1,
        "name": "bb",
        "input": {"image": [3, hw, hw]},
        "encoder": {"backbone": backbone, "stages": stages or STAGES, "sharing": sharing or {}},
        "tasks": heads
        or {"a": {"head": ["identity"], "loss": "l1"}, "b": {"head": ["identity"], "loss": "l1"}},
    }


def encoder_params(model) -> int:
    return sum(p.numel() for k, p in model.named_parameters() if k.startswith("encoder."))


@pytest.mark.parametrize("name", list(DEPTHS))
def test_parameter_count_by_hand(name):
    expected = hand_count(*DEPTHS[name])
    model = compile_spec(spec(name, hw=32)).model
    assert encoder_params(model) == expected
    if name == "resnet50":  # the figures torchvision's docs give, fc (2048·1000 + 1000) removed
        assert expected == 25_557_032 - 2_049_000 == 23_508_032
    if name == "resnet18":
        assert expected == 11_689_512 - 513_000 == 11_176_512


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("os", [8, 16, 32])
def test_output_stride_shapes(name, os):
    c = compile_spec(spec(name, os, hw=64))
    width = 512 if name == "resnet18" else 2048
    assert c.topology.graph.nodes["s4/shared"]["out_shape"] == (width, 64 // os, 64 // os)
    assert c.model(torch.zeros(1, 3, 64, 64))["a"].shape == (1, width, 64 // os, 64 // os)


@pytest.mark.parametrize("os", [8, 16, 32])
def test_dilation_follows_torchvision(os):
    dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[os]
    ref = RefResNet("resnet50", dilate)
    ours = compile_spec(spec("resnet50", os)).model.encoder
    for k in (2, 3, 4):
        stage = getattr(ours, f"s{k}").shared
        layer = getattr(stage, f"layer{k}")
        for i, block in enumerate(layer.children()):
            theirs = getattr(ref, f"layer{k}")[i]
            for conv in ("conv2",):
                a, b = getattr(block, conv), getattr(theirs, conv)
                assert (a.stride, a.dilation, a.padding) == (b.stride, b.dilation, b.padding)
            assert (block.downsample is None) == (theirs.downsample is None)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_checkpoint_loads_into_every_column(tmp_path, name):
    """A state dict in torchvision's layout (fc included, num_batches_tracked dropped as in
    torchvision's published files) loads into each task's copy; every column then
    computes exactly what the reference network computes."""
    torch.manual_seed(0)
    ref = RefResNet(name, (False, True, True)).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong copy would show
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    mix = {"type": "cross_stitch", "init": [1.0, 0.0]}  # α = I: each column reads itself
    sharing = {"s1": "separate", "s2": mix, "s3": "separate", "s4": mix}
    c = compile_spec(spec(name, 8, hw=32, sharing=sharing, weights=path))
    sd = c.model.state_dict()
    for t in ("a", "b"):
        for key in state:
            if not key.startswith("fc."):
                stage = {"conv1": "s1", "bn1": "s1", "layer1": "s1"}.get(key.split(".")[0])
                stage = stage or f"s{key[5]}"
                assert torch.equal(sd[f"encoder.{stage}.{t}.{key}"], state[key]), key
    x = torch.randn(2, 3, 32, 32)
    c.model.eval()
    with torch.no_grad():
        want, out = ref(x), c.model(x)
    for t in ("a", "b"):
        assert torch.allclose(out[t], want, atol=1e-5), t
    # NDDR columns (own block init 1, other 0) give ReLU(BN(x)) of the same features
    c = compile_spec(
        spec(name, 8, hw=32, sharing={"s4": {"type": "nddr", "init": [1.0, 0.0]}}, weights=path)
    )
    c.model.eval()
    with torch.no_grad():
        out = c.model(x)
    for t in ("a", "b"):
        assert torch.allclose(out[t], F.relu(want) / (1 + 1e-5) ** 0.5, atol=1e-5), t


def _ref_aspp_by_hand(m, x):
    """ASPP written with functional ops from the module's own tensors."""

    def cbr(conv, norm, y, d=1):
        pad = d if conv.kernel_size[0] == 3 else 0
        y = F.conv2d(y, conv.weight, None, 1, pad, d)
        y = F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, False)
        return F.relu(y)

    outs = [cbr(m.convs[0][0], m.convs[0][1], x)]
    for i, r in enumerate((12, 24, 36), 1):
        outs.append(cbr(m.convs[i][0], m.convs[i][1], x, r))
    pooled = cbr(m.convs[4][1], m.convs[4][2], x.mean((2, 3), keepdim=True))
    outs.append(pooled.expand(-1, -1, *x.shape[-2:]))
    return cbr(m.project[0], m.project[1], torch.cat(outs, 1))


def test_aspp_is_torchvisions():
    layer = parse_layer("aspp(256)")
    assert layer.args["rates"] == (12, 24, 36)
    assert infer_shape(layer, (64, 9, 11)) == (256, 9, 11)
    c = compile_spec(
        {
            "mtlc": 1,
            "name": "a",
            "input": {"image": [64, 9, 11]},
            "encoder": {"stages": {"s1": ["identity"]}},
            "tasks": {"seg": {"head": ["aspp(256)"], "loss": "l1"}},
        }
    )
    ours = c.model.heads.seg.aspp0
    ref = RefASPP(64)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in ref.state_dict().items()
    ]
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 64, 9, 11)
    ours.eval(), ref.eval()
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-6)
        assert torch.allclose(ours(x), _ref_aspp_by_hand(ours, x), atol=1e-5)
    # params by hand: 1×1 + 3 dilated 3×3 + pooling 1×1 branches, projection of 5·256
    n = 64 * 256 + 3 * 64 * 256 * 9 + 64 * 256 + 5 * 256 * 256 + 6 * 2 * 256
    assert sum(p.numel() for p in ours.parameters()) == n


def test_blocks_in_the_vocabulary():
    layer = parse_layer("bottleneck(64, stride=2, dilation=2)")
    assert infer_shape(layer, (256, 15, 15)) == (256, 8, 8)
    assert infer_shape(parse_layer("resblock(32, 2)"), (16, 15, 15)) == (32, 8, 8)
    assert infer_shape(parse_layer("resblock(16, dilation=4)"), (16, 15, 15)) == (16, 15, 15)
    assert parse_layer("conv(8, 3, bias=false)").args["bias"] is False
    assert parse_layers("bottleneck(64) * 3") == [parse_layer("bottleneck(64)")] * 3
    assert len(parse_layers("2 * resblock(8)")) == 2
    for bad in ("bottleneck(64) * 0", "bottleneck(64) * 1.5", "relu * relu"):
        with pytest.raises(LayerError, match="repeat"):
            parse_layers(bad)
    with pytest.raises(LayerError, match="repeat"):
        parse_layer("relu * 2")
    for bad, why in [("aspp(8, rates=[])", "rates"), ("aspp(8, dropout=1.0)", "dropout")]:
        with pytest.raises(LayerError, match=why):
            parse_layer(bad)


def test_repeat_in_a_stage_and_names():
    c = compile_spec(
        {
            "mtlc": 1,
            "name": "r",
            "input": {"image": [16, 8, 8]},
            "encoder": {"stages": {"s1": ["bottleneck(8, stride=2)", "bottleneck(8) * 2"]}},
            "tasks": {"a": {"head": ["conv(1, 1)"], "loss": "l1"}},
        }
    )
    layers = c.topology.graph.nodes["s1/a"]["layers"]
    assert [str(x) for x in layers] == ["bottleneck(8, 2)", "bottleneck(8)", "bottleneck(8)"]
    keys = c.model.state_dict()
    assert "encoder.s1.a.bottleneck0.downsample.0.weight" in keys
    assert "encoder.s1.a.bottleneck2.conv3.weight" in keys
    assert "encoder.s1.a.bottleneck2.downsample.0.weight" not in keys


def test_stage_copies_keep_torchvision_keys():
    c = compile_spec(spec("resnet50", 8, sharing={"s3": "separate", "s4": "separate"}))
    keys = set(c.model.state_dict())
    for t in ("a", "b"):
        assert f"encoder.s3.{t}.layer3.2.conv2.weight" in keys
        assert f"encoder.s4.{t}.layer4.0.downsample.1.running_var" in keys
    assert "encoder.s1.shared.conv1.weight" in keys
    assert "encoder.s2.shared.layer2.3.bn3.bias" in keys


def test_finer_cuts_at_blocks():
    stages = {"s1": ["stem", "layer1", "layer2"], "s2": "layer3.0", "s3": ["layer3.1", "layer4"]}
    c = compile_spec(spec("resnet18", 8, stages=stages))
    assert [x.module for x in c.topology.graph.nodes["s2/shared"]["layers"]] == ["layer3.0"]
    assert [x.module for x in c.topology.graph.nodes["s3/shared"]["layers"]] == [
        "layer3.1",
        "layer4.0",
        "layer4.1",
    ]
    assert c.topology.graph.nodes["s3/shared"]["out_shape"] == (512, 4, 4)


# -- bad input -----------------------------------------------------------------------------

BAD_STAGES = [
    ({"s1": ["stem", "layr1"]}, "unknown part of resnet18 'layr1' \\(did you mean 'layer1'"),
    ({"s1": ["stem", "layer2"]}, "'layer1' comes after 'stem', not 'layer2'"),
    ({"s1": ["layer1"]}, "'stem' comes first, not 'layer1'"),
    ({"s1": ["stem", "layer1", "layer1.1"]}, "'layer2' comes after 'layer1', not 'layer1.1'"),
    ({"s1": ["stem", "conv(8, 3)"]}, "unknown part of resnet18 'conv\\(8, 3\\)'"),
]


@pytest.mark.parametrize(("stages", "message"), BAD_STAGES)
def test_bad_cuts(stages, message):
    with pytest.raises(SpecError, match=message):
        compile_spec(spec(stages=stages))


def test_stage_name_needs_a_backbone(write_spec):
    path = write_spec(
        """\
        mtlc: 1
        name: x
        input: {image: [3, 8, 8]}
        encoder:
          stages: {s1: layer1}
        tasks: {a: {head: [conv(1, 1)], loss: l1}}
        """
    )
    with pytest.raises(
        SpecError, match=r"spec.yaml:5:\d+: encoder.stages.s1: .*needs encoder.backbone"
    ):
        compile_spec(path)


BACKBONE_YAML = """\
mtlc: 1
name: x
input: {{image: [3, 32, 32]}}
encoder:
  backbone: {{name: {name}, output_stride: {os}{weights}}}
  stages: {{s1: [stem, layer1], s2: layer2, s3: layer3, s4: layer4}}
  sharing: {{s3: separate, s4: separate}}
tasks: {{a: {{head: [conv(1, 1)], loss: l1}}, b: {{head: [conv(1, 1)], loss: l1}}}}
"""


def _cli_error(write_spec, tmp_path, **fields) -> str:
    fields = {"name": "resnet18", "os": 8, "weights": ""} | fields
    path = write_spec(BACKBONE_YAML.format(**fields))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["build", str(path)])
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert "Traceback" not in result.output
    return result.output


def test_unknown_backbone_and_stride(write_spec, tmp_path):
    out = _cli_error(write_spec, tmp_path, name="resnet5O")
    assert "spec.yaml:5:" in out and "did you mean 'resnet50'" in out
    out = _cli_error(write_spec, tmp_path, os=4)
    assert "spec.yaml:5:" in out and "output_stride" in out


def _ckpt(tmp_path, drop=(), add=None, reshape=None):
    state = RefResNet("resnet18").state_dict()
    for k in drop:
        state.pop(k)
    state.update(add or {})
    if reshape:
        state[reshape] = torch.zeros(3)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "absent.pth", "no such file"),
        (lambda p: _truncated(p), "cannot read"),
        (lambda p: _foreign(p), "not a state dict"),
        (
            lambda p: _ckpt(p, drop=["layer3.1.conv1.weight", "layer3.0.bn2.bias"]),
            "does not fit stage 's3' of resnet18 \\(missing keys layer3.0.bn2.bias, layer3.1.conv1.weight",
        ),
        (
            lambda p: _ckpt(p, add={"layer5.0.conv1.weight": torch.zeros(1)}),
            "unexpected layer5.0.conv1.weight",
        ),
        (
            lambda p: _ckpt(p, reshape="layer2.0.bn1.weight"),
            "stage 's2'.*shapes differ: layer2.0.bn1.weight \\[3\\] vs \\[128\\]",
        ),
    ],
)
def test_bad_weights(write_spec, tmp_path, make, message):
    import re

    weights = make(tmp_path)
    out = _cli_error(write_spec, tmp_path, weights=f", weights: {weights}")
    assert "spec.yaml:5:" in out and "encoder.backbone.weights" in out, out
    assert re.search(message, " ".join(out.split())), out


def _truncated(tmp_path):
    path = _ckpt(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _foreign(tmp_path):
    path = tmp_path / "f.pth"
    torch.save([1, 2, 3], path)
    return path


def test_same_outputs_as_torchvision():
    tv = pytest.importorskip("torchvision")
    for name in ("resnet18", "resnet50"):
        ref = getattr(tv.models, name)(
            weights=None,
            replace_stride_with_dilation=[False, True, True] if name == "resnet50" else None,
        ).eval()
        os = 8 if name == "resnet50" else 32
        c = compile_spec(spec(name, os, hw=32))
        missing = [
            k
            for k in ref.state_dict()
            if not k.startswith("fc.")
            and f"encoder.s1.shared.{k}" not in c.model.state_dict()
            and not any(f"encoder.{s}.shared.{k}" in c.model.state_dict() for s in STAGES)
        ]
        assert not missing
        x = torch.randn(1, 3, 32, 32)
        feats = torch.nn.Sequential(*list(ref.children())[:-2])
        for s in STAGES:
            block = c.model.encoder.get_submodule(f"{s}.shared")
            prefix = f"encoder.{s}.shared."
            block.load_state_dict(
                {
                    k[len(prefix) :]: ref.state_dict()[k[len(prefix) :]]
                    for k in c.model.state_dict()
                    if k.startswith(prefix)
                }
            )
        c.model.eval()
        with torch.no_grad():
            assert torch.allclose(c.model(x)["a"], feats(x), atol=1e-5)


# -- MTAN on a ResNet ----------------------------------------------------------------------


def test_mtan_on_resnet_reads_u_b_and_gates_u_t(tmp_path):
    """The paper's form: the mask sees the stage's blocks but the last, gates the last one."""
    one = {"s1": ["stem", "layer1"]}
    heads = {"a": {"head": ["identity"], "loss": "l1"}, "b": {"head": ["identity"], "loss": "l1"}}
    c = compile_spec(spec("resnet18", hw=32, stages=one, sharing={"s1": "attention"}, heads=heads))
    g = c.topology.graph
    assert [x.module for x in g.nodes["s1/shared"]["layers"]][-1] == "layer1.0"
    assert [x.module for x in g.nodes["s1/last"]["layers"]] == ["layer1.1"]
    assert g.nodes["s1/attention/a"]["reads"] == "s1/shared"
    assert g.nodes["s1/attention/a"]["gates"] == "s1/last"
    enc = c.model.encoder.s1
    x = torch.randn(2, 3, 32, 32)
    c.model.eval()
    with torch.no_grad():
        sh = enc.shared
        u_b = getattr(sh.layer1, "0")(sh.maxpool(sh.relu(sh.bn1(sh.conv1(x)))))
        u_t = getattr(enc.last.layer1, "1")(u_b)
        out = c.model(x)
        for t in ("a", "b"):
            want = getattr(enc.attention, t)(u_b) * u_t
            assert torch.allclose(out[t], want, atol=1e-6)
    # split off: the mask reads and gates the whole stage's output
    flat = spec("resnet18", hw=32, stages=one, heads=heads)
    flat["encoder"]["sharing"] = {"s1": {"type": "attention", "split": False}}
    g = compile_spec(flat).topology.graph
    assert "s1/last" not in g and g.nodes["s1/attention/a"]["gates"] == "s1/shared"


def test_mtan_on_resnet_four_stages_profiles_and_draws(tmp_path):
    import yaml

    from mtlc.profile.report import profile_spec

    data = spec("resnet18", 8, hw=32, sharing={s: "attention" for s in STAGES})
    path = tmp_path / "mtan.yaml"
    path.write_text(yaml.safe_dump(data))
    c = compile_spec(path)
    g = c.topology.graph
    assert [n for n in g if n.endswith("/refine")] == [f"s{k}/attention/refine" for k in (2, 3, 4)]
    profile = profile_spec(path, batch=2)
    assert profile is not None
    result = CliRunner().invoke(main, ["viz", str(path), "-o", str(tmp_path / "m.dot")])
    assert result.exit_code == 0, result.output
    dot = (tmp_path / "m.dot").read_text()
    assert "s3 · last" in dot and "attention · a" in dot
    bad = spec(
        "resnet18",
        stages={"s1": ["stem", "layer1"], "s2": "layer2.0", "s3": ["layer2.1", "layer3", "layer4"]},
    )
    bad["encoder"]["sharing"] = {"s1": "attention", "s2": "attention"}
    with pytest.raises(SpecError, match="split needs at least two blocks in stage 's2'"):
        compile_spec(bad)


def test_weights_reach_both_halves_of_a_split_stage(tmp_path):
    ref = RefResNet("resnet18")
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    both = {"s2": "attention", "s3": "attention", "s4": "attention"}
    data = spec("resnet18", weights=tmp_path / "r18.pth", sharing=both)
    data["encoder"]["freeze"] = ["s1"]
    c = compile_spec(data)
    sd, theirs = c.model.state_dict(), ref.state_dict()
    assert torch.equal(sd["encoder.s2.last.layer2.1.conv2.weight"], theirs["layer2.1.conv2.weight"])
    assert torch.equal(
        sd["encoder.s2.shared.layer2.0.conv1.weight"], theirs["layer2.0.conv1.weight"]
    )
    frozen = [p.requires_grad for k, p in c.model.named_parameters() if k.startswith("encoder.s1")]
    assert frozen and not any(frozen)
