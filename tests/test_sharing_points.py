"""A sharing point is one file plus one registry line.

The throwaway point `scale` below (every task's copy of the stage times its own learned
scalar s_t, starting at `factor`) is defined here and registered by monkeypatching the
registry table only: no other file of mtlc is edited, yet specs accept it (located
errors included), the topology, compiler, drawing, `viz --checkpoint`, `build --json`,
`profile` and the JSON Schema all know it. The last tests check that the registered
points' files are self-contained: no module outside mtlc/sharing names a point's type.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import torch
from click.testing import CliRunner
from pydantic import Field
from torch import nn

import mtlc
from mtlc import registry
from mtlc.cli import main
from mtlc.compiler import compile_spec
from mtlc.errors import SpecError
from mtlc.sharing.point import StagePoint, stage_point, unit_point
from mtlc.spec import load_spec
from mtlc.spec.base import StageSharing
from mtlc.viz import dot_source
from mtlc.viz.dot import html_label


class Scale(StageSharing):
    """Each task's own copy of the stage, times a learned scalar per task."""

    layout: ClassVar = "per_task"
    type: Literal["scale"]
    factor: float = Field(1.0, gt=0, description="the scalars' start value")


class ScaleUnit(nn.Module):
    def __init__(self, tasks: int, factor: float):
        super().__init__()
        self.s = nn.Parameter(torch.full((tasks,), factor))

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.s[i] * x for i, x in enumerate(xs))


class ScalePoint(StagePoint):
    Options = Scale
    mixes = True  # the unit `<stage>/scale` after the per-task copies

    def emit(self, em: Any, unit: str) -> dict[str, Any]:
        attrs = em.attrs(unit)
        tasks = attrs["tasks"]
        columns = em.streams(unit)
        module = ScaleUnit(len(tasks), attrs["options"]["factor"])
        name = f"encoder.{attrs['stage']}.scale"
        out = em.call_module(
            name, module, tuple(columns[t] for t in tasks), block=unit, kind="unit", owner=None
        )
        return {
            t: em.getitem(out, i, block=unit, kind="unit", owner=t) for i, t in enumerate(tasks)
        }

    def draw(self, d: Any, unit: str) -> None:
        a = d.g.nodes[unit]
        lines = [("b", f"scale ×{a['options']['factor']:g}")] + d.cost_lines(unit)
        learned = d.notes.learned.get(unit)
        if learned:
            lines += [("s", f"{t} {v:.2f}") for t, v in zip(a["tasks"], learned)]
        attrs = {"label": html_label(lines), "shape": "diamond"}
        attrs.update(d.fill(tuple(d.tasks)))
        d.dot.node(unit, **d.status(unit, attrs))

    def learned(self, readout: Any, unit: str) -> list[float] | None:
        for name, _, _module in readout.modules(unit):
            return readout.state[f"{name}.s"].tolist()
        return None


SPEC = """\
mtlc: 1
name: scaled
input: {{image: [3, 8, 8]}}
encoder:
  stages:
    s1: [conv(4, 3), relu]
    s2: [conv(4, 3), relu]
  sharing:
    s2: {{type: scale, factor: {factor}}}
tasks:
  seg: {{head: [conv(3, 1, bias=false)], loss: cross_entropy}}
  depth: {{head: [conv(1, 1, bias=false)], loss: l1}}
train:
  data: {{name: shapes, train: 8, val: 4, size: 8}}
"""


@pytest.fixture
def scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the point: the one line a new point's author adds to mtlc.registry."""
    monkeypatch.setitem(registry.SHARING, "scale", f"{__name__}:ScalePoint")


def _write(tmp_path: Path, factor: Any = 0.5, name: str = "scaled.yaml") -> Path:
    path = tmp_path / name
    path.write_text(SPEC.format(factor=factor))
    return path


def test_a_point_registered_at_run_time_builds_compiles_and_trains(scale, tmp_path):
    spec = load_spec(_write(tmp_path))
    assert spec.sharing_of("s2").factor == 0.5
    compiled = compile_spec(spec)
    g = compiled.topology.graph
    assert g.nodes["s2/scale"]["type"] == "scale"
    assert isinstance(unit_point(g.nodes["s2/scale"]), ScalePoint)
    assert list(g.predecessors("s2/scale")) == ["s2/seg", "s2/depth"]
    model = compiled.supervised
    assert model.get_parameter("encoder.s2.scale.s").tolist() == [0.5, 0.5]

    # the same weights with the stage `separate`: every prediction is exactly 0.5× (the
    # heads are bias-free 1×1 convs, linear in their input)
    plain = _write(tmp_path, name="plain.yaml")
    plain.write_text(plain.read_text().replace("{type: scale, factor: 0.5}", "separate"))
    reference = compile_spec(load_spec(plain)).supervised
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected == ["encoder.s2.scale.s"]
    x = torch.randn(2, 3, 8, 8)
    model.eval(), reference.eval()
    got, want = model(x), reference(x)
    for task in ("seg", "depth"):
        torch.testing.assert_close(got[task], 0.5 * want[task])

    model.train()
    out = model(x)
    (out["seg"].sum() + out["depth"].sum()).backward()
    grad = model.get_parameter("encoder.s2.scale.s").grad
    assert grad is not None and grad.shape == (2,) and bool(grad.ne(0).all())


def test_the_point_draws_itself_and_shows_what_it_learned(scale, tmp_path):
    path = _write(tmp_path)
    dot = dot_source(path)
    node = next(line for line in dot.splitlines() if line.strip().startswith('"s2/scale" ['))
    assert 'shape="diamond"' in node and "scale ×0.5" in node and "2 params" in node
    assert '"s2/seg" -> "s2/scale"' in dot and '"s2/scale" -> "head/seg"' in dot

    compiled = compile_spec(load_spec(path))
    with torch.no_grad():
        compiled.supervised.get_parameter("encoder.s2.scale.s").copy_(torch.tensor([0.25, 2.0]))
    ckpt = tmp_path / "run.pt"
    torch.save(
        {
            "format": "mtlc-checkpoint",
            "version": 1,
            "spec": compiled.spec.model_dump(mode="json"),
            "model": compiled.supervised.state_dict(),
            "balancer": {},
            "optimizer": {},
            "epoch": 1,
            "step": 1,
        },
        ckpt,
    )
    learned = dot_source(path, checkpoint=ckpt)
    node = next(line for line in learned.splitlines() if line.strip().startswith('"s2/scale" ['))
    assert "seg 0.25" in node and "depth 2.00" in node


def test_build_json_profile_and_the_schema_know_the_point(scale, tmp_path):
    path = _write(tmp_path)
    runner = CliRunner()
    built = runner.invoke(main, ["build", str(path), "--json"])
    assert built.exit_code == 0, built.output
    # by hand: s1 3·4·9 + 4 = 112, s2 two copies of 4·4·9 + 4 = 296, the unit's two
    # scalars, heads 4·3 + 4·1 = 16
    assert json.loads(built.output)["params"]["total"] == 112 + 296 + 2 + 16
    profiled = runner.invoke(main, ["profile", str(path), "--json"])
    assert profiled.exit_code == 0, profiled.output
    report = json.loads(profiled.output)
    assert report["params"]["total"] == 426
    assert report["params"]["shared"] == 112 + 296 + 2  # the unit reads both copies

    from mtlc.commands import names, schema_document

    doc = schema_document()
    assert doc["$defs"]["Scale"]["properties"]["factor"]["exclusiveMinimum"] == 0
    entry = doc["$defs"]["Encoder"]["properties"]["sharing"]["additionalProperties"]["anyOf"]
    assert "scale" in entry[0]["enum"]
    assert "scale" in names()["sharing"]
    assert "scale" in json.loads(runner.invoke(main, ["list", "--json"]).output)["sharing"]


def test_the_registered_point_s_options_give_located_errors(scale, tmp_path):
    with pytest.raises(SpecError) as bad:
        load_spec(_write(tmp_path, factor=-1))
    assert re.search(
        r"scaled\.yaml:9:31: encoder\.sharing\.s2\.factor: .*greater than 0", str(bad.value)
    )
    path = tmp_path / "typo.yaml"
    path.write_text(SPEC.format(factor=1).replace("factor: 1", "facter: 1"))
    with pytest.raises(SpecError) as typo:
        load_spec(path)
    assert "encoder.sharing.s2.facter: unknown key 'facter' (did you mean 'factor'?)" in str(
        typo.value
    )
    result = CliRunner().invoke(main, ["build", str(_write(tmp_path, factor=0))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "encoder.sharing.s2.factor" in result.output


def test_the_merge_hint_lists_the_registered_points_that_can_follow(scale, tmp_path):
    """The hint is the registered points that read per-task features, not a fixed list:
    the new per-task point is in it, the mixtures and hard/attention are not (their
    experts or trunk read one shared input)."""
    path = _write(tmp_path)
    text = path.read_text().replace(
        "s1: [conv(4, 3), relu]", "s0: [conv(4, 3), relu]\n    s1: [conv(4, 3), relu]"
    )
    path.write_text(
        text.replace("    s2: {type: scale, factor: 0.5}", "    s0: separate\n    s1: mmoe")
    )
    with pytest.raises(SpecError) as merged:
        load_spec(path)
    assert "type (separate, cross_stitch, nddr or scale) instead" in str(merged.value)
    assert [p.name for p in map(stage_point, registry.SHARING) if p.follows_split] == [
        "separate",
        "cross_stitch",
        "nddr",
        "scale",
    ]


def test_without_the_registry_line_the_type_is_unknown(tmp_path):
    with pytest.raises(SpecError, match="unknown sharing type 'scale'"):
        load_spec(_write(tmp_path))


# -- the points' files are self-contained ------------------------------------------------


def _home(path: str) -> str:
    return path.partition(":")[0]


def test_no_module_outside_a_point_s_file_names_its_type():
    """No `== "cross_stitch"` switch anywhere: a point's type string appears, quoted, only
    in its own file (and its registry line)."""
    root = Path(mtlc.__file__).parent
    homes = {
        n: _home(p) for table in (registry.SHARING, registry.DECODERS) for n, p in table.items()
    }
    names = "|".join(map(re.escape, homes))
    quoted = re.compile(rf"""["']({names})["']""")
    offenders = []
    for path in sorted(root.rglob("*.py")):
        module = "mtlc." + ".".join(path.relative_to(root).with_suffix("").parts)
        if module == "mtlc.registry":
            continue
        for name in set(quoted.findall(path.read_text(encoding="utf-8"))):
            if homes[name] != module:
                offenders.append(f"{module} names '{name}'")
    assert offenders == []


@pytest.mark.parametrize("name", list(registry.SHARING) + list(registry.DECODERS))
def test_every_registered_point_is_a_point_whose_options_name_it(name):
    table = registry.SHARING if name in registry.SHARING else registry.DECODERS
    point = registry.resolve(table, name)()
    assert point.name == name
    assert point.Options.model_fields["type"].annotation.__args__ == (name,)
