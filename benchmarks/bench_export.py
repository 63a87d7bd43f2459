"""Serving latency of exported files (issue 13): `python benchmarks/bench_export.py`.

Exports a spec (default `specs/hard.yaml`, every output) with `mtlc export` to .pt2 and
.onnx, then times one forward of batch `--batch` for: the eager compiled model (eval,
no_grad), the .pt2 file loaded with `torch.export.load(...).module()`, and the .onnx
file in onnxruntime (CPU). Repetitions are interleaved (each round runs all three,
order rotated) so that drifting machine load hits them alike; the figure is the
median with min, max and IQR. Also prints the file sizes. No target: the numbers are
what the README's "Deploying" section quotes.

Options: `--spec PATH`, `--batch N`, `--reps N` (≥ 15 for the README), `--warmup N`,
`--threads N` (torch and onnxruntime intra-op threads), `--formats .pt2 .onnx`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mtlc.compiler import compile_spec
from mtlc.export import export, load_exported
from mtlc.export.select import serving_graph

ROOT = Path(__file__).resolve().parents[1]


def stats(times: list[float]) -> str:
    ms = sorted(t * 1e3 for t in times)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return (
        f"median {statistics.median(ms):.2f} ms (min {ms[0]:.2f}, max {ms[-1]:.2f}, "
        f"IQR {q[2] - q[0]:.2f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=str(ROOT / "specs" / "hard.yaml"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--formats", nargs="+", default=[".pt2", ".onnx"], choices=[".pt2", ".onnx"])
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        compiled = compile_spec(args.spec)
        weights = Path(tmp) / "w.pt"
        from mtlc.checkpoint import save_checkpoint

        save_checkpoint({"model": compiled.supervised.state_dict()}, weights)
        eager = serving_graph(compiled, list(compiled.topology.outputs)).eval()
        runners["eager (fx GraphModule)"] = eager
        for suffix in args.formats:
            out = Path(tmp) / f"model{suffix}"
            try:
                result = export(args.spec, out, checkpoint=weights)
            except Exception as exc:  # onnx not installed: skip that format
                print(f"{suffix}: not measured ({exc})")
                continue
            print(f"{suffix}: {out.stat().st_size:,} bytes ({result.format})")
            if suffix == ".onnx":
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = args.threads
                opts.inter_op_num_threads = 1
                session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
                name = session.get_inputs()[0].name
                runners["onnxruntime (.onnx)"] = lambda x, s=session, n=name: s.run(
                    None, {n: x.numpy()}
                )
            else:
                runners["torch.export.load (.pt2)"] = load_exported(out)

        x = torch.randn(args.batch, *compiled.spec.input_shape)
        times: dict[str, list[float]] = {k: [] for k in runners}
        names = list(runners)
        with torch.no_grad():
            for _ in range(args.warmup):
                for fn in runners.values():
                    fn(x)
            for r in range(args.reps):
                order = names[r % len(names) :] + names[: r % len(names)]
                for k in order:
                    start = time.perf_counter()
                    runners[k](x)
                    times[k].append(time.perf_counter() - start)
    print(
        f"{Path(args.spec).name}, batch {args.batch}, {args.threads} thread(s), "
        f"{args.reps} interleaved reps after {args.warmup} warm-up, torch {torch.__version__}"
    )
    for k in names:
        print(f"  {k:26s} {stats(times[k])}")


if __name__ == "__main__":
    main()
