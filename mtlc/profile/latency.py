"""Wall-clock latency of a spec's model on a real device (`mtlc profile --latency`).

Counting runs on meta tensors; timing cannot, so this compiles the spec for real
(weights initialised as for training) on the chosen device, as `mtlc train` does: with
column fusion for that device (`mtlc.compiler.fuse`) unless the spec's `train.fuse` is
false or `--no-fuse` is given, and the result says which graph it timed (``graph``:
fused or unfused, with its node count). Counting, in contrast, reads the labelled
unfused graph, whose FLOPs are the same math. Forward is the final model
in eval mode without autograd (what serving runs); forward+backward is the supervised
graph in train mode with every prediction in the loss (the shared representation
`@shared` aside, which no loss reads) (what a training step runs,
less the optimizer). Each is timed after warm-up iterations, synchronising CUDA so the
clock sees the kernels finish.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from mtlc.devices import describe, resolve_device
from mtlc.errors import MtlcError
from mtlc.memory import allocation, is_out_of_memory


def _time(fn: Callable[[], None], sync: Callable[[], None], warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "iqr": q[2] - q[0],
        "samples": samples,
    }


def measure(
    spec: Any,
    *,
    batch: int,
    device: str = "auto",
    overrides: list[str] | tuple[str, ...] = (),
    warmup: int = 3,
    iters: int = 10,
    fuse: bool = True,
) -> dict[str, Any]:
    """Median and spread (ms) of forward and of forward+backward at this batch size.

    ``fuse=False`` (`--no-fuse`) times the unfused graph, as `mtlc train --no-fuse` runs.
    """
    import torch

    from mtlc.compiler import SHARED_KEY, compile_spec

    dev = resolve_device(device)
    compiled = compile_spec(spec, overrides, fuse=fuse, device=dev.type)
    compiled.supervised.to(dev)  # the final model shares these modules
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def forward() -> None:
        with torch.no_grad():
            compiled.model(x)

    def train_step() -> None:
        out = compiled.supervised(x)
        loss = sum(v.float().mean() for k, v in out.items() if k != SHARED_KEY)
        loss.backward()
        compiled.supervised.zero_grad(set_to_none=True)

    try:
        x = torch.randn(batch, *compiled.spec.input_shape, device=dev)
        compiled.model.eval()
        fwd = _time(forward, sync, warmup, iters)
        compiled.supervised.train()
        both = _time(train_step, sync, warmup, iters)
    except (RuntimeError, ValueError, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise MtlcError(
                f"--latency: batch {batch} does not fit in memory on {dev.type}"
                f"{allocation(exc)}; lower --batch"
            ) from None
        first = str(exc).strip().splitlines()[0]
        raise MtlcError(
            f"--latency: the model fails on {dev.type} at batch {batch}: {first}"
        ) from None
    return {
        "device": describe(dev),
        "batch": batch,
        "warmup": warmup,
        "iterations": iters,
        "graph": _which_graph(compiled, fuse),
        "forward_ms": fwd,
        "forward_backward_ms": both,
    }


def _which_graph(compiled: Any, fuse: bool) -> dict[str, Any]:
    """Which training graph was timed: fused or not, why, and its node count."""
    nodes = len(compiled.supervised.graph.nodes)
    if compiled.unfused is not None:
        plain = len(compiled.unfused[1].graph.nodes)
        return {"fused": True, "nodes": nodes, "unfused_nodes": plain, "why": "as mtlc train"}
    why = "--no-fuse" if not fuse else "train.fuse is false"
    return {"fused": False, "nodes": nodes, "unfused_nodes": nodes, "why": why}
