"""Hostile specs end in one located line, never a hang, a traceback or a silent NaN.

Alias bombs, deep nesting, huge documents, FIFOs, counts past their limits, `None`
and NaN layer arguments, names Python or torch cannot use, unchecked loss options;
and the friendlier reading of layer calls with brackets inside a flow list.
"""

from __future__ import annotations

import inspect
import os

import pytest
from click.testing import CliRunner

from mtlc import registry
from mtlc.cli import main
from mtlc.errors import SpecError
from mtlc.layers.parse import parse_layer
from mtlc.layers.vocab import infer_shape
from mtlc.spec import load_spec, parse_spec_text
from mtlc.spec.names import MODULE_ATTRIBUTES
from mtlc.spec.schema import LOSS_OPTIONS
from mtlc.spec.yaml_source import MAX_BYTES, MAX_DEPTH, MAX_NODES, parse_yaml
from tests.conftest import SMALL


def error_of(text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, "spec.yaml", overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def laughs(levels: int = 9) -> str:
    """The classic alias bomb: 9 levels of 9 references each, 9⁹ values when expanded."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


# -- runaway documents -------------------------------------------------------------------


def test_alias_bomb_in_a_file_is_refused_at_the_limit():
    bomb = "mtlc: 1\n" + laughs()
    message = error_of(bomb)
    assert f"the document expands to more than {MAX_NODES} values" in message
    assert message.startswith("spec.yaml:")


def test_alias_bomb_through_set_is_refused():
    levels = ", ".join(
        f"&l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else 'x, x, x, x, x, x, x, x, x'}]"
        for i in range(8)
    )
    message = error_of(SMALL, (f"name=[{levels}]",))
    assert message.startswith("--set name=[&l0")
    assert f"expands to more than {MAX_NODES} values" in message


def test_a_few_aliases_are_still_fine():
    text = SMALL.replace("tasks:\n", "tasks:\n  aux: &h {head: [conv(1, 1)], loss: l1}\n")
    text += "  more: *h\n"
    assert set(parse_spec_text(text).tasks) == {"aux", "seg", "depth", "more"}


def test_deep_nesting_is_refused():
    message = error_of("mtlc: 1\nname: " + "[" * 5000 + "]" * 5000 + "\n")
    assert f"{MAX_DEPTH} levels" in message
    message = error_of("mtlc: 1\nname: " + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2) + "\n")
    assert f"nested more than {MAX_DEPTH} levels deep" in message


def test_huge_document_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(SMALL + "#" * MAX_BYTES)
    with pytest.raises(SpecError, match=f"larger than mtlc's limit of {MAX_BYTES} bytes"):
        load_spec(path)
    with pytest.raises(SpecError, match="characters long"):
        parse_yaml("x" * (MAX_BYTES + 1))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="is not a regular file"):
        load_spec(fifo)


def test_cli_alias_bomb_is_exit_2(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("mtlc: 1\n" + laughs())
    result = CliRunner().invoke(main, ["build", str(path)])
    assert result.exit_code == 2
    assert "expands to more than" in result.output and "Traceback" not in result.output


# -- counts and numbers ------------------------------------------------------------------

LIMITS = [
    ("decoder={type: recursive, steps: 100000000000000000}", "decoder.steps", 1000),
    ("decoder={type: affinity, iterations: 100000000000000000}", "decoder.iterations", 1000),
    ("decoder={type: distillation, features: 70000}", "decoder.features", 65536),
    ("encoder.sharing.s2={type: attention, hidden: 70000}", "encoder.sharing.s2.hidden", 65536),
    ("train.epochs=100000000000000000000", "train.epochs", 100000),
    ("train.batch_size=100000000000000000000", "train.batch_size", 1 << 20),
    ("balancer={type: mgda, max_iter: 10000000000}", "balancer.max_iter", 100000),
    ("train.seed=123456789012345678901234567890", "train.seed", 2**64 - 1),
    ("balancer={type: nash_mtl, optim_niter: 10000000000}", "balancer.optim_niter", 100000),
]


@pytest.mark.parametrize("override,path,limit", LIMITS, ids=[x[1] for x in LIMITS])
def test_every_count_has_a_limit_named_in_the_error(override, path, limit):
    message = error_of(SMALL, (override,))
    assert f"--set {override}: {path}: " in message
    assert f"is past mtlc's limit: at most {limit}" in message


NOT_FINITE = [
    "train.optimizer.lr=.nan",
    "train.optimizer.lr=1.0e400",
    "train.grad_clip=.inf",
    "balancer.weights.seg=.inf",
    "balancer={type: uncertainty, init: .nan}",
    "balancer={type: dtp, gamma: .inf}",
    "decoder={type: distillation, supervision: .nan}",
]


@pytest.mark.parametrize("override", NOT_FINITE)
def test_nan_and_inf_are_refused_where_numbers_are_expected(override):
    assert "input should be a finite number" in error_of(SMALL, (override,))


def test_integer_of_thousands_of_digits_is_located(write_spec):
    digits = "9" * 5000
    message = error_of(SMALL.replace("name: small", f"name: small\nseed_: {digits}"))
    assert message.startswith("spec.yaml:3:8: seed_: a number of 5000 digits is too long")
    message = error_of(SMALL, (f"train.seed={digits}",))
    assert "a number of 5000 digits is too long" in message
    assert len(message) < 400  # the override is shown cut, not 5000 digits long


# -- layer arguments ---------------------------------------------------------------------

LAYER_CASES = [
    ("conv(8, k=None)", "conv: k cannot be None (leave it out for 3)"),
    ("{avgpool: {k: null}}", "avgpool: k cannot be None (leave it out for 2)"),
    ("{ln: {eps: null}}", "ln: eps cannot be None (leave it out for 1e-05)"),
    ("{bn: {momentum: .nan}}", "bn: momentum must be a finite number, got nan"),
    ("upsample(1e400)", "upsample: scale must be a finite number, got inf"),
    ("dropout(p=1e999)", "dropout: p must be a finite number"),
    ("batchnorm", "unknown layer 'batchnorm' (did you mean 'bn'?"),
    ("BatchNorm2d", "unknown layer 'BatchNorm2d' (did you mean 'bn'?"),
    ("Conv2d(8)", "unknown layer 'Conv2d' (did you mean 'conv'?"),
    ("Dense(8)", "unknown layer 'Dense' (did you mean 'linear'?"),
    ("conv(70000)", "conv: out=70000 is past mtlc's limit: at most 65536"),
    ("conv(8, 50000)", "conv would hold 3.2e+11 weights (1.19e+03 GiB of float32)"),
]


@pytest.mark.parametrize("layer,expected", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_bad_layer_argument_is_a_located_error(layer, expected):
    text = SMALL.replace("s2: [conv(16, 3), bn, relu]", f"s2: [conv(16, 3), {layer}, relu]")
    message = error_of(text)
    assert message.startswith("spec.yaml:7:23: encoder.stages.s2[1]: "), message
    assert expected in message, message


def test_none_is_still_fine_where_the_default_is_a_rule():
    assert parse_layer("conv(8, padding=None)").args["padding"] is None
    assert parse_layer({"maxpool": {"stride": None}}).args["stride"] is None


# -- names -------------------------------------------------------------------------------

NAMES = [
    ("class", "task name 'class' is a Python keyword"),
    ("type", "task name 'type' is an attribute of every torch module"),
    ("forward", "task name 'forward' is an attribute of every torch module"),
    ("_private", "task name '_private' must be an identifier"),
    ('"seg\\n"', "task name 'seg\\n' must be an identifier"),
    ("t" * 65, "is 65 characters long; at most 64"),
]


@pytest.mark.parametrize("name,expected", NAMES, ids=[n[0][:10] for n in NAMES])
def test_task_names_python_and_torch_cannot_use_are_refused(name, expected):
    message = error_of(SMALL.replace("  depth: {", f"  {name}: {{"))
    assert message.startswith("spec.yaml:10:3: tasks."), message
    assert expected in message, message


def test_stage_and_input_names_follow_the_same_rule():
    message = error_of(SMALL.replace("    s2: [", "    forward: ["))
    assert "spec.yaml:7:5: encoder.stages.forward: stage name 'forward' is an attribute" in message
    message = error_of(SMALL.replace("{image: [", "{lambda: ["))
    assert "input.lambda: input name 'lambda' is a Python keyword" in message


def test_spec_name_longer_than_a_file_name_is_refused():
    message = error_of(SMALL.replace("name: small", "name: " + "n" * 300))
    assert "spec.yaml:2:7: name: string should have at most 100 characters" in message


def test_reserved_attributes_match_torch():
    nn = pytest.importorskip("torch.nn")
    assert {n for n in dir(nn.Module()) if not n.startswith("_")} == MODULE_ATTRIBUTES


# -- loss options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss,expected",
    [
        ("{type: l1, reduction: sum}", "tasks.depth.loss.reduction: loss 'l1' has no option"),
        ("{type: l1, ignore_zeros: true}", "(did you mean 'ignore_zero'?)"),
        ("{type: smooth_l1, beta: -1}", "tasks.depth.loss.beta: input should be greater than"),
        ("{type: cosine, eps: 1.0}", "loss 'cosine' has no option 'eps' (it takes none)"),
        ("{type: bce, pos_weight: .nan}", "pos_weight: input should be a finite number"),
    ],
)
def test_loss_options_are_checked(loss, expected):
    message = error_of(SMALL.replace("loss: l1", f"loss: {loss}"))
    assert message.startswith("spec.yaml:10:"), message
    assert expected in message, message


def test_loss_option_models_match_the_loss_functions():
    pytest.importorskip("torch")
    assert set(LOSS_OPTIONS) == set(registry.LOSSES)
    for name, model in LOSS_OPTIONS.items():
        fn = registry.resolve(registry.LOSSES, name)
        keywords = {
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        assert set(model.model_fields) == keywords, name


# -- one line for a broken --set value, exit 2 ------------------------------------------


def test_broken_set_value_is_one_located_line(small_spec):
    result = CliRunner().invoke(main, ["build", str(small_spec), "--set", "train.epochs=["])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: --set train.epochs=[: train.epochs: YAML syntax error")


# -- brackets inside a layer call in a flow list -----------------------------------------


def test_brackets_inside_a_call_in_a_flow_list():
    text = SMALL.replace(
        "depth: {head: [conv(1, 1), upsample(2)]",
        "depth: {head: [conv(1, 1), upsample(size=[16, 12]), {conv: {out: 1, k: 1}}]",
    )
    spec = parse_spec_text(text)
    head = spec.tasks["depth"].head
    assert head == ["conv(1, 1)", "upsample(size=[16, 12])", {"conv": {"out": 1, "k": 1}}]
    assert infer_shape(parse_layer(head[1]), (1, 8, 8)) == (1, 16, 12)
    assert spec._topology.graph.nodes["head/depth"]["out_shape"] == (1, 16, 12)


def test_brackets_inside_a_call_keep_exact_columns():
    line = "    s2: [conv(16, 3), upsample(size=[8, 8]), {conv: {out: 4, k: 1}}, batchnorm]"
    text = SMALL.replace("    s2: [conv(16, 3), bn, relu]", line)
    message = error_of(text)
    col = line.index("batchnorm") + 1
    assert message.startswith(f"spec.yaml:7:{col}: encoder.stages.s2[3]: unknown layer 'batchnorm'")


def test_brackets_inside_a_call_through_set():
    spec = parse_spec_text(
        SMALL, "spec.yaml", ("tasks.depth.head=[conv(1, 1), upsample(size=[4, 4])]",)
    )
    assert spec._topology.graph.nodes["head/depth"]["out_shape"] == (1, 4, 4)


def test_an_unbalanced_call_keeps_yamls_own_error():
    text = SMALL.replace("s2: [conv(16, 3), bn, relu]", "s2: [conv(16, [3), bn, relu]")
    assert error_of(text).startswith("spec.yaml:8:1: YAML syntax error: expected ',' or ']'")


def test_upsample_size_pair_builds_the_right_module():
    torch = pytest.importorskip("torch")
    from mtlc.layers.modules import build_module

    layer = parse_layer("upsample(size=[6, 10])")
    out = build_module(layer, (2, 3, 5))(torch.randn(1, 2, 3, 5))
    assert tuple(out.shape) == (1, 2, 6, 10)
    pool = parse_layer("adaptive_avgpool([2, 3])")
    assert tuple(build_module(pool, (2, 8, 8))(torch.randn(1, 2, 8, 8)).shape) == (1, 2, 2, 3)
    assert infer_shape(pool, (2, 8, 8)) == (2, 2, 3)
