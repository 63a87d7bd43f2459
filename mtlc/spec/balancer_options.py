"""The option models of the balancers (`balancer: {type: ...}`), part of the spec format.

Each balancer's file (mtlc.balancers) reads its options from these models; the spec's
`balancer` is their discriminated union. Imports no torch.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field

from mtlc.spec.base import MAX_SOLVER_ITERATIONS, Count, Strict, typed


class Fixed(Strict):
    type: Literal["fixed"] = "fixed"
    weights: dict[str, Annotated[float, Field(ge=0)]] = {}


class Uncertainty(Strict):
    type: Literal["uncertainty"]
    init: float = Field(
        0.0,
        ge=-30,
        le=30,
        description="initial s = log sigma^2 (exp(-s) must stay finite)",
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
    BeforeValidator(typed("fixed")),
]
