"""Sharing overhead (issue 3): run on demand, `python benchmarks/bench_sharing_overhead.py`.

Target: a compiled cross-stitch spec and a compiled MTAN spec run a training step
(forward + backward) no slower than a hand-written PyTorch module of the same
architecture and weights: time ratio compiled / hand-written ≤ 1.05.

The hand-written modules below are what one would write without mtlc (nn.Sequential
stages, ModuleDicts of task columns, a forward loop). They take the compiled model's
weights through a name translation, and their outputs are checked equal before timing.
Their cross-stitch mix uses the same arithmetic as mtlc's unit (a chain of
multiply-adds), so that the ratio measures what compiling adds (fx graph, one module
call per layer, tuple unpacking), not a choice of kernel. Repetitions are interleaved
(ABAB…, the order flipped every round) so that drift in machine load hits both alike;
the figure is the median.

Options: `--device cuda`, `--batch N`, `--reps N`, `--threads N`.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import torch
from timing import step
from torch import nn

from mtlc.compiler import compile_spec

SPECS = Path(__file__).resolve().parents[1] / "specs"
TASKS = ("seg", "depth", "normal")
OUT = {"seg": 5, "depth": 1, "normal": 3}
WIDTHS = (16, 32, 64)  # specs/cross_stitch.yaml and specs/attention.yaml


def conv_bn_relu(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


def head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, cout, 1),
        nn.Upsample(size=(64, 64), mode="bilinear", align_corners=False),
    )


class HandCrossStitch(nn.Module):
    """Three task columns with a cross-stitch unit after every stage (channel, channel, scalar)."""

    def __init__(self) -> None:
        super().__init__()
        cins = (3,) + WIDTHS[:-1]
        self.stages = nn.ModuleList(
            nn.ModuleDict({t: conv_bn_relu(cin, c, pool=i < 2) for t in TASKS})
            for i, (cin, c) in enumerate(zip(cins, WIDTHS))
        )
        self.alphas = nn.ParameterList(
            [nn.Parameter(torch.zeros(3, 3, c)) for c in WIDTHS[:2]]
            + [nn.Parameter(torch.zeros(3, 3))]
        )
        self.heads = nn.ModuleDict({t: head(WIDTHS[-1], OUT[t]) for t in TASKS})

    @staticmethod
    def stitch(alpha: torch.Tensor, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        alpha = alpha.reshape(3, 3, -1, 1, 1)
        out = []
        for t in range(3):
            y = alpha[t, 0] * xs[0]
            for s in range(1, 3):
                y = torch.addcmul(y, alpha[t, s], xs[s])
            out.append(y)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        xs = [x] * 3
        for stage, alpha in zip(self.stages, self.alphas):
            xs = self.stitch(alpha, [stage[t](xi) for t, xi in zip(TASKS, xs)])
        return {t: self.heads[t](xi) for t, xi in zip(TASKS, xs)}

    @staticmethod
    def translate(name: str) -> str:
        """Compiled state-dict name → this module's (`encoder.s2.seg.conv0.weight` → `stages.1.seg.0.weight`)."""
        m = re.fullmatch(r"encoder\.s(\d)\.cross_stitch\.alpha", name)
        if m:
            return f"alphas.{int(m[1]) - 1}"
        m = re.fullmatch(r"encoder\.s(\d)\.(\w+)\.[a-z]+(\d+)\.(.+)", name)
        if m:
            return f"stages.{int(m[1]) - 1}.{m[2]}.{m[3]}.{m[4]}"
        return re.sub(r"^heads\.(\w+)\.[a-z]+(\d+)\.", r"heads.\1.\2.", name)


class HandMTAN(nn.Module):
    """A shared trunk, per-task attention masks chained through a shared refine block."""

    def __init__(self) -> None:
        super().__init__()
        cins = (3,) + WIDTHS[:-1]
        hidden = (16, 32, 32)  # specs/attention.yaml: default (the stage's C), default, 32
        self.trunk = nn.ModuleList(
            conv_bn_relu(cin, c, pool=i < 2) for i, (cin, c) in enumerate(zip(cins, WIDTHS))
        )
        self.masks = nn.ModuleList(
            nn.ModuleDict(
                {
                    t: nn.Sequential(
                        nn.Conv2d(c * (1 if i == 0 else 2), h, 1),
                        nn.BatchNorm2d(h),
                        nn.ReLU(),
                        nn.Conv2d(h, c, 1),
                        nn.BatchNorm2d(c),
                        nn.Sigmoid(),
                    )
                    for t in TASKS
                }
            )
            for i, (c, h) in enumerate(zip(WIDTHS, hidden))
        )
        # between s1→s2 the size halves (pool), between s2→s3 it stays
        self.refine = nn.ModuleList(
            [
                conv_bn_relu(WIDTHS[0], WIDTHS[1], pool=True),
                conv_bn_relu(WIDTHS[1], WIDTHS[2], pool=False),
            ]
        )
        self.heads = nn.ModuleDict({t: head(WIDTHS[-1], OUT[t]) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p: dict[str, torch.Tensor] = {}
        for i, (stage, masks) in enumerate(zip(self.trunk, self.masks)):
            x = stage(x)
            for t in TASKS:
                inp = x if i == 0 else torch.cat([x, self.refine[i - 1](p[t])], dim=1)
                p[t] = masks[t](inp) * x
        return {t: self.heads[t](p[t]) for t in TASKS}

    @staticmethod
    def translate(name: str) -> str:
        m = re.fullmatch(r"encoder\.s(\d)\.shared\.[a-z]+(\d+)\.(.+)", name)
        if m:
            return f"trunk.{int(m[1]) - 1}.{m[2]}.{m[3]}"
        m = re.fullmatch(r"encoder\.s(\d)\.attention\.(\w+)\.(.+)", name)
        if m:
            return f"masks.{int(m[1]) - 1}.{m[2]}.{m[3]}"
        m = re.fullmatch(r"encoder\.s(\d)\.refine\.(.+)", name)
        if m:
            return f"refine.{int(m[1]) - 2}.{m[2]}"
        return re.sub(r"^heads\.(\w+)\.[a-z]+(\d+)\.", r"heads.\1.\2.", name)


def matched(spec: str, hand: nn.Module) -> nn.Module:
    """The compiled model of `spec`, after loading its weights into `hand` and checking outputs."""
    torch.manual_seed(0)
    model = compile_spec(SPECS / spec).model
    with torch.no_grad():  # random mixing weights, so a mis-wired unit would show
        for name, p in model.named_parameters():
            if "cross_stitch" in name:
                p.uniform_(0, 1)
    state = {hand.translate(k): v for k, v in model.state_dict().items()}
    hand.load_state_dict(state, strict=True)
    x = torch.rand(4, 3, 64, 64)
    a, b = model(x), hand(x)
    for t in TASKS:
        torch.testing.assert_close(a[t], b[t], rtol=1e-5, atol=1e-5)
    return model


def compare(spec: str, hand: nn.Module, args) -> dict:
    model = matched(spec, hand)
    model.to(args.device).train()
    hand.to(args.device).train()
    x = torch.rand(args.batch, 3, 64, 64, device=args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"compiled": [], "hand": []}
    pair = [("compiled", model), ("hand", hand)]
    for r in range(args.warmup + args.reps):
        for key, m in pair if r % 2 == 0 else pair[::-1]:
            t = step(m, x, sync)
            if r >= args.warmup:
                times[key].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "spec": spec,
        "compiled_ms": 1e3 * med["compiled"],
        "hand_ms": 1e3 * med["hand"],
        "ratio": med["compiled"] / med["hand"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"forward+backward, batch {args.batch} of 3×64×64, {args.reps} interleaved reps, median ({where}, torch {torch.__version__})"
    )
    worst = 0.0
    for spec, hand in (("cross_stitch.yaml", HandCrossStitch()), ("attention.yaml", HandMTAN())):
        r = compare(spec, hand, args)
        worst = max(worst, r["ratio"])
        print(
            f"  {r['spec']:<18} compiled {r['compiled_ms']:8.2f} ms   hand-written {r['hand_ms']:8.2f} ms   ratio {r['ratio']:.3f}"
        )
    print(f"target ratio ≤ 1.05: {'met' if worst <= 1.05 else 'NOT met'} (worst {worst:.3f})")


if __name__ == "__main__":
    main()
