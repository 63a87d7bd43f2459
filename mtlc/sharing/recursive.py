"""Task-recursive learning (JTRL, Zhang et al., ECCV 2018).

JTRL has no official code anywhere; this is built from the paper (and mtlc's design
notes), not ported. Each task in `order` starts from its initial features F_t (the
topology's `decoder/<task>/features`, deep-supervised through `decoder/<task>/initial`)
as its *state*. The tasks then take turns, in `order`, for `steps` rounds. On its turn
task a runs a task-attentional module over the latest states (a task that already had
its turn this round passes its new state):

    per other task b:  g_b = σ(conv3×3([S_a, S_b]))  (C channels),  m_b = g_b ⊙ S_a + (1−g_b) ⊙ S_b
    x = mean_b m_b
    x = σ(conv3×3(x) → 1 channel) ⊙ x                 (spatial attention)
    S_a ← S_a + ReLU(BN(conv3×3(x)))                  (residual update)

and a predictor (1×1 conv, bilinear resize to the final head's output size) turns the
new state into the prediction `a:step<k>`, supervised like the final one. The final
head reads the last state.

Choices the paper leaves to us, documented here:
- The paper refines two tasks (segmentation and depth). With more, each turn mixes the
  balance-gated pairs (a, b) by their mean, so the module's scale does not grow with
  the number of tasks; tasks go round-robin.
- Each (task, step) has its own task-attentional module, as each JTRL step is its own
  decoder block; the predictor is shared across the steps of a task, so every step is
  judged by the same read-out.
- An auxiliary task in `order` lends its initial features to the others but takes no
  turns: it ends at its initial prediction, so a state of its own would have no
  supervision of its own.

Drawn as the alternating chain of turns, `order` × `steps` nodes long.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from mtlc.sharing.point import DecoderPoint, torch_modules
from mtlc.spec.base import MAX_ITERATIONS, Count, DecoderBase
from mtlc.viz.dot import COLUMN_WIDTH, CROSS_WIDTH, OWN_WIDTH, html_label

if TYPE_CHECKING:
    from torch import fx

    from mtlc.compiler.emitter import Emitter
    from mtlc.spec.schema import Spec
    from mtlc.spec.yaml_source import Source
    from mtlc.viz.drawing import DrawingKit as Drawer


class Recursive(DecoderBase):
    """Zhang et al. 2018 (JTRL): tasks refine each other in turns."""

    type: Literal["recursive"]
    order: list[str] | None = Field(
        None, description="the order tasks take turns in (default: spec order)"
    )
    steps: Count(MAX_ITERATIONS) = Field(2, description="rounds of turns")


@torch_modules(__name__)
def modules() -> dict[str, Any]:
    import torch
    from torch import nn

    class TaskAttention(nn.Module):
        """One turn of a task: balance-gate each other state, attend spatially, update."""

        def __init__(self, channels: int, others: int):
            super().__init__()
            self.gates = nn.ModuleList(
                nn.Conv2d(2 * channels, channels, 3, padding=1) for _ in range(others)
            )
            self.attention = nn.Conv2d(channels, 1, 3, padding=1)
            self.update = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )

        def forward(self, own: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
            mixed = []
            for gate, other in zip(self.gates, others, strict=True):
                g = torch.sigmoid(gate(torch.cat([own, other], dim=1)))
                mixed.append(g * own + (1 - g) * other)
            x = torch.stack(mixed).mean(0)
            x = torch.sigmoid(self.attention(x)) * x
            return own + self.update(x)

    return {"TaskAttention": TaskAttention}


class RecursivePoint(DecoderPoint):
    Options = Recursive

    def check(self, spec: Spec, src: Source) -> None:
        order = spec.decoder.order
        if order is None:
            return
        from mtlc.errors import unknown

        for i, t in enumerate(order):
            if t not in spec.tasks:
                raise src.error(("decoder", "order", i), unknown("task", t, list(spec.tasks)))
        if len(set(order)) != len(order):
            raise src.error(("decoder", "order"), "a task appears twice")
        if len(order) < 2:
            raise src.error(
                ("decoder", "order"), "the recursion needs at least two tasks to take turns"
            )
        if all(spec.tasks[t].auxiliary for t in order):
            raise src.error(
                ("decoder", "order"),
                "the recursion needs at least one non-auxiliary task to take turns",
            )

    def predictions(self, options: Recursive, spec: Spec) -> list[str]:
        """Every turn's prediction `task:step<k>`, supervised like the final one."""
        return [
            f"{t}:step{step}"
            for step in range(1, options.steps + 1)
            for t in options.order or spec.tasks
            if not spec.tasks[t].auxiliary
        ]

    def emit(self, em: Emitter, unit: str) -> dict[str, fx.Node]:
        from torch import nn

        attrs = em.attrs(unit)
        spec, opts = em.topology.spec, attrs["options"]
        state = em.streams(unit)
        members = set(attrs["tasks"])
        order = [t for t in opts["order"] if t in members]
        turns = [t for t in order if not spec.tasks[t].auxiliary]
        channels = attrs["shape"][0]
        predictors = {}
        for t in turns:
            name = f"decoder.recursive.{t}.predict"
            em.add_module(name, nn.Conv2d(channels, attrs["out_shapes"][t][0], 1))
            predictors[t] = name

        out: dict[str, fx.Node] = {}
        for step in range(1, opts["steps"] + 1):
            for a in turns:
                others = [b for b in order if b != a]
                state[a] = em.call_module(
                    f"decoder.recursive.{a}.step{step}",
                    modules().TaskAttention(channels, len(others)),
                    (state[a], *(state[b] for b in others)),
                    block=unit,
                    kind="unit",
                    owner=a,
                )
                # the predictor is one module called once per step
                pred = em.call_module(
                    predictors[a], None, (state[a],), block=unit, kind="predictor", owner=a
                )
                size = tuple(attrs["out_shapes"][a][1:])
                if tuple(attrs["shape"][1:]) != size:
                    pred = em.resize(pred, size, block=unit, owner=a)
                out[f"{a}:step{step}"] = pred
        # tasks outside `order` read their initial features, untouched by the recursion
        out.update({t: state[t] for t in attrs["tasks"] if not spec.tasks[t].auxiliary})
        return out

    def draw(self, d: Drawer, u: str) -> dict[str, str]:
        a = d.g.nodes[u]
        o = a["options"]
        title = d.cluster(
            u, "JTRL recursive refinement", f"order {' → '.join(o['order'])} · {o['steps']} steps"
        )
        turns = _turns(d, u)
        for k, t in turns:
            lines = [
                ("b", f"{t} · step {k}"),
                ("s", "balance gate + attention"),
                ("s", f"⇒ {t}:step{k}"),
            ]
            d.part(f"{u}#{k}/{t}", t, html_label(lines), width=COLUMN_WIDTH)
        if turns:
            d.title(u, title, f"{u}#{turns[0][0]}/{turns[0][1]}")
        d.dot.close()
        return {t: f"{u}#1/{t}" for t in d.main(o["order"])}

    def draw_edges(self, d: Drawer, u: str) -> set[tuple[str, str]]:
        a = d.g.nodes[u]
        source_of = d.source_of(u)
        done: set[tuple[str, str]] = set()
        latest = {t: source_of[t] for t in a["tasks"]}
        for k, t in _turns(d, u):
            node = f"{u}#{k}/{t}"
            for s in a["tasks"]:
                d.edge(latest[s], node, (s,), penwidth=OWN_WIDTH if s == t else CROSS_WIDTH)
            latest[t] = node
        for dst, ts in d.out_edges(u).items():
            for t in ts:
                d.edge(latest[t], dst, (t,))
                done.add((u, dst))
        return d.part_edges_out(u, done)


def _turns(d: Drawer, u: str) -> list[tuple[int, str]]:
    a = d.g.nodes[u]
    o = a["options"]
    return [(k, t) for k in range(1, o["steps"] + 1) for t in d.main(o["order"])]
