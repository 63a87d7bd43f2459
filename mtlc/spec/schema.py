"""The spec format, version 1, as pydantic models.

This module is the single definition of what a spec may contain: validation, the
JSON Schema (`mtlc schema`) and the did-you-mean hints all come from it. It imports no
torch. The option model of each sharing point lives in that point's file
(mtlc.sharing); `spec_model()` assembles the format from the points registered in
`mtlc.registry` when a spec is first validated, so registering a point is all it takes
for specs (and the JSON Schema) to accept it.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    create_model,
    field_validator,
)

from mtlc import registry
from mtlc.spec.balancer_options import Balancer, Fixed
from mtlc.spec.base import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_ITERATIONS,
    MAX_NAME_LENGTH,
    Count,
    DecoderBase,
    LayerItem,
    StageSharing,
    Strict,
    typed,
)

__all__ = [
    "MAX_ITERATIONS",
    "Balancer",
    "Count",
    "DecoderBase",
    "Fixed",
    "LayerItem",
    "Spec",
    "StageSharing",
    "Strict",
    "spec_model",
]

SHARING_HELP = "per stage; a stage not listed is hard-shared"

# -- tasks -----------------------------------------------------------------------------


class CrossEntropyOptions(Strict):
    ignore_index: int = Field(-1, ge=-(2**63), le=2**63 - 1, description="target id to skip")
    label_smoothing: float = Field(0.0, ge=0, le=1)


class BCEOptions(Strict):
    pos_weight: float | None = Field(None, gt=0, description="weight of the positive class")


class RegressionOptions(Strict):
    ignore_zero: bool = Field(False, description="skip pixels whose target is 0 (no measurement)")


class SmoothL1Options(RegressionOptions):
    beta: float = Field(1.0, ge=0)


class NoOptions(Strict):
    pass


# the keyword options each loss in mtlc.losses takes (a test compares them with the
# functions' signatures); `{type: l1, reduction: sum}` is refused, not ignored
LOSS_OPTIONS: dict[str, type[Strict]] = {
    "cross_entropy": CrossEntropyOptions,
    "bce": BCEOptions,
    "l1": RegressionOptions,
    "mse": RegressionOptions,
    "smooth_l1": SmoothL1Options,
    "cosine": NoOptions,
}


class LossSpec(Strict):
    model_config = ConfigDict(extra="allow")
    type: str


class Task(Strict):
    head: list[LayerItem] = Field(min_length=1)
    loss: str | LossSpec
    metrics: list[str] = []
    target: str | None = Field(
        None,
        description="the batch entry holding this task's labels (default: the task's name)",
    )
    auxiliary: bool = Field(False, description="trained, but not an output of the final model")

    @property
    def loss_name(self) -> str:
        return self.loss if isinstance(self.loss, str) else self.loss.type

    @property
    def loss_options(self) -> dict[str, Any]:
        return {} if isinstance(self.loss, str) else dict(self.loss.model_extra or {})


# -- training --------------------------------------------------------------------------


class DataSpec(BaseModel):
    """Which data set; every other key is passed to its loader, which checks it."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in registry.DATASETS:
            from mtlc.errors import unknown

            raise ValueError(unknown("data set", value, registry.DATASETS))
        return value

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Optimizer(Strict):
    type: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="sgd only")


class CompileOptions(Strict):
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        Field("default", description="torch.compile mode; reduce-overhead uses CUDA graphs")
    )


class Train(Strict):
    data: DataSpec = DataSpec(name="shapes")
    epochs: Count(MAX_EPOCHS) = 10
    batch_size: Count(MAX_BATCH) = 32
    optimizer: Optimizer = Optimizer()
    scheduler: Literal["none", "cosine"] = "none"
    grad_clip: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=-(2**63), le=2**64 - 1, description="a 64-bit seed")
    fuse: bool = Field(
        True,
        description="run equal per-task copies as one grouped op on stacked activations "
        "(exact; the state dict is unchanged)",
    )
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off",
        description="mixed precision: autocast to bf16, or fp16 with loss scaling (CUDA)",
    )
    channels_last: bool = Field(False, description="NHWC memory layout for weights and images")
    compile: CompileOptions | bool = Field(
        False,
        description="torch.compile the model's training forward (true or {mode: ...})",
    )
    log_every: int = Field(
        20,
        ge=1,
        description="steps between host read-backs of the losses (every step is still logged)",
    )
    sync_bn: bool = Field(
        False,
        description="with several processes, BatchNorm statistics over the global batch "
        "(SyncBatchNorm; CUDA only)",
    )

    @property
    def compile_mode(self) -> str | None:
        """torch.compile's mode, or None when compiling is off."""
        if self.compile is False:
            return None
        return "default" if self.compile is True else self.compile.mode


# -- the spec --------------------------------------------------------------------------


class BackboneSpec(Strict):
    """A ResNet by `name`, or any fx-traceable model from `import`; stages then name its parts."""

    name: str | None = Field(None, description="resnet18 | resnet34 | resnet50 | resnet101")
    import_: str | None = Field(
        None,
        alias="import",
        description="'package.module:factory' returning an nn.Module (needs --allow-import package)",
    )
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the import factory")
    output_stride: Literal[8, 16, 32] | None = Field(
        None,
        description="named backbones: 32 (default), or 8/16 by dilating the last stages "
        "(torchvision's replace_stride_with_dilation)",
    )
    weights: str | None = Field(
        None,
        description="a local torchvision/timm state dict (torch.save) loaded into every copy of every stage",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        from mtlc.layers.backbones import RESNETS

        if value is not None and value not in RESNETS:
            from mtlc.errors import unknown

            raise ValueError(unknown("backbone", value, RESNETS))
        return value

    @property
    def stride(self) -> int:
        return self.output_stride or 32


class Encoder(Strict):
    backbone: BackboneSpec | None = Field(
        None,
        description="a named backbone; stages then name its parts (stem, layer1, layer3.2)",
    )
    stages: dict[str, list[LayerItem] | str] = Field(
        min_length=1,
        description="ordered stages, each a list of layers (or, with a backbone, of its parts)",
    )
    # the registered points' union replaces StageSharing in `spec_model()`
    sharing: dict[str, StageSharing] = Field({}, description=SHARING_HELP)
    init: dict[str, str] = Field(
        {},
        description="task -> checkpoint of a single-task run of this spec (e.g. a baseline's best.pt): "
        "starts that task's column of every separate/cross_stitch/nddr stage from it",
    )
    freeze: list[str] = Field(
        [],
        description="stages whose blocks keep their weights (no gradient, not optimised; BN uses running statistics)",
    )


class Spec(Strict):
    mtlc: Literal[1] = Field(description="format version")
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    input: dict[str, list[int]] = Field(min_length=1, max_length=1)
    encoder: Encoder
    tasks: dict[str, Task] = Field(min_length=1)
    decoder: DecoderBase | None = None  # the registered decoders' union in `spec_model()`
    balancer: Balancer = Fixed()
    train: Train = Train()

    _source: Any = PrivateAttr(None)
    _topology: Any = PrivateAttr(None)  # built once while validating; compile reuses it

    @property
    def input_name(self) -> str:
        return next(iter(self.input))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.input[self.input_name])

    @property
    def outputs(self) -> list[str]:
        """The tasks whose predictions the final model returns."""
        return [t for t, task in self.tasks.items() if not task.auxiliary]

    def sharing_of(self, stage: str) -> StageSharing:
        """The stage's sharing options; a stage not listed has the default point's."""
        found = self.encoder.sharing.get(stage)
        if found is None:
            found = _default_sharing(tuple(registry.SHARING.items()))
        return found


def _options(table: tuple[tuple[str, str], ...]) -> list[type[BaseModel]]:
    """The option model of every point in a registry table, in registry order."""
    return [registry.resolve(dict(table), name).Options for name, _ in table]


@functools.cache
def _default_sharing(table: tuple[tuple[str, str], ...]) -> StageSharing:
    return registry.resolve(dict(table), registry.DEFAULT_SHARING).Options()


def spec_model() -> type[Spec]:
    """The `Spec` model for the points registered now (built once per registry content).

    Its `encoder.sharing` values and `decoder` are discriminated unions (on `type`) of the
    registered points' option models, so a point registered at run time (a test, a
    plugin) is accepted by the very next validation and appears in the JSON Schema.
    """
    return _spec_model(tuple(registry.SHARING.items()), tuple(registry.DECODERS.items()))


@functools.lru_cache(maxsize=8)
def _spec_model(
    sharing: tuple[tuple[str, str], ...], decoders: tuple[tuple[str, str], ...]
) -> type[Spec]:
    stage_union = Annotated[
        Union[tuple(_options(sharing))],  # noqa: UP007 (a union built from a tuple)
        Field(discriminator="type"),
        BeforeValidator(typed(registry.DEFAULT_SHARING)),
    ]
    decoder_union = Annotated[
        Union[tuple(_options(decoders))],  # noqa: UP007
        Field(discriminator="type"),
        BeforeValidator(typed(None)),
    ]
    encoder = create_model(
        "Encoder",
        __base__=Encoder,
        __module__=__name__,
        sharing=(dict[str, stage_union], Field({}, description=SHARING_HELP)),
    )
    return create_model(
        "Spec",
        __base__=Spec,
        __module__=__name__,
        encoder=(encoder, ...),
        decoder=(decoder_union | None, None),
    )
