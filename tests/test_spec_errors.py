"""Bad input: each mistake gives `file:line:col: key.path: message`, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from mtlc.cli import main
from mtlc.errors import SpecError
from mtlc.spec import load_spec
from tests.conftest import SMALL


def error_of(write_spec, text: str) -> str:
    path = write_spec(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value).replace(str(path), "spec.yaml")


CASES = [
    # (what the user wrote, replaced in SMALL, the message expected)
    (
        "yaml syntax",
        ("s2: [conv(16, 3), bn, relu]", "s2: [conv(16, 3), bn, relu"),
        "spec.yaml:8:6: YAML syntax error: expected ',' or ']'",
    ),
    (
        "unknown key",
        ("name: small", "nmae: small"),
        "spec.yaml:2:1: nmae: unknown key 'nmae' (did you mean 'name'?)",
    ),
    (
        "missing key",
        ("loss: l1, ", ""),
        "spec.yaml:10:3: tasks.depth: required key 'loss' is missing",
    ),
    (
        "unknown nested key",
        ("loss: l1,", "los: l1,"),
        "spec.yaml:10:44: tasks.depth.los: unknown key 'los' (did you mean 'loss'?)",
    ),
    (
        "wrong type",
        ("input: {image: [3, 16, 16]}", "input: {image: three}"),
        "spec.yaml:3:16: input.image: input should be a valid list, got 'three'",
    ),
    (
        "unknown layer",
        ("conv(8, 3), bn", "konv(8, 3), bn"),
        "spec.yaml:6:10: encoder.stages.s1[0]: unknown layer 'konv' (did you mean 'conv'?)",
    ),
    (
        "unknown loss",
        ("loss: cross_entropy", "loss: crossentropy"),
        "spec.yaml:9:50: tasks.seg.loss: unknown loss 'crossentropy' (did you mean 'cross_entropy'?)",
    ),
    (
        "unknown metric",
        ("metrics: [miou]", "metrics: [mIoU]"),
        "spec.yaml:9:75: tasks.seg.metrics[0]: unknown metric 'mIoU' (did you mean 'miou'?)",
    ),
    (
        "negative size",
        ("conv(8, 3)", "conv(-8, 3)"),
        "encoder.stages.s1[0]: conv: out must be positive, got -8",
    ),
    (
        "zero input",
        ("[3, 16, 16]", "[3, 0, 16]"),
        "spec.yaml:3:16: input.image: sizes must be positive integers",
    ),
    (
        "spatial after flatten",
        ("s2: [conv(16, 3), bn, relu]", "s2: [flatten, conv(16, 3)]"),
        "spec.yaml:7:19: encoder.stages.s2[1]: conv needs a feature map [C, H, W] but gets [512] (a spatial layer after flatten/linear?)",
    ),
    (
        "head cannot fit loss",
        (
            "conv(4, 1), upsample(2)], loss: cross_entropy",
            "conv(1, 1), upsample(2)], loss: cross_entropy",
        ),
        "tasks.seg.head: loss 'cross_entropy' needs class scores with at least 2 channels, but the head outputs [1, 16, 16]",
    ),
    (
        "python tag",
        ("name: small", "name: !!python/object/apply:os.system [echo hacked]"),
        "spec.yaml:2:7: name: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
    ),
    (
        "version",
        ("mtlc: 1", "mtlc: 2"),
        "spec.yaml:1:7: mtlc: unsupported format version 2; this mtlc reads version 1",
    ),
    (
        "empty tasks",
        (
            "tasks:\n  seg:   {head: [conv(4, 1), upsample(2)], loss: cross_entropy, metrics: [miou]}\n  depth: {head: [conv(1, 1), upsample(2)], loss: l1, metrics: [abs_err]}\n",
            "tasks: {}\n",
        ),
        "tasks: at least one task is needed",
    ),
    ("all auxiliary", ("metrics: [abs_err]}", "metrics: [abs_err], auxiliary: true}"), None),
]


@pytest.mark.parametrize("name,change,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_a_located_error(write_spec, name, change, expected):
    old, new = change
    assert old in SMALL
    text = SMALL.replace(old, new)
    if name == "all auxiliary":
        text = text.replace("metrics: [miou]}", "metrics: [miou], auxiliary: true}")
        expected = (
            "tasks: every task is auxiliary: at least one task must be an output of the model"
        )
    message = error_of(write_spec, text)
    assert expected in message, message


SHARING_CASES = [
    ("s3: hard", "encoder.sharing.s3: unknown stage 's3' (expected one of: s1, s2)"),
    ("s2: cross_stich", "unknown sharing type 'cross_stich' (did you mean 'cross_stitch'?)"),
    (
        "s2: {type: hard, groups: [[seg], [seg, depth]]}",
        "encoder.sharing.s2.groups[1][0]: task 'seg' is in two groups",
    ),
    (
        "s2: {type: hard, groups: [[seg]]}",
        "encoder.sharing.s2.groups: groups must partition the tasks; missing: depth",
    ),
    (
        "s2: {type: hard, groups: [[seg, dpth]]}",
        "encoder.sharing.s2.groups[0][1]: unknown task 'dpth' (did you mean 'depth'?)",
    ),
    (
        "s1: separate\n    s2: hard",
        "encoder.sharing.s2: stage 's2' is 'hard' (one copy for all tasks), but tasks seg, depth already have separate features since stage 's1'",
    ),
    (
        "s1: {type: hard, groups: [[seg], [depth]]}\n    s2: {type: hard, groups: [[seg, depth]]}",
        "sharing can split in later stages, never merge again",
    ),
    ("s2: {type: cross_stitch, init: [0.9]}", "encoder.sharing.s2.init"),
    (
        "s2: {type: cross_stitch, granularity: pixel}",
        "encoder.sharing.s2.granularity: input should be 'channel' or 'scalar'",
    ),
]


@pytest.mark.parametrize("sharing,expected", SHARING_CASES)
def test_bad_sharing_is_a_located_error(write_spec, sharing, expected):
    text = SMALL.replace("tasks:\n", f"  sharing:\n    {sharing}\ntasks:\n")
    assert expected in error_of(write_spec, text)


def test_error_line_points_at_the_sharing_entry(write_spec):
    text = SMALL.replace("tasks:\n", "  sharing:\n    s9: hard\ntasks:\n")
    assert error_of(write_spec, text).startswith("spec.yaml:9:5: encoder.sharing.s9:")


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_cli_reports_one_line_exit_2_and_writes_nothing(write_spec, tmp_path):
    path = write_spec(SMALL.replace("loss: l1", "loss: l2"))
    out = tmp_path / "model.pt"
    result = CliRunner().invoke(main, ["build", str(path), "-o", str(out)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert (
        f"{path}:10:" in result.output
        and "unknown loss 'l2' (expected one of: bce, cosine, cross_entropy, l1, mse, smooth_l1)"
        in result.output
    )
    assert not out.exists()


def test_cli_missing_file_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["build", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_python_tag_is_never_executed(write_spec, tmp_path):
    marker = tmp_path / "pwned"
    path = write_spec(
        SMALL.replace("name: small", f"name: !!python/object/apply:os.system ['touch {marker}']")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mtlc.cli", "build", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "not allowed" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_overrides_replace_values_and_sections(small_spec):
    spec = load_spec(
        small_spec,
        ["train.epochs=2", "balancer={type: mgda, mode: ub}", "tasks.seg.head[0]=conv(6, 1)"],
    )
    assert spec.train.epochs == 2
    assert spec.balancer.type == "mgda" and spec.balancer.mode == "ub"
    assert spec.tasks["seg"].head[0] == "conv(6, 1)"


def test_override_unknown_path_is_located(small_spec):
    with pytest.raises(SpecError) as info:
        load_spec(small_spec, ["train.epoch=2"])
    assert (
        str(info.value)
        == "--set train.epoch=2: train.epoch: unknown key 'epoch' (did you mean 'epochs'?)"
    )


def test_override_bad_syntax(small_spec):
    with pytest.raises(SpecError, match="expected KEY.PATH=VALUE"):
        load_spec(small_spec, ["train.epochs"])


def test_dict_source_is_not_modified():
    import yaml

    data = yaml.safe_load(SMALL)
    before = yaml.safe_dump(data)
    load_spec(data, ["train.epochs=3"])
    assert yaml.safe_dump(data) == before


def test_decoder_needs_map_heads(write_spec):
    text = SMALL.replace(
        "head: [conv(1, 1), upsample(2)], loss: l1",
        "head: [adaptive_avgpool(1), flatten, linear(1)], loss: l1",
    )
    text += "decoder: {type: distillation, features: 8}\n"
    assert (
        "tasks.depth.head: decoder 'distillation' needs every task's head to output a map [C, H, W]"
        in error_of(write_spec, text)
    )


def test_recursion_needs_a_main_task_in_its_order(write_spec):
    text = SMALL.replace(
        "metrics: [abs_err]}",
        "metrics: [abs_err]}\n  edge: {head: [conv(1, 1), upsample(2)], loss: bce, auxiliary: true}",
    )
    text = text.replace("metrics: [miou]}", "metrics: [miou], auxiliary: false}")
    text += "decoder: {type: recursive, order: [edge, edge2]}\n"
    assert "decoder.order[1]: unknown task 'edge2'" in error_of(write_spec, text)
    text = text.replace("order: [edge, edge2]", "order: [edge]")
    assert "decoder.order: the recursion needs at least two tasks" in error_of(write_spec, text)
    text2 = text.replace("order: [edge]", "order: [edge, depth]").replace(
        "loss: l1, metrics: [abs_err]}", "loss: l1, metrics: [abs_err], auxiliary: true}"
    )
    assert "decoder.order: the recursion needs at least one non-auxiliary task" in error_of(
        write_spec, text2
    )


def test_sections_without_type_take_the_default(small_spec):
    spec = load_spec(
        small_spec, ["balancer.weights.seg=0.5", "encoder.sharing.s2.groups=[[seg], [depth]]"]
    )
    assert spec.balancer.type == "fixed" and spec.balancer.weights == {"seg": 0.5}
    assert spec.sharing_of("s2").type == "hard" and spec.sharing_of("s2").groups == [
        ["seg"],
        ["depth"],
    ]


# Specs that used to end in a Python traceback (or a misleading message) from `mtlc build`.
# Each: what replaces what in SMALL (or text appended, or `--set`s), and the located message.
_SHARING = "tasks:\n"
BUILD_CASES = [
    (
        "NUL character",
        ("name: small", "name: sm\x00all"),
        (),
        "spec.yaml:2:9: YAML syntax error: character U+0000 is not allowed",
    ),
    (
        "task named like the unit after its own copy",
        (
            "tasks:\n  seg: ",
            "  sharing: {s2: nddr}\ntasks:\n  nddr: ",
        ),
        (),
        "spec.yaml:10:3: tasks.nddr: task name 'nddr' would share its node id with the sharing unit 's2/nddr'",
    ),
    (
        "task named like MTAN's refinement",
        ("tasks:\n  seg: ", "  sharing: {s1: attention, s2: attention}\ntasks:\n  refine: "),
        (),
        "spec.yaml:10:3: tasks.refine: task name 'refine' would share its node id with the sharing unit 's2/attention/refine'",
    ),
    (
        "stage named like the loss nodes",
        ("    s2:", "    loss:"),
        ("encoder.sharing.loss=separate",),
        "spec.yaml:7:5: encoder.stages.loss: stage name 'loss' is reserved",
    ),
    (
        "number as a task name",
        ("  depth:", "  3:"),
        (),
        "spec.yaml:10:3: tasks[3]: the key 3 is read as a number: names are strings (quote it)",
    ),
    (
        "groups on separate",
        (_SHARING, "  sharing: {s2: {type: separate, groups: [[seg], [depth]]}}\n" + _SHARING),
        (),
        "spec.yaml:8:34: encoder.sharing.s2.groups: 'groups' is not an option of 'separate'",
    ),
    (
        "null sharing",
        (_SHARING, "  sharing: {s2: }\n" + _SHARING),
        (),
        "encoder.sharing.s2: expected a type name or a mapping, got None",
    ),
    (
        "one-number init",
        (_SHARING, "  sharing: {s2: {type: cross_stitch, init: [0.9]}}\n" + _SHARING),
        (),
        "encoder.sharing.s2.init: item 1 is missing, got [0.9]",
    ),
    (
        "layer call without brackets in a flow mapping",
        ("head: [conv(1, 1), upsample(2)]", "head: conv(1, 1)"),
        (),
        "unknown key '1)' (allowed: head, loss, metrics, target, auxiliary); a layer list needs brackets",
    ),
    (
        "size past int64",
        ("conv(16, 3)", "conv(99999999999999999999, 3)"),
        (),
        "spec.yaml:7:10: encoder.stages.s2[0]: conv: out=99999999999999999999 is past mtlc's limit: at most 65536",
    ),
    (
        "input too large for a tensor",
        ("[3, 16, 16]", "[3, 1000000000, 1000000000]"),
        (),
        "spec.yaml:3:16: input.image: [3, 1000000000, 1000000000] is too large",
    ),
    (
        "upsample to nothing",
        ("upsample(2)], loss: l1", "upsample(0.01)], loss: l1"),
        (),
        "spec.yaml:10:30: tasks.depth.head[1]: upsample shrinks the feature map to nothing",
    ),
    (
        "pool padding torch refuses",
        ("maxpool(2)", "maxpool(2, padding=2)"),
        (),
        "encoder.stages.s1[3]: maxpool: padding must be at most k/2",
    ),
    (
        "decoder features past int64",
        ("", "decoder: {type: distillation, features: 100000000000000000000}\n"),
        (),
        "decoder.features: 100000000000000000000 is past mtlc's limit: at most 65536",
    ),
    (
        "--set inside a layer string",
        None,
        ("encoder.stages.s1[0].out=5",),
        "--set encoder.stages.s1[0].out=5: encoder.stages.s1[0]: cannot set 'out' inside 'conv(8, 3)'",
    ),
    (
        "--set through a scalar",
        None,
        ("name.first=x",),
        "--set name.first=x: name: cannot set 'first' inside 'small'",
    ),
    (
        "--set past the end of a list",
        None,
        ("tasks.seg.head[5]=relu",),
        "--set tasks.seg.head[5]=relu: tasks.seg.head[5]: no item 5 in a list of 2",
    ),
]


@pytest.mark.parametrize("name,change,sets,expected", BUILD_CASES, ids=[c[0] for c in BUILD_CASES])
def test_build_reports_odd_specs_as_located_errors(write_spec, name, change, sets, expected):
    text = SMALL
    if change is not None:
        old, new = change
        assert old in text
        text = text.replace(old, new, 1) if old else text + new
    path = write_spec(text)
    args = ["build", str(path)] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert expected in result.output.replace(str(path), "spec.yaml"), result.output


def test_merge_keys_may_be_overridden_but_keys_may_not_repeat(write_spec):
    text = (
        SMALL.replace(
            "  depth: {head",
            "  depth: &d {head",
        )
        + "  depth2: {<<: *d, loss: mse, target: depth}\n"
    )
    spec = load_spec(write_spec(text))
    assert (
        spec.tasks["depth2"].loss == "mse" and spec.tasks["depth2"].head == spec.tasks["depth"].head
    )
    assert "duplicate key 'loss'" in error_of(
        write_spec, text.replace("loss: mse, target", "loss: mse, loss: l1, target")
    )


def test_decoder_takes_a_bare_type_name_like_sharing_and_balancer(small_spec):
    spec = load_spec(small_spec, ["decoder=distillation", "balancer=mgda"])
    assert spec.decoder.type == "distillation" and spec.decoder.features == 64
    assert spec.balancer.type == "mgda"
    with pytest.raises(SpecError, match="decoder: needs a 'type' key"):
        load_spec(small_spec, ["decoder={features: 8}"])


def test_set_fills_a_null_section(write_spec):
    spec = load_spec(write_spec(SMALL + "decoder:\n"), ["decoder.type=affinity"])
    assert spec.decoder.type == "affinity"


def test_negative_fixed_weight_is_refused_at_validation(small_spec):
    with pytest.raises(
        SpecError, match=r"balancer\.weights\.seg: input should be greater than or equal to 0"
    ):
        load_spec(small_spec, ["balancer.weights.seg=-2"])
