"""The spec format, version 1, as pydantic models.

This module is the single definition of what a spec may contain: validation, the
JSON Schema (`mtlc schema`) and the did-you-mean hints all come from it. It imports no
torch. Option models of sharing points and balancers live here, beside the rest of the
format, so that the format can be checked and published without loading any model code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator

from mtlc import registry
from mtlc.layers.vocab import MAX_CHANNELS, MAX_SIZE

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


def _typed(default: str | None) -> Callable[[Any], Any]:
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


# -- encoder sharing points ------------------------------------------------------------


class StageSharing(Strict):
    """Options common to the sharing points of an encoder stage.

    `layout` tells the topology how many copies of the stage exist: one shared by all
    tasks (or per group), one per task, or a shared trunk with per-task attention.
    """

    layout: ClassVar[Literal["shared", "per_task", "trunk", "experts"]] = "shared"
    groups: Groups | None = Field(
        None, description="task groups; sharing happens within a group only"
    )


class Hard(StageSharing):
    """One copy of the stage per group (one in all by default)."""

    type: Literal["hard"] = "hard"


class Separate(StageSharing):
    """Every task its own copy of the stage, no exchange."""

    layout: ClassVar = "per_task"
    type: Literal["separate"]
    groups: None = None


class CrossStitch(StageSharing):
    """Misra et al. 2016: own copy per task, then a learned linear mix of the columns."""

    layout: ClassVar = "per_task"
    type: Literal["cross_stitch"]
    init: Pair = (0.9, 0.1)
    granularity: Literal["channel", "scalar"] = "channel"
    lr_mult: float = Field(1.0, gt=0, description="learning-rate multiplier for the mixing weights")


class NDDR(StageSharing):
    """Gao et al. 2019: own copy per task, then concat + 1x1 conv + BN + ReLU per task."""

    layout: ClassVar = "per_task"
    type: Literal["nddr"]
    init: Pair = (0.9, 0.1)
    bn_momentum: float = Field(0.05, gt=0, le=1)
    lr_mult: float = Field(1.0, gt=0)


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


Experts = int | list[list[LayerItem]]
EXPERTS_HELP = (
    "how many copies of the stage's layers, or a list of layer lists (one per expert; "
    "the stage then lists no layers)"
)


MAX_EXPERTS = 1024  # a node per expert per stage: a typo like 10**9 must not hang the build


def _experts(value: Experts) -> Experts:
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

    _check = field_validator("experts")(_experts)

    def expert_sets(self) -> tuple[Experts, Experts]:
        return self.experts, 0


class CGC(MixtureOfExperts):
    """Tang et al. 2020: shared experts plus each task's own, a gate per task over both."""

    type: Literal["cgc"]
    shared_experts: Experts = Field(1, description=EXPERTS_HELP)
    task_experts: Experts = Field(1, description="each task's own experts; " + EXPERTS_HELP)

    _check = field_validator("shared_experts", "task_experts")(_experts)

    def expert_sets(self) -> tuple[Experts, Experts]:
        return self.shared_experts, self.task_experts


class PLE(CGC):
    """Tang et al. 2020: consecutive `ple` stages are stacked CGC levels; every level but
    the last also has a shared gate over all its experts, feeding the next level's shared
    experts (progressive layered extraction)."""

    chains: ClassVar[bool] = True
    type: Literal["ple"]  # type: ignore[assignment]


Sharing = Annotated[
    Hard | Separate | CrossStitch | NDDR | Attention | MMoE | CGC | PLE,
    Field(discriminator="type"),
    BeforeValidator(_typed("hard")),
]

# -- decoder-focused interaction -----------------------------------------------------


class DecoderBase(Strict):
    features: Count(MAX_CHANNELS) = Field(
        64, description="channels of the per-task initial features"
    )
    supervision: float = Field(1.0, ge=0, description="loss weight of the intermediate predictions")


class Distillation(DecoderBase):
    """Xu et al. 2018 (PAD-Net): multi-modal distillation between initial task features."""

    type: Literal["distillation"]


class Affinity(DecoderBase):
    """Zhang et al. 2019 (PAP-Net): pattern-affinitive propagation across tasks."""

    type: Literal["affinity"]
    downsample: Count(MAX_SIZE) = Field(
        2, description="the affinity is computed at 1/downsample resolution"
    )
    iterations: Count(MAX_ITERATIONS) = 3
    beta: float = Field(0.05, gt=0, lt=1)
    learn_beta: bool = False


class Recursive(DecoderBase):
    """Zhang et al. 2018 (JTRL): tasks refine each other in turns."""

    type: Literal["recursive"]
    order: list[str] | None = Field(
        None, description="the order tasks take turns in (default: spec order)"
    )
    steps: Count(MAX_ITERATIONS) = Field(2, description="rounds of turns")


Decoder = Annotated[
    Distillation | Affinity | Recursive, Field(discriminator="type"), BeforeValidator(_typed(None))
]

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
        None, description="the batch entry holding this task's labels (default: the task's name)"
    )
    auxiliary: bool = Field(False, description="trained, but not an output of the final model")

    @property
    def loss_name(self) -> str:
        return self.loss if isinstance(self.loss, str) else self.loss.type

    @property
    def loss_options(self) -> dict[str, Any]:
        return {} if isinstance(self.loss, str) else dict(self.loss.model_extra or {})


# -- balancers -------------------------------------------------------------------------


class Fixed(Strict):
    type: Literal["fixed"] = "fixed"
    weights: dict[str, Annotated[float, Field(ge=0)]] = {}


class Uncertainty(Strict):
    type: Literal["uncertainty"]
    init: float = Field(
        0.0, ge=-30, le=30, description="initial s = log sigma^2 (exp(-s) must stay finite)"
    )


class DTP(Strict):
    type: Literal["dtp"]
    gamma: float | dict[str, float] = 1.0
    momentum: float = Field(
        0.9, ge=0, lt=1, description="weight of the old value in the KPI moving average"
    )
    kpi: dict[str, str] = Field(
        {}, description="task -> metric used as its KPI (default: its first metric)"
    )
    init: float = Field(0.5, gt=0, lt=1)


class MGDA(Strict):
    level: ClassVar[str] = "gradient"
    type: Literal["mgda"]
    normalize: Literal["l2", "loss", "loss+", "none"] = "loss+"
    mode: Literal["exact", "ub"] = "exact"
    max_iter: Count(MAX_SOLVER_ITERATIONS) = 250
    tol: float = Field(1e-6, gt=0)


class GradientMethod(Strict):
    level: ClassVar[str] = "gradient"
    wrt: Literal["parameters", "representation"] = Field(
        "parameters",
        description="where the task Jacobian is taken: the shared parameters, or the shared"
        " representation (one encoder backward, as MGDA-UB)",
    )


class PCGrad(GradientMethod):
    type: Literal["pcgrad"]


class GradDrop(GradientMethod):
    type: Literal["graddrop"]
    leak: float = Field(0.0, ge=0, le=1, description="share of each gradient always kept")


class GradVac(GradientMethod):
    type: Literal["gradvac"]
    beta: float = Field(0.5, ge=0, le=1, description="EMA rate of the cosine targets")


class CAGrad(GradientMethod):
    type: Literal["cagrad"]
    c: float = Field(0.4, ge=0, description="radius of the ball around the mean gradient")
    rescale: Literal[0, 1, 2] = Field(
        1, description="0: none, 1: divide by 1 + c^2 (official code), 2: by 1 + c"
    )


class IMTLG(GradientMethod):
    type: Literal["imtl_g"]


class NashMTL(GradientMethod):
    type: Literal["nash_mtl"]
    max_norm: float = Field(1.0, ge=0, description="clip ||d|| to this (0: no clipping)")
    update_weights_every: Count(MAX_SOLVER_ITERATIONS) = 1
    optim_niter: Count(MAX_SOLVER_ITERATIONS) = 20


class AlignedMTL(GradientMethod):
    type: Literal["aligned_mtl"]
    scale_mode: Literal["min", "median", "rmse"] = "min"


class UPGrad(GradientMethod):
    type: Literal["upgrad"]


class DualProj(GradientMethod):
    type: Literal["dualproj"]


class ConFIG(GradientMethod):
    type: Literal["config"]


class MoCo(GradientMethod):
    type: Literal["moco"]
    beta: float = Field(0.5, gt=0, le=1, description="tracking rate of y")
    beta_sigma: float = Field(0.5, ge=0, description="decay exponent of beta")
    gamma: float = Field(0.1, gt=0, description="step size of lambda")
    gamma_sigma: float = Field(0.5, ge=0, description="decay exponent of gamma")
    rho: float = Field(0.0, ge=0, description="l2 regularisation of lambda")


class DBMTL(GradientMethod):
    type: Literal["db_mtl"]
    beta: float = Field(0.9, ge=0, lt=1, description="EMA weight of the old gradient")
    beta_sigma: float = Field(0.0, ge=0, description="decay exponent of beta")


class DWA(Strict):
    type: Literal["dwa"]
    temperature: float = Field(2.0, gt=0, description="softmax temperature T")


class RLW(Strict):
    type: Literal["rlw"]


class GLS(Strict):
    type: Literal["gls"]


class IMTLL(Strict):
    type: Literal["imtl_l"]


class FAMO(Strict):
    type: Literal["famo"]
    w_lr: float = Field(0.025, gt=0, description="learning rate of the task logits")
    gamma: float = Field(1e-3, ge=0, description="weight decay of the task logits")


class GradNorm(Strict):
    type: Literal["gradnorm"]
    alpha: float = Field(1.5, ge=0, description="restoring force towards equal training rates")


Balancer = Annotated[
    Fixed
    | Uncertainty
    | DTP
    | MGDA
    | PCGrad
    | GradDrop
    | GradVac
    | CAGrad
    | IMTLG
    | NashMTL
    | AlignedMTL
    | UPGrad
    | DualProj
    | ConFIG
    | MoCo
    | DBMTL
    | DWA
    | RLW
    | GLS
    | IMTLL
    | FAMO
    | GradNorm,
    Field(discriminator="type"),
    BeforeValidator(_typed("fixed")),
]

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


class Train(Strict):
    data: DataSpec = DataSpec(name="shapes")
    epochs: Count(MAX_EPOCHS) = 10
    batch_size: Count(MAX_BATCH) = 32
    optimizer: Optimizer = Optimizer()
    scheduler: Literal["none", "cosine"] = "none"
    grad_clip: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=-(2**63), le=2**64 - 1, description="a 64-bit seed")
    sync_bn: bool = Field(
        False,
        description="with several processes, BatchNorm statistics over the global batch "
        "(SyncBatchNorm; CUDA only)",
    )


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
        None, description="a named backbone; stages then name its parts (stem, layer1, layer3.2)"
    )
    stages: dict[str, list[LayerItem] | str] = Field(
        min_length=1,
        description="ordered stages, each a list of layers (or, with a backbone, of its parts)",
    )
    sharing: dict[str, Sharing] = Field(
        {}, description="per stage; a stage not listed is hard-shared"
    )
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
    decoder: Decoder | None = None
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
        return self.encoder.sharing.get(stage) or Hard()
