"""The Python face of mtlc, end to end, on tiny built-in data (a few seconds on a CPU).

    python examples/python_api.py [OUT_DIR]

Validate a spec with an override, compile it, look at the generated code, read the
supervised outputs, count its cost per task, and train it for one short epoch.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import mtlc
from mtlc.compiler import compile_spec
from mtlc.profile import summarize
from mtlc.train import train

SPEC = Path(__file__).parent.parent / "specs" / "cross_stitch.yaml"
TINY = ["train.data.train=64", "train.data.val=32", "train.epochs=1", "train.batch_size=16"]


def main(out: Path) -> None:
    spec = mtlc.load_spec(SPEC, overrides=TINY)  # validated: any mistake is a located SpecError
    print(f"{spec.name}: tasks {list(spec.tasks)}, outputs {spec.outputs}")

    model = mtlc.compile(spec)  # a torch.fx.GraphModule
    print(next(line for line in model.code.splitlines() if line.startswith("def forward")))
    x = torch.randn(2, *spec.input_shape)
    print({task: tuple(y.shape) for task, y in model(x).items()})

    compiled = compile_spec(spec)  # the final model and the supervised one share weights
    print("supervised outputs:", list(compiled.supervised(x)))

    cost = summarize(compiled, batch=1)
    print(
        f"params {cost['params']['total']:,} (shared {cost['params']['shared']:,}), FLOPs per sample {cost['flops']['total']:,}"
    )

    result = train(spec, out=out / "run", force=True, device="cpu", progress=False)
    print(f"run folder {result.run_dir}: validation metrics {result.summary['final']['metrics']}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
