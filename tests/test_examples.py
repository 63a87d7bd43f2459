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


def test_tabular_example_trains_from_the_repository_root(tmp_path, monkeypatch):
    """examples/tabular.yaml names its csv relative to the working directory."""
    from click.testing import CliRunner

    from mtlc.train import command

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(
        command.train,
        [
            "examples/tabular.yaml",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--epochs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "last.pt").exists()
    # from another folder the relative path does not resolve: a one-line error, exit 2
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        command.train, [str(ROOT / "examples/tabular.yaml"), "--out", str(tmp_path / "other")]
    )
    assert result.exit_code == 2, result.output
    assert "train.data.path: 'examples/tabular.csv': no such file" in result.output
    assert not (tmp_path / "other").exists()
