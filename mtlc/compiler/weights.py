"""Pretrained backbone weights, loaded by torchvision's names into every copy of a stage.

A backbone stage's blocks keep torchvision's module names under the copy's prefix
(`encoder.s3.seg.layer3.2.conv2.weight` holds torchvision's `layer3.2.conv2.weight`),
so loading is a rename: strip the prefix, look the key up in the file. Every copy of a
stage (one per task in a cross-stitch or NDDR stage) gets the same tensors, the papers'
recipe for starting T columns from one ImageNet network.

The file is read with `weights_only=True` (never unpickling code) from a local path;
`fc.*` (the ImageNet classifier) and the keys of backbone parts no stage uses are
ignored, and `num_batches_tracked` may be absent (torchvision's published files lack
it). Anything else that does not fit is a located error naming the first keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import fx

from mtlc.compiler.emitter import module_prefix
from mtlc.spec.load import spec_error
from mtlc.topology import Topology

_IGNORED_SUFFIX = "num_batches_tracked"
_SHOWN = 4


def few(keys: list[str]) -> str:
    more = f", … ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a `torch.save` file (also `{"state_dict": …}` / `{"model": …}`).

    Raises ValueError with a one-line reason for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad or truncated file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first.startswith("Weights only load failed"):
            first = "not a torch.save file of tensors and plain data"
        raise ValueError(f"cannot read {path} ({first})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise ValueError(f"{path} is not a state dict (a dict of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def backbone_copies(topo: Topology) -> dict[str, list[tuple[str, list[str]]]]:
    """Stage -> [(module prefix of one copy, the backbone module names in it)]."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for block, attrs in topo.graph.nodes(data=True):
        if attrs["kind"] != "block" or attrs["stage"] not in topo.stages:
            continue
        names = [layer.module for layer in attrs["layers"] if layer.module]
        if names:
            out.setdefault(attrs["stage"], []).append((module_prefix(block, attrs), names))
    return out


def load_backbone_weights(model: fx.GraphModule, topo: Topology) -> None:
    """Copy `encoder.backbone.weights` into every copy of every backbone stage of `model`."""
    spec = topo.spec
    bb = spec.encoder.backbone
    if bb is None or bb.weights is None or bb.name is None:
        return  # an imported model took its weights before it was traced
    where = ("encoder", "backbone", "weights")
    try:
        source = read_state_dict(bb.weights)
    except ValueError as exc:
        raise spec_error(spec, where, str(exc)) from None
    from mtlc.topology.backbone import backbone_of

    parts = list(backbone_of(spec).parts)
    ours = model.state_dict()
    copies = backbone_copies(topo)
    used = {name for entries in copies.values() for _, names in entries for name in names}
    unused = [p for p in parts if p != "stem" and p not in used]
    plan: list[tuple[str, str]] = []  # (our key, file key)
    wanted: set[str] = set()
    for stage, entries in copies.items():
        missing, wrong = [], []
        for prefix, names in entries:
            for key, value in ours.items():
                if not key.startswith(prefix + "."):
                    continue
                theirs = key[len(prefix) + 1 :]
                if not any(theirs.startswith(n + ".") for n in names):
                    continue
                wanted.add(theirs)
                if theirs not in source:
                    if not theirs.endswith(_IGNORED_SUFFIX) and theirs not in missing:
                        missing.append(theirs)
                    continue
                if tuple(source[theirs].shape) != tuple(value.shape):
                    wrong.append(
                        f"{theirs} {list(source[theirs].shape)} vs {list(value.shape)} here"
                    )
                    continue
                plan.append((key, theirs))
        if missing or wrong:
            what = f"missing keys {few(missing)}" if missing else ""
            if wrong:
                what += ("; " if what else "") + f"shapes differ: {few(wrong)}"
            raise spec_error(
                spec,
                where,
                f"{bb.weights} does not fit stage '{stage}' of {bb.name} ({what})",
            )
    extra = [
        k
        for k in source
        if k not in wanted
        and not k.startswith("fc.")
        and not any(k.startswith(p + ".") for p in unused)
    ]
    if extra:
        raise spec_error(
            spec,
            where,
            f"{bb.weights} has keys that {bb.name} does not have: unexpected {few(extra)}",
        )
    with torch.no_grad():
        for key, theirs in plan:
            ours[key].copy_(source[theirs])
