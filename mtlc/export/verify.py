"""Checking a written export against the eager model it came from.

The file is loaded back the way a user would load it (torch.export.load, onnxruntime)
and run on random batches; each output must match the eager model's — the compiled
model before any rewrite, in float32 and eval mode — elementwise within

    |exported − eager| ≤ atol · max(1, max|eager|) + rtol · |eager|

(`torch.allclose`'s rule, atol scaled by the output's magnitude so that a head with
large outputs is not held to an absolute 1e-5). The float32 tolerances cover BN
folding and a different convolution algorithm (reassociated sums: about 1e-7 relative
per layer, measured on every spec in specs/); fp16 and bf16 round every activation
to 11 and 8 significant bits, so theirs follow from those precisions with room for
a few dozen layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

# --dtype → (torch dtype, atol, rtol)
DTYPES: dict[str, tuple[torch.dtype, float, float]] = {
    "fp32": (torch.float32, 1e-4, 1e-4),
    "fp16": (torch.float16, 1e-2, 1e-2),
    "bf16": (torch.bfloat16, 5e-2, 5e-2),
}


@dataclass
class Check:
    """The outcome of comparing an export with the eager model on some batches."""

    batches: tuple[int, ...]
    atol: float
    rtol: float
    max_diff: float  # largest |exported − eager| over outputs and batches
    worst: str  # the output where it was reached
    ok: bool

    def line(self) -> str:
        verdict = "match" if self.ok else "MISMATCH"
        sizes = " and ".join(map(str, self.batches))
        return (
            f"{verdict}: max |exported − eager| = {self.max_diff:.3g} (at '{self.worst}', "
            f"batch {sizes}); tolerance atol {self.atol:g}·max(1, max|eager|) + "
            f"rtol {self.rtol:g}·|eager|"
        )


def compare(
    eager: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    exported: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    input_shape: tuple[int, ...],
    batches: tuple[int, ...],
    dtype: str = "fp32",
    seed: int = 0,
) -> Check:
    """Run both on the same random batches (one per size in `batches`) and compare."""
    torch_dtype, atol, rtol = DTYPES[dtype]
    gen = torch.Generator().manual_seed(seed)
    worst, where, ok = 0.0, "", True
    for b in batches:
        x = torch.randn((b, *input_shape), generator=gen)
        with torch.no_grad():
            ref = eager(x)
            got = exported(x.to(torch_dtype))
        if set(got) != set(ref):
            raise AssertionError(f"the export returns {sorted(got)}, the model {sorted(ref)}")
        for key, r in ref.items():
            r = r.float()
            g = got[key].float()
            if g.shape != r.shape:
                return Check(batches, atol, rtol, float("inf"), key, False)
            diff = (g - r).abs()
            scale = max(1.0, r.abs().max().item()) if r.numel() else 1.0
            ok = ok and bool((diff <= atol * scale + rtol * r.abs()).all())
            d = diff.max().item() if diff.numel() else 0.0
            if d != d:  # NaN
                d, ok = float("inf"), False
            if d >= worst:
                worst, where = d, key
    return Check(batches, atol, rtol, worst, where, ok)


__all__ = ["DTYPES", "Check", "compare"]
