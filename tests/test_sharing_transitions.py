"""Every sharing type followed by every other: a located refusal or a model the picture describes.

For each pair the compiler either refuses the second stage at its sharing entry (the
tasks would have to merge features they no longer share), or builds a model in which
every parameter gets a gradient from exactly the tasks whose predictions its node
label says depend on it, those labels agree with the topology (which is what viz
draws), and every parameter feeds at least one task. That catches a compiler that
silently drops a task's column (an NDDR stage followed by a hard one used to feed
only the first task's output to every task).
"""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
import torch

from mtlc.compiler import compile_spec
from mtlc.errors import SpecError

TASKS = ("a", "b", "c")
GROUPS = [["a", "b"], ["c"]]
SHARINGS: dict[str, object] = {
    "hard": "hard",
    "hard_groups": {"type": "hard", "groups": GROUPS},
    "separate": "separate",
    "cross_stitch": "cross_stitch",
    "cross_stitch_groups": {"type": "cross_stitch", "groups": GROUPS},
    "nddr": "nddr",
    "nddr_groups": {"type": "nddr", "groups": GROUPS},
    "attention": "attention",
}
DECODERS = ("distillation", "affinity", "recursive")
PER_TASK = [[t] for t in TASKS]


def _partition(name: str) -> list[list[str]]:
    """Which tasks read one feature after a stage of this sharing type."""
    if name == "hard":
        return [list(TASKS)]
    if name == "hard_groups":
        return GROUPS
    return PER_TASK


def _needs(name: str) -> list[list[str]]:
    """Which tasks a stage of this sharing type makes read one feature on its way in."""
    if name in ("hard", "attention"):
        return [list(TASKS)]
    if name == "hard_groups":
        return GROUPS
    return PER_TASK


def refused(first: str, second: str) -> bool:
    """Independent of the compiler: would `second` merge tasks that `first` split?"""
    if first == second == "attention":  # consecutive MTAN stages share one trunk
        return False
    have = {t: i for i, part in enumerate(_partition(first)) for t in part}
    return any(len({have[t] for t in group}) > 1 for group in _needs(second))


def make_spec(first: str, second: str, decoder: str | None = None) -> dict:
    spec = {
        "mtlc": 1,
        "name": "pair",
        "input": {"image": [3, 8, 8]},
        "encoder": {
            "stages": {"s1": ["conv(4, 3)", "bn", "relu"], "s2": ["conv(4, 3)", "relu"]},
            "sharing": {"s1": SHARINGS[first], "s2": SHARINGS[second]},
        },
        "tasks": {
            "a": {"head": ["conv(2, 1)"], "loss": "cross_entropy"},
            "b": {"head": ["conv(1, 1)"], "loss": "l1"},
            "c": {"head": ["conv(1, 1)"], "loss": "l1", "auxiliary": decoder is not None},
        },
    }
    if decoder is not None:
        spec["decoder"] = {"type": decoder, "features": 4}
        del spec["encoder"]["sharing"]["s2"]
        spec["encoder"]["stages"].pop("s2")
    return spec


def picture_tasks(topo, block: str) -> set[str]:
    """The tasks whose loss the topology (the picture) shows `block` feeding."""
    reach = nx.descendants(topo.graph, block) | {block}
    losses = {t for t in topo.tasks if f"loss/{t}" in reach}
    # intermediate predictions (`a:initial`) are supervised by their task's loss too
    return losses | {key.split(":")[0] for key, node in topo.predictions.items() if node in reach}


def check_gradients(first: str, second: str | None, decoder: str | None) -> None:
    compiled = compile_spec(make_spec(first, second or "hard", decoder))
    model, topo = compiled.supervised, compiled.topology
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    labels: dict[str, list[dict]] = {}  # a module called more than once has several
    for node in model.graph.nodes:
        if node.op == "call_module":
            labels.setdefault(node.target, []).append(node.meta["mtlc"])
    params = dict(model.named_parameters())
    assert params
    seen: dict[str, set[str]] = {name: set() for name in params}
    for task in topo.tasks:
        model.zero_grad()
        out = model(x)
        loss = sum(
            (v * torch.randn_like(v)).sum()
            for k, v in out.items()
            if k.split(":")[0] == task and not k.startswith("@")
        )
        loss.backward()
        for name, p in params.items():
            if p.grad is not None and p.grad.abs().sum() > 0:
                seen[name].add(task)
    for node in model.graph.nodes:
        label = node.meta.get("mtlc")
        if label is None or node.op == "output":
            continue
        # nothing the compiler emits is dead, and in the encoder a node a task owns feeds
        # that task (a cross-stitch column nobody reads would pass the parameter check;
        # in PAP-Net an auxiliary task's affinity is charged to it but feeds the others)
        assert label["tasks"], f"node {node.name} ({label['block']}) feeds no task"
        if label["owner"] in topo.tasks and label["stage"] in topo.stages:
            assert label["owner"] in label["tasks"], f"node {node.name} does not feed its owner"
    for name in params:
        module = name.rsplit(".", 1)[0]
        while module not in labels:  # a parameter inside a called container
            module = module.rsplit(".", 1)[0]
        said = {t for label in labels[module] for t in label["tasks"]}
        label = labels[module][0]
        assert said, f"{name}: no task's prediction depends on it ({first} → {second})"
        assert seen[name] == said, f"{name}: gradient from {seen[name]}, label says {said}"
        drawn = picture_tasks(topo, label["block"])
        if topo.graph.nodes[label["block"]]["kind"] == "unit":
            # a unit is drawn as one node; each of its parts feeds some of its tasks
            assert said <= drawn, f"{name}: feeds {said}, the picture shows {drawn}"
            if label["owner"] in topo.tasks:
                assert label["owner"] in said, f"{name}: does not feed its owner"
        else:
            assert said == drawn, f"{name}: feeds {said}, the picture shows {drawn}"


PAIRS = list(itertools.product(SHARINGS, SHARINGS))


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_sharing_pair_is_refused_or_fully_wired(first, second):
    if refused(first, second):
        with pytest.raises(SpecError) as info:
            compile_spec(make_spec(first, second))
        message = str(info.value)
        assert "encoder.sharing.s2: stage 's2' is" in message, message
        assert "already have separate features since stage 's1'" in message or (
            "already have separate features (in groups" in message
        ), message
        assert "per-task sharing type" in message
    else:
        check_gradients(first, second, None)


DECODED = list(itertools.product(SHARINGS, DECODERS))


@pytest.mark.parametrize("first,decoder", DECODED, ids=[f"{a}-{d}" for a, d in DECODED])
def test_sharing_then_decoder_is_fully_wired(first, decoder):
    check_gradients(first, None, decoder)


def test_refusal_points_at_the_stage_when_it_has_no_sharing_entry(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "mtlc: 1\nname: t\ninput: {image: [3, 8, 8]}\nencoder:\n"
        "  stages:\n    s1: [conv(4, 3)]\n    s2: [conv(4, 3)]\n"
        "  sharing: {s1: nddr}\n"
        "tasks:\n  a: {head: [conv(1, 1)], loss: l1}\n  b: {head: [conv(1, 1)], loss: l1}\n"
    )
    with pytest.raises(SpecError) as info:
        compile_spec(path)
    assert f"{path}:7:9: encoder.stages.s2: stage 's2' is 'hard'" in str(info.value)


def test_the_reported_nddr_then_hard_case_is_refused():
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "specs" / "hard.yaml"
    with pytest.raises(SpecError, match="encoder.sharing.s3|encoder.stages.s3"):
        compile_spec(spec, ["encoder.sharing.s2=nddr"])
