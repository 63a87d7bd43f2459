"""A whole model saved with torch.save loads back as the same graph (mtlc.compiler.reload).

torch.load re-traces a GraphModule's generated code; without mtlc's tracer it traced
through the MMoE/CGC/PLE gates' weighted sum and failed ("Proxy object cannot be iterated").
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import mtlc
from mtlc.compiler.prune import pruned
from mtlc.spec import load_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"
SMALL = sorted(p for p in SPECS.glob("*.yaml") if "resnet" not in p.name)  # seconds, not minutes

pytestmark = pytest.mark.usefixtures("one_thread")


def round_trip(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    buf = io.BytesIO()
    torch.save(gm, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def nodes(gm: torch.fx.GraphModule) -> list[tuple[str, str]]:
    return [(n.op, str(n.target)) for n in gm.graph.nodes]


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("spec", SMALL, ids=[p.stem for p in SMALL])
def test_saved_model_loads_as_the_same_graph_and_computes_the_same(spec, fuse):
    gm = mtlc.compile(spec, fuse=fuse, device="cuda").eval()  # cuda: fusion's GPU plan
    loaded = round_trip(gm).eval()
    assert nodes(loaded) == nodes(gm)
    x = torch.randn(2, *load_spec(spec).input_shape)
    with torch.no_grad():
        want, got = gm(x), loaded(x)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_a_pruned_mixture_with_sparse_gates_round_trips(write_spec):
    spec = write_spec(
        """\
        mtlc: 1
        name: cgc
        input: {x: [6]}
        encoder:
          stages: {experts: [linear(5), relu]}
          sharing: {experts: {type: cgc, shared_experts: 3, task_experts: 1, top_k: 2}}
        tasks:
          a: {head: [linear(1)], loss: mse}
          b: {head: [linear(1)], loss: mse}
        """
    )
    gm = pruned(mtlc.compile(spec).eval(), ["a"])
    loaded = round_trip(gm)
    assert nodes(loaded) == nodes(gm)
    assert any(n.op == "call_function" and "gated_sum" in str(n.target) for n in gm.graph.nodes)
    x = torch.randn(4, 6)
    torch.testing.assert_close(loaded(x)["a"], gm(x)["a"])
