"""The building blocks of the spec format that sharing points' option models share.

A sharing point's file (mtlc.sharing) defines its own option model from these bases;
`mtlc.spec.schema` assembles the format from the registered points. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mtlc.layers.vocab import MAX_CHANNELS

# numbers too: a plain YAML reader splits the flow list `[conv(64, 3, bias=false)]` at its
# commas into "conv(64", 3, "bias=false)"; mtlc mends that while parsing, and the published
# schema must accept what an editor's YAML reader sees (the layer parser refuses a lone number)
LayerItem = str | dict[str, Any] | int | float

# -- bounds ----------------------------------------------------------------------------
# Every count in the format has a maximum, so that no value can make validation (or the
# model it describes) loop or allocate without end; far above any real use. Other
# sections reuse `Count` for their own counts.
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_ITERATIONS = 1_000  # per-forward loops (affinity propagation, recursion steps)
MAX_SOLVER_ITERATIONS = 100_000  # per-step solver loops (MGDA's Frank–Wolfe)
MAX_NAME_LENGTH = 100  # the spec's name, which names the run folder


def Count(maximum: int, minimum: int = 1) -> Any:
    """An integer in [minimum, maximum]: `steps: Count(MAX_ITERATIONS) = 2`."""
    return Annotated[int, Field(ge=minimum, le=maximum)]


class Strict(BaseModel):
    # NaN and ±inf are refused in every float field (`.nan`, `1.0e400`): a NaN weight or
    # momentum trains to "completed" with NaN losses
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


def typed(default: str | None) -> Callable[[Any], Any]:
    """`s1: hard` is short for `s1: {type: hard}`; a mapping without `type` has the default.

    The decoder has no default type (no decoder at all is the default), so a mapping
    without `type` stays as written and validation asks for the key.
    """

    def normalise(value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value}
        if isinstance(value, dict) and "type" not in value and default is not None:
            return {"type": default, **value}
        return value

    return normalise


Pair = Annotated[tuple[float, float], Field(description="[own-task weight, other-task weight]")]
Groups = list[list[str]]


class StageSharing(Strict):
    """Options common to the sharing points of an encoder stage.

    `layout` tells the topology how many copies of the stage exist: one shared by all
    tasks (or per group), one per task, or a shared trunk with per-task attention. A
    point's option model adds `type: Literal["<its registry name>"]` and its options.
    """

    layout: ClassVar[Literal["shared", "per_task", "trunk", "experts"]] = "shared"
    groups: Groups | None = Field(
        None, description="task groups; sharing happens within a group only"
    )


class DecoderBase(Strict):
    """Options common to the decoder-focused interactions (`decoder.type`)."""

    features: Count(MAX_CHANNELS) = Field(
        64, description="channels of the per-task initial features"
    )
    supervision: float = Field(1.0, ge=0, description="loss weight of the intermediate predictions")
