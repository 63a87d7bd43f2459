"""Separate columns: every task its own copy of the stage, no exchange (the single-task
baselines' layout inside one model, and the start of any per-task part)."""

from __future__ import annotations

from typing import ClassVar, Literal

from mtlc.sharing.point import StagePoint
from mtlc.spec.base import StageSharing


class Separate(StageSharing):
    """Every task its own copy of the stage, no exchange."""

    layout: ClassVar = "per_task"
    type: Literal["separate"]
    groups: None = None


class SeparatePoint(StagePoint):
    Options = Separate
