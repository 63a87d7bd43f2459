"""Mixture-of-experts sharing points (mmoe, cgc, ple): each gate's formula against a direct
computation (vectors and maps, dense and top-k), MMoE with one expert equals hard sharing,
parameter counts by hand, placement among other stages, every balancer, profile, viz with
the mean gate weights of a checkpoint, and the located refusals."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtlc.cli import main
from mtlc.compiler import compile_spec
from mtlc.errors import SpecError
from mtlc.registry import BALANCERS
from mtlc.spec import load_spec
from mtlc.train.trainer import Trainer
from mtlc.viz import dot_source
from mtlc.viz.costs import compile_meta, measure

SPECS = Path(__file__).resolve().parents[1] / "specs"


def spec_text(
    stages: str, sharing: str, dim: int = 12, tasks: int = 2, head: str = "linear(1)"
) -> str:
    names = [f"y{i + 1}" for i in range(tasks)]
    task_lines = "\n".join(f"  {t}: {{head: [{head}], loss: mse}}" for t in names)
    return textwrap.dedent(
        """\
        mtlc: 1
        name: moe
        input: {x: [%d]}
        encoder:
          stages:
        %s
          sharing:
        %s
        tasks:
        %s
        train:
          data: {name: correlated, train: 32, val: 16, dim: %d, tasks: %d}
          epochs: 1
          batch_size: 16
        """
    ) % (
        dim,
        textwrap.indent(stages, "    "),
        textwrap.indent(sharing, "    "),
        task_lines,
        dim,
        tasks,
    )


def spec_of(stages: str, sharing: str, **kw):
    return load_spec(_dict(spec_text(stages, sharing, **kw)))


def _dict(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def run_nodes(gm, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The value of every fx node, by node name."""
    from torch.fx import Interpreter

    values: dict[str, torch.Tensor] = {}

    class Keep(Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n.name] = out
            return out

    Keep(gm).run(x)
    return values


def unit_output(gm, x: torch.Tensor, unit: str) -> torch.Tensor:
    """The value the gate unit hands on (its last fx node)."""
    values = run_nodes(gm, x)
    last = [n.name for n in gm.graph.nodes if n.meta.get("mtlc", {}).get("block") == unit][-1]
    return values[last]


def expert(gm, stage: str, who: str, x: torch.Tensor) -> torch.Tensor:
    """A [linear, relu] or [conv, relu] expert computed from its weights directly."""
    mod = gm.get_submodule(f"encoder.{stage}.{who}")
    layer = next(iter(mod.children()))
    if isinstance(layer, torch.nn.Linear):
        return torch.relu(x @ layer.weight.T + layer.bias)
    return torch.relu(
        torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=layer.padding)
    )


def gate(gm, stage: str, who: str, x: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    lin = gm.get_submodule(f"encoder.{stage}.gate_{who}.linear")
    v = x if x.dim() == 2 else x.mean(dim=(2, 3))
    logits = v @ lin.weight.T + lin.bias
    if top_k is not None:  # by sorting, independently of the module's topk/scatter
        kth = logits.sort(dim=-1, descending=True).values[:, top_k - 1 : top_k]
        logits = torch.where(logits >= kth, logits, torch.tensor(float("-inf")))
    return torch.softmax(logits, -1)


def mix(w: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack(outs, 1)  # [N, E, ...]
    return (w.reshape(*w.shape, *[1] * (stacked.dim() - 2)) * stacked).sum(1)


@pytest.mark.parametrize("top_k", [None, 2])
def test_mmoe_on_vectors_is_the_papers_gated_sum(top_k):
    k = f", top_k: {top_k}" if top_k else ""
    c = compile_spec(spec_of("s: [linear(8), relu]", f"s: {{type: mmoe, experts: 3{k}}}"))
    gm = c.supervised
    torch.manual_seed(0)
    x = torch.randn(5, 12)
    outs = [expert(gm, "s", f"expert{e}", x) for e in range(3)]
    for t in ("y1", "y2"):
        w = gate(gm, "s", t, x, top_k)
        if top_k:
            assert ((w > 0).sum(-1) == top_k).all()
        torch.testing.assert_close(unit_output(gm, x, f"s/mmoe/{t}"), mix(w, outs))


def test_mmoe_on_feature_maps_pools_the_gate_input():
    text = spec_text("s: [conv(4, 3), relu]", "s: {type: mmoe, experts: 2}", head="conv(1, 1)")
    text = text.replace("input: {x: [12]}", "input: {x: [3, 6, 6]}")
    c = compile_spec(_dict(text))
    gm = c.supervised
    x = torch.randn(2, 3, 6, 6)
    outs = [expert(gm, "s", f"expert{e}", x) for e in range(2)]
    for t in ("y1", "y2"):
        got = unit_output(gm, x, f"s/mmoe/{t}")
        assert got.shape == (2, 4, 6, 6)
        torch.testing.assert_close(got, mix(gate(gm, "s", t, x), outs))


def test_mmoe_with_one_expert_is_hard_sharing():
    moe = compile_spec(spec_of("s: [linear(8), relu]", "s: {type: mmoe, experts: 1}")).model
    hard = compile_spec(spec_of("s: [linear(8), relu]", "s: hard")).model
    hard.encoder.s.shared.load_state_dict(moe.encoder.s.expert0.state_dict())
    hard.heads.load_state_dict(moe.heads.state_dict())
    x = torch.randn(7, 12)
    a, b = moe(x), hard(x)
    for t in a:
        torch.testing.assert_close(a[t], b[t])
    # and the gate of one expert is fixed at 1 whatever its weights
    assert torch.equal(gate(moe, "s", "y1", x), torch.ones(7, 1))


def test_cgc_gate_mixes_the_shared_experts_and_its_own_only():
    c = compile_spec(
        spec_of(
            "s: [linear(8), relu]", "s: {type: cgc, shared_experts: 2, task_experts: 1}", tasks=3
        )
    )
    gm = c.supervised
    x = torch.randn(4, 12)
    shared = [expert(gm, "s", f"expert{e}", x) for e in range(2)]
    for t in ("y1", "y2", "y3"):
        assert c.topology.graph.nodes[f"s/cgc/{t}"]["experts"] == [
            "s/expert0",
            "s/expert1",
            f"s/{t}_expert0",
        ]
        own = expert(gm, "s", f"{t}_expert0", x)
        torch.testing.assert_close(
            unit_output(gm, x, f"s/cgc/{t}"), mix(gate(gm, "s", t, x), [*shared, own])
        )


def test_ple_levels_chain_through_the_shared_gate():
    stages = "a: [linear(8), relu]\nb: [linear(6), relu]"
    sharing = "a: {type: ple, shared_experts: 1, task_experts: 1}\nb: {type: ple, shared_experts: 1, task_experts: 2}"
    c = compile_spec(spec_of(stages, sharing))
    gm, g = c.supervised, c.topology.graph
    assert "b/ple/shared" not in g  # the last level has no shared gate
    x = torch.randn(3, 12)
    s1 = [expert(gm, "a", "expert0", x)]
    own1 = {t: [expert(gm, "a", f"{t}_expert0", x)] for t in ("y1", "y2")}
    # level 1: the shared gate mixes every expert, in the order shared, y1's, y2's
    shared1 = mix(gate(gm, "a", "shared", x), s1 + own1["y1"] + own1["y2"])
    task1 = {t: mix(gate(gm, "a", t, x), s1 + own1[t]) for t in own1}
    torch.testing.assert_close(unit_output(gm, x, "a/ple/shared"), shared1)
    for t in task1:
        torch.testing.assert_close(unit_output(gm, x, f"a/ple/{t}"), task1[t])
    # level 2: shared experts read the shared gate, a task's experts and gate read the task's
    s2 = [expert(gm, "b", "expert0", shared1)]
    for t in task1:
        own2 = [expert(gm, "b", f"{t}_expert{i}", task1[t]) for i in range(2)]
        want = mix(gate(gm, "b", t, task1[t]), s2 + own2)
        torch.testing.assert_close(unit_output(gm, x, f"b/ple/{t}"), want)


def test_parameter_counts_by_hand():
    # specs/ple.yaml: level 1 has 2 shared + 1 per task experts linear(100→16): 4 × 1616;
    # gates 100→3 per task (303) and the shared gate 100→4 (404); level 2 four experts
    # 16→16 (272 each) and gates 16→3 (51); heads 16→8→1 (136 + 9)
    c = measure(compile_meta(load_spec(SPECS / "ple.yaml")))
    assert c.total_params == 4 * 1616 + 2 * 303 + 404 + 4 * 272 + 2 * 51 + 2 * 145
    assert c.params["level1/ple/shared"] == 404 and c.params["level2/ple/y1"] == 51
    # specs/mmoe.yaml: 4 experts 100→16, gates 100→4, heads; a task alone needs its gate only
    m = measure(compile_meta(load_spec(SPECS / "mmoe.yaml")))
    assert m.total_params == 4 * 1616 + 2 * 404 + 2 * 145
    assert m.task_params["y1"] == 4 * 1616 + 404 + 145


def test_mixtures_follow_and_precede_other_stages():
    stages = "a: [linear(10), relu]\nb: [linear(8), relu]\nc: [linear(8), relu]"
    c = compile_spec(spec_of(stages, "b: {type: mmoe, experts: 2}\nc: separate"))
    assert c.model(torch.randn(2, 12))["y1"].shape == (2, 1)
    g = c.topology.graph
    assert g.nodes["b/expert0"]["in_shape"] == (10,)
    assert set(g.predecessors("c/y1")) == {"b/mmoe/y1"}
    with pytest.raises(SpecError, match="never merge again"):
        spec_of(stages, "b: {type: mmoe, experts: 2}\nc: hard")
    with pytest.raises(SpecError, match="never merge again"):
        spec_of(stages, "a: separate\nb: {type: cgc}")
    with pytest.raises(SpecError, match="never merge again"):  # two CGCs: only PLE chains
        spec_of(stages, "b: cgc\nc: cgc")


@pytest.mark.parametrize("balancer", sorted(BALANCERS))
@pytest.mark.parametrize(
    "sharing",
    [
        "s: {type: mmoe, experts: 2}\nt: separate",
        "s: cgc\nt: separate",
        "s: {type: ple, shared_experts: 2}\nt: ple",
    ],
    ids=["mmoe", "cgc", "ple"],
)
def test_every_balancer_trains_each_mixture(balancer, sharing):
    torch.set_num_threads(1)
    spec = spec_of("s: [linear(8), relu]\nt: [linear(8), relu]", sharing)
    spec = load_spec(
        spec.model_dump(by_alias=True, exclude_none=True) | {"balancer": {"type": balancer}}
    )
    trainer = Trainer(spec, device="cpu")
    from mtlc.data.batches import iterate_batches

    batch = next(iterate_batches(trainer.train_data, 16, shuffle=False))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "gate" in k}
    for _ in range(2):
        record = trainer.train_step(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in record["loss"].values())
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the gates did not learn"


@pytest.mark.parametrize("name", ["mmoe", "ple"])
def test_profile_and_viz_with_gate_weights_of_a_checkpoint(tmp_path, name):
    from mtlc.train.run import train

    overrides = [
        "train.data.train=32",
        "train.data.val=24",
        "train.batch_size=16",
        "train.epochs=1",
    ]
    run = train(
        SPECS / f"{name}.yaml",
        overrides=overrides,
        out=tmp_path / "run",
        device="cpu",
        progress=False,
    )
    ckpt = next(run.run_dir.glob("*.pt"))
    dot = dot_source(SPECS / f"{name}.yaml", checkpoint=ckpt, overrides=overrides)
    assert "mean of 24 val samples" in dot
    # the means, computed here from the checkpoint's weights over the 24 val samples
    from mtlc.data import load_dataset
    from mtlc.train.checkpoint import load_checkpoint

    spec = load_spec(SPECS / f"{name}.yaml", overrides)
    gm = compile_spec(spec).supervised
    gm.load_state_dict(load_checkpoint(ckpt)["model"])
    gm.eval()
    x = load_dataset({"name": "correlated", **spec.train.data.options}, "val")["x"]
    stage = next(iter(spec.encoder.stages))
    w = gate(gm, stage, "y1", x).mean(0)
    experts = compile_spec(spec).topology.graph.nodes[f"{stage}/{name}/y1"]["experts"]
    for e, value in zip(experts, w.tolist()):
        assert f"{e.split('/', 1)[1]} {value:.2f}" in dot
    result = CliRunner().invoke(main, ["profile", str(SPECS / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    assert "y1" in result.output


BAD = [
    (
        "zero experts",
        "s: {type: mmoe, experts: 0}",
        "s: [linear(8), relu]",
        2,
        "at least one expert",
    ),
    (
        "too many experts",
        "s: {type: mmoe, experts: 100000000}",
        "s: [linear(8)]",
        2,
        "more than the 1024",
    ),
    (
        "top_k too large",
        "s: {type: mmoe, experts: 2, top_k: 3}",
        "s: [linear(8), relu]",
        2,
        "top_k is 3, but task 'y1''s gate mixes 2 expert(s)",
    ),
    (
        "one task",
        "s: {type: mmoe, experts: 2}",
        "s: [linear(8), relu]",
        1,
        "gates experts between tasks, but the spec has one task",
    ),
    (
        "experts differ",
        "s: {type: mmoe, experts: [[linear(8), relu], [linear(6)]]}",
        "s: []",
        2,
        "this expert outputs [6], but the first expert",
    ),
    (
        "layers twice",
        "s: {type: mmoe, experts: [[linear(8)]]}",
        "s: [linear(8)]",
        2,
        "lists layers and its sharing lists",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_a_located_error_exit_2(tmp_path, case):
    _, sharing, stages, tasks, message = case
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(stages, sharing, tasks=tasks))
    result = CliRunner().invoke(main, ["build", str(path), "-o", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}:"), line
    assert message in line, line
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.pt").exists()


def test_heterogeneous_experts_build():
    c = compile_spec(
        spec_of(
            "s: []", "s: {type: mmoe, experts: [[linear(8), relu], [linear(16), relu, linear(8)]]}"
        )
    )
    assert c.topology.graph.nodes["s/expert1"]["out_shape"] == (8,)
    assert c.model(torch.randn(2, 12))["y2"].shape == (2, 1)
