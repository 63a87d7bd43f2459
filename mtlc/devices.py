"""Which device a command runs on: `--device auto | cpu | cuda | cuda:N`, checked up front.

Training and `mtlc profile --latency` read the same option; asking for CUDA where there
is none is the user's error, reported as one line before any work is done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtlc.errors import MtlcError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a device is visible, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MtlcError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtlcError(f"--device {name}: no CUDA device is available (use cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise MtlcError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return device


def describe(device: torch.device) -> str:
    """The device in words, for reports that give timings."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
