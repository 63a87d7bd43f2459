"""The spec layer: YAML → validated, typed spec. Imports no torch."""

from mtlc.spec.load import load_spec, parse_spec_text, spec_error
from mtlc.spec.schema import Spec

__all__ = ["Spec", "load_spec", "parse_spec_text", "spec_error"]
