"""Property: any mutation of any example spec ends in a model or in mtlc's SpecError.

Every spec of `specs/` is mutated (keys deleted, values replaced or wrapped in another
type, keys renamed, random layer strings inserted, numbers changed, `--set` overrides
added), written back as YAML and driven through load → compile (on the meta device,
so nothing is allocated) → FLOP count. Anything but a finished count or a `SpecError`
(a traceback of any other type) fails, and hypothesis prints the mutated spec.

The CI profile (default) is small and derandomized, so a run is repeatable and short;
`make fuzz` (HYPOTHESIS_PROFILE=fuzz) runs thousands of fresh examples.
"""

from __future__ import annotations

import copy
import keyword
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mtlc.compiler import compile_spec  # noqa: E402
from mtlc.errors import SpecError  # noqa: E402
from mtlc.layers.aliases import ALIASES  # noqa: E402
from mtlc.layers.vocab import LAYERS  # noqa: E402
from mtlc.profile.counting import count  # noqa: E402
from mtlc.spec import parse_spec_text  # noqa: E402
from mtlc.spec.yaml_source import parse_yaml  # noqa: E402

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))
BASE = {p.name: parse_yaml(p.read_text(), p.name)[0] for p in SPECS}

_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
# no "explain" phase: on a failure it replays hundreds of variants (minutes here)
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
settings.register_profile("ci", max_examples=30, derandomize=True, phases=_PHASES, **_COMMON)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "600")), **_COMMON
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# -- values ------------------------------------------------------------------------------

small_ints = st.integers(-2, 9)
numbers = st.one_of(
    small_ints,
    small_ints,
    st.integers(min_value=2**31, max_value=2**80),
    st.integers(max_value=-(2**31)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 1e-12, 1e300, 2**64, 10**400]),
)
names = st.one_of(
    st.sampled_from(
        ["class", "type", "forward", "training", "_x", "a\n", "x" * 70, "1abc", "a-b", ""]
        + ["input", "head", "output", "loss", "decoder", "seg", "depth", "s1", "refine"]
        + ["shared", "expert0", "y1_expert0", "gate_shared"]
        + keyword.kwlist[:6]
    ),
    st.text(max_size=10),
    st.integers(-3, 3),
)
layer_names = st.sampled_from(sorted(LAYERS) + sorted(ALIASES)[:6] + ["foo", "", "Conv2d"])
layer_args = st.one_of(
    numbers, st.none(), st.booleans(), st.text(max_size=4), st.lists(small_ints, max_size=3)
)
layer_keys = st.sampled_from(
    ["out", "k", "stride", "padding", "dilation", "groups", "bias", "momentum", "eps"]
    + ["p", "scale", "size", "mode", "affine", "foo"]
)


@st.composite
def layer_strings(draw) -> Any:
    """A layer as a call string, a dict, or random text close to the syntax."""
    name = draw(layer_names)
    args = draw(st.lists(layer_args, max_size=3))
    kwargs = draw(st.dictionaries(layer_keys, layer_args, max_size=2))
    form = draw(st.integers(0, 3))
    if form == 0:
        inner = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return f"{name}({', '.join(inner)})" if inner or draw(st.booleans()) else name
    if form == 1:
        return {name: kwargs or (args[0] if args else None)}
    if form == 2:
        return {name: args}
    return draw(st.text(alphabet="convbrelu()[]{},=0123456789 .-_'\"", max_size=24))


# layers that usually fit anywhere, so that many mutants still build
valid_layers = st.one_of(
    st.sampled_from(["relu", "bn", "identity", "gelu", "dropout(0.1)", "ln", "sigmoid"]),
    st.builds(lambda c, k: f"conv({c}, {k})", st.integers(1, 8), st.sampled_from([1, 3])),
    st.builds(lambda s: f"upsample(size=[{s}, {s}])", st.integers(1, 16)),
)

leaves = st.one_of(numbers, names, st.none(), st.booleans(), layer_strings())
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

# -- mutations ---------------------------------------------------------------------------


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in the data (dict keys and list indices), parents first."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, prefix + (i,))
    return out


def get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def mutate(data: dict, draw) -> list[str]:
    """Apply one random mutation in place; return any `--set` overrides it makes."""
    all_paths = paths(data)
    inner = [p for p in all_paths if p]
    # gentle mutations first: hypothesis draws early list items more often, and a spec
    # that still builds exercises compile and the FLOP count, not only validation
    kind = draw(st.sampled_from(["number", "layer", "set", "rename", "wrap", "replace", "delete"]))
    if kind == "set":
        path = draw(st.sampled_from(inner))
        key = ".".join(str(p) for p in path)
        value = draw(
            st.one_of(
                values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
                st.sampled_from(["[", "{a: 1", "&a [*a, *a]", "!!python/name:os.system", ""]),
                st.text(max_size=12),
            )
        )
        return [f"{key}={value}"]
    if kind == "layer":
        lists = [p for p in all_paths if isinstance(get(data, p), list) and p[-1:] != ("input",)]
        if lists:
            target = get(data, draw(st.sampled_from(lists)))
            layer = draw(st.one_of(valid_layers, layer_strings()))
            target.insert(draw(st.integers(0, len(target))), layer)
        return []
    if kind == "rename":
        dicts = [p for p in all_paths if isinstance(get(data, p), dict) and get(data, p)]
        path = draw(st.sampled_from(dicts))
        table = get(data, path)
        old = draw(st.sampled_from(list(table)))
        new = draw(names)
        items = [(new if k == old else k, v) for k, v in table.items()]
        table.clear()
        table.update(items)
        return []
    if kind == "number":
        numeric = [p for p in inner if isinstance(get(data, p), (int, float)) and p[0] != "mtlc"]
        path = draw(st.sampled_from(numeric or inner))
    else:
        path = draw(st.sampled_from(inner))
    parent, last = get(data, path[:-1]), path[-1]
    if kind == "delete":
        del parent[last]
    elif kind == "replace":
        parent[last] = draw(values)
    elif kind == "wrap":
        old = parent[last]
        parent[last] = draw(
            st.sampled_from([[old], {"type": old}, str(old), {"x": old}, list(str(old))[:3]])
        )
    else:  # number: mostly a nearby value, sometimes anything
        old = parent[last]
        parent[last] = draw(
            st.one_of(st.integers(1, 8), numbers)
            if isinstance(old, int)
            else st.one_of(st.floats(0.01, 0.99), numbers)
        )
    return []


def drive(text: str, overrides: list[str]) -> str:
    """load → compile on meta → FLOP count; a SpecError is a fine end, nothing else is."""
    try:
        spec = parse_spec_text(text, "fuzz.yaml", overrides)
        with torch.device("meta"):
            compiled = compile_spec(spec)
        cost = count(compiled.model, {spec.input_name: (1, *spec.input_shape)})
    except SpecError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), message
        return "spec error"
    assert cost.nodes, "a built model has nodes to count"
    return "model"


@pytest.mark.parametrize("name", sorted(BASE))
@given(data=st.data())
def test_mutated_spec_ends_in_a_model_or_a_spec_error(name, data):
    spec = copy.deepcopy(BASE[name])
    overrides: list[str] = []
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        overrides += mutate(spec, data.draw)
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    hypothesis.event(drive(text, overrides))


def test_the_unmutated_specs_build():
    for name, spec in BASE.items():
        assert drive(yaml.safe_dump(spec, sort_keys=False), []) == "model", name
