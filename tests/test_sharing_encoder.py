"""Encoder sharing points (cross-stitch, NDDR, MTAN attention) against their papers' formulas.

Each formula is recomputed here directly from the stage features the compiled graph
produced (captured with forward hooks) and the unit's own weights, and compared with
what the graph hands to each task's head: that checks the math and the wiring (which
task reads which row) at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtlc.compiler import compile_spec
from mtlc.compiler.labels import count_parameters
from mtlc.errors import SpecError
from mtlc.spec import load_spec

SPECS = Path(__file__).resolve().parents[1] / "specs"
TASKS = ("a", "b", "c")


def make_spec(
    sharing: dict,
    *,
    stages: dict | None = None,
    tasks: tuple[str, ...] = TASKS,
    size: tuple[int, ...] = (3, 8, 8),
) -> dict:
    """A small spec: the first task segments (2 classes), the others regress one channel."""
    stages = stages or {
        "s1": ["conv(4, 3)", "bn", "relu"],
        "s2": ["conv(8, 3)", "bn", "relu"],
    }
    vector = len(size) == 1
    heads = {
        t: {
            "head": [
                f"linear({2 if i == 0 else 1})" if vector else f"conv({2 if i == 0 else 1}, 1)"
            ],
            "loss": "cross_entropy" if i == 0 else "l1",
        }
        for i, t in enumerate(tasks)
    }
    return {
        "mtlc": 1,
        "name": "t",
        "input": {"image": list(size)},
        "encoder": {"stages": stages, "sharing": sharing},
        "tasks": heads,
    }


class Capture:
    """Records the inputs and output of named submodules of a compiled model."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.inputs: dict[str, tuple] = {}
        self.outputs: dict[str, object] = {}
        for name in names:
            model.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args, output):
            self.inputs[name], self.outputs[name] = args, output

        return hook


def head_input(cap: Capture, task: str) -> torch.Tensor:
    return cap.inputs[f"heads.{task}.conv0"][0]


# -- cross-stitch ------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["channel", "scalar"])
def test_cross_stitch_is_a_full_matrix_mix(granularity):
    torch.manual_seed(0)
    compiled = compile_spec(make_spec({"s2": {"type": "cross_stitch", "granularity": granularity}}))
    model = compiled.model
    unit = model.get_submodule("encoder.s2.cross_stitch")
    # a random T×T(×C) matrix: every (target, source) pair (and channel) its own weight
    with torch.no_grad():
        unit.alpha.copy_(torch.randn_like(unit.alpha))
    assert unit.alpha.shape == ((3, 3, 8) if granularity == "channel" else (3, 3))
    cap = Capture(
        model, [f"encoder.s2.{t}.relu2" for t in TASKS] + [f"heads.{t}.conv0" for t in TASKS]
    )
    model(torch.randn(4, 3, 8, 8))

    xs = torch.stack([cap.outputs[f"encoder.s2.{t}.relu2"] for t in TASKS])  # [S, N, C, H, W]
    alpha = unit.alpha.detach()
    alpha = alpha if granularity == "channel" else alpha[..., None].expand(3, 3, 8)
    expected = torch.einsum("tsc,snchw->tnchw", alpha, xs)  # x̃_t = Σ_s α[t, s, c] · x_s
    for i, t in enumerate(TASKS):
        torch.testing.assert_close(head_input(cap, t), expected[i])
    # each task reads its own mixture, not one combination shared by all
    assert not torch.allclose(head_input(cap, "a"), head_input(cap, "b"))


def test_cross_stitch_initialisation_and_lr_mult():
    spec = make_spec({"s2": {"type": "cross_stitch", "init": [0.8, 0.05], "lr_mult": 100}})
    unit = compile_spec(spec).model.get_submodule("encoder.s2.cross_stitch")
    own = torch.eye(3, dtype=torch.bool)
    assert torch.all(unit.alpha[own] == 0.8) and torch.all(unit.alpha[~own] == 0.05)
    assert unit.lr_mult == 100


def test_cross_stitch_with_identity_alpha_equals_separate_columns():
    sharing = {
        "s1": {"type": "cross_stitch"},
        "s2": {"type": "cross_stitch", "granularity": "scalar"},
    }
    stitched = compile_spec(make_spec(sharing)).model
    separate = compile_spec(make_spec({"s1": "separate", "s2": "separate"})).model
    result = stitched.load_state_dict(separate.state_dict(), strict=False)
    assert sorted(result.missing_keys) == [
        "encoder.s1.cross_stitch.alpha",
        "encoder.s2.cross_stitch.alpha",
    ]
    assert result.unexpected_keys == []
    with torch.no_grad():
        for stage in ("s1", "s2"):
            alpha = stitched.get_submodule(f"encoder.{stage}.cross_stitch").alpha
            eye = torch.eye(3)
            alpha.copy_(eye if alpha.dim() == 2 else eye[..., None].expand_as(alpha))
    x = torch.randn(4, 3, 8, 8)
    got, want = stitched(x), separate(x)
    for t in TASKS:
        assert torch.equal(got[t], want[t])


def test_cross_stitch_parameter_count_by_hand():
    # s1 = conv(3→4, 3×3) 3·4·9 + 4 = 112, bn 2·4 = 8           → 120 (hard: one copy)
    # s2 = conv(4→8, 3×3) 4·8·9 + 8 = 296, bn 2·8 = 16          → 312 per task copy
    # heads: conv(8→2, 1×1) 18, conv(8→1) 9, conv(8→1) 9        → 36
    # per-channel cross-stitch after the 8-channel s2: T·T·C = 3·3·8 = 72
    total = 120 + 3 * 312 + 36 + 72
    spec = make_spec({"s2": {"type": "cross_stitch"}})
    assert count_parameters(compile_spec(spec).model)["total"] == total == 1164
    # scalar: one weight per task pair, T·T = 9
    spec = make_spec({"s2": {"type": "cross_stitch", "granularity": "scalar"}})
    assert count_parameters(compile_spec(spec).model)["total"] == total - 72 + 9


def test_cross_stitch_inside_groups_mixes_only_within_a_group():
    torch.manual_seed(0)
    tasks = ("a", "b", "c", "d")
    spec = make_spec(
        {"s2": {"type": "cross_stitch", "groups": [["a", "b", "c"], ["d"]]}}, tasks=tasks
    )
    compiled = compile_spec(spec)
    model = compiled.model
    assert "s2/cross_stitch/a+b+c" in compiled.topology.graph
    unit = model.get_submodule("encoder.s2.cross_stitch_a_b_c")
    assert unit.alpha.shape == (3, 3, 8)
    with torch.no_grad():
        unit.alpha.copy_(torch.randn_like(unit.alpha))
    cap = Capture(
        model, [f"encoder.s2.{t}.relu2" for t in tasks] + [f"heads.{t}.conv0" for t in tasks]
    )
    model(torch.randn(2, 3, 8, 8))
    xs = torch.stack([cap.outputs[f"encoder.s2.{t}.relu2"] for t in "abc"])
    expected = torch.einsum("tsc,snchw->tnchw", unit.alpha.detach(), xs)
    for i, t in enumerate("abc"):
        torch.testing.assert_close(head_input(cap, t), expected[i])
    # d is alone in its group: no unit, its head reads its own column untouched
    assert torch.equal(head_input(cap, "d"), cap.outputs["encoder.s2.d.relu2"])
    # the 4·9·8+8+16 = 312 per copy as above, plus 3·3·8 = 72 for the one unit
    assert count_parameters(model)["total"] == 120 + 4 * 312 + (18 + 9 + 9 + 9) + 72


def test_cross_stitch_on_a_vector_mlp():
    torch.manual_seed(0)
    stages = {"s1": ["linear(16)", "relu"], "s2": ["linear(6)", "relu"]}
    spec = make_spec(
        {"s1": {"type": "cross_stitch"}, "s2": {"type": "cross_stitch"}}, stages=stages, size=(10,)
    )
    model = compile_spec(spec).model
    unit = model.get_submodule("encoder.s2.cross_stitch")
    assert unit.alpha.shape == (3, 3, 6)  # per feature
    with torch.no_grad():
        unit.alpha.copy_(torch.randn_like(unit.alpha))
    cap = Capture(
        model, [f"encoder.s2.{t}.relu1" for t in TASKS] + [f"heads.{t}.linear0" for t in TASKS]
    )
    out = model(torch.randn(5, 10))
    xs = torch.stack([cap.outputs[f"encoder.s2.{t}.relu1"] for t in TASKS])
    expected = torch.einsum("tsf,snf->tnf", unit.alpha.detach(), xs)
    for i, t in enumerate(TASKS):
        torch.testing.assert_close(cap.inputs[f"heads.{t}.linear0"][0], expected[i])
    sum(o.sum() for o in out.values()).backward()
    assert unit.alpha.grad is not None and unit.alpha.grad.abs().sum() > 0


# -- NDDR ------------------------------------------------------------------------------


def test_nddr_is_concat_conv_bn_relu_with_diagonal_init():
    torch.manual_seed(0)
    model = compile_spec(
        make_spec({"s2": {"type": "nddr", "init": [0.7, 0.2], "lr_mult": 10}})
    ).model
    eye = torch.eye(8)
    for i, t in enumerate(TASKS):
        conv = model.get_submodule(f"encoder.s2.nddr.{t}.reduce")
        assert conv.weight.shape == (8, 24, 1, 1) and conv.bias is None
        assert conv.lr_mult == 10
        blocks = conv.weight[:, :, 0, 0].detach().split(8, dim=1)
        for s, block in enumerate(blocks):
            assert torch.equal(block, eye * (0.7 if s == i else 0.2))
        assert model.get_submodule(f"encoder.s2.nddr.{t}.bn").momentum == 0.05

    # train away from the init so that a wrong block order would show
    with torch.no_grad():
        for t in TASKS:
            model.get_submodule(f"encoder.s2.nddr.{t}.reduce").weight.normal_()
            bn = model.get_submodule(f"encoder.s2.nddr.{t}.bn")
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    cap = Capture(
        model, [f"encoder.s2.{t}.relu2" for t in TASKS] + [f"heads.{t}.conv0" for t in TASKS]
    )
    model(torch.randn(4, 3, 8, 8))
    cat = torch.cat(
        [cap.outputs[f"encoder.s2.{t}.relu2"] for t in TASKS], dim=1
    )  # fixed task order
    for t in TASKS:
        conv = model.get_submodule(f"encoder.s2.nddr.{t}.reduce")
        bn = model.get_submodule(f"encoder.s2.nddr.{t}.bn")
        z = F.conv2d(cat, conv.weight)
        mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
        expected = F.relu(
            (z - mean[:, None, None])
            / torch.sqrt(var[:, None, None] + bn.eps)
            * bn.weight[:, None, None]
            + bn.bias[:, None, None]
        )
        torch.testing.assert_close(head_input(cap, t), expected)
        # bn_momentum is PyTorch's: running ← (1 − m)·running + m·batch, from 0
        torch.testing.assert_close(bn.running_mean, 0.05 * mean)


def test_nddr_identity_init_equals_separate_columns():
    """With own block I and others 0, task t's unit computes ReLU(BN(x_t)) of its own column.

    In eval mode with fresh statistics (mean 0, var 1, γ 1, β 0) and eps 0, BN is the
    identity, and ReLU is too on a stage that ends in ReLU: then the outputs are exactly
    those of separate columns. In train mode the unit is exactly BN-with-batch-statistics
    then ReLU of the task's own column.
    """
    sharing = {
        "s1": {"type": "nddr", "init": [1.0, 0.0]},
        "s2": {"type": "nddr", "init": [1.0, 0.0]},
    }
    nddr = compile_spec(make_spec(sharing)).model
    separate = compile_spec(make_spec({"s1": "separate", "s2": "separate"})).model
    result = nddr.load_state_dict(separate.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(".nddr." in k for k in result.missing_keys)
    for stage in ("s1", "s2"):
        for t in TASKS:
            nddr.get_submodule(f"encoder.{stage}.nddr.{t}.bn").eps = 0.0
    x = torch.randn(4, 3, 8, 8)
    nddr.eval(), separate.eval()
    got, want = nddr(x), separate(x)
    for t in TASKS:
        assert torch.equal(got[t], want[t])

    nddr.train()
    for stage in ("s1", "s2"):
        for t in TASKS:
            nddr.get_submodule(f"encoder.{stage}.nddr.{t}.bn").eps = 1e-5
    cap = Capture(
        nddr, [f"encoder.s2.{t}.relu2" for t in TASKS] + [f"heads.{t}.conv0" for t in TASKS]
    )
    nddr(x)
    for t in TASKS:
        own = cap.outputs[f"encoder.s2.{t}.relu2"]
        expected = F.relu(F.batch_norm(own, None, None, training=True, eps=1e-5))
        torch.testing.assert_close(head_input(cap, t), expected)


def test_nddr_parameter_count_by_hand():
    # per task: conv T·C → C, 1×1, no bias: 3·8·8 = 192; BN γ, β: 2·8 = 16 → 208
    # hard spec 120 + 312 + 36 = 468; nddr on s2 makes s2 per task (3·312) and adds 3·208
    spec = make_spec({"s2": {"type": "nddr"}})
    counts = count_parameters(compile_spec(spec).model)
    assert counts["total"] == 120 + 3 * 312 + 36 + 3 * 208 == 1716
    # every column of s2 feeds every task through the concat, so they are shared; each
    # task's reduction feeds its head alone
    assert counts["shared"] == 120 + 3 * 312
    assert counts["tasks"] == {"a": 208 + 18, "b": 208 + 9, "c": 208 + 9}


def test_nddr_on_vectors_uses_linear_and_batchnorm1d():
    torch.manual_seed(0)
    stages = {"s1": ["linear(6)", "relu"], "s2": ["linear(5)", "relu"]}
    model = compile_spec(make_spec({"s2": {"type": "nddr"}}, stages=stages, size=(10,))).model
    cap = Capture(
        model, [f"encoder.s2.{t}.relu1" for t in TASKS] + [f"heads.{t}.linear0" for t in TASKS]
    )
    model(torch.randn(7, 10))
    cat = torch.cat([cap.outputs[f"encoder.s2.{t}.relu1"] for t in TASKS], dim=1)
    for i, t in enumerate(TASKS):
        lin = model.get_submodule(f"encoder.s2.nddr.{t}.reduce")
        assert isinstance(lin, torch.nn.Linear) and lin.weight.shape == (5, 15) and lin.bias is None
        assert torch.equal(lin.weight[:, 5 * i : 5 * i + 5], 0.9 * torch.eye(5))
        assert isinstance(model.get_submodule(f"encoder.s2.nddr.{t}.bn"), torch.nn.BatchNorm1d)
        expected = F.relu(F.batch_norm(cat @ lin.weight.T, None, None, training=True, eps=1e-5))
        torch.testing.assert_close(cap.inputs[f"heads.{t}.linear0"][0], expected)


def test_nddr_labels_the_concat_shared_and_each_reduction_by_task():
    model = compile_spec(make_spec({"s2": {"type": "nddr"}})).model
    unit_nodes = [n for n in model.graph.nodes if n.meta.get("mtlc", {}).get("block") == "s2/nddr"]
    (cat,) = [n for n in unit_nodes if n.target is torch.cat]
    assert cat.meta["mtlc"]["owner"] is None and cat.meta["mtlc"]["tasks"] == TASKS
    for n in unit_nodes:
        if n is not cat:
            task = n.target.split(".")[3]
            assert n.meta["mtlc"]["owner"] == task and n.meta["mtlc"]["tasks"] == (task,)


# -- MTAN attention ----------------------------------------------------------------------

ATT_STAGES = {
    "s1": ["conv(4, 3)", "bn", "relu", "maxpool(2)"],
    "s2": ["conv(8, 3)", "bn", "relu", "maxpool(2)"],
}


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)


def _mask(x: torch.Tensor, m: torch.nn.Sequential) -> torch.Tensor:
    """MTAN's attention layer written out: σ(BN(conv1×1(ReLU(BN(conv1×1(x))))))."""
    h = F.relu(_bn(F.conv2d(x, m[0].weight, m[0].bias), m[1]))
    return torch.sigmoid(_bn(F.conv2d(h, m[3].weight, m[3].bias), m[4]))


def test_attention_masks_gate_the_trunk_and_chain_per_task():
    torch.manual_seed(0)
    spec = make_spec({"s1": "attention", "s2": "attention"}, stages=ATT_STAGES, size=(3, 16, 16))
    model = compile_spec(spec).model
    masks = [f"encoder.{s}.attention.{t}" for s in ("s1", "s2") for t in TASKS]
    trunk = ["encoder.s1.shared.maxpool3", "encoder.s2.shared.maxpool3"]
    cap = Capture(model, masks + trunk + [f"heads.{t}.conv0" for t in TASKS])
    model(torch.randn(4, 3, 16, 16))
    u1, u2 = (cap.outputs[name] for name in trunk)
    refine = model.get_submodule("encoder.s2.refine")
    for t in TASKS:
        for s in ("s1", "s2"):
            a = cap.outputs[f"encoder.{s}.attention.{t}"]
            assert a.min() >= 0 and a.max() <= 1
        # stage 1: the mask reads the trunk feature alone
        a1 = _mask(u1, model.get_submodule(f"encoder.s1.attention.{t}"))
        torch.testing.assert_close(cap.outputs[f"encoder.s1.attention.{t}"], a1)
        p1 = a1 * u1
        # stage 2: [u_2, pool(refine(p_1))], refine = 3×3 conv-BN-ReLU shared by the tasks
        refined = F.max_pool2d(
            F.relu(_bn(F.conv2d(p1, refine[0].weight, refine[0].bias, padding=1), refine[1])), 2
        )
        a2 = _mask(
            torch.cat([u2, refined], dim=1), model.get_submodule(f"encoder.s2.attention.{t}")
        )
        torch.testing.assert_close(head_input(cap, t), a2 * u2)


def test_attention_chain_is_per_task():
    """Changing task a's first mask changes a's prediction and nobody else's."""
    torch.manual_seed(0)
    spec = make_spec({"s1": "attention", "s2": "attention"}, stages=ATT_STAGES, size=(3, 16, 16))
    model = compile_spec(spec).model.eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    with torch.no_grad():
        model.get_submodule("encoder.s1.attention.a")[3].bias.add_(1.0)
    after = model(x)
    assert not torch.allclose(after["a"], before["a"])
    assert torch.equal(after["b"], before["b"]) and torch.equal(after["c"], before["c"])


def test_attention_parameter_count_by_hand():
    # trunk: s1 conv 3·4·9+4 = 112, bn 8 → 120; s2 conv 4·8·9+8 = 296, bn 16 → 312; heads 36
    # s1 mask per task (C=4, in 4, hidden 4): conv 4·4+4 = 20, bn 8, conv 20, bn 8 → 56
    # s2 mask per task (C=8, in 2·8, hidden 2): conv 16·2+2 = 34, bn 4, conv 2·8+8 = 24, bn 16 → 78
    # s2 refine, once: conv 3×3 4→8 = 4·8·9+8 = 296, bn 16 → 312
    spec = make_spec(
        {"s1": "attention", "s2": {"type": "attention", "hidden": 2}},
        stages=ATT_STAGES,
        size=(3, 16, 16),
    )
    counts = count_parameters(compile_spec(spec).model)
    assert counts["total"] == 120 + 312 + 36 + 3 * 56 + 3 * 78 + 312 == 1182
    assert counts["tasks"]["a"] == 18 + 56 + 78


def test_attention_refine_counts_as_shared():
    spec = make_spec({"s1": "attention", "s2": "attention"}, stages=ATT_STAGES, size=(3, 16, 16))
    counts = count_parameters(compile_spec(spec).model)
    assert counts["shared"] == 120 + 312 + 312


def test_attention_labels():
    spec = make_spec({"s1": "attention", "s2": "attention"}, stages=ATT_STAGES, size=(3, 16, 16))
    model = compile_spec(spec).model
    refined = []
    for n in model.graph.nodes:
        label = n.meta.get("mtlc", {})
        if label.get("block") == "s2/attention/refine":
            # the shared refinement: no owner, one call per task on that task's feature
            assert n.target == "encoder.s2.refine" and label["owner"] is None, n
            refined += label["tasks"]
        elif label.get("block", "").startswith("s2/attention/"):
            task = label["block"].split("/")[-1]
            assert label["owner"] == task and label["tasks"] == (task,), n
    assert refined == list(TASKS)
    muls = [n for n in model.graph.nodes if n.target is torch.mul]
    assert len(muls) == 6  # the gating a ⊙ u, per task and stage, is its own observable node


def test_attention_blocks_hold_equal_gates_and_one_refinement():
    """Per-block parameters: the shared refinement is its own block, not the first gate's."""
    spec = make_spec({"s1": "attention", "s2": "attention"}, stages=ATT_STAGES, size=(3, 16, 16))
    compiled = compile_spec(spec)
    blocks = count_parameters(compiled.supervised)["blocks"]
    # s1 gate (C=4, in 4, hidden 4): conv 4·4+4 = 20, bn 8, conv 20, bn 8 → 56
    # s2 gate (C=8, in 2·8, hidden 8): conv 16·8+8 = 136, bn 16, conv 8·8+8 = 72, bn 16 → 240
    # s2 refine: 3×3 conv 4→8 with bias 4·8·9+8 = 296, BN 2·8 = 16 → 312
    for t in TASKS:
        assert blocks[f"s1/attention/{t}"] == 56
        assert blocks[f"s2/attention/{t}"] == 240
    assert blocks["s2/attention/refine"] == 312
    assert "s1/attention/refine" not in blocks  # the first attention stage has none
    g = compiled.topology.graph
    assert g.nodes["s2/attention/refine"]["role"] == "refine"
    assert g.nodes["s2/attention/refine"]["owner"] is None
    for t in TASKS:
        assert g.nodes[f"s2/attention/{t}"]["role"] == "gate"
        assert set(g.predecessors(f"s2/attention/{t}")) == {"s2/shared", "s2/attention/refine"}
        assert g.edges[f"s1/attention/{t}", "s2/attention/refine"]["tasks"] == (t,)
        assert g.edges["s2/attention/refine", f"s2/attention/{t}"]["tasks"] == (t,)


def test_attention_on_resblocks():
    torch.manual_seed(0)
    stages = {"s1": ["conv(4, 3)", "relu"], "s2": ["resblock(8, stride=2)"], "s3": ["resblock(8)"]}
    spec = make_spec({s: "attention" for s in stages}, stages=stages, size=(3, 16, 16))
    model = compile_spec(spec).model
    out = model(torch.randn(2, 3, 16, 16))
    assert out["a"].shape == (2, 2, 8, 8)
    sum(o.sum() for o in out.values()).backward()
    # s2 halves the size (refine pools by 2), s3 keeps it (no pooling)
    assert isinstance(model.get_submodule("encoder.s2.refine")[-1], torch.nn.MaxPool2d)
    assert isinstance(model.get_submodule("encoder.s3.refine")[-1], torch.nn.ReLU)
    for name, p in model.named_parameters():
        assert p.grad is not None, name


# -- located errors ----------------------------------------------------------------------


def located(write_spec, text: str, *, compile_it: bool = False) -> str:
    path = write_spec(text)
    with pytest.raises(SpecError) as info:
        compile_spec(path) if compile_it else load_spec(path)
    return str(info.value).replace(str(path), "spec.yaml")


HEADER = """\
mtlc: 1
name: bad
input: {image: [3, 12, 12]}
"""
TASKS_YAML = """\
tasks:
  a: {head: [conv(2, 1)], loss: cross_entropy}
  b: {head: [conv(1, 1)], loss: l1}
"""


def test_attention_on_vectors_is_a_located_error(write_spec):
    text = HEADER.replace("[3, 12, 12]", "[10]") + (
        "encoder:\n  stages:\n    s1: [linear(8), relu]\n  sharing:\n    s1: attention\n"
    )
    text += TASKS_YAML.replace("conv(2, 1)", "linear(2)").replace("conv(1, 1)", "linear(1)")
    assert (
        "spec.yaml:8:9: encoder.sharing.s1: attention needs feature maps [C, H, W]; stage 's1' outputs [8]"
        in located(write_spec, text)
    )


def test_attention_after_separate_stages_is_a_located_error(write_spec):
    text = HEADER + (
        "encoder:\n  stages:\n    s1: [conv(4, 3)]\n    s2: [conv(4, 3)]\n"
        "  sharing:\n    s1: separate\n    s2: attention\n"
    )
    message = located(write_spec, text + TASKS_YAML)
    assert (
        "spec.yaml:10:9: encoder.sharing.s2: stage 's2' is 'attention' (attention needs one shared trunk)"
        in message
    )


def test_attention_with_non_integer_pooling_is_a_located_error(write_spec):
    # 12×12 → 8×8 (a 5×5 conv without padding): no integer max-pool maps one onto the other
    text = HEADER + (
        "encoder:\n  stages:\n    s1: [conv(4, 3)]\n    s2: [conv(4, 5, padding=0)]\n"
        "  sharing:\n    s1: attention\n    s2: attention\n"
    )
    message = located(write_spec, text + TASKS_YAML, compile_it=True)
    assert message.startswith("spec.yaml:10:9: encoder.sharing.s2: attention cannot carry")
    assert "[4, 12, 12] to stage 's2' ([4, 8, 8])" in message


def test_attention_task_named_refine_is_a_located_error(write_spec):
    # `s2/attention/refine` is the shared refinement's node id; a task may not take it
    text = HEADER + (
        "encoder:\n  stages:\n    s1: [conv(4, 3)]\n    s2: [conv(4, 3)]\n"
        "  sharing:\n    s1: attention\n    s2: attention\n"
    )
    message = located(write_spec, text + TASKS_YAML.replace("  b:", "  refine:"), compile_it=True)
    assert message.startswith("spec.yaml:13:3: tasks.refine: task name 'refine'")


def test_nddr_on_a_non_image_non_vector_feature_is_a_located_error(write_spec):
    text = HEADER.replace("[3, 12, 12]", "[4, 10]") + (
        "encoder:\n  stages:\n    s1: [linear(8)]\n  sharing:\n    s1: nddr\n"
    )
    text += TASKS_YAML.replace("conv(2, 1)", "flatten, linear(2)").replace(
        "conv(1, 1)", "flatten, linear(1)"
    )
    message = located(write_spec, text, compile_it=True)
    assert message.startswith(
        "spec.yaml:8:9: encoder.sharing.s1: nddr needs feature maps [C, H, W] or vectors [F]"
    )


# -- the specs of this layer, and torch.compile -----------------------------------------


@pytest.mark.parametrize("name", ["cross_stitch", "nddr", "attention", "mixed"])
def test_spec_forward_and_backward(name):
    torch.manual_seed(0)
    compiled = compile_spec(SPECS / f"{name}.yaml")
    assert (SPECS / f"{name}.yaml").read_text().startswith("# ")
    out = compiled.supervised(torch.rand(2, 3, 64, 64))
    assert out["seg"].shape == (2, 5, 64, 64) and out["normal"].shape == (2, 3, 64, 64)
    sum(v.float().mean() for v in out.values()).backward()
    for pname, p in compiled.supervised.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_mixed_spec_has_hard_then_grouped_cross_stitch_then_nddr():
    compiled = compile_spec(SPECS / "mixed.yaml")
    g = compiled.topology.graph
    assert g.nodes["s1/shared"]["kind"] == "block"
    assert {"s2/cross_stitch/seg+edge", "s2/cross_stitch/depth+normal", "s3/nddr"} <= set(g)
    model = compiled.supervised
    assert model.get_submodule("encoder.s2.cross_stitch_seg_edge").alpha.shape == (2, 2, 32)
    assert model.get_submodule("encoder.s3.nddr.edge.reduce").weight.shape == (64, 4 * 64, 1, 1)


def _compile_cases() -> list:
    att = make_spec({"s1": "attention", "s2": "attention"}, stages=ATT_STAGES, size=(3, 16, 16))
    return [
        pytest.param(
            make_spec({"s1": {"type": "cross_stitch"}, "s2": {"type": "cross_stitch"}}),
            id="cross_stitch",
        ),
        pytest.param(make_spec({"s1": {"type": "nddr"}, "s2": {"type": "nddr"}}), id="nddr"),
        pytest.param(att, id="attention"),
    ]


@pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile unsupported here"
)
@pytest.mark.parametrize("spec", _compile_cases())
def test_torch_compile_aot_eager_matches_eager(spec):
    torch.manual_seed(0)
    model = compile_spec(spec).model.eval()
    size = spec["input"]["image"]
    x = torch.randn(2, *size)
    eager = model(x)
    compiled = torch.compile(model, backend="aot_eager")(x)
    for t in TASKS:
        torch.testing.assert_close(compiled[t], eager[t])
