"""Shared fixtures: small specs written as files, so errors carry real line numbers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

SMALL = """\
mtlc: 1
name: small
input: {image: [3, 16, 16]}
encoder:
  stages:
    s1: [conv(8, 3), bn, relu, maxpool(2)]
    s2: [conv(16, 3), bn, relu]
tasks:
  seg:   {head: [conv(4, 1), upsample(2)], loss: cross_entropy, metrics: [miou]}
  depth: {head: [conv(1, 1), upsample(2)], loss: l1, metrics: [abs_err]}
"""


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write YAML text (dedented) to a file and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def small_spec(write_spec) -> Path:
    return write_spec(SMALL)
