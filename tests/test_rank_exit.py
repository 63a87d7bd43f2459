"""How a process of a torchrun job ends: ``os._exit`` after the command, codes kept.

The abort it avoids (gloo's teardown at interpreter exit) is rare and load-dependent, so
no test can provoke it on demand; these check what the exit path must keep: the exit
status, everything printed, and that the interpreter's teardown (atexit) is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

RANK_ENV = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


def run_command(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        """
        import atexit, sys
        from mtlc.clitools import exit_without_teardown
        atexit.register(lambda: print("teardown ran"))
        def command():
        """
    ) + textwrap.indent(textwrap.dedent(body), "    ")
    code += "\nexit_without_teardown(command)\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize(
    "body, code, out, err",
    [
        ("print('x' * 100000, end='')", 0, "x" * 100000, ""),  # a full pipe buffer, flushed
        ("sys.exit(3)", 3, "", ""),
        ("sys.exit(None)", 0, "", ""),
        ("sys.exit('bad thing')", 1, "", "bad thing\n"),
        ("raise ValueError('boom')", 1, "", "ValueError: boom"),
        ("raise KeyboardInterrupt", 130, "", "KeyboardInterrupt"),
    ],
)
def test_exit_status_and_output_are_kept_and_teardown_skipped(body, code, out, err):
    done = run_command(body)
    assert done.returncode == code
    assert done.stdout == out  # no "teardown ran": the atexit handler was skipped
    assert err in done.stderr and "teardown ran" not in done.stderr
    if "raise" in body:
        assert "Traceback (most recent call last)" in done.stderr


def test_python_m_mtlc_as_a_rank_keeps_the_cli_contract(tmp_path):
    # a rank of a torchrun job: output complete, bad input still one located line, exit 2
    ok = subprocess.run(
        [sys.executable, "-m", "mtlc", "list"], env=RANK_ENV, capture_output=True, text=True
    )
    plain = subprocess.run([sys.executable, "-m", "mtlc", "list"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == plain.stdout and "cross_stitch" in ok.stdout
    spec = tmp_path / "bad.yaml"
    spec.write_text("mtlc: 1\nname: x\ninput: {image: [3, 8, 8]}\ntaks: {}\n")
    bad = subprocess.run(
        [sys.executable, "-m", "mtlc", "build", str(spec)],
        env=RANK_ENV,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and f"{spec}:4:1: taks" in bad.stderr
