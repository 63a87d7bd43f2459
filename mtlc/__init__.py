"""mtlc: a declarative compiler for multi-task learning networks.

`load_spec` validates a YAML spec without importing torch; `compile` turns it into a
`torch.fx.GraphModule` (torch is imported on first use). Names are resolved lazily so
that `mtlc --help` imports neither pydantic nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.fx import GraphModule

    from mtlc.spec import Spec, load_spec

__version__ = "0.1.0"
__all__ = ["Spec", "allow_import", "compile", "load_exported", "load_spec"]


def __getattr__(name: str) -> Any:
    if name in ("Spec", "load_spec"):
        import mtlc.spec

        return getattr(mtlc.spec, name)
    if name == "allow_import":  # `with mtlc.allow_import("pkg"): ...` for `import:` backbones
        from mtlc.imports import allow_import

        return allow_import
    if name == "load_exported":
        from mtlc.export import load_exported

        return load_exported
    raise AttributeError(f"module 'mtlc' has no attribute {name!r}")


def compile(
    spec: Any, *, supervision: bool = False, overrides: list[str] | tuple[str, ...] = ()
) -> GraphModule:
    """Compile a spec (path, dict or Spec) into a GraphModule returning `{task: tensor}`."""
    from mtlc.compiler import compile as _compile

    return _compile(spec, supervision=supervision, overrides=overrides)
