"""Shared fixtures: small specs written as files, so errors carry real line numbers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

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


# three tasks (one auxiliary) that train in a second on 24 shapes scenes: the `tiny` fixture
# of the training tests (test_train*, test_run_safety, test_output_writers, test_sweep_seeds)
TINY_TRAIN = """\
mtlc: 1
name: tiny
input: {image: [3, 16, 16]}
encoder:
  stages:
    s1: [conv(8, 3), bn, relu, maxpool(2)]
    s2: [conv(8, 3), bn, relu]
tasks:
  seg:   {head: [dropout(0.2), conv(5, 1), upsample(2)], loss: cross_entropy, metrics: [miou, pixel_acc]}
  depth: {head: [conv(1, 1), upsample(2)], loss: l1, metrics: [abs_err]}
  edge:  {head: [conv(1, 1), upsample(2)], loss: bce, auxiliary: true}
balancer: {type: fixed}
train:
  data: {name: shapes, train: 24, val: 8, size: 16}
  epochs: 2
  batch_size: 8
  optimizer: {type: adam, lr: 0.01}
"""


# NDDR mixing the two task columns of a two-stage conv net (test_tables, test_viz)
NDDR = """\
mtlc: 1
name: tiny-nddr
input: {image: [3, 8, 8]}
encoder:
  stages:
    s1: [conv(4, 3), relu]
    s2: [conv(6, 3), relu]
  sharing:
    s2: nddr
tasks:
  seg:   {head: [conv(3, 1)], loss: cross_entropy}
  depth: {head: [conv(1, 1)], loss: l1}
"""


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: two OpenMP threads on a shared 2-core machine spin
    against each other (100x slower). Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture
def tiny(write_spec) -> Path:
    """TINY_TRAIN written to tiny.yaml."""
    return write_spec(TINY_TRAIN, "tiny.yaml")
