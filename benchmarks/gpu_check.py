"""Issue 12's GPU check in one run: `python benchmarks/gpu_check.py` on a machine with CUDA.

Runs, each in its own process under a time limit (465 s in all at most; ≤ 8 minutes on an
H200 with the processes' start-up):

1. the CUDA tests, `tests/test_gpu.py` (fused vs unfused on CUDA for every spec, the
   speed switches, MGDA's and the trainer's steps with no host sync), and the
   multi-process (NCCL) training test when the machine has 2 or more GPUs;
2. `bench_fusion.py`: fused vs unfused cross-stitch, 3 tasks (target: ≥ 1.5× faster),
   fused vs the hand-written model (target: ≤ 0.8 of its time); then again with the fused
   model under torch.compile as well (the figure the issue quotes for CUDA graphs);
3. `bench_trainer_overhead.py`: the trainer vs a minimal hand loop (target: ≥ 0.95 of its
   samples/s);
4. `bench_mgda_cost.py`: an MGDA `ub` step vs a fixed step (target: ≤ 1.3×);
5. `bench_amp.py`: `amp: bf16` + `channels_last` vs fp32 on specs/nyuv2_resnet50_hps.yaml
   (generated scenes in place of NYUv2; target: a speed-up).

Every benchmark takes ≥ 15 interleaved repetitions and reports the median with its spread.
Each output goes to `$OUT/<name>.txt` (`--out`, default `$OUT` or `gpu_check_out`) and the
figures, each against its target, to `$OUT/summary.md`, which is also printed.
Without CUDA nothing is run: the summary says so and the exit status is 0.
`--cpu-smoke` runs the same steps on the CPU at toy sizes to check the plumbing (the
figures mean nothing and no target is judged).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AMP_SPEC = ["--spec", "specs/nyuv2_resnet50_hps.yaml", "--set", "train.data={name: shapes}"]


@dataclass
class Step:
    name: str
    args: list[str]  # after `python`
    limit: int  # seconds
    toy: list[str]  # replaces args' tail for --cpu-smoke


def steps(gpus: int) -> list[Step]:
    tests = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    if gpus >= 2:
        tests += ["tests/test_distributed.py", "-k", "nproc_2_end_to_end"]
    return [
        Step("tests", tests, 170, []),
        Step(
            "fusion",
            ["benchmarks/bench_fusion.py", "--device", "cuda", "--reps", "15"],
            40,
            ["benchmarks/bench_fusion.py", "--batch", "2", "--reps", "15", "--warmup", "0"],
        ),
        Step(  # the same with the fused model under torch.compile too (compiles first)
            "fusion-compiled",
            ["benchmarks/bench_fusion.py", "--device", "cuda", "--reps", "15", "--torch-compile"],
            90,
            [],
        ),
        Step(
            "trainer",
            ["benchmarks/bench_trainer_overhead.py", "--device", "cuda", "--reps", "15"],
            60,
            ["benchmarks/bench_trainer_overhead.py", "--reps", "15", "--train", "16"]
            + ["--size", "16", "--batch", "8"],
        ),
        Step(
            "mgda",
            ["benchmarks/bench_mgda_cost.py", "--device", "cuda", "--steps", "15"],
            45,
            ["benchmarks/bench_mgda_cost.py", "--steps", "15", "--size", "16", "--batch", "4"],
        ),
        Step(
            "amp",
            ["benchmarks/bench_amp.py", "--device", "cuda", "--reps", "15", "--batch", "8"]
            + ["--size", "256", *AMP_SPEC],
            60,
            ["benchmarks/bench_amp.py", "--reps", "15", "--warmup", "0", "--batch", "2"]
            + ["--size", "16", "--spec", "specs/hard.yaml"],
        ),
    ]


def number(pattern: str, text: str) -> float | None:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else None


def judge(name: str, text: str) -> list[tuple[str, str, bool | None]]:
    """(what, figure with spread, target met?) for one step's output."""
    rows: list[tuple[str, str, bool | None]] = []
    if name == "tests":
        last = [line for line in text.splitlines() if re.search(r"passed|failed|error", line)]
        summary = last[-1].strip() if last else "no pytest summary"
        ok = "failed" not in summary and "error" not in summary and "passed" in summary
        rows.append(("CUDA tests", summary, ok))
    if name.startswith("fusion"):
        for a, b, target, better in (
            ("fused", "unfused", 1 / 1.5, "≥ 1.5× faster"),
            ("fused", "hand", 0.8, "≤ 0.8 of the time"),
            ("fused\\+torch.compile", "hand", 0.8, "≤ 0.8 of the time"),
        ):
            found = re.search(rf"{a} / {b}: median ([\d.]+) (\(p10 [\d.]+, p90 [\d.]+\))", text)
            if found:
                ratio = float(found.group(1))
                rows.append(
                    (
                        f"time {a.replace(chr(92), '')} / {b} (target {better})",
                        f"{ratio:.3f} {found.group(2)}; speed-up {1 / ratio:.2f}×",
                        ratio <= target,
                    )
                )
    if name == "trainer":
        found = re.search(r"trainer / hand = ([\d.]+) \(.*?(\(p10 [^)]*\)|\(min [^)]*\))\)", text)
        if found:
            ratio = float(found.group(1))
            rows.append(
                (
                    "trainer / hand samples/s (target ≥ 0.95)",
                    f"{ratio:.3f} {found.group(2)}",
                    ratio >= 0.95,
                )
            )
    if name == "mgda":
        for t, ub, spread in re.findall(
            r"\| (\d) \| [\d.]+ \| [\d.]+ \| ([\d.]+) \(([^)]*)\)", text
        ):
            rows.append(
                (f"MGDA ub / fixed, T={t} (target ≤ 1.3×)", f"{ub} ({spread})", float(ub) <= 1.3)
            )
    if name == "amp":
        found = re.search(r"bf16\+channels_last .*?speed-up ([\d.]+) (\(p10 [^)]*\))", text)
        if found:
            up = float(found.group(1))
            rows.append(
                ("bf16 + channels_last speed-up over fp32", f"{up:.3f}× {found.group(2)}", up > 1)
            )
    if not rows:
        rows.append((name, "no figure found in the output", False))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    cuda = torch.cuda.is_available()
    head = [f"# issue 12 GPU check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    if cuda:
        head.append(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    elif args.cpu_smoke:
        head.append(f"CPU smoke run (toy sizes; figures mean nothing), torch {torch.__version__}")
    else:
        head.append("no CUDA device: nothing was run (run this on a machine with a GPU)")
        for step in steps(1):
            head.append(f"- would run: python {' '.join(step.args)} (limit {step.limit} s)")
        write(args.out, head)
        return 0
    gpus = torch.cuda.device_count() if cuda else 0
    if cuda and gpus < 2:
        head.append("multi-process (NCCL) training not run: it needs 2 GPUs, this machine has 1")
    lines = [*head, "", "| check | figure (spread) | target met |", "|---|---|---|"]
    failed = False
    for step in steps(gpus):
        if not cuda and not step.toy:
            continue  # CUDA only (the tests skip on the CPU, torch.compile takes minutes)
        cmd = [sys.executable, *(step.args if cuda else step.toy)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=step.limit)
            text, status = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            text = (
                (exc.stdout or b"").decode()
                if isinstance(exc.stdout, bytes)
                else (exc.stdout or "")
            )
            status = f"timed out after {step.limit} s"
        took = time.perf_counter() - start
        (args.out / f"{step.name}.txt").write_text(f"$ {' '.join(cmd)}\n{text}\nstatus {status}\n")
        print(f"{step.name}: status {status}, {took:.0f} s", flush=True)
        for what, figure, ok in judge(step.name, text):
            mark = "—" if not cuda else ("yes" if ok else "**missed**")
            failed |= cuda and not ok
            lines.append(f"| {what} | {figure} | {mark} |")
        if status != 0:
            failed = True
            lines.append(f"| {step.name} exit status | {status} ({took:.0f} s) | **failed** |")
    write(args.out, lines)
    return 1 if failed else 0


def write(out: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
