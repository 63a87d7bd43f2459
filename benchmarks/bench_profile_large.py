"""Profile a spec of more than 10⁹ parameters: wall time and peak RSS.

`mtlc profile` compiles on the meta device, so no weight is allocated: a 1e9-parameter
model (4 GB of float32 weights) must profile in seconds with well under 1 GB resident.
Run: `python benchmarks/bench_profile_large.py` (prints Markdown for benchmarks/RESULTS.md):
in-process (first call, then warm calls) and the CLI end to end in a fresh process.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Wide 3×3 convs on an 8×8 map and wide linear heads, over the three sharing layouts
# that matter for cost: hard stages, a cross-stitch stage (three full columns), heads.
WIDE = 4096
SPEC = {
    "mtlc": 1,
    "name": "wide-1e9",
    "input": {"image": [64, 8, 8]},
    "encoder": {
        "stages": {
            "s1": [f"conv({WIDE}, 3)", "relu"],
            "s2": [f"conv({WIDE}, 3)", "relu"],
            "s3": [f"conv({WIDE}, 3)", "relu"],
        },
        "sharing": {"s3": "cross_stitch"},
    },
    "tasks": {
        t: {
            "head": ["adaptive_avgpool(1)", "flatten", "linear(32768)", "relu", "linear(10)"],
            "loss": "l1",
        }
        for t in ("a", "b", "c")
    },
}


def _rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _cli_run() -> tuple[float, float]:
    """`mtlc profile SPEC --json` end to end in a fresh process: wall seconds, peak RSS MiB."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.yaml"
        path.write_text(json.dumps(SPEC))  # JSON is YAML
        env = dict(os.environ, PYTHONPATH=str(root))
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mtlc.cli", "profile", str(path), "--batch", "8", "--json"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        wall = time.perf_counter() - start
    scale = 1 if sys.platform == "darwin" else 1024
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20


def main() -> None:
    cli_wall, cli_rss = _cli_run()

    import torch

    from mtlc.profile import profile

    before = _rss_mib()
    walls = []
    for _ in range(3):  # the first call also pays torch's lazy imports (dynamo, fx passes)
        start = time.perf_counter()
        result = profile(SPEC, batch=8).to_json()
        walls.append(time.perf_counter() - start)
    after = _rss_mib()
    params, flops = result["params"], result["flops"]
    assert params["total"] > 1e9, params["total"]
    print(f"torch {torch.__version__}, {sys.platform}, Python {sys.version.split()[0]}")
    print(
        "| spec | params | FLOPs (batch 8) | first call | warm calls "
        "| peak RSS | RSS after `import torch` |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {SPEC['name']} | {params['total']:,} | {flops['total']:,} | {walls[0]:.2f} s "
        f"| {walls[1]:.2f} s, {walls[2]:.2f} s | {after:.0f} MiB | {before:.0f} MiB |"
    )
    print(
        f"\n`mtlc profile wide.yaml --batch 8 --json` in a fresh process (Python start and "
        f"imports included): {cli_wall:.2f} s wall, {cli_rss:.0f} MiB peak RSS"
    )


if __name__ == "__main__":
    main()
