"""Column fusion: the fused model is the unfused one, run as fewer, wider ops.

Equality is checked in float64, so rounding cannot hide a wrong lowering: outputs,
every parameter's gradient and the BatchNorm running statistics agree to 1e-9
(absolute and relative) in training mode and in eval mode, for every spec in specs/
and for random mixes of sharing types, head shapes and layer kinds, under both device
policies (CPU: no grouped convolutions; GPU: everything the rules allow).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from mtlc.cli import main
from mtlc.compiler import compile_spec
from mtlc.compiler.fuse import FUSED_ROOT, fuse
from mtlc.compiler.labels import shared_parameters

SPECS = sorted(Path(__file__).resolve().parent.parent.glob("specs/*.yaml"))
TOL = {"rtol": 1e-9, "atol": 1e-9}


pytestmark = pytest.mark.usefixtures("one_thread")


def fused_ops(gm: torch.fx.GraphModule) -> list[str]:
    return [
        n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("fused.")
    ]


def random_input(spec, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, *spec.input_shape, dtype=torch.float64)


def run_and_grad(gm: torch.fx.GraphModule, x: torch.Tensor) -> tuple[dict, dict]:
    """Outputs and every parameter's gradient of a weighted sum of all outputs."""
    gm.zero_grad(set_to_none=True)
    out = gm(x)
    loss = sum((i + 1) * v.double().sin().sum() for i, v in enumerate(out.values()))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in gm.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def assert_same_model(spec_source, device: str, seed: int = 0) -> int:
    """Fused and unfused agree on outputs, gradients and running stats; returns #fused ops."""
    torch.manual_seed(seed)
    compiled = compile_spec(spec_source)
    plain = compiled.supervised.double()
    with torch.no_grad():  # mixing weights off their diagonal init, so wiring errors show
        for name, p in plain.named_parameters():
            if "cross_stitch" in name or "nddr" in name:
                p.add_(torch.rand_like(p) * 0.5)
    fused = fuse(plain, device)
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()]
    x = random_input(compiled.spec)
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    for mode in ("train", "eval"):
        plain.train(mode == "train")
        fused.train(mode == "train")
        plain.load_state_dict(start)
        torch.manual_seed(seed)  # dropout (an ASPP's) draws the same masks in both
        want, want_grads = run_and_grad(plain, x)
        want_state = {k: v.clone() for k, v in plain.state_dict().items()}
        plain.load_state_dict(start)
        torch.manual_seed(seed)
        got, got_grads = run_and_grad(fused, x)
        assert want.keys() == got.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], **TOL)
        assert want_grads.keys() == got_grads.keys()
        for k in want_grads:
            torch.testing.assert_close(got_grads[k], want_grads[k], **TOL, msg=k)
        for k, v in plain.state_dict().items():  # running statistics, num_batches_tracked
            torch.testing.assert_close(v, want_state[k], **TOL, msg=k)
    return len(fused_ops(fused))


def small(path: Path) -> dict:
    """A spec at a small input size when it is a backbone's (ResNet-50 at 288×384 in float64
    is minutes); the fusion is the same at any size."""
    import yaml

    spec = yaml.safe_load(path.read_text())
    if "backbone" in spec["encoder"]:
        spec["input"] = {name: [3, 16, 16] for name in spec["input"]}
    return spec


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_spec_fused_equals_unfused(spec, device):
    assert_same_model(small(spec), device)


def test_cross_stitch_columns_fuse_completely_for_a_gpu():
    gm = fuse(compile_spec(SPECS[0].parent / "cross_stitch.yaml").model, "cuda")
    code = gm.code
    # 3 stages × (conv, bn, relu[, pool]) + 3 mixes + the heads' shared-width conv and relu
    assert len(fused_ops(gm)) == 16
    assert "self.encoder.s2" not in code and "cross_stitch(" in code.replace("fused.", "")
    # the heads' last convs differ in width (5, 1, 3 outputs): they read views of the stack
    assert code.count("torch.chunk") == 1 and "self.heads.seg.conv2" in code


def test_cpu_policy_only_merges_copies_computing_one_value():
    # on the CPU stacking costs more than it saves (see Fused.pays): cross-stitch stays
    # as it is, while T weightless copies of one tensor (a pool after a hard stage) run once
    assert not fused_ops(fuse(compile_spec(SPECS[0].parent / "cross_stitch.yaml").model, "cpu"))
    spec = random_spec(10)  # hard s0, then per-task adaptive_avgpool + flatten copies
    plain = compile_spec(spec).model
    gm = fuse(plain, "cpu")
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert not fused_ops(gm)
    assert calls.count("encoder.v.t0.adaptive_avgpool0") == 1
    assert not any(c.startswith("encoder.v.t1.adaptive") for c in calls)
    assert len(calls) == len([n for n in plain.graph.nodes if n.op == "call_module"]) - 6


def unfused_and_fused_flops(name: str) -> list[int]:
    """FLOPs of specs/<name>.yaml's model on a 2×3×64×64 input, unfused then fused for cuda."""
    gm = compile_spec(SPECS[0].parent / f"{name}.yaml").model
    fused = fuse(gm, "cuda")
    x = torch.randn(2, 3, 64, 64)
    counts = []
    for m in (gm, fused):
        with FlopCounterMode(display=False) as fc:
            m(x)
        counts.append(fc.get_total_flops())
    return counts


def test_grouped_conv_has_the_groups_and_flops_of_the_separate_convs():
    counts = unfused_and_fused_flops("nddr")
    # nddr has no mix einsum: every FLOP is a conv's, and they are the same multiply-adds
    assert counts[0] == counts[1] > 0


def test_cross_stitch_mix_flops_are_the_only_difference():
    counts = unfused_and_fused_flops("cross_stitch")
    # the unfused mix is element-wise (counted as other ops); the einsum is a batched
    # matmul: 2·N·T·T·C·H·W per unit (s1: 16 ch at 32², s2: 32 at 16², s3: 64 at 16²)
    mix = sum(2 * 2 * 3 * 3 * c * h * h for c, h in ((16, 32), (32, 16), (64, 16)))
    assert counts[1] - counts[0] == mix


def test_profile_is_the_same_with_fusion_on_or_off():
    from mtlc.profile import summarize

    spec = SPECS[0].parent / "cross_stitch.yaml"
    on = compile_spec(spec, fuse=True, device="cuda")
    off = compile_spec(spec)
    assert on.unfused is not None and off.unfused is None
    # profile attributes every op of the labelled graph; fusion keeps that graph
    assert summarize(off, batch=2) == summarize(type(on)(*on.plain, on.topology), batch=2)


def test_checkpoints_cross_load_and_shared_parameters_are_the_same():
    spec = SPECS[0].parent / "mixed.yaml"
    torch.manual_seed(1)
    a = compile_spec(spec, fuse=True, device="cuda")
    torch.manual_seed(2)
    b = compile_spec(spec)
    buffer = io.BytesIO()
    torch.save(a.model.state_dict(), buffer)  # fused → unfused, through a file format
    buffer.seek(0)
    b.model.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.randn(2, 3, 64, 64)
    a.model.eval()
    b.model.eval()
    for k, v in a.model(x).items():
        torch.testing.assert_close(v, b.model(x)[k], rtol=1e-5, atol=1e-5)
    # and back: unfused → fused
    with torch.no_grad():
        for p in b.model.parameters():
            p.mul_(0.5)
    a.model.load_state_dict(b.model.state_dict(), strict=True)
    for k, v in a.model(x).items():
        torch.testing.assert_close(v, b.model(x)[k], rtol=1e-5, atol=1e-5)
    names = {id(p): n for n, p in a.supervised.named_parameters()}
    shared = [names[id(p)] for p in shared_parameters(a.plain[1])]
    assert shared == [
        dict((id(p), n) for n, p in b.supervised.named_parameters())[id(p)]
        for p in shared_parameters(b.supervised)
    ]


def test_fused_model_pickles_and_moves_with_its_members(tmp_path):
    gm = compile("cross_stitch.yaml")
    path = tmp_path / "m.pt"
    torch.save(gm, path)
    loaded = torch.load(path, weights_only=False)
    x = torch.randn(2, 3, 64, 64)
    gm.eval()
    loaded.eval()
    for k, v in gm(x).items():
        torch.testing.assert_close(loaded(x)[k], v)
    # the loaded copy's fused ops read the loaded copy's parameters, not the original's
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    with torch.no_grad():
        assert all(not torch.equal(v, gm(x)[k]) for k, v in loaded(x).items())
    double = gm.double()
    assert double(x.double())["seg"].dtype == torch.float64


def compile(name: str) -> torch.fx.GraphModule:
    import mtlc

    return mtlc.compile(SPECS[0].parent / name, device="cuda")


def test_fuse_off_by_argument_and_by_spec():
    import mtlc

    spec = SPECS[0].parent / "cross_stitch.yaml"
    assert fused_ops(mtlc.compile(spec, device="cuda"))
    assert not fused_ops(mtlc.compile(spec, fuse=False))
    assert not fused_ops(mtlc.compile(spec, overrides=["train.fuse=false"], device="cuda"))


def test_build_code_shows_the_fused_code():
    runner = CliRunner()
    spec = str(SPECS[0].parent / "cross_stitch.yaml")
    fused = runner.invoke(main, ["build", spec, "--code", "--device", "cuda"])
    assert fused.exit_code == 0, fused.output
    assert f"self.{FUSED_ROOT}.encoder_s2_conv0(" in fused.output
    plain = runner.invoke(main, ["build", spec, "--code", "--no-fuse"])
    assert plain.exit_code == 0 and "fused" not in plain.output
    assert "self.encoder.s2.seg.conv0(" in plain.output
    by_spec = runner.invoke(main, ["build", spec, "--code", "--set", "train.fuse=false"])
    assert by_spec.exit_code == 0 and "fused" not in by_spec.output


# -- random mixes -----------------------------------------------------------------------

SHARING = ["hard", "separate", "cross_stitch", "cross_stitch_scalar", "nddr"]
IMAGE_LAYERS = ["conv(6, 3)", "bn", "relu", "ln", "gelu", "avgpool(2)", "deconv(6, 3, stride=1)"]


def random_spec(seed: int) -> dict:
    rng = random.Random(seed)
    tasks = rng.randint(2, 4)
    stages = {}
    sharing = {}
    split = False  # once the tasks have their own columns, no stage may be hard again
    for i in range(rng.randint(1, 3)):
        layers = ["conv(6, 3)"] + rng.sample(IMAGE_LAYERS, rng.randint(1, 3))
        stages[f"s{i}"] = layers
        kind = rng.choice(SHARING[1:] if split else SHARING)
        split = kind != "hard"
        if kind == "cross_stitch_scalar":
            sharing[f"s{i}"] = {"type": "cross_stitch", "granularity": "scalar"}
        else:
            sharing[f"s{i}"] = kind
    if rng.random() < 0.4:  # vector features: flatten + linear stages and heads
        stages["v"] = ["adaptive_avgpool(2)", "flatten", "linear(12)", "relu"]
        sharing["v"] = rng.choice(["separate", "cross_stitch", "nddr"])
        stages["v2"] = ["linear(8)", rng.choice(["bn", "ln", "tanh"])]
        sharing["v2"] = rng.choice(["separate", "cross_stitch", "nddr"])
        heads = {
            f"t{k}": {
                "head": ["linear(8)", "relu", f"linear({rng.choice([3, 3, 4])})"],
                "loss": "mse",
            }
            for k in range(tasks)
        }
    else:
        same = rng.random() < 0.5
        heads = {
            f"t{k}": {
                "head": ["conv(4, 3)", "relu", f"conv({2 if same else k + 1}, 1)"],
                "loss": "mse",
            }
            for k in range(tasks)
        }
    return {
        "mtlc": 1,
        "name": f"mix{seed}",
        "input": {"image": [3, 8, 8]},
        "encoder": {"stages": stages, "sharing": sharing},
        "tasks": heads,
    }


@pytest.mark.parametrize("seed", range(12))
def test_random_mixes_fused_equal_unfused(seed):
    spec = random_spec(seed)
    assert_same_model(spec, "cpu", seed)
    # every mix has equal first head layers at least, so a GPU target always fuses
    assert assert_same_model(spec, "cuda", seed) > 0


def test_frozen_stages_keep_their_hooked_batch_norms_unfused():
    import yaml

    spec = yaml.safe_load((SPECS[0].parent / "cross_stitch.yaml").read_text())
    spec["encoder"]["freeze"] = ["s1"]
    assert assert_same_model(spec, "cuda") > 0
    gm = fuse(compile_spec(spec).model, "cuda")
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    # s1's batch norms carry the freeze hook: called one by one, in running-stats mode
    assert {"encoder.s1.seg.bn1", "encoder.s1.depth.bn1", "encoder.s1.normal.bn1"} <= set(calls)
