"""Mean module outputs of a trained model over validation data, for `viz --checkpoint`.

A gate's weights depend on its input, so unlike cross-stitch α they cannot be read off
the checkpoint: the model (with the checkpoint's weights, in eval mode) is run over the
spec's validation split (its first `limit` samples) and the output of each asked unit's
module is averaged over the samples. The modules are found through the fx labels (the
call_module node labelled with the unit), so this file knows no sharing type.

The validation split is loaded with the imports the caller allowed (`--allow-import` on
`mtlc viz`, or `with mtlc.allow_import(...)`). A split that cannot be loaded (files not on
this machine, a `callable` not allowed) does not stop the drawing: the means are left
out and a :class:`GateWeightsSkipped` warning says why, once.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from mtlc.compiler import compile_spec
from mtlc.spec import Spec


class GateWeightsSkipped(UserWarning):
    """The gates' mean weights are not drawn: the validation split could not be loaded."""


def mean_unit_outputs(
    spec: Spec, state: dict[str, torch.Tensor], where: str, units: list[str], limit: int = 2048
) -> tuple[dict[str, list[Any]], int]:
    """{unit: its module's output averaged over samples, as a list} and the sample count."""
    from mtlc.data.batches import iterate_batches
    from mtlc.imports import allowed_imports
    from mtlc.train.errors import TrainError
    from mtlc.train.setup import load_model_state, load_split

    if not units:
        return {}, 0
    model = compile_spec(spec).supervised
    load_model_state(model, state, where)  # a checkpoint of another model fails here
    model.eval()
    try:
        data = load_split(spec, "val", allowed_imports())
    except TrainError as exc:
        warnings.warn(f"gate weights not shown: {exc}", GateWeightsSkipped, stacklevel=2)
        return {}, 0
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for node in model.graph.nodes:
        block = node.meta.get("mtlc", {}).get("block")
        if node.op == "call_module" and block in units:

            def record(_m, _args, out, block=block):
                sums[block] = sums.get(block, 0) + out.detach().double().sum(0)

            handles.append(model.get_submodule(node.target).register_forward_hook(record))
    seen = 0
    try:
        with torch.no_grad():
            for batch in iterate_batches(data, 256, shuffle=False):
                x = batch[spec.input_name][: limit - seen]
                model(x)
                seen += len(x)
                if seen >= limit:
                    break
    finally:
        for h in handles:
            h.remove()
    return {u: (sums[u] / seen).tolist() for u in units if u in sums}, seen
