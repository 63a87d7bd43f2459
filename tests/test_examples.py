"""The walkthroughs under examples/ run as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_python_walkthrough_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "examples/python_api.py", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "def forward(self, image):" in proc.stdout and "validation metrics" in proc.stdout
    assert (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_cli_walkthrough_runs(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "examples/cli_walkthrough.sh", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "learned.dot").read_text().count("->") > 5
