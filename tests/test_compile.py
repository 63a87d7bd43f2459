"""spec → GraphModule: outputs, labels, parameter counts by hand, saving, code."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx

import mtlc
from mtlc.compiler import SHARED_KEY, compile_spec
from mtlc.compiler.labels import count_parameters, shared_parameters
from tests.conftest import SMALL

GROUPS = """\
mtlc: 1
name: groups
input: {x: [10]}
encoder:
  stages:
    s1: [linear(8), relu]
    s2: [linear(6), relu]
    s3: [linear(4), relu]
  sharing:
    s2: {type: hard, groups: [[a, b, d], [c]]}
    s3: separate
tasks:
  a: {head: [linear(2)], loss: cross_entropy}
  b: {head: [linear(1)], loss: mse}
  c: {head: [linear(1)], loss: mse}
  d: {head: [linear(1)], loss: mse, auxiliary: true}
"""


def test_forward_returns_every_main_task(small_spec):
    model = mtlc.compile(small_spec)
    assert isinstance(model, fx.GraphModule)
    out = model(torch.randn(2, 3, 16, 16))
    assert set(out) == {"seg", "depth"}
    assert out["seg"].shape == (2, 4, 16, 16) and out["depth"].shape == (2, 1, 16, 16)


def test_small_spec_parameters_by_hand(small_spec):
    # s1: conv 3->8 k3 = 8*3*9 + 8 = 224, bn(8) = 16  -> 240 shared
    # s2: conv 8->16 k3 = 16*8*9 + 16 = 1168, bn(16) = 32 -> 1200 shared
    # seg head conv 16->4 k1 = 68 ; depth head conv 16->1 k1 = 17
    counts = count_parameters(mtlc.compile(small_spec))
    assert counts["shared"] == 240 + 1200
    assert counts["tasks"] == {"seg": 68, "depth": 17}
    assert counts["total"] == 240 + 1200 + 68 + 17


def test_groups_form_a_tree_and_count_by_hand(write_spec):
    compiled = compile_spec(write_spec(GROUPS))
    topo = compiled.topology
    assert set(topo.graph.successors("s1/shared")) == {"s2/a+b+d", "s2/c"}
    assert set(topo.graph.successors("s2/a+b+d")) == {"s3/a", "s3/b", "s3/d"}
    counts = count_parameters(compiled.supervised)
    s1 = 10 * 8 + 8  # used by all four tasks
    s2 = 8 * 6 + 6  # one copy for a+b+d (shared), one for c alone
    s3 = 6 * 4 + 4  # one copy per task
    assert counts["shared"] == s1 + s2
    assert counts["tasks"] == {"a": s3 + 4 * 2 + 2, "b": s3 + 5, "c": s2 + s3 + 5, "d": s3 + 5}
    assert counts["total"] == s1 + 2 * s2 + 4 * s3 + 10 + 3 * 5


def test_auxiliary_task_is_trained_but_not_an_output(write_spec):
    compiled = compile_spec(write_spec(GROUPS))
    x = torch.randn(3, 10)
    assert set(compiled.model(x)) == {"a", "b", "c"}
    sup = compiled.supervised(x)
    assert set(sup) == {"a", "b", "c", "d"}
    assert not any("heads.d" in name for name, _ in compiled.model.named_parameters())
    # the two modules share weights: one optimizer step on `supervised` moves `model`
    for key in ("a", "b", "c"):
        torch.testing.assert_close(sup[key], compiled.model(x)[key])


def test_shared_representation_is_exposed_for_hard_encoders(small_spec):
    compiled = compile_spec(small_spec)
    x = torch.randn(2, 3, 16, 16)
    out = compiled.supervised(x)
    assert out[SHARED_KEY].shape == (2, 16, 8, 8)
    grad = torch.autograd.grad(out["seg"].sum(), out[SHARED_KEY])[0]
    assert grad.shape == out[SHARED_KEY].shape


def test_no_shared_representation_after_separate_stages(write_spec):
    assert SHARED_KEY not in compile_spec(write_spec(GROUPS)).supervised(torch.randn(2, 10))


def test_every_node_is_labelled(write_spec):
    compiled = compile_spec(write_spec(GROUPS))
    for gm in (compiled.model, compiled.supervised):
        for node in gm.graph.nodes:
            if node.op == "output":
                continue
            label = node.meta["mtlc"]
            assert set(label) >= {"block", "stage", "kind", "owner", "tasks"}
            assert label["block"] in compiled.topology.graph
    labels = {
        n.target: n.meta["mtlc"] for n in compiled.supervised.graph.nodes if n.op == "call_module"
    }
    assert labels["encoder.s1.shared.linear0"]["tasks"] == ("a", "b", "c", "d")
    assert (
        labels["encoder.s2.a_b_d.linear0"]["tasks"] == ("a", "b", "d")
        and labels["encoder.s2.a_b_d.linear0"]["owner"] == "a+b+d"
    )
    final = {n.target: n.meta["mtlc"] for n in compiled.model.graph.nodes if n.op == "call_module"}
    # the final model's labels name no auxiliary task
    assert final["encoder.s1.shared.linear0"]["tasks"] == ("a", "b", "c")
    assert labels["heads.c.linear0"] == {
        "block": "head/c",
        "stage": None,
        "kind": "head",
        "owner": "c",
        "tasks": ("c",),
    }


def test_shared_parameters_are_those_two_tasks_use(write_spec):
    gm = compile_spec(write_spec(GROUPS)).supervised
    names = {id(p): n for n, p in gm.named_parameters()}
    assert sorted(names[id(p)] for p in shared_parameters(gm)) == sorted(
        [
            "encoder.s1.shared.linear0.weight",
            "encoder.s1.shared.linear0.bias",
            "encoder.s2.a_b_d.linear0.weight",
            "encoder.s2.a_b_d.linear0.bias",
        ]
    )


def test_graph_is_built_node_by_node_not_traced(small_spec):
    model = mtlc.compile(small_spec)
    targets = [n.target for n in model.graph.nodes if n.op == "call_module"]
    assert targets[:4] == [
        "encoder.s1.shared.conv0",
        "encoder.s1.shared.bn1",
        "encoder.s1.shared.relu2",
        "encoder.s1.shared.maxpool3",
    ]
    assert "self.heads.seg.conv0(" in model.code
    assert not any(isinstance(m, torch.nn.modules.lazy.LazyModuleMixin) for m in model.modules())


def test_saved_model_loads_back_and_runs(small_spec, tmp_path):
    model = mtlc.compile(small_spec).eval()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    x = torch.randn(2, 3, 16, 16)
    for key, value in model(x).items():
        torch.testing.assert_close(loaded(x)[key], value)


def test_backward_reaches_every_parameter(write_spec):
    torch.manual_seed(0)
    gm = compile_spec(write_spec(GROUPS)).supervised
    out = gm(torch.randn(16, 10))
    sum(v.float().pow(2).mean() for k, v in out.items() if not k.startswith("@")).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gm.parameters())


def test_getitem_free_plain_graph(small_spec):
    assert not any(n.target is operator.getitem for n in mtlc.compile(small_spec).graph.nodes)


def test_dict_spec_compiles():
    import yaml

    model = mtlc.compile(yaml.safe_load(SMALL))
    assert set(model(torch.randn(1, 3, 16, 16))) == {"seg", "depth"}


def test_torch_compile_default_backend_matches_eager(small_spec):
    pytest.importorskip("torch._dynamo")
    model = mtlc.compile(small_spec).eval()
    x = torch.randn(2, 3, 16, 16)
    try:
        compiled = torch.compile(model)
        got = compiled(x)
    except Exception as exc:  # a platform without a working C++ compiler
        pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}")
    for key, value in model(x).items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5)


def test_attention_encoder_feeds_a_distillation_decoder():
    from pathlib import Path

    spec = Path(__file__).parent.parent / "specs" / "attention_distillation.yaml"
    compiled = compile_spec(spec)
    g = compiled.topology.graph
    # each task's decoder features read that task's last attended feature, not the trunk
    for t in ("seg", "depth", "normal"):
        assert list(g.predecessors(f"decoder/{t}/features")) == [f"s3/attention/{t}"]
    assert compiled.topology.shared_repr is None  # after attention the tasks' features differ
    x = torch.randn(2, 3, 64, 64)
    out = compiled.supervised(x)
    assert set(out) == {"seg", "depth", "normal", "seg:initial", "depth:initial", "normal:initial"}
    gm = compiled.supervised
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    features = nodes["decoder.seg.features.conv0"]
    gate = features.args[0]  # the attended feature: mask ⊙ trunk
    assert gate.target is torch.mul and gate.meta["mtlc"]["block"] == "s3/attention/seg"
    sum(v.float().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in gm.parameters())


def test_weights_too_large_to_allocate_are_a_located_error(write_spec, monkeypatch):
    """`conv(100000000)` passes shape inference; its allocation failing must not be a traceback.

    The allocator's refusal is simulated (really asking for ~30 GB would depend on the
    machine's memory and overcommit policy).
    """
    from mtlc.compiler import emitter
    from mtlc.errors import SpecError

    real = emitter.build_module

    def refuse_s2(layer, shape):
        if shape[0] == 8 and layer.name == "conv":  # s2's conv reads s1's 8 channels
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                "allocate memory: you tried to allocate 28800000000 bytes. Error code 12"
            )
        return real(layer, shape)

    monkeypatch.setattr(emitter, "build_module", refuse_s2)
    path = write_spec(SMALL)
    with pytest.raises(SpecError) as info:
        compile_spec(path)
    assert str(info.value) == (
        f"{path}:7:9: encoder.stages.s2: not enough memory for the weights of 's2/shared' "
        "(26.8 GiB for one tensor)"
    )


def test_other_runtime_errors_are_not_disguised_as_memory(small_spec, monkeypatch):
    from mtlc.compiler import emitter

    def broken(layer, shape):
        raise RuntimeError("a bug")

    monkeypatch.setattr(emitter, "build_module", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        compile_spec(small_spec)
