"""YAML file (or dict) + overrides → a validated, typed `Spec`.

Validation has two layers: the pydantic schema (types, unknown keys, ranges), whose
errors we translate into located one-liners with did-you-mean; then the checks that
need the whole spec (names of losses and metrics, groups forming a tree, shapes that
fit), which building the topology performs.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mtlc import registry
from mtlc.errors import Location, SpecError, did_you_mean, unknown
from mtlc.layers.vocab import MAX_ELEMENTS, MAX_SIZE
from mtlc.spec.names import name_problem
from mtlc.spec.overrides import apply_overrides
from mtlc.spec.schema import LOSS_OPTIONS, Spec, spec_model
from mtlc.spec.yaml_source import Positions, dotted, parse_yaml, read_yaml, set_location


class Source(Positions):
    """Positions of a spec's paths, with paths set by `--set` reported as such."""

    def __init__(self, positions: Positions, overrides: dict[tuple, str]):
        super().__init__(positions.file)
        self.values, self.keys, self.overrides = positions.values, positions.keys, overrides

    def locate(self, path: tuple, *, key: bool = False) -> Location:
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.overrides:
                return set_location(self.overrides[path[:n]])
        if path not in self.values:  # a key that only an override created
            made = [text for p, text in self.overrides.items() if p[: len(path)] == path]
            if made:
                return set_location(made[0])
        return super().locate(path, key=key)

    def error(self, path: tuple, message: str, *, key: bool = False) -> SpecError:
        return SpecError(message, dotted(path), self.locate(path, key=key))


def load_spec(
    source: str | Path | dict[str, Any] | Spec, overrides: list[str] | tuple[str, ...] = ()
) -> Spec:
    """Read, override and validate a spec; the result has passed every check.

    A path is read as YAML; a dict is validated as given (the caller's dict is not modified).
    """
    if isinstance(source, Spec):
        if not overrides:
            return source
        source = source.model_dump(mode="json", exclude_unset=True)
    if isinstance(source, dict):
        data, positions = copy.deepcopy(source), Positions("<dict>")
    else:
        data, positions = read_yaml(source)
    return _validate(data, positions, overrides)


def parse_spec_text(
    text: str, file: str = "<spec>", overrides: list[str] | tuple[str, ...] = ()
) -> Spec:
    """Validate a spec given as YAML text."""
    return _validate(*parse_yaml(text, file), overrides)


def _validate(data: Any, positions: Positions, overrides: list[str] | tuple[str, ...]) -> Spec:
    if data is None:
        raise SpecError("the spec is empty", "", positions.locate(()))
    if not isinstance(data, dict):
        raise SpecError(
            f"a spec is a mapping of keys, got a {type(data).__name__}", "", positions.locate(())
        )
    src = Source(positions, apply_overrides(data, list(overrides)))
    try:
        spec = spec_model().model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, data, src) from None
    spec._source = src
    _check_names(spec, src)
    from mtlc.topology import build_topology

    spec._topology = build_topology(spec)  # shape and tree checks; raises located SpecErrors
    return spec


def spec_error(spec: Spec, path: tuple, message: str, *, key: bool = False) -> SpecError:
    """A SpecError located at `path` of the file `spec` was read from."""
    src = spec._source
    if src is None:
        return SpecError(message, dotted(path))
    return src.error(path, message, key=key)


# -- pydantic error translation --------------------------------------------------------


def _data_path(loc: tuple, data: Any) -> tuple:
    """Keep the parts of a pydantic `loc` that index the data (drop union tags etc.)."""
    path, node = [], data
    for part in loc:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            node = node[part]
            path.append(part)
    return tuple(path)


def _models_in(annotation: Any, value: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can mean for `value` (discriminated by `type`)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0], value)
    if origin in (typing.Union, types.UnionType):
        found = []
        for arg in typing.get_args(annotation):
            found += _models_in(arg, value)
        tag = value.get("type") if isinstance(value, dict) else value
        picked = [
            m
            for m in found
            if "type" in m.model_fields
            and typing.get_args(m.model_fields["type"].annotation) == (tag,)
        ]
        return picked or found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _fields_at(path: tuple, data: Any) -> list[str]:
    """Names allowed at `path` of the spec, for did-you-mean."""
    annotation: Any = spec_model()
    node = data
    for part in path:
        models = _models_in(annotation, node)
        if models:
            field = models[0].model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            annotation = field.annotation
        else:
            args = typing.get_args(annotation)
            origin = typing.get_origin(annotation)
            if origin is dict:
                annotation = args[1]
            elif origin is list:
                annotation = args[0]
            elif origin in (typing.Union, types.UnionType):
                annotation = next((a for a in args if typing.get_origin(a) in (dict, list)), None)
                if annotation is None:
                    return []
                annotation = typing.get_args(annotation)[-1]
            else:
                return []
        node = node[part] if isinstance(node, (dict, list)) else None
    models = _models_in(annotation, node)
    return list(models[0].model_fields) if models else []


def _translate(exc: ValidationError, data: dict, src: Source) -> SpecError:
    """The first pydantic error as one located line (the rest follow once it is fixed)."""
    errors = exc.errors(include_url=False)
    # a misspelt key also makes its correct name "missing": the unknown key explains both
    err = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    loc = tuple(err["loc"])
    path = _data_path(loc, data)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = path[-1] if path else loc[-1]
        allowed = _fields_at(path[:-1], data)
        message = f"unknown key '{key}'" + (
            did_you_mean(key, allowed) or (f" (allowed: {', '.join(allowed)})" if allowed else "")
        )
        if isinstance(key, str) and key.count(")") > key.count("("):
            # `{head: conv(1, 1)}`: YAML split the call at its comma into two keys
            message += "; a layer list needs brackets, e.g. head: [conv(1, 1)]"
        return src.error(path, message, key=True)
    if kind == "invalid_key" or loc and loc[-1] == "[key]":  # a key such as `3:` or `yes:`
        key = err["input"] if kind == "invalid_key" else path[-1]
        what = "a boolean" if isinstance(key, bool) else "a number"
        return src.error(
            path, f"the key {key!r} is read as {what}: names are strings (quote it)", key=True
        )
    if kind == "missing" and isinstance(loc[-1], int):  # a fixed-length list (tuple) too short
        return src.error(path, f"item {loc[-1]} is missing, got {_get(data, path)!r}")
    if kind == "missing":
        missing = loc[-1]
        return src.error(path, f"required key '{missing}' is missing", key=True)
    if kind == "none_required":  # an option the chosen type does not take
        owner = _get(data, path[:-1])
        tag = owner.get("type") if isinstance(owner, dict) else None
        return src.error(path, f"'{path[-1]}' is not an option of '{tag}'", key=True)
    if kind in ("model_type", "model_attributes_type"):
        shorthand = path[:1] in (("balancer",), ("decoder",)) or path[:2] == ("encoder", "sharing")
        expected = "a type name or a mapping" if shorthand else "a mapping"
        return src.error(path, f"expected {expected}, got {_get(data, path)!r}")
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("tag")
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        what = (
            "decoder type"
            if path[:1] == ("decoder",)
            else "balancer"
            if path[:1] == ("balancer",)
            else "sharing type"
        )
        return src.error(
            path + ("type",) if isinstance(_get(data, path), dict) else path,
            unknown(what, tag, expected),
        )
    if kind == "union_tag_not_found":
        return src.error(path, "needs a 'type' key")
    if kind == "literal_error" and path == ("mtlc",):
        return src.error(
            path, f"unsupported format version {_get(data, path)!r}; this mtlc reads version 1"
        )
    if kind == "too_short" and path and path[-1] in ("tasks", "stages"):
        return src.error(
            path, f"at least one {'task' if path[-1] == 'tasks' else 'stage'} is needed"
        )
    if kind in ("less_than_equal", "less_than") and isinstance(_get(data, path), int):
        limit = err.get("ctx", {}).get("le", err.get("ctx", {}).get("lt"))
        value = str(_get(data, path))
        shown = value if len(value) <= 24 else f"a number of {len(value)} digits"
        return src.error(path, f"{shown} is past mtlc's limit: at most {limit}")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    value = _get(data, path)
    if kind.endswith("_type") or kind.endswith("_parsing"):
        msg = f"{msg[0].lower()}{msg[1:]}, got {value!r}"
    return src.error(path, msg[0].lower() + msg[1:])


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


# -- name checks -----------------------------------------------------------------------


def _check_names(spec: Spec, src: Source) -> None:
    for name, size in spec.input.items():
        problem = name_problem(name)
        if problem:
            raise src.error(("input", name), f"input name {name!r} {problem}", key=True)
        if not size or any(isinstance(n, bool) or n < 1 for n in size):
            raise src.error(("input", name), f"sizes must be positive integers, got {size}")
        if max(size) > MAX_SIZE or math.prod(size) > MAX_ELEMENTS:
            raise src.error(
                ("input", name),
                f"{size} is too large: at most {MAX_SIZE} per size and {MAX_ELEMENTS} values",
            )
    tasks = list(spec.tasks)
    for t, task in spec.tasks.items():
        loss_path = ("tasks", t, "loss") + (() if isinstance(task.loss, str) else ("type",))
        if task.loss_name not in registry.LOSSES:
            raise src.error(loss_path, unknown("loss", task.loss_name, registry.LOSSES))
        _check_loss_options(task.loss_name, task.loss_options, ("tasks", t, "loss"), src)
        for i, m in enumerate(task.metrics):
            if m not in registry.METRICS:
                raise src.error(("tasks", t, "metrics", i), unknown("metric", m, registry.METRICS))
    if not spec.outputs:
        raise src.error(
            ("tasks",), "every task is auxiliary: at least one task must be an output of the model"
        )
    for stage, sharing in spec.encoder.sharing.items():
        if stage not in spec.encoder.stages:
            raise src.error(
                ("encoder", "sharing", stage),
                unknown("stage", stage, spec.encoder.stages),
                key=True,
            )
        if sharing.groups is not None:
            _check_partition(sharing.groups, tasks, ("encoder", "sharing", stage, "groups"), src)
    bb = spec.encoder.backbone
    if bb is not None:
        if (bb.name is None) == (bb.import_ is None):
            raise src.error(
                ("encoder", "backbone"),
                "give either `name` (a ResNet) or `import` (a model of your own), "
                + ("not both" if bb.name else "one of them"),
            )
        if bb.import_ is None and bb.kwargs:
            raise src.error(("encoder", "backbone", "kwargs"), "kwargs go with `import`")
        if bb.import_ is not None and bb.output_stride is not None:
            raise src.error(
                ("encoder", "backbone", "output_stride"),
                "output_stride applies to named backbones; an imported model has its own",
            )
    for t in spec.encoder.init:
        if t not in spec.tasks:
            raise src.error(("encoder", "init", t), unknown("task", t, tasks), key=True)
    for i, stage in enumerate(spec.encoder.freeze):
        if stage not in spec.encoder.stages:
            raise src.error(("encoder", "freeze", i), unknown("stage", stage, spec.encoder.stages))
    if len(set(spec.encoder.freeze)) != len(spec.encoder.freeze):
        raise src.error(("encoder", "freeze"), "a stage appears twice")
    bal = spec.balancer
    if getattr(bal, "level", "loss") == "gradient" and len(spec.tasks) < 2:
        raise src.error(
            ("balancer", "type"),
            f"'{bal.type}' combines the gradients of two or more tasks, but this spec has one"
            " task; use a loss-level balancer (fixed)",
        )
    for key in ("weights", "gamma", "kpi"):
        table = getattr(bal, key, None)
        if isinstance(table, dict):
            for t in table:
                if t not in spec.tasks:
                    raise src.error(("balancer", key, t), unknown("task", t, tasks), key=True)
    kpis = getattr(bal, "kpi", {})
    for t, metric in kpis.items():
        if metric not in spec.tasks[t].metrics:
            raise src.error(
                ("balancer", "kpi", t),
                f"task '{t}' has no metric '{metric}'{did_you_mean(metric, spec.tasks[t].metrics)}",
            )
    if spec.decoder is not None:
        from mtlc.sharing.point import decoder_point

        decoder_point(spec.decoder.type).check(spec, src)
    for stage in spec.encoder.stages:
        from mtlc.sharing.point import stage_point

        stage_point(spec.sharing_of(stage).type).check(spec, src)


def _check_loss_options(name: str, options: dict, path: tuple, src: Source) -> None:
    """Options a loss does not take, or values it cannot use, are located errors."""
    model = LOSS_OPTIONS.get(name)
    if model is None:
        return
    try:
        model.model_validate(options)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = err["loc"][0] if err["loc"] else None
        if err["type"] == "extra_forbidden":
            allowed = list(model.model_fields)
            hint = did_you_mean(str(key), allowed) or (
                f" (it takes: {', '.join(allowed)})" if allowed else " (it takes none)"
            )
            raise src.error(
                path + (key,), f"loss '{name}' has no option '{key}'{hint}", key=True
            ) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise src.error(
            path + (key,), f"{msg[0].lower()}{msg[1:]}, got {options.get(key)!r}"
        ) from None


def _check_partition(groups: list[list[str]], tasks: list[str], path: tuple, src: Source) -> None:
    seen: dict[str, int] = {}
    for g, group in enumerate(groups):
        if not group:
            raise src.error(path + (g,), "a group cannot be empty")
        for i, t in enumerate(group):
            if t not in tasks:
                raise src.error(path + (g, i), unknown("task", t, tasks))
            if t in seen:
                raise src.error(
                    path + (g, i), f"task '{t}' is in two groups: groups must partition the tasks"
                )
            seen[t] = g
    missing = [t for t in tasks if t not in seen]
    if missing:
        raise src.error(path, f"groups must partition the tasks; missing: {', '.join(missing)}")
