"""What a predictor that ignores the image scores on `shapes`: the floor `make demo` must beat.

Two trivial predictors, both fitted on the training split and scored on the validation
split with mtlc's own metrics:

* global: the majority class, the mean depth and the mean normal of all training pixels;
* per pixel: the same statistics per pixel position (a learned "average scene"),
  which is the stronger of the two because the ground sits at the bottom of every view.

    python benchmarks/trivial_shapes.py [--train 2000] [--val 500] [--size 64]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mtlc.data import load_dataset
from mtlc.metrics import build_metric

METRICS = {
    "seg": ["miou", "pixel_acc"],
    "depth": ["abs_err", "rel_err"],
    "normal": ["angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30"],
}


def score(preds: dict[str, torch.Tensor], val) -> dict[str, dict[str, float]]:
    out = {}
    for task, names in METRICS.items():
        out[task] = {}
        for name in names:
            metric = build_metric(name)
            metric.update(preds[task], val[task])
            out[task][name] = metric.compute()
    return out


def trivial(train, val, classes: int, per_pixel: bool) -> dict[str, dict[str, float]]:
    n = len(val)
    seg = train["seg"]
    dims = (0,) if per_pixel else (0, 1, 2)
    counts = F.one_hot(seg, classes).sum(dim=dims)  # [S, S, K] or [K]
    majority = counts.argmax(-1)
    logits = F.one_hot(majority, classes).float()
    logits = logits.permute(2, 0, 1) if per_pixel else logits[:, None, None]
    depth = train["depth"].mean(dim=0 if per_pixel else (0, 2, 3), keepdim=not per_pixel)
    normal = F.normalize(train["normal"].mean(dim=0 if per_pixel else (0, 2, 3)), dim=0)
    size = val["seg"].shape[-2:]
    preds = {
        "seg": logits.expand(classes, *size).expand(n, classes, *size),
        "depth": depth.reshape(1, 1, *depth.shape[-2:]).expand(n, 1, *size),
        "normal": normal.reshape(1, 3, *(size if per_pixel else (1, 1))).expand(n, 3, *size),
    }
    return score(preds, val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    options = {"name": "shapes", "train": args.train, "val": args.val, "size": args.size}
    train, val = load_dataset(options, "train"), load_dataset(options, "val")
    classes = train.info["num_classes"]["seg"]
    for label, per_pixel in (("global", False), ("per pixel", True)):
        print(f"trivial predictor ({label}):")
        for task, metrics in trivial(train, val, classes, per_pixel).items():
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"  {task:7s} {shown}")


if __name__ == "__main__":
    main()
