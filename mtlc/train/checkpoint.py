"""Checkpoints moved to `mtlc.checkpoint` (below train, viz and export); names kept here."""

from mtlc.checkpoint import (
    FORMAT,
    RUN_KEYS,
    VERSION,
    CheckpointError,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "FORMAT",
    "RUN_KEYS",
    "VERSION",
    "CheckpointError",
    "copy_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]
