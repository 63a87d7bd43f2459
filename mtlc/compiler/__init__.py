"""topology → torch.fx GraphModule."""

from mtlc.compiler.emitter import Emitter
from mtlc.compiler.graph import SHARED_KEY, Compiled, compile, compile_spec

__all__ = ["SHARED_KEY", "Compiled", "Emitter", "compile", "compile_spec"]
