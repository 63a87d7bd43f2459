"""The interface of a sharing point: everything mtlc knows about one point, in its file.

A *sharing point* says how the tasks' features meet: in an encoder stage
(`encoder.sharing.<stage>`, a `StagePoint`) or between the tasks' decoders
(`decoder.type`, a `DecoderPoint`). Its file defines its option model and a subclass of
one of these classes, and one line in `mtlc.registry` (`SHARING` or `DECODERS`) names
that class; nothing else in mtlc mentions the point. As in torch.fx's `Interpreter`,
the base classes do what most points agree on, and a point overrides only the steps
where it differs:

=================  ===========================  ==========================================
step               override                     default
=================  ===========================  ==========================================
spec format        `Options` (pydantic model)   required: `type: Literal["<name>"]`
whole-spec checks  `check(spec, src)`           none
topology           `build(stage)` (stage);      copies of the stage by `Options.layout`,
                   `predictions(...)` (dec.)    then one `mixes` unit per group
fx emission        `emit(em, unit)`             none (a point without units)
drawing            `draw`, `draw_edges`,        a hexagon titled with the type; plain
                   `draw_edge`, `arrange`       edges; the stage's blocks in one row
learned values     `learned(readout, unit)`     nothing to show
=================  ===========================  ==========================================

The topology gives each unit node the point's registry name as `type`; the compiler,
the drawing and `viz --checkpoint` find the point from it (`unit_point`). A point's
file imports no torch at module level (its torch modules are defined on first use,
`torch_modules`), so that the spec and topology layers can read its option model and
its topology without loading any model code.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

from mtlc import registry
from mtlc.spec.base import DecoderBase, StageSharing

if TYPE_CHECKING:
    from torch import fx

    from mtlc.compiler.emitter import Emitter
    from mtlc.layers.vocab import Shape
    from mtlc.spec.schema import Spec
    from mtlc.spec.yaml_source import Source
    from mtlc.topology.stage import StageBuild
    from mtlc.viz.drawing import DrawingKit as Drawer
    from mtlc.viz.learned import Readout

DECODER_STAGE = "decoder"


class Point:
    """What stage and decoder points have in common: emission, drawing, readout."""

    Options: ClassVar[type]
    # True when `learned` needs the mean outputs of the unit's modules over the
    # validation split (`Readout.mean_output`), e.g. a gate's weights
    probes: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The registry name, which is also `Options.type` and the units' `type`."""
        return self.Options.model_fields["type"].annotation.__args__[0]

    def check(self, spec: Spec, src: Source) -> None:
        """Refuse, with `src.error(path, message)`, what needs the whole spec to see."""

    def emit(self, em: Emitter, unit: str) -> dict[str, fx.Node]:
        """Write the unit's modules and fx nodes through `em`; return per task the node
        it reads next (decoder units may add predictions under `task:tag` keys).

        `em.attrs(unit)` holds the topology's attributes (`type`, `options`, `tasks`,
        `shape`, `stage`, `owner`), `em.inputs(unit)` its incoming values.
        """
        raise NotImplementedError(f"sharing point '{self.name}' adds no units")

    # -- drawing (`d`: mtlc.viz.drawing.DrawingKit) -----------
    def draw(self, d: Drawer, unit: str) -> dict[str, str] | None:
        """Draw the unit's node(s); return per task its topmost part, when drawn as parts.

        Parts are nodes `unit#part` inside a `d.cluster(unit, ...)` box, so a reader of
        the DOT can find the topology node again.
        """
        d.generic_unit(unit)
        return None

    def draw_edges(self, d: Drawer, unit: str) -> set[tuple[str, str]]:
        """Draw edges into and out of a unit drawn as parts; return the topology edges
        done (the others are drawn plainly, or by `draw_edge`)."""
        return set()

    def draw_edge(self, d: Drawer, src: str, unit: str, tasks: tuple[str, ...]) -> bool:
        """Draw the topology edge src → unit in this point's style; False: a plain edge."""
        return False

    def arrange(
        self, d: Drawer, stage: str, blocks: list[str], units: list[str]
    ) -> tuple[list[str], float | None, str | None] | None:
        """The stage's row (blocks and units, left to right), its boxes' width and group,
        when this point lays out the stage it shares; None: the blocks in column order."""
        return None

    # -- viz --checkpoint ----------------------------------------------------------------
    def learned(self, readout: Readout, unit: str) -> Any:
        """What the unit learned, in the form `draw` reads from `d.notes.learned[unit]`
        (None: nothing to show). `readout.state` is the checkpoint's weights and
        `readout.modules(unit)` the modules the unit's fx nodes call."""
        return None


class StagePoint(Point):
    """A sharing point of an encoder stage (`encoder.sharing.<stage>: {type: ...}`)."""

    Options: ClassVar[type[StageSharing]]
    # True when the point adds one unit per group after the stage's copies (cross-stitch,
    # NDDR): the unit `<stage>/<type>` reads every member's copy and gives each its own
    mixes: ClassVar[bool] = False

    @property
    def follows_split(self) -> bool:
        """Whether the stage can follow one whose tasks have features of their own: each
        task's copy reads its own feature. Merge errors suggest these points."""
        return self.Options.layout == "per_task"

    def build(self, stage: StageBuild) -> Shape:
        """Add the stage's nodes to the topology; return the shape the stage outputs.

        `stage` (mtlc.topology.stage.StageBuild) carries the spec, the graph, each task's
        stream and feature, the located-error helpers, and `carry`: what the previous
        stage left if it had this type (MTAN's trunk, PLE's shared gate).
        """
        shape = stage.add_copies()
        if self.mixes:
            stage.add_mixing_units(shape)
        return shape


class DecoderPoint(Point):
    """A decoder-focused interaction (`decoder: {type: ...}`): one unit between the
    tasks' initial features (deep-supervised) and their final heads."""

    Options: ClassVar[type[DecoderBase]]

    def predictions(self, options: DecoderBase, spec: Spec) -> list[str]:
        """Supervised outputs the unit adds besides each task's refined features
        (`task:tag` keys that `emit` returns)."""
        return []


# -- finding a point ------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _instance(path: str) -> Point:
    return registry.resolve_path(path)()


def stage_point(name: str) -> StagePoint:
    """The registered encoder sharing point `name`."""
    return _instance(registry.SHARING[name])  # type: ignore[return-value]


def decoder_point(name: str) -> DecoderPoint:
    """The registered decoder interaction `name`."""
    return _instance(registry.DECODERS[name])  # type: ignore[return-value]


def unit_point(attrs: dict[str, Any]) -> Point:
    """The point that owns a topology unit node (its `type`, in its stage's table)."""
    if attrs["stage"] == DECODER_STAGE:
        return decoder_point(attrs["type"])
    return stage_point(attrs["type"])


def stage_points() -> list[StagePoint]:
    """Every registered encoder sharing point, in registry order."""
    return [stage_point(name) for name in registry.SHARING]


# -- torch modules defined on first use -------------------------------------------------


def torch_modules(module: str) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], Any]]:
    """Decorator for a point file's `def modules()` that defines its torch classes.

    The function imports torch and returns {name: class or function}; it runs once, on
    first use. Each returned object is given `module` as its home, and the module a
    `__getattr__` that finds them (PEP 562), so that pickling a model, the fx code and
    `from mtlc.sharing.x import Name` all reach them as if defined at module level,
    while importing the file (to validate a spec or build a topology) loads no torch.
    """

    def wrap(define: Callable[[], dict[str, Any]]) -> Callable[[], Any]:
        @functools.cache
        def modules() -> SimpleNamespace:
            found = define()
            for name, obj in found.items():
                obj.__module__ = module
                obj.__qualname__ = name
            return SimpleNamespace(**found)

        def attribute(name: str) -> Any:
            if name.startswith("__"):  # dunders (`__path__`, `__wrapped__`) never load torch
                raise AttributeError(f"module {module!r} has no attribute {name!r}")
            try:
                return getattr(modules(), name)
            except AttributeError:
                raise AttributeError(f"module {module!r} has no attribute {name!r}") from None

        sys.modules[module].__getattr__ = attribute  # type: ignore[method-assign]
        return modules

    return wrap


def join_or(names: list[str]) -> str:
    """'a, b or c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


__all__ = [
    "DECODER_STAGE",
    "DecoderPoint",
    "Point",
    "StagePoint",
    "decoder_point",
    "join_or",
    "stage_point",
    "stage_points",
    "torch_modules",
    "unit_point",
]
