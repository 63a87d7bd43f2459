"""Startup and compile cost (issue 2): run on demand, `python benchmarks/bench_startup_compile.py`.

Targets: `mtlc --help` and `mtlc schema` import no torch and take under 0.3 s; compiling a
16-task, 4-stage spec costs under 1 s beyond the torch import.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

HELP = "import sys; from mtlc.cli import main; sys.argv = ['mtlc'] + sys.argv[1:]\ntry:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch was imported'"


def wall(args: list[str], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def big_spec(tasks: int = 16) -> dict:
    return {
        "mtlc": 1,
        "name": "sixteen",
        "input": {"image": [3, 64, 64]},
        "encoder": {
            "stages": {
                f"s{i}": [f"conv({16 * 2**i}, 3)", "bn", "relu", "maxpool(2)"] for i in range(1, 5)
            },
            "sharing": {"s3": {"type": "cross_stitch"}, "s4": {"type": "nddr"}},
        },
        "tasks": {
            f"t{i}": {
                "head": ["conv(16, 3)", "relu", "conv(2, 1)", "upsample(16)"],
                "loss": "cross_entropy",
            }
            for i in range(tasks)
        },
    }


def main() -> None:
    python = sys.executable
    bare = wall([python, "-c", "pass"])
    help_s = wall([python, "-c", HELP, "--help"])
    schema_s = wall([python, "-c", HELP, "schema"])
    torch_s = wall([python, "-c", "import torch"], repeat=3)
    compile_code = (
        "import time, torch, mtlc, sys\n"
        f"spec = {big_spec()!r}\n"
        "t = time.perf_counter(); mtlc.compile(spec); print(time.perf_counter() - t)"
    )
    runs = [
        float(
            subprocess.run(
                [python, "-c", compile_code], check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(3)
    ]
    print(f"python -c pass:            {bare:.3f} s")
    print(f"mtlc --help (no torch):    {help_s:.3f} s   (target < 0.3 s)")
    print(f"mtlc schema (no torch):    {schema_s:.3f} s   (target < 0.3 s)")
    print(f"import torch:              {torch_s:.3f} s")
    print(
        f"compile 16 tasks × 4 stages, beyond the torch import: {statistics.median(runs):.3f} s (target < 1 s)"
    )


if __name__ == "__main__":
    main()
