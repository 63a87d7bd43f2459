"""Training: the loop, checkpoints, run folders, baselines, sweeps and their commands.

`train(spec)` trains into a run folder, `evaluate(spec, checkpoint)` scores a checkpoint
on the validation split. Names are imported on first use: `mtlc --help` loads
`mtlc.train.command`, and that must not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Diverged": "mtlc.train.errors",
    "Interrupted": "mtlc.train.errors",
    "RunResult": "mtlc.train.errors",
    "TrainError": "mtlc.train.errors",
    "Trainer": "mtlc.train.trainer",
    "evaluate": "mtlc.train.run",
    "shared_parameters": "mtlc.compiler.labels",
    "train": "mtlc.train.run",
    "sweep": "mtlc.train.sweep",
    "compare_runs": "mtlc.train.compare",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mtlc.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
