"""Every named thing a spec can refer to, mapped to where it lives.

The tables hold import paths, not objects, so that `mtlc --help`, `mtlc schema` and
`mtlc list` never import torch, nor any of the files they name (validating a spec
imports the sharing points' files, which load torch only when a model is built). Adding a loss,
metric, balancer, data set or sharing point is one file plus one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

LOSSES: dict[str, str] = {
    "cross_entropy": "mtlc.losses:cross_entropy",
    "bce": "mtlc.losses:bce",
    "l1": "mtlc.losses:l1",
    "mse": "mtlc.losses:mse",
    "smooth_l1": "mtlc.losses:smooth_l1",
    "cosine": "mtlc.losses:cosine",
}

METRICS: dict[str, str] = {
    "miou": "mtlc.metrics.classification:MeanIoU",
    "pixel_acc": "mtlc.metrics.classification:PixelAccuracy",
    "accuracy": "mtlc.metrics.classification:Accuracy",
    "abs_err": "mtlc.metrics.regression:AbsError",
    "rel_err": "mtlc.metrics.regression:RelError",
    "rmse": "mtlc.metrics.regression:RMSE",
    "delta1": "mtlc.metrics.regression:Delta1",
    "angle_mean": "mtlc.metrics.regression:AngleMean",
    "angle_median": "mtlc.metrics.regression:AngleMedian",
    "within_11.25": "mtlc.metrics.regression:Within11",
    "within_22.5": "mtlc.metrics.regression:Within22",
    "within_30": "mtlc.metrics.regression:Within30",
}

BALANCERS: dict[str, str] = {
    "fixed": "mtlc.balancers.fixed:Fixed",
    "uncertainty": "mtlc.balancers.uncertainty:Uncertainty",
    "dtp": "mtlc.balancers.dtp:DTP",
    "mgda": "mtlc.balancers.mgda:MGDA",
    "pcgrad": "mtlc.balancers.pcgrad:PCGrad",
    "graddrop": "mtlc.balancers.graddrop:GradDrop",
    "gradvac": "mtlc.balancers.gradvac:GradVac",
    "cagrad": "mtlc.balancers.cagrad:CAGrad",
    "imtl_g": "mtlc.balancers.imtl_g:IMTLG",
    "nash_mtl": "mtlc.balancers.nash_mtl:NashMTL",
    "aligned_mtl": "mtlc.balancers.aligned_mtl:AlignedMTL",
    "upgrad": "mtlc.balancers.upgrad:UPGrad",
    "dualproj": "mtlc.balancers.dualproj:DualProj",
    "config": "mtlc.balancers.conflict_free:ConFIG",
    "moco": "mtlc.balancers.moco:MoCo",
    "db_mtl": "mtlc.balancers.db_mtl:DBMTL",
    "dwa": "mtlc.balancers.dwa:DWA",
    "rlw": "mtlc.balancers.rlw:RLW",
    "gls": "mtlc.balancers.gls:GLS",
    "imtl_l": "mtlc.balancers.imtl_l:IMTLL",
    "famo": "mtlc.balancers.famo:FAMO",
    "gradnorm": "mtlc.balancers.gradnorm:GradNorm",
}

DATASETS: dict[str, str] = {
    "shapes": "mtlc.data.shapes:load",
    "correlated": "mtlc.data.correlated:load",
    "csv": "mtlc.data.csv_table:load",
    "nyuv2": "mtlc.data.npy_folders:load_nyuv2",
    "cityscapes": "mtlc.data.npy_folders:load_cityscapes",
    "callable": "mtlc.data.user:load",
}

# Sharing points: each entry is the point's class (mtlc.sharing.point), which holds its
# option model, topology, fx emission, drawing and learned-value readout, all in one file.
# The spec format's unions and the JSON Schema (`make schema`) are built from these tables.
SHARING: dict[str, str] = {
    "hard": "mtlc.sharing.hard:HardPoint",
    "separate": "mtlc.sharing.separate:SeparatePoint",
    "cross_stitch": "mtlc.sharing.cross_stitch:CrossStitchPoint",
    "nddr": "mtlc.sharing.nddr:NDDRPoint",
    "attention": "mtlc.sharing.attention:AttentionPoint",
    "mmoe": "mtlc.sharing.mmoe:MMoEPoint",
    "cgc": "mtlc.sharing.cgc:CGCPoint",
    "ple": "mtlc.sharing.ple:PLEPoint",
}
# the point of a stage the spec's `encoder.sharing` does not list
DEFAULT_SHARING = "hard"

# Decoder-focused interaction, set under `decoder.type`.
DECODERS: dict[str, str] = {
    "distillation": "mtlc.sharing.distillation:DistillationPoint",
    "affinity": "mtlc.sharing.affinity:AffinityPoint",
    "recursive": "mtlc.sharing.recursive:RecursivePoint",
}

# Losses that treat the head's output as class scores (Kendall's c_i = 1, DTP KPIs).
CLASSIFICATION_LOSSES = frozenset({"cross_entropy", "bce"})


def resolve(table: dict[str, str], name: str) -> Any:
    """Import the object a registry entry points at."""
    return resolve_path(table[name])


def resolve_path(path: str) -> Any:
    """Import the object at ``module:attribute``."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
