"""The layers of each encoder stage: parsed from the spec, or cut out of a named backbone.

With `encoder.backbone` the stages list the backbone's parts (`stem`, `layer2`, a single
block `layer3.2`) instead of layers. The parts must follow the backbone's order without
a gap or a repeat, starting at its first part; a backbone may stop early (a spec using
layers up to `layer3` leaves `layer4` out, and its checkpoint keys are then ignored).
"""

from __future__ import annotations

from mtlc.errors import unknown
from mtlc.layers.backbones import Backbone, resnet
from mtlc.layers.vocab import Layer
from mtlc.spec.schema import Spec


def _err(spec: Spec, path: tuple, message: str, key: bool = False):
    from mtlc.spec.load import spec_error

    return spec_error(spec, path, message, key=key)


def stage_items(spec: Spec, stage: str) -> list:
    """A stage's items as a list (`s2: layer2` is short for `s2: [layer2]`)."""
    items = spec.encoder.stages[stage]
    return [items] if isinstance(items, str) else list(items)


def backbone_of(spec: Spec) -> Backbone | None:
    bb = spec.encoder.backbone
    return None if bb is None or bb.name is None else resnet(bb.name, bb.stride)


def backbone_stages(spec: Spec) -> dict[str, list[Layer]] | None:
    """Each stage's layers (module names set) when the spec has a backbone, else None."""
    if spec.encoder.backbone is not None and spec.encoder.backbone.name is None:
        return None  # an imported model: cut by mtlc.topology.traced
    bb = backbone_of(spec)
    if bb is None:
        for stage, items in spec.encoder.stages.items():
            if isinstance(items, str):
                raise _err(
                    spec,
                    ("encoder", "stages", stage),
                    f"a stage is a list of layers; '{items}' names a backbone part, which needs encoder.backbone",
                )
        return None
    groups, order = bb.groups, list(bb.parts)
    out: dict[str, list[Layer]] = {}
    done = 0  # parts of the backbone taken so far
    for stage in spec.encoder.stages:
        items = stage_items(spec, stage)
        single = isinstance(spec.encoder.stages[stage], str)
        out[stage] = []
        if not items:
            raise _err(spec, ("encoder", "stages", stage), "a stage needs at least one part")
        for i, item in enumerate(items):
            path = ("encoder", "stages", stage) + (() if single else (i,))
            if not isinstance(item, str) or item not in groups:
                what = item if isinstance(item, str) else repr(item)
                raise _err(
                    spec,
                    path,
                    f"{unknown(f'part of {bb.name}', what, groups)}; with a backbone a stage lists its parts",
                )
            parts = groups[item]
            expected = order[done] if done < len(order) else None
            if parts[0] != expected:
                where = f"after '{_whole(groups, order[done - 1], -1)}'" if done else "first"
                expected = _whole(groups, expected, 0) if expected else None
                want = f"'{expected}' comes {where}" if expected else f"{bb.name} ends before it"
                raise _err(
                    spec,
                    path,
                    f"backbone parts must follow {bb.name}'s order without gaps or repeats: {want}, not '{item}'",
                )
            for part in parts:
                out[stage].extend(bb.parts[part])
            done += len(parts)
    return out


def _whole(groups: dict[str, list[str]], part: str, end: int) -> str:
    """`layer2` for `layer2.0` (end 0) or its last block (end -1), else the block itself."""
    group = part.split(".")[0]
    return group if groups[group][end] == part else part
