"""Hard parameter sharing (Caruana 1997): one copy of the stage for all tasks, or one per
task group (`groups`), with no unit of its own. The default of a stage the spec's
`encoder.sharing` does not list."""

from __future__ import annotations

from typing import Literal

from mtlc.sharing.point import StagePoint
from mtlc.spec.base import StageSharing


class Hard(StageSharing):
    """One copy of the stage per group (one in all by default)."""

    type: Literal["hard"] = "hard"


class HardPoint(StagePoint):
    Options = Hard
