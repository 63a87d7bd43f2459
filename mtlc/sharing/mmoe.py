"""Multi-gate mixture-of-experts (Ma et al., KDD 2018, MMoE), and the gate every
mixture point (`cgc`, `ple`) uses.

E experts f_1 … f_E (each a copy of the stage's layers, or its own layer list) read the
input x every task shares; task t has its own softmax gate over them and reads

    y_t = Σ_e g_t(x)_e · f_e(x),     g_t(x) = softmax(W_t · v(x))          (paper eq. 5–6)

`v(x)` is what a gate looks at: x itself for a vector [F], and for a feature map
[C, H, W] (or any [C, ...]) its global average over every axis after the channel axis,
so a gate stays a C → E linear map whatever the resolution (the paper only has vectors;
pooling is the usual lift to maps, as in squeeze-and-excitation). With `top_k = k` the
gate is sparse (Shazeer et al. 2017): the k largest logits are kept, the others set to
−∞, and the softmax runs over the k kept, so the other experts get weight 0 exactly.
With one expert the gate is 1 and MMoE is hard sharing of that expert.

The topology (mtlc.topology.experts) makes the experts blocks and each gate a unit
whose `reads` is the gate's input and `experts` the blocks it mixes; `emit` writes one
gate: its `Gate` module (labelled with the gate's owner, so its weights count for that
task) and the weighted sum.

Drawn as the stage's experts side by side (shared ones grey, a task's own in its
colour), below them one gate per task (and PLE's shared gate) fed by the experts it
mixes (thin edges, by learned mean weight when a checkpoint is given) and by the input
it reads (dotted). A gate's weights depend on its input, so `viz --checkpoint` shows
their mean over the validation split (`Readout.mean_output`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from mtlc.sharing.point import StagePoint, torch_modules
from mtlc.spec.base import LayerItem, StageSharing
from mtlc.topology.experts import expert_stage
from mtlc.viz.dot import COLUMN_WIDTH, CROSS_WIDTH, html_label

if TYPE_CHECKING:
    from torch import fx

    from mtlc.compiler.emitter import Emitter
    from mtlc.layers.vocab import Shape
    from mtlc.topology.stage import StageBuild
    from mtlc.viz.drawing import DrawingKit as Drawer
    from mtlc.viz.learned import Readout

Experts = int | list[list[LayerItem]]
EXPERTS_HELP = (
    "how many copies of the stage's layers, or a list of layer lists (one per expert; "
    "the stage then lists no layers)"
)


MAX_EXPERTS = 1024  # a node per expert per stage: a typo like 10**9 must not hang the build


def check_experts(value: Experts) -> Experts:
    count = value if isinstance(value, int) else len(value)
    if count < 1:
        raise ValueError("a mixture needs at least one expert")
    if count > MAX_EXPERTS:
        raise ValueError(f"{count} experts is more than the {MAX_EXPERTS} mtlc allows")
    return value


class MixtureOfExperts(StageSharing):
    """Gated experts (mtlc.sharing.mmoe): every task gets a softmax-gated sum of experts.

    `shared` experts read the stage input all tasks share; `own` experts are one set per
    task. `chains` (PLE) hands a shared gate's output to the next stage of the same type.
    """

    layout: ClassVar = "experts"
    chains: ClassVar[bool] = False
    expert_keys: ClassVar[tuple[str, str]] = ("shared_experts", "task_experts")
    groups: None = None
    top_k: int | None = Field(
        None,
        ge=1,
        description="sparse gating: keep each gate's k largest logits, softmax over those",
    )

    def expert_sets(self) -> tuple[Experts, Experts]:
        """(shared experts, each task's own experts): a count or the layer lists."""
        raise NotImplementedError


class MMoE(MixtureOfExperts):
    """Ma et al. 2018: E shared experts, one softmax gate per task over them."""

    expert_keys: ClassVar = ("experts", "task_experts")
    type: Literal["mmoe"]
    experts: Experts = Field(4, description=EXPERTS_HELP)

    _check = field_validator("experts")(check_experts)

    def expert_sets(self) -> tuple[Experts, Experts]:
        return self.experts, 0


@torch_modules(__name__)
def modules() -> dict[str, Any]:
    import torch
    from torch import nn

    class Gate(nn.Module):
        """softmax(W · v(x) + b) over E experts, optionally over the k largest logits only."""

        def __init__(self, features: int, experts: int, top_k: int | None = None):
            super().__init__()
            self.linear = nn.Linear(features, experts)
            self.top_k = top_k if top_k is not None and top_k < experts else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x if x.dim() == 2 else x.flatten(2).mean(-1)
            logits = self.linear(v)
            if self.top_k is not None:
                kept = logits.topk(self.top_k, dim=-1).indices
                sparse = torch.full_like(logits, float("-inf"))
                logits = sparse.scatter(-1, kept, logits.gather(-1, kept))
            return torch.softmax(logits, dim=-1)

    def gated_sum(weights: torch.Tensor, *experts: torch.Tensor) -> torch.Tensor:
        """Σ_e weights[:, e] · experts[e], the weights broadcast over each expert's feature axes."""
        extra = [1] * (experts[0].dim() - 1)
        out = weights[:, 0].reshape(-1, *extra) * experts[0]
        for e in range(1, len(experts)):
            out = torch.addcmul(out, weights[:, e].reshape(-1, *extra), experts[e])
        return out

    return {"Gate": Gate, "gated_sum": gated_sum}


class MixturePoint(StagePoint):
    """What every mixture point (MMoE, CGC, PLE) shares: the experts-and-gates topology
    (mtlc.topology.experts), the gate's emission, its drawing and its readout. A
    mixture point's file only adds its option model."""

    probes = True

    def build(self, stage: StageBuild) -> Shape:
        return expert_stage(stage)

    def emit(self, em: Emitter, unit: str) -> dict[str, fx.Node]:
        """One gate: its weights over the unit's experts, then their weighted sum."""
        attrs = em.attrs(unit)
        owner = attrs["owner"]
        inputs = em.inputs(unit)
        x = next(iter(inputs[attrs["reads"]].values()))
        experts = tuple(next(iter(inputs[e].values())) for e in attrs["experts"])
        stage = attrs["stage"]
        m = modules()
        gate = m.Gate(attrs["in_shape"][0], len(experts), attrs["options"].get("top_k"))
        name = f"encoder.{stage}.gate_{owner or 'shared'}"
        weights = em.call_module(name, gate, (x,), block=unit, kind="unit", owner=owner)
        out = em.call_function(
            m.gated_sum, (weights, *experts), block=unit, kind="unit", owner=owner
        )
        return dict.fromkeys(attrs["tasks"], out)

    def arrange(
        self, d: Drawer, stage: str, blocks: list[str], units: list[str]
    ) -> tuple[list[str], float | None, str | None] | None:
        return blocks, 0.6 * COLUMN_WIDTH, None  # experts side by side, each narrow

    def draw(self, d: Drawer, u: str) -> None:
        """A mixture's gate: softmax over the experts it mixes, then their weighted sum;
        with a checkpoint, each expert's mean weight on the validation split."""
        a = d.g.nodes[u]
        owner = a["owner"]
        k = a["options"]["top_k"]
        n = len(a["experts"])
        title = f"gate · {owner or 'shared'}"
        lines = [("b", title), ("s", f"softmax over {n}" + (f", top-{k}" if k else "") + " → Σ")]
        lines += d.cost_lines(u)
        weights = d.notes.learned.get(u)
        if weights:
            experts = [e.split("/", 1)[1] for e in a["experts"]]
            lines += [("html", d.weight_text(e, w)) for e, w in zip(experts, weights)]
            samples = f'<FONT POINT-SIZE="8">mean of {d.notes.samples} val samples</FONT>'
            lines.append(("html", samples))
        attrs = {
            "label": html_label(lines),
            "shape": "invtrapezium",
            "group": owner,
            "width": COLUMN_WIDTH,
        }
        attrs.update(d.fill((owner,) if owner else tuple(d.tasks)))
        d.dot.node(u, **d.status(u, attrs))

    def draw_edge(self, d: Drawer, src: str, unit: str, tasks: tuple[str, ...]) -> bool:
        experts = d.g.nodes[unit]["experts"]
        if src in experts:
            # an expert into a gate: thin, or as thick as its learned mean weight
            weights = d.notes.learned.get(unit)
            w = weights[experts.index(src)] if weights else None
            width = CROSS_WIDTH if w is None else 0.4 + 4 * w
            d.edge(src, unit, tasks, penwidth=width)
        else:  # what the gate reads to weigh its experts
            d.edge(src, unit, tasks, style="dotted")
        return True

    def learned(self, readout: Readout, unit: str) -> list[float] | None:
        """The gate's mean weight per expert (the unit's `experts` order)."""
        return readout.mean_output(unit)


class MMoEPoint(MixturePoint):
    Options = MMoE
