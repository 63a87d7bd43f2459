"""Task attention over a shared trunk (Liu et al., CVPR 2019, MTAN).

The stage runs once, shared by every task (the trunk feature u_j). Each task t keeps
its own attended feature `p_t = a_t ⊙ u_j`, with the soft mask

    a_t = σ(BN(Conv1×1(ReLU(BN(Conv1×1(input))))))        (values in [0, 1])

whose inside has `hidden` channels (default: the stage's C). At the first attention
stage of a run the input is u_j alone; from the second on it is `[u_j, p̃_t]`, where
p̃_t is the task's previous attended feature passed through a refinement block
(3×3 conv–BN–ReLU, C_{j-1} → C_j, one module shared by all tasks, as MTAN's
`encoder_block_att`) and max-pooled down to u_j's size. So each task's masks form a
chain through the encoder while the trunk's weights stay shared.

On a ResNet (`split`, the default for a named backbone's stages) the paper's form is
used: the mask reads u_b, the output of the stage's blocks but the last, and gates u_t,
the output of the last block: `p_t = a_t([u_b, p̃_t]) ⊙ u_t`.

The topology gives each stage one unit per task (role "gate": mask and gating) and,
from the second attention stage on, one unit for the shared refinement (role
"refine"), called once per task; `emit` writes whichever of the two it is given.

Pooling is by an integer factor k per axis such that pooling p̃_t's H×W by k gives
exactly u_j's (as `maxpool(k)` in the trunk would); any other change of size (growing,
or a stride that rounds differently) is a located error naming the stage.

Drawn as a per-task gate beside the shared trunk (one column in the middle, as in Liu
et al.'s figure), chained stage to stage through the task's own pass of the shared
refinement (one grey box per task, so the shared module never reads as a place where
tasks mix).

Topology: the stage's blocks are one shared trunk `s/shared` (split: `s/shared` for
the blocks but the last and `s/last`); its units carry `role`: a stage's per-task
gates (`s/attention/<task>`, role "gate") read the trunk, and from the second attention
stage on also the stage's one refinement unit (`s/attention/refine`, role "refine",
owner None), which takes each task's previous gate and hands the refined feature to
that task's new gate; edges into and out of it carry one task each. A gate's `reads`
names the trunk block its mask sees (u_b) and `gates` the one it multiplies (u_t).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from mtlc.colors import SHARED
from mtlc.layers.vocab import MAX_CHANNELS, Shape
from mtlc.sharing.point import StagePoint, torch_modules
from mtlc.spec.base import Count, StageSharing
from mtlc.topology.stage import infer
from mtlc.viz.dot import COLUMN_WIDTH, html_label

if TYPE_CHECKING:
    from torch import fx

    from mtlc.compiler.emitter import Emitter
    from mtlc.topology.stage import StageBuild
    from mtlc.viz.drawing import DrawingKit as Drawer


class Attention(StageSharing):
    """Liu et al. 2019 (MTAN): shared trunk, a task-specific attention mask per stage."""

    layout: ClassVar = "trunk"
    type: Literal["attention"]
    groups: None = None
    hidden: Count(MAX_CHANNELS) | None = Field(
        None,
        description="channels inside the attention module (default: the stage's)",
    )
    split: bool | None = Field(
        None,
        description="MTAN on a ResNet: the masks read the stage's blocks but the last (u_b) and "
        "gate the last block's output (u_t); default: on for stages of a named backbone",
    )


def mtan_pool(before: Shape, after: Shape) -> tuple[int, int] | None:
    """The integer (kH, kW) whose max-pool maps `before`'s H×W onto `after`'s, if any.

    MTAN carries a task's attended feature from one attention stage to the next through
    a shared refinement and a pool; only an integer pooling factor can do that exactly.
    """
    factors = []
    for b, a in zip(before[1:], after[1:]):
        k = b // a
        if k < 1 or b // k != a:
            return None
        factors.append(k)
    return factors[0], factors[1]


@torch_modules(__name__)
def modules() -> dict[str, Any]:
    from torch import nn

    class AttentionMask(nn.Sequential):
        """MTAN's attention layer: 1×1 conv → BN → ReLU → 1×1 conv → BN → sigmoid."""

        def __init__(self, cin: int, hidden: int, cout: int):
            super().__init__(
                nn.Conv2d(cin, hidden, 1),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, cout, 1),
                nn.BatchNorm2d(cout),
                nn.Sigmoid(),
            )

    class Refine(nn.Sequential):
        """MTAN's shared refinement between attention stages: 3×3 conv–BN–ReLU, max-pool if it shrinks."""

        def __init__(self, cin: int, cout: int, pool: tuple[int, int]):
            layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            super().__init__(*layers, *([nn.MaxPool2d(pool)] if pool != (1, 1) else []))

    return {"AttentionMask": AttentionMask, "Refine": Refine}


class AttentionPoint(StagePoint):
    Options = Attention

    # -- topology -----------------------------------------------------------------------
    def build(self, b: StageBuild) -> Shape:
        """The shared trunk (continuing the previous attention stage's, `b.carry`), then
        per task a gate and, from the second attention stage on, the shared refinement."""
        g, stage, sharing, shape, tasks = b.g, b.stage, b.sharing, b.shape, b.tasks
        trunk, stream, link = b.carry, b.stream, b.link
        if trunk is None and len(set(b.feature.values())) > 1:
            raise b.merge_error(tasks, "attention needs one shared trunk")
        src = trunk or next(iter(stream.values()))
        layers, out = b.layers(b.items, ("encoder", "stages", stage), shape)
        if len(out) != 3:
            raise b.error(
                b.where,
                f"attention needs feature maps [C, H, W]; stage '{stage}' outputs {list(out)}",
            )
        if trunk is not None and mtan_pool(shape, out) is None:
            raise b.error(
                b.where,
                f"attention cannot carry the previous stage's attended features {list(shape)} to stage '{stage}' ({list(out)}): "
                "its H and W must shrink by an integer pooling factor",
            )
        block = f"{stage}/shared"
        split = sharing.split if sharing.split is not None else b.named_backbone
        if split:
            _splittable(b, layers)
        u_b = infer(layers[:-1], shape) if split else out
        if u_b[1:] != out[1:]:
            raise b.error(
                b.where,
                f"split: the blocks but the last give {list(u_b)}, the last block {list(out)}; "
                "the mask needs the same H×W",
            )
        b.add_block(block, None, tuple(tasks), layers[:-1] if split else layers, shape, u_b)
        link(src, block, tuple(tasks))
        gated = block
        if split:  # MTAN on ResNet: u_b above, the last block gives u_t
            gated = f"{stage}/last"
            b.add_block(gated, None, tuple(tasks), layers[-1:], u_b, out)
            link(block, gated, tuple(tasks))
        refine = None
        if trunk is not None:
            # one refinement for all tasks: its own node, so its weights are counted
            # and drawn once rather than inside whichever task's gate came first
            refine = f"{stage}/attention/refine"
            b.unclaimed("refine" in tasks, refine, "refine")  # gate `s/attention/refine`
            g.add_node(
                refine,
                kind="unit",
                type="attention",
                role="refine",
                stage=stage,
                owner=None,
                tasks=tuple(tasks),
                shape=out,
                options=sharing.model_dump(exclude={"type"}),
            )
        for t in tasks:
            gate = f"{stage}/attention/{t}"
            g.add_node(
                gate,
                kind="unit",
                type="attention",
                role="gate",
                stage=stage,
                owner=t,
                tasks=(t,),
                shape=out,
                options=sharing.model_dump(exclude={"type"}),
                reads=block,  # u_b, what the mask sees
                gates=gated,  # u_t, what the mask multiplies
            )
            link(block, gate, (t,))
            if gated != block:
                link(gated, gate, (t,))
            if refine is not None:
                link(stream[t], refine, (t,))
                link(refine, gate, (t,))
            stream[t] = b.feature[t] = gate
            b.origin.setdefault(t, stage)
        b.carry = gated
        return out

    # -- fx -------------------------------------------------------------------------------
    def emit(self, em: Emitter, unit: str) -> dict[str, fx.Node]:
        """The stage's shared refinement (role "refine") or one task's gate (role "gate")."""
        if em.attrs(unit)["role"] == "refine":
            return _emit_refine(em, unit)
        return _emit_gate(em, unit)

    # -- drawing --------------------------------------------------------------------------
    def arrange(
        self, d: Drawer, stage: str, blocks: list[str], units: list[str]
    ) -> tuple[list[str], float | None, str | None] | None:
        """MTAN: the trunk is one column in the middle, each task's gate beside it on the
        same row, as in Liu et al.'s figure. The stage's refinement stays out of the row:
        fed by the gates above and feeding these, it lands between."""
        gates = [u for u in units if d.g.nodes[u]["role"] == "gate"]
        if not gates:
            return None
        left = [u for u in gates if _left_of_trunk(d, u)]
        row = left + blocks + [u for u in gates if u not in left]
        return row, COLUMN_WIDTH, "~trunk"  # the trunk straight down the middle

    def draw(self, d: Drawer, u: str) -> None:
        a = d.g.nodes[u]
        if a["role"] == "refine":
            _draw_refine(d, u)
            return
        t = a["owner"]
        lines = [("b", f"attention · {t}"), ("s", "σ(conv1×1 …) ⊙ shared")] + d.cost_lines(u)
        attrs = {
            "label": html_label(lines),
            "shape": "invtrapezium",
            "group": t,
            "width": COLUMN_WIDTH,
        }
        attrs.update(d.fill((t,)))
        d.dot.node(u, **d.status(u, attrs))

    def draw_edges(self, d: Drawer, u: str) -> set[tuple[str, str]]:
        if d.g.nodes[u].get("role") != "refine":
            return set()
        for src, ts in d.in_edges(u).items():  # each task through its own pass
            for t in ts:
                d.edge(src, f"{u}#{t}", (t,))
        return d.part_edges_out(u)

    def draw_edge(self, d: Drawer, src: str, unit: str, tasks: tuple[str, ...]) -> bool:
        if d.g.nodes[src]["kind"] != "block":
            return False
        # the shared trunk's feature, gated per task beside it
        d.edge(src, unit, tasks, back=_left_of_trunk(d, unit), color=SHARED)
        return True


def _left_of_trunk(d: Drawer, u: str) -> bool:
    """A task's gate drawn left of the trunk: the tasks in the left half of the columns."""
    a = d.g.nodes[u]
    return a.get("role") == "gate" and d.col(a["tasks"]) < len(d.tasks) // 2


def _splittable(b: StageBuild, layers: list) -> None:
    """MTAN's ResNet form needs blocks before the last, and u_b shaped like u_t."""
    if b.topo.traced is not None:
        raise b.error(b.where, "split needs the stage's blocks; a traced backbone has none")
    if len(layers) < 2:
        raise b.error(
            b.where,
            f"split needs at least two blocks in stage '{b.stage}', it has {len(layers)}",
        )


def _emit_refine(em: Emitter, unit: str) -> dict[str, fx.Node]:
    """Each task's previous attended feature through the one `Refine` module of the stage.

    The calls are labelled with the refinement node and no owner, so the module's weights
    are rolled up once, under it, while each call's cost still follows its own task.
    """
    attrs = em.attrs(unit)
    stage, shape = attrs["stage"], attrs["shape"]
    name = f"encoder.{stage}.refine"
    refined: dict[str, fx.Node] = {}
    for src, values in em.inputs(unit).items():
        before = em.attrs(src)["shape"]
        for task, p in values.items():
            module = None
            if not em.has_module(name):
                # the topology checked that an integer pooling factor exists
                module = modules().Refine(before[0], shape[0], mtan_pool(before, shape))
            refined[task] = em.call_module(name, module, (p,), block=unit, kind="unit", owner=None)
    return refined


def _emit_gate(em: Emitter, unit: str) -> dict[str, fx.Node]:
    """Task t's mask over the trunk feature (with its refined previous feature) and its gating."""
    import torch

    attrs = em.attrs(unit)
    (task,) = attrs["tasks"]
    stage, shape = attrs["stage"], attrs["shape"]
    refined: fx.Node | None = None
    inputs = em.inputs(unit)
    for src, values in inputs.items():
        if em.attrs(src)["kind"] == "unit":
            refined = values[task]
    # u_b (what the mask reads) and u_t (what it gates): the same trunk feature unless
    # the stage is split MTAN-on-ResNet style (blocks but the last / the last block)
    u = inputs[attrs["reads"]][task]
    u_t = inputs[attrs["gates"]][task]

    mask_in = u
    if refined is not None:
        mask_in = em.call_function(
            torch.cat, ((u, refined),), {"dim": 1}, block=unit, kind="unit", owner=task
        )
    channels = shape[0]
    hidden = attrs["options"].get("hidden") or channels
    u_b = em.attrs(attrs["reads"])["out_shape"][0]
    mask = em.call_module(
        f"encoder.{stage}.attention.{task}",
        modules().AttentionMask(u_b + (0 if refined is None else channels), hidden, channels),
        (mask_in,),
        block=unit,
        kind="unit",
        owner=task,
    )
    return {task: em.call_function(torch.mul, (mask, u_t), block=unit, kind="unit", owner=task)}


def _draw_refine(d: Drawer, u: str) -> None:
    """MTAN's refinement: one module with shared weights that each task's chain
    runs through on its own (Liu et al. apply the same f to every task's mask).

    Drawn as one small grey box per task, in that task's column and linked only to
    that task's gates, so it cannot read as a place where the tasks' features mix;
    every box says "shared weights" and only the first carries the parameter count.
    """
    a = d.g.nodes[u]
    before = d.g.nodes[next(iter(d.g.predecessors(u)))]["shape"]
    what = "3×3 conv-BN-ReLU" + ("" if mtan_pool(before, a["shape"]) == (1, 1) else " + pool")
    tasks = d.by_column(d.source_of(u))
    for i, t in enumerate(tasks):
        lines = [("b", "refine"), ("s", what)]
        lines += [("s", "shared weights")] + (d.cost_lines(u) if i == 0 else [])
        attrs = {"label": html_label(lines), "fontsize": 9, "group": t, "width": 1.4}
        attrs.update(d.fill(tuple(d.tasks)))
        attrs["style"] = "rounded,filled,dashed"
        d.dot.node(f"{u}#{t}", **d.status(f"{u}#{t}", attrs))
