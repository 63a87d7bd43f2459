"""mtlc: a declarative compiler for multi-task learning networks.

`load_spec` validates a YAML spec without importing torch; `compile` turns it into a
`torch.fx.GraphModule` (torch is imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtlc.spec import Spec, load_spec

if TYPE_CHECKING:
    from torch.fx import GraphModule

__version__ = "0.1.0"
__all__ = ["Spec", "compile", "load_spec"]


def compile(
    spec: Any, *, supervision: bool = False, overrides: list[str] | tuple[str, ...] = ()
) -> GraphModule:
    """Compile a spec (path, dict or Spec) into a GraphModule returning `{task: tensor}`."""
    from mtlc.compiler import compile as _compile

    return _compile(spec, supervision=supervision, overrides=overrides)
