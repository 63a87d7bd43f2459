"""FLOPs, MACs, parameters and memory of a spec, per task and shared (`mtlc profile`).

Imports nothing heavy at package level: the CLI imports this package to list its
commands, and `mtlc --help` must not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mtlc.profile.report import Profile

__all__ = ["BY", "profile", "summarize"]

# What `--by` can break the cost down by: task (shared vs each task), the spec's stages,
# single fx nodes, or layer types (module class or function).
BY = ("task", "stage", "node", "layer")


def profile(spec: Any, *, batch: int = 1, overrides: list[str] | tuple[str, ...] = ()) -> Profile:
    """Profile a spec (path, dict, Spec or `Compiled`) on the meta device."""
    from mtlc.compiler import Compiled
    from mtlc.profile.report import profile_spec

    if isinstance(spec, Compiled):
        # Recompiled on meta from its resolved spec: the given weights are never touched.
        spec = spec.spec
    return profile_spec(spec, batch=batch, overrides=overrides)


def summarize(compiled_or_spec: Any, batch: int = 1) -> dict[str, Any]:
    """Costs in `mtlc profile --json`'s shape: `params`, `flops`, `macs` (each
    `{"total", "shared", "tasks"}`), `serve_alone`, `inference`, `memory`, ...
    """
    return profile(compiled_or_spec, batch=batch).to_json()
