"""Profile a spec of more than 10⁹ parameters: wall time and peak RSS.

`mtlc profile` compiles on the meta device, so no weight is allocated: a 1e9-parameter
model (4 GB of float32 weights) must profile in seconds with well under 1 GB resident.
Run: `python benchmarks/bench_profile_large.py` (prints one Markdown table row set).
"""

from __future__ import annotations

import resource
import sys
import time

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


def main() -> None:
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


if __name__ == "__main__":
    main()
