"""Decoder-focused sharing points: PAD-Net distillation, PAP-Net affinity, JTRL recursion.

Each unit is checked against its paper's formula recomputed by hand, in isolation and
inside a compiled spec (features captured with hooks, weights read from the state dict);
plus wiring (who reads whom, in which order), parameter counts worked out by hand, the
supervised outputs, torch.compile, and located errors for bad specs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mtlc
from mtlc.compiler import compile_spec
from mtlc.errors import SpecError
from mtlc.sharing.affinity import Propagation, pixel_affinity
from mtlc.sharing.distillation import DistillationGate
from mtlc.sharing.recursive import TaskAttention
from mtlc.spec import load_spec, parse_spec_text

SPECS = Path(__file__).resolve().parents[1] / "specs"
DECODER_SPECS = ["distillation", "affinity", "recursive"]

# A tiny spec: input [3, 8, 8], one stage conv(4, 3)-bn-relu (8×8×4), decoder features
# C = 4. Heads keep 8×8 except `a`, which upsamples to 16×16 so that the initial and
# per-step predictors must resize to the head's output.
TASKS = {
    "a": {"head": ["conv(2, 1)", "upsample(2)"], "loss": "cross_entropy"},
    "b": {"head": ["conv(1, 1)"], "loss": "l1"},
    "c": {"head": ["conv(3, 1)"], "loss": "cosine"},
    "e": {"head": ["conv(1, 1)"], "loss": "bce", "auxiliary": True},
}


def tiny(decoder: dict, tasks: str = "abe") -> dict:
    return {
        "mtlc": 1,
        "name": "tiny",
        "input": {"image": [3, 8, 8]},
        "encoder": {"stages": {"s1": ["conv(4, 3)", "bn", "relu"]}},
        "tasks": {t: TASKS[t] for t in tasks},
        "decoder": {"features": 4} | decoder,
    }


def n_params(module: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine weights, so eval-mode BN is not ~identity."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


class Capture:
    """Outputs (or inputs) of named submodules of a compiled model, via hooks."""

    def __init__(self, model: torch.nn.Module, outputs=(), inputs=()):
        self.values: dict[str, object] = {}
        self.handles = []
        for name in outputs:
            self.handles.append(model.get_submodule(name).register_forward_hook(self._out(name)))
        for name in inputs:
            self.handles.append(model.get_submodule(name).register_forward_pre_hook(self._in(name)))

    def _out(self, name):
        def hook(mod, args, out):
            self.values.setdefault(name, []).append(out.detach())

        return hook

    def _in(self, name):
        def hook(mod, args):
            self.values["in:" + name] = args[0].detach()

        return hook

    def __getitem__(self, name):
        return self.values[name]


def run_eval(spec: dict, outputs=(), inputs=(), seed: int = 0):
    """Compile, randomise BN, run the supervised model in eval mode; returns (compiled, out, hooks)."""
    torch.manual_seed(seed)
    compiled = compile_spec(spec)
    model = compiled.supervised.eval()
    randomize_bn(model)
    cap = Capture(model, outputs, inputs)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 8))
    return compiled, out, cap


def features_of(tasks: str) -> list[str]:
    return [f"decoder.{t}.features.relu2" for t in tasks]


def conv(x: torch.Tensor, sd: dict, name: str, padding: int) -> torch.Tensor:
    bias = sd.get(name + ".bias")
    return F.conv2d(x, sd[name + ".weight"], bias, padding=padding)


# ===================================================================== distillation ====


def test_distillation_gate_is_sigmoid_of_source_conv_times_source():
    torch.manual_seed(0)
    gate = DistillationGate(3)
    x = torch.randn(2, 3, 5, 5)
    w, b = gate.conv.weight.detach(), gate.conv.bias.detach()
    # σ(W x) ⊙ x, written out per output channel and pixel with an explicit sum
    pad = F.pad(x, (1, 1, 1, 1))
    expected = torch.empty_like(x)
    for o in range(3):
        for i in range(5):
            for j in range(5):
                z = (w[o] * pad[:, :, i : i + 3, j : j + 3]).sum((1, 2, 3)) + b[o]
                expected[:, o, i, j] = torch.sigmoid(z) * x[:, o, i, j]
    torch.testing.assert_close(gate(x).detach(), expected)


def test_distillation_matches_formula_in_compiled_spec():
    tasks = "abce"
    compiled, out, cap = run_eval(
        tiny({"type": "distillation"}, tasks),
        outputs=features_of(tasks),
        inputs=[f"heads.{t}.conv0" for t in "abc"],
    )
    sd = compiled.supervised.state_dict()
    feats = {t: cap[f"decoder.{t}.features.relu2"][0] for t in tasks}
    for k in "abc":  # every main task; the auxiliary `e` is a source only
        expected = feats[k].clone()
        for src in tasks:
            if src != k:
                gate = conv(feats[src], sd, f"decoder.distillation.{k}.from_{src}.conv", 1)
                expected += torch.sigmoid(gate) * feats[src]
        torch.testing.assert_close(cap[f"in:heads.{k}.conv0"], expected)
        # the final head reads F_k^o
        head = conv(expected, sd, f"heads.{k}.conv0", 0)
        if k == "a":
            head = F.interpolate(head, size=(16, 16), mode="bilinear")  # upsample(2)
        torch.testing.assert_close(out[k], head)


def test_distillation_exposes_initial_predictions_of_every_task():
    tasks = "abe"
    compiled, out, cap = run_eval(tiny({"type": "distillation"}, tasks), features_of(tasks))
    sd = compiled.supervised.state_dict()
    assert set(out) == {"a", "b", "e", "a:initial", "b:initial", "@shared"}
    feats = {t: cap[f"decoder.{t}.features.relu2"][0] for t in tasks}
    # main tasks: 1×1 conv to the head's channels, resized to the head's output size
    a0 = F.interpolate(
        conv(feats["a"], sd, "decoder.a.initial.conv0", 0), size=(16, 16), mode="bilinear"
    )
    torch.testing.assert_close(out["a:initial"], a0)
    assert out["a:initial"].shape == out["a"].shape == (2, 2, 16, 16)
    torch.testing.assert_close(out["b:initial"], conv(feats["b"], sd, "decoder.b.initial.conv0", 0))
    # the auxiliary task is its own head on its initial features, and stops there
    torch.testing.assert_close(out["e"], conv(feats["e"], sd, "decoder.e.initial.conv0", 0))
    assert "heads.e" not in dict(compiled.supervised.named_modules())
    # the final model returns the main tasks only
    assert set(compiled.model(torch.randn(1, 3, 8, 8))) == {"a", "b"}


def test_distillation_with_gates_shut_gives_the_initial_features():
    tasks = "abce"
    torch.manual_seed(0)
    compiled = compile_spec(tiny({"type": "distillation"}, tasks))
    model = compiled.supervised.eval()
    randomize_bn(model)
    gates = [m for n, m in model.named_modules() if isinstance(m, DistillationGate)]
    assert len(gates) == 3 * 3  # 3 main targets × 3 other tasks each
    for g in gates:
        torch.nn.init.zeros_(g.conv.weight)
        torch.nn.init.constant_(g.conv.bias, -1e4)  # σ(-1e4) == 0 exactly in float32
    cap = Capture(model, features_of(tasks), [f"heads.{t}.conv0" for t in "abc"])
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    for k in "abc":
        assert torch.equal(cap[f"in:heads.{k}.conv0"], cap[f"decoder.{k}.features.relu2"][0])


def test_distillation_nodes_are_one_per_pair_owned_by_the_target():
    tasks = "abe"
    compiled = compile_spec(tiny({"type": "distillation"}, tasks))
    pairs = set()
    for node in compiled.supervised.graph.nodes:
        m = re.fullmatch(r"decoder\.distillation\.(\w+)\.from_(\w+)", str(node.target))
        if node.op == "call_module" and m:
            pairs.add(m.groups())
            assert node.meta["mtlc"]["owner"] == m.group(1)
            assert node.meta["mtlc"]["kind"] == "unit"
    assert pairs == {("a", "b"), ("a", "e"), ("b", "a"), ("b", "e")}


def test_distillation_parameter_count_by_hand():
    compiled = compile_spec(tiny({"type": "distillation"}, "abe"))
    # encoder: conv 3→4 3×3: 3·4·9 + 4 = 112; bn: 2·4 = 8                        → 120
    # per task features: conv 4→4 3×3: 4·4·9 + 4 = 148; bn 8 = 156, × 3 tasks   → 468
    # initial a: conv 4→2 1×1 = 10; initial b: 4→1 = 5; aux e's head 4→1 = 5     → 20
    # final heads: a 4→2 = 10, b 4→1 = 5                                         → 15
    # distillation: targets a, b × 2 sources each × (4·4·9 + 4 = 148)           → 592
    assert n_params(compiled.supervised, "decoder.distillation") == 592
    assert n_params(compiled.supervised) == 120 + 468 + 20 + 15 + 592 == 1215
    # the final model drops the initial predictors and the auxiliary head (20)
    assert n_params(compiled.model) == 1215 - 20


# ========================================================================= affinity ====


def test_pixel_affinity_rows_sum_to_one_and_match_softmax():
    torch.manual_seed(0)
    low = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    m = pixel_affinity(low)
    assert m.shape == (2, 12, 12)
    torch.testing.assert_close(m.sum(-1), torch.ones(2, 12, dtype=torch.float64))
    x = low.reshape(2, 5, 12)
    for n in range(2):
        for p in range(12):
            scores = torch.tensor([x[n, :, p] @ x[n, :, q] / math.sqrt(5) for q in range(12)])
            expected = scores.exp() / scores.exp().sum()
            torch.testing.assert_close(m[n, p], expected.to(m.dtype))


def test_affinity_combination_starts_with_own_task_dominant():
    prop = Propagation(sources=3, own=1, beta=0.05, learn_beta=False, iterations=2)
    e = math.e
    torch.testing.assert_close(
        prop.weights().detach(), torch.tensor([1 / (e + 2), e / (e + 2), 1 / (e + 2)])
    )


@pytest.mark.parametrize("learn_beta", [False, True])
def test_affinity_diffusion_matches_a_manual_loop(learn_beta: bool):
    torch.manual_seed(0)
    n, c, h, w = 2, 3, 4, 4
    prop = Propagation(sources=2, own=0, beta=0.2, learn_beta=learn_beta, iterations=3)
    with torch.no_grad():
        prop.logits.copy_(torch.tensor([0.3, -0.4]))
    feats = torch.randn(n, c, 2 * h, 2 * w)
    low = F.avg_pool2d(feats, 2)
    affs = [torch.softmax(torch.randn(n, h * w, h * w), -1) for _ in range(2)]
    got = prop(feats, low, *affs).detach()

    a0, a1 = torch.softmax(torch.tensor([0.3, -0.4]), 0)
    beta = 0.2  # learn_beta starts at σ(logit(0.2)) = 0.2
    expected = torch.empty_like(feats)
    for i in range(n):
        m = a0 * affs[0][i] + a1 * affs[1][i]  # [P, P]
        x0 = low[i].reshape(c, h * w).T  # one row per pixel
        x = x0.clone()
        for _ in range(3):
            x = beta * (m @ x) + (1 - beta) * x0
        up = F.interpolate(x.T.reshape(1, c, h, w), size=(2 * h, 2 * w), mode="bilinear")
        expected[i] = feats[i] + up[0]
    torch.testing.assert_close(got, expected)
    names = {n for n, _ in prop.named_parameters()}
    assert names == ({"logits", "beta_logit"} if learn_beta else {"logits"})


def test_affinity_matches_formula_in_compiled_spec():
    tasks = "abe"
    spec = tiny({"type": "affinity", "downsample": 2, "iterations": 2, "beta": 0.3}, tasks)
    compiled, out, cap = run_eval(
        spec, features_of(tasks), inputs=[f"heads.{t}.conv0" for t in "ab"]
    )
    model = compiled.supervised
    feats = {t: cap[f"decoder.{t}.features.relu2"][0] for t in tasks}
    lows = {t: F.avg_pool2d(feats[t], 2) for t in tasks}  # 8×8 → 4×4
    affs = {t: pixel_affinity(lows[t]) for t in tasks}
    for own, j in enumerate("ab"):
        logits = model.get_submodule(f"decoder.affinity.{j}.propagate").logits.detach()
        expected_logits = torch.zeros(3)
        expected_logits[own] = 1.0
        torch.testing.assert_close(logits, expected_logits)
        alpha = torch.softmax(logits, 0)
        m = sum(alpha[i] * affs[t] for i, t in enumerate(tasks))
        x0 = lows[j].flatten(2).transpose(1, 2)
        x = x0
        for _ in range(2):
            x = 0.3 * torch.bmm(m, x) + 0.7 * x0
        up = F.interpolate(x.transpose(1, 2).reshape(2, 4, 4, 4), size=(8, 8), mode="bilinear")
        torch.testing.assert_close(cap[f"in:heads.{j}.conv0"], feats[j] + up)
    # no propagation for the auxiliary task: it ends at its initial prediction
    assert not hasattr(model.decoder.affinity.e, "propagate")


def test_affinity_combination_weights_are_registered_and_learn():
    torch.manual_seed(0)
    spec = tiny({"type": "affinity", "learn_beta": True}, "abc")
    model = mtlc.compile(spec, supervision=True)
    params = dict(model.named_parameters())
    out = model(torch.randn(2, 3, 8, 8))
    sum(v.square().mean() for k, v in out.items() if k != "@shared").backward()
    for j in "abc":
        for name in ("logits", "beta_logit"):
            p = params[f"decoder.affinity.{j}.propagate.{name}"]
            assert p.requires_grad and p.grad is not None
            assert p.grad.abs().sum() > 0, f"{j}.{name} gets no gradient"
    # and an optimizer over model.parameters() moves them
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = params["decoder.affinity.a.propagate.logits"].detach().clone()
    opt.step()
    assert not torch.equal(before, params["decoder.affinity.a.propagate.logits"])


def test_affinity_parameter_count_by_hand():
    learned = compile_spec(tiny({"type": "affinity", "learn_beta": True}, "abe")).supervised
    fixed = compile_spec(tiny({"type": "affinity"}, "abe")).supervised
    # per main target (a, b): 3 combination logits (sources a, b, e) + 1 β logit
    assert n_params(learned, "decoder.affinity") == 2 * (3 + 1) == 8
    assert n_params(fixed, "decoder.affinity") == 2 * 3 == 6
    # rest as in the distillation count: 120 + 468 + 20 + 15 = 623
    assert n_params(learned) == 623 + 8


def test_affinity_downsample_beyond_the_map_keeps_one_pixel():
    out = mtlc.compile(tiny({"type": "affinity", "downsample": 16}, "ab"))(torch.randn(1, 3, 8, 8))
    assert out["b"].shape == (1, 1, 8, 8) and torch.isfinite(out["b"]).all()


# ======================================================================== recursive ====


def test_task_attention_matches_formula():
    torch.manual_seed(0)
    c = 3
    tam = TaskAttention(c, others=2).eval()
    bn = tam.update[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([0.5, 1.5, 2.0]))
        bn.weight.copy_(torch.tensor([1.2, 0.7, 0.9]))
        bn.bias.copy_(torch.tensor([0.05, -0.1, 0.2]))
    own, o1, o2 = (torch.randn(2, c, 5, 5) for _ in range(3))
    sd = tam.state_dict()
    mixed = []
    for i, other in enumerate((o1, o2)):
        g = torch.sigmoid(conv(torch.cat([own, other], 1), sd, f"gates.{i}", 1))
        mixed.append(g * own + (1 - g) * other)
    x = (mixed[0] + mixed[1]) / 2
    x = torch.sigmoid(conv(x, sd, "attention", 1)) * x
    z = conv(x, sd, "update.0", 1)
    z = (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps
    )
    z = z * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    expected = own + torch.relu(z)
    torch.testing.assert_close(tam(own, o1, o2).detach(), expected)


def turns(graph) -> list:
    """(task, step, node) of every turn, in the order the graph runs them."""
    found = []
    for node in graph.nodes:
        m = re.fullmatch(r"decoder\.recursive\.(\w+)\.step(\d+)", str(node.target))
        if node.op == "call_module" and m:
            found.append((m.group(1), int(m.group(2)), node))
    return found


@pytest.mark.parametrize(
    ("tasks", "order", "steps"),
    [("ab", ["a", "b"], 3), ("ab", ["b", "a"], 2), ("abc", ["c", "a", "b"], 2)],
)
def test_recursive_alternation_reads_the_latest_states(tasks, order, steps):
    compiled = compile_spec(tiny({"type": "recursive", "order": order, "steps": steps}, tasks))
    graph = compiled.supervised.graph
    seq = turns(graph)
    assert [(t, k) for t, k, _ in seq] == [(t, k) for k in range(1, steps + 1) for t in order]
    by_target = {str(n.target): n for n in graph.nodes}
    latest = {t: by_target[f"decoder.{t}.features.relu2"] for t in tasks}
    for t, _, node in seq:
        others = [b for b in order if b != t]
        assert node.args == (latest[t], *(latest[b] for b in others))
        assert node.meta["mtlc"]["owner"] == t
        latest[t] = node
    # the final heads read the last states
    for t in tasks:
        (head_in,) = by_target[f"heads.{t}.conv0"].args
        assert head_in is latest[t]


def test_recursive_step_predictions_are_supervised_and_shaped_like_the_heads():
    tasks = "ab"
    spec = tiny({"type": "recursive", "order": ["b", "a"], "steps": 2}, tasks)
    step_modules = [f"decoder.recursive.{t}.step{k}" for t in tasks for k in (1, 2)]
    compiled, out, cap = run_eval(spec, outputs=step_modules)
    assert set(out) == {
        "a", "b", "a:initial", "b:initial", "a:step1", "a:step2", "b:step1", "b:step2", "@shared",
    }  # fmt: skip
    assert set(compiled.topology.predictions) == set(out) - {"@shared"}
    sd = compiled.supervised.state_dict()
    for k in (1, 2):
        state_a = cap[f"decoder.recursive.a.step{k}"][0]
        pred_a = F.interpolate(
            conv(state_a, sd, "decoder.recursive.a.predict", 0), size=(16, 16), mode="bilinear"
        )
        torch.testing.assert_close(out[f"a:step{k}"], pred_a)
        state_b = cap[f"decoder.recursive.b.step{k}"][0]
        torch.testing.assert_close(
            out[f"b:step{k}"], conv(state_b, sd, "decoder.recursive.b.predict", 0)
        )
    assert out["a:step1"].shape == out["a"].shape == (2, 2, 16, 16)
    # one predictor per task, shared by its steps: called twice, registered once
    calls = [n.target for n in compiled.supervised.graph.nodes if n.op == "call_module"]
    assert calls.count("decoder.recursive.a.predict") == 2
    # the final model keeps only the final predictions
    assert set(compiled.model(torch.randn(1, 3, 8, 8))) == {"a", "b"}
    assert "predict" not in compiled.model.code


def test_recursive_auxiliary_task_lends_features_but_takes_no_turns():
    compiled = compile_spec(tiny({"type": "recursive", "order": ["a", "e", "b"]}, "abe"))
    graph = compiled.supervised.graph
    assert [(t, k) for t, k, _ in turns(graph)] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    e_feat = next(n for n in graph.nodes if n.target == "decoder.e.features.relu2")
    for _, _, node in turns(graph):
        assert e_feat in node.args
    assert not any(k.startswith("e:step") for k in compiled.topology.predictions)


def test_recursive_order_may_be_a_subset():
    # features 6 ≠ the encoder's 4 channels, so reading the wrong one cannot go unnoticed
    spec = tiny({"type": "recursive", "order": ["a", "b"], "features": 6}, "abc")
    compiled = compile_spec(spec)
    out = compiled.supervised(torch.randn(2, 3, 8, 8))
    assert {"a:step2", "b:step2"} <= set(out) and "c:step1" not in out
    assert [t for t, _, _ in turns(compiled.supervised.graph)] == ["a", "b", "a", "b"]


def test_recursive_parameter_count_by_hand():
    two = compile_spec(tiny({"type": "recursive", "order": ["a", "b"], "steps": 2}, "ab"))
    # one turn module, C = 4, one other task:
    #   balance gate conv [F_a, F_b] 8→4 3×3: 8·4·9 + 4 = 292
    #   spatial attention conv 4→1 3×3:      4·9 + 1   = 37
    #   update conv 4→4 3×3 no bias: 144; bn: 8          = 152   → 481
    # 2 tasks × 2 steps = 4 turn modules → 1924; predictors a 4→2 (10), b 4→1 (5) → 1939
    assert n_params(two.supervised, "decoder.recursive") == 4 * 481 + 10 + 5 == 1939
    # encoder 120 + features 2·156 + initial (10 + 5) + heads (10 + 5)
    assert n_params(two.supervised) == 120 + 312 + 15 + 15 + 1939
    three = compile_spec(tiny({"type": "recursive", "steps": 1}, "abc"))
    # three tasks: each turn module has 2 balance gates: 2·292 + 37 + 152 = 773;
    # 3 turn modules (1 step); predictors a 10, b 5, c 4→3 = 15
    assert n_params(three.supervised, "decoder.recursive") == 3 * 773 + 10 + 5 + 15


# ============================================================= every decoder spec ====


@pytest.mark.parametrize("name", DECODER_SPECS)
def test_spec_forward_backward(name: str):
    torch.manual_seed(0)
    compiled = compile_spec(SPECS / f"{name}.yaml")
    spec = compiled.spec
    assert spec.decoder.type == name
    model = compiled.supervised
    out = model(torch.randn(2, *spec.input_shape))
    for t in spec.tasks:  # every task, intermediate predictions, all at the head's size
        for key in [k for k in out if k.split(":")[0] == t]:
            assert out[key].shape == out[t].shape
    assert {f"{t}:initial" for t in spec.outputs} <= set(out)
    sum(v.float().mean() for k, v in out.items() if k != "@shared").backward()
    dec = [p for n, p in model.named_parameters() if n.startswith(f"decoder.{name}.")]
    assert dec and all(p.grad is not None and p.grad.abs().sum() > 0 for p in dec)


def test_spec_supervised_keys():
    keys = {
        name: set(compile_spec(SPECS / f"{name}.yaml").topology.predictions)
        for name in DECODER_SPECS
    }
    main = {"seg", "depth", "normal"}
    assert keys["distillation"] == main | {"edge"} | {f"{t}:initial" for t in main}
    assert keys["affinity"] == main | {f"{t}:initial" for t in main}
    assert keys["recursive"] == main | {
        f"{t}:{tag}" for t in main for tag in ("initial", "step1", "step2")
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", DECODER_SPECS)
def test_torch_compile_aot_eager_equals_eager(kind: str):
    options = {"recursive": {"order": ["b", "a", "c"]}}.get(kind, {})
    torch.manual_seed(0)
    model = mtlc.compile(tiny({"type": kind} | options, "abc"), supervision=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        eager = model(x)
        try:
            compiled = torch.compile(model, backend="aot_eager")(x)
        except Exception as exc:  # pragma: no cover - platform without dynamo
            pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}: {exc}")
    assert set(compiled) == set(eager)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k])


# =========================================================================== errors ====

BASE = """\
mtlc: 1
name: bad
input: {image: [3, 8, 8]}
encoder:
  stages:
    s1: [conv(4, 3), bn, relu]
tasks:
  a: {head: [conv(2, 1)], loss: cross_entropy}
  b: {head: [conv(1, 1)], loss: l1}
"""


def spec_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, file="bad.yaml")
    return info.value


def test_unknown_decoder_type_suggests_the_nearest():
    err = spec_error(BASE + "decoder: {type: distilation}\n")
    assert err.path == "decoder.type"
    assert "unknown decoder type 'distilation' (did you mean 'distillation'?)" in err.message
    assert str(err).startswith("bad.yaml:10:")


def test_order_naming_an_unknown_task():
    err = spec_error(BASE + "decoder: {type: recursive, order: [a, bb]}\n")
    assert err.path == "decoder.order[1]"
    assert "unknown task 'bb'" in err.message
    assert str(err).startswith("bad.yaml:10:")


def test_order_with_one_task():
    err = spec_error(BASE + "decoder: {type: recursive, order: [a]}\n")
    assert err.path == "decoder.order"
    assert "at least two tasks" in err.message


@pytest.mark.parametrize("steps", [0, -1])
def test_steps_below_one(steps: int):
    err = spec_error(BASE + f"decoder: {{type: recursive, steps: {steps}}}\n")
    assert err.path == "decoder.steps"
    assert "greater than or equal to 1" in err.message
    assert str(err).startswith("bad.yaml:10:")


def test_affinity_on_a_vector_encoder():
    text = BASE.replace("[conv(4, 3), bn, relu]", "[flatten, linear(8)]")
    text = text.replace("conv(2, 1)", "linear(2)").replace("conv(1, 1)", "linear(1)")
    err = spec_error(text + "decoder: {type: affinity}\n")
    assert err.path == "decoder.type"
    assert "needs feature maps [C, H, W]" in err.message and "[8]" in err.message


@pytest.mark.parametrize("kind", DECODER_SPECS)
def test_decoder_with_one_task(kind: str):
    spec = tiny({"type": kind}, "a")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert info.value.path.startswith("decoder")
    assert "at least two tasks" in info.value.message


def test_only_auxiliary_task_is_refused():
    text = BASE.replace("loss: l1}", "loss: l1, auxiliary: true}").replace(
        "cross_entropy}", "cross_entropy, auxiliary: true}"
    )
    err = spec_error(text + "decoder: {type: distillation}\n")
    assert err.path == "tasks"
    assert "every task is auxiliary" in err.message
