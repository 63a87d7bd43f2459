"""The training speed switches of `train:`: `amp`, `channels_last` and `compile`.

All are off by default and none changes what is computed beyond rounding:

* `amp: bf16` runs the forward and the losses under `torch.autocast` in bfloat16
  (matmuls and convolutions in bf16, reductions and the losses' own precision-critical
  ops in float32, as autocast chooses); weights, gradients and the optimizer stay
  float32. It helps where the device has fast bf16 units (recent GPUs, CPUs with
  AVX-512-BF16/AMX) and the model is large enough to be compute-bound.
* `amp: fp16` is the same in float16, with dynamic loss scaling (`LossScaler`), which
  float16's narrow range needs. CUDA only: it is refused on the CPU before training.
* `channels_last: true` stores weights and images NHWC, the layout cuDNN's tensor-core
  convolutions (and oneDNN's) run natively; it helps conv-heavy models under `amp`.
* `compile: true` (or `{mode: reduce-overhead}`) wraps the model in `torch.compile`;
  the backward is compiled with it (AOTAutograd). `reduce-overhead` also captures CUDA
  graphs, which removes per-kernel launch cost: the big win for small, launch-bound
  models on a GPU. Compiling costs time at the first steps, so it pays on long runs.

A switch the device cannot do is a located spec error (exit 2) before anything is
written; a compiler that is missing or fails on the first step is said once and the
run falls back to eager mode, never a crash mid-run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from mtlc.spec import Spec, spec_error

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_speed(spec: Spec, device: torch.device) -> None:
    """Refuse, with a located error, a switch this device cannot run."""
    train = spec.train
    if train.amp == "fp16" and device.type != "cuda":
        raise spec_error(
            spec,
            ("train", "amp"),
            "fp16 mixed precision needs a CUDA device (float16 on the CPU is slow and "
            "unscaled); use amp: bf16 on the CPU",
        )
    if train.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise spec_error(spec, ("train", "amp"), "this GPU has no bfloat16 support; use amp: fp16")


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None when it can."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception as exc:  # an incomplete install
        return f"torch._dynamo cannot be imported ({type(exc).__name__})"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "triton is not installed (torch.compile's GPU code generator)"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++")):
        return "no C++ compiler found (torch.compile's CPU code generator needs one)"
    return None


@contextlib.contextmanager
def autocast(device: torch.device, amp: str) -> Iterator[None]:
    """`torch.autocast` for `amp` ("off": nothing)."""
    if amp == "off":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp]):
        yield


def to_channels_last(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every 4-D float tensor of a batch in NHWC layout (targets and vectors untouched)."""
    return {
        k: v.contiguous(memory_format=torch.channels_last)
        if v.dim() == 4 and v.is_floating_point()
        else v
        for k, v in batch.items()
    }


class CompiledForward:
    """`torch.compile(model, mode=...)` that falls back to the model itself, said once.

    Compilation happens at the first call; if it fails (no code generator, an op the
    compiler cannot trace) the error's first line is said once through `say` and every
    call from then on runs the eager model, so a run never crashes mid-way for it.
    """

    def __init__(self, model: nn.Module, mode: str, say: Callable[[str], None]):
        self.model = model
        self.say = say
        self.compiled: Any = torch.compile(model, mode=mode)
        self.failed = False

    def __call__(self, *args: Any) -> Any:
        if self.failed:
            return self.model(*args)
        try:
            return self.compiled(*args)
        except Exception as exc:  # any compiler failure: fall back, never stop the run
            self.failed = True
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.say(f"torch.compile failed ({first[:200]}); training continues uncompiled")
            return self.model(*args)


class LossScaler:
    """Dynamic loss scaling for fp16 (Micikevicius et al., 2018), for any balancer.

    GradScaler scales the loss, which a gradient-level balancer (MGDA differentiates
    each task loss itself) or a learned one (uncertainty's `s_t`, outside the model)
    would mishandle. Here the *gradient entering the model at its outputs* is
    multiplied by S instead (`scale_outputs`), so every gradient inside the model is S×
    whatever the balancer combines, and the balancer's own parameters are untouched.
    After the backward, the model's gradients are divided by S on the device; a step
    with an inf/NaN gradient is skipped and S halved, and S doubles after `interval`
    clean steps (GradScaler's defaults). Skipping needs the finite check on the host:
    one read-back per step, as torch's GradScaler does.
    """

    def __init__(self, init: float = 2.0**16, interval: int = 2000):
        self.scale = init
        self.interval = interval
        self.good = 0

    def scale_outputs(self, out: dict[str, torch.Tensor], keep: str) -> dict[str, torch.Tensor]:
        factor = self.scale
        return {k: v if k == keep else _ScaleGrad.apply(v, factor) for k, v in out.items()}

    def unscale(self, params: list[nn.Parameter]) -> bool:
        """Divide the gradients by S; False (and S halved) when one is not finite."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return True
        found = torch.zeros(1, device=grads[0].device)
        inv = torch.full((1,), 1.0 / self.scale, device=grads[0].device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
        if float(found) > 0:
            self.scale /= 2.0
            self.good = 0
            return False
        self.good += 1
        if self.good >= self.interval:
            self.scale *= 2.0
            self.good = 0
        return True

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good": self.good}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.good = float(state["scale"]), int(state["good"])


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by `factor`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None
