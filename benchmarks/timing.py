"""The one timed training step the model-comparison benchmarks share.

`bench_fusion.py` and `bench_sharing_overhead.py` time the same thing for every model they
compare (forward, the sum of the mean outputs, backward), so both take it from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def step(model: torch.nn.Module, x: torch.Tensor, sync: Callable[[], None]) -> float:
    """Seconds for one forward + backward of `model` on `x` (after `sync`); grads cleared."""
    start = time.perf_counter()
    out = model(x)
    sum(v.float().mean() for v in out.values()).backward()
    sync()
    elapsed = time.perf_counter() - start
    for p in model.parameters():
        p.grad = None
    return elapsed
