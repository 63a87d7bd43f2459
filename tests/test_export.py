"""`mtlc export`: every spec's serving programs, written, loaded back and compared.

Exports are slow (torch.export ~2 s, ONNX ~5 s per model on a loaded CPU), so the
matrix is: for every spec in specs/, all outputs together as .pt2 (reloaded, run at
batch 1 and 7) and as .onnx (where onnx is installed), plus one task alone as .pt2
(a different task per spec, so every task position is exercised); every task alone
is pruned and counted against the profile without being written. A few focused
tests cover BN folding, dtypes, the CLI and bad input.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

import mtlc
from mtlc.checkpoint import save_checkpoint
from mtlc.cli import main
from mtlc.compiler import compile_spec
from mtlc.errors import MtlcError
from mtlc.export import pipeline
from mtlc.export.pipeline import ExportMismatch, export
from mtlc.export.rewrite import for_inference
from mtlc.export.select import choose_tasks, serving_graph
from mtlc.export.verify import DTYPES
from mtlc.profile import profile
from mtlc.spec import load_spec

SPECS = sorted(Path(__file__).resolve().parents[1].glob("specs/*.yaml"))
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxscript or onnxruntime missing")


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Trained-looking BN statistics, so that folding is not the identity it is at init."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def _flops(module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(x)
    return fc.get_total_flops()


def _eager(spec, ckpt: Path, tasks: list[str]) -> fx.GraphModule:
    c = compile_spec(spec)
    c.supervised.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    return serving_graph(c, tasks).eval()


def _same(eager, loaded, x: torch.Tensor, tol: float = 1e-4) -> None:
    """Equal within the fp32 export tolerance, atol scaled by the output's magnitude
    (a deep backbone with perturbed weights gives outputs of order 1e4)."""
    with torch.no_grad():
        want, got = eager(x), loaded(x)
    assert list(got) == list(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        scale = max(1.0, want[k].abs().max().item())
        torch.testing.assert_close(got[k], want[k], atol=tol * scale, rtol=tol)


# -- every spec -------------------------------------------------------------------------


def _overrides(path: Path) -> list[str]:
    """The spec as written, but inputs larger than 64×64 shrunk to it (the models are
    fully convolutional: same weights, same graph, a tenth of the forward time)."""
    spec = load_spec(path)
    if len(spec.input_shape) != 3:  # vectors (specs/mmoe.yaml): nothing to shrink
        return []
    c, h, w = spec.input_shape
    return [f"input.{spec.input_name}=[{c},64,64]"] if h * w > 64 * 64 else []


def _heavy(path: Path) -> bool:
    """Specs with a real backbone (tens of millions of parameters): one export each."""
    return profile(path, overrides=_overrides(path)).to_json()["params"]["total"] > 5_000_000


@pytest.fixture(scope="module")
def profiles():
    cache: dict[Path, object] = {}

    def get(path: Path):
        if path not in cache:
            cache[path] = profile(path, batch=1, overrides=_overrides(path))
        return cache[path]

    return get


def _trained(path: Path, ckpt: Path, seed: int = 0):
    """The spec compiled with weights unlike a fresh compile's, saved as a checkpoint."""
    c = compile_spec(path, _overrides(path))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in c.supervised.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    _randomize_bn(c.supervised, seed)
    save_checkpoint({"spec": {}, "model": c.supervised.state_dict()}, ckpt)
    return c


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_task_alone_is_the_profiles_serve_alone_graph(path, profiles):
    """Pruned params equal the profile's serve-alone count, FLOPs too, for every task."""
    with torch.device("meta"):
        c = compile_spec(path, _overrides(path))
    data = profiles(path).to_json()
    x = torch.empty(1, *c.spec.input_shape, device="meta")
    for task in choose_tasks(c):
        gm = serving_graph(c, [task])
        assert sum(t.numel() for t in gm.parameters()) == data["serve_alone_params"][task]
        assert _flops(gm.eval(), x) == data["serve_alone"][task]
        assert [n for n in gm.graph.nodes if n.op == "output"][0].args[0].keys() == {task}
    everything = serving_graph(c, choose_tasks(c))
    assert sum(t.numel() for t in everything.parameters()) == data["inference"]["params"]["total"]
    # auxiliary tasks are outside every serving graph, and no label names them
    aux = set(c.topology.tasks) - set(c.topology.outputs)
    for n in everything.graph.nodes:
        assert not set(n.meta.get("mtlc", {}).get("tasks", ())) & aux
    assert not any(f"heads.{a}" in dict(everything.named_modules()) for a in aux)


@pytest.mark.parametrize("index", range(len(SPECS)), ids=[p.stem for p in SPECS])
def test_pt2_every_spec_all_outputs_and_one_task(index, tmp_path, profiles):
    """All outputs as .pt2 (and, for the small specs, one task alone, a different task
    position per spec): reloaded, run at batch 1 and 7, FLOPs and params as profiled."""
    path = SPECS[index]
    ckpt = tmp_path / "ckpt.pt"
    c = _trained(path, ckpt, seed=index)
    outputs = choose_tasks(c)
    data = profiles(path).to_json()
    one = outputs[index % len(outputs)]
    for tasks in [outputs] + ([] if _heavy(path) else [[one]]):
        out = tmp_path / f"{'-'.join(tasks)}.pt2"
        result = export(
            path,
            out,
            checkpoint=ckpt,
            tasks=tasks if tasks != outputs else (),
            overrides=_overrides(path),
        )
        assert result.tasks == tasks and result.check is not None and result.check.ok
        assert out.is_file() and out.stat().st_size == result.size_bytes
        assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temp left
        loaded = mtlc.load_exported(out)
        eager = serving_graph(c, tasks).eval()
        shape = result.input_shape
        for batch in (1, 7):  # the dynamic batch dimension
            _same(eager, loaded, torch.randn(batch, *shape))
        # the exported program's FLOPs are the profile's (BN folding adds none)
        want = data["serve_alone"][one] if tasks == [one] else data["inference"]["flops"]["total"]
        assert _flops(loaded, torch.randn(1, *shape)) == want == result.flops
        want = data["serve_alone_params"][one] if tasks == [one] else None
        assert want is None or result.params_pruned == want
        program = torch.export.load(out)
        names = program.graph_signature.parameters
        assert result.params == sum(program.state_dict[n].numel() for n in names)
        out.unlink()


@needs_onnx
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_onnx_every_spec(path, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    c = _trained(path, ckpt)
    out = tmp_path / "model.onnx"
    result = export(path, out, checkpoint=ckpt, overrides=_overrides(path))
    assert result.check is not None and result.check.ok, result.check
    eager = serving_graph(c, result.tasks).eval()
    _same(eager, mtlc.load_exported(out), torch.randn(7, *result.input_shape))


@needs_onnx
@pytest.mark.parametrize(
    ("spec", "task", "dtype"),
    [("hard", "depth", "fp32"), ("attention", "normal", "fp16")],
)
def test_onnx_one_task_against_the_checkpoint(spec, task, dtype, tmp_path):
    import onnx
    import onnxruntime as ort

    path = next(p for p in SPECS if p.stem == spec)
    ckpt = tmp_path / "ckpt.pt"
    _trained(path, ckpt)
    out = tmp_path / "model.onnx"
    result = export(path, out, checkpoint=ckpt, tasks=[task], dtype=dtype)
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == [task]
    assert [i.name for i in model.graph.input] == [result.input_name]
    # plain onnxruntime, no mtlc: the README's recipe
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    eager = _eager(path, ckpt, [task])
    _, atol, rtol = DTYPES[dtype]
    for batch in (1, 7):
        x = torch.randn(batch, *result.input_shape)
        (got,) = session.run(None, {result.input_name: x.to(DTYPES[dtype][0]).numpy()})
        with torch.no_grad():
            want = eager(x)[task]
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(
            torch.from_numpy(got).float(), want, atol=atol * scale, rtol=rtol
        )


# -- rewrites ------------------------------------------------------------------------------


CONV_BN = """\
mtlc: 1
name: conv-bn
input: {image: [3, 8, 8]}
encoder:
  stages:
    s1: [conv(8, 3, bias=False), bn, relu, dropout(0.5)]
    s2: [resblock(8), deconv(4, 2, stride=2), bn]
tasks:
  seg: {head: [conv(2, 1)], loss: cross_entropy}
"""


def test_bn_folding_by_hand(write_spec):
    """W' = W·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε) + β, and outputs move by no more than the
    stated float32 tolerance; dropout is gone; counts follow by hand."""
    c = compile_spec(write_spec(CONV_BN))
    gm = serving_graph(c, ["seg"]).eval()
    _randomize_bn(gm)
    x = torch.randn(4, 3, 8, 8)
    folded, done = for_inference(gm, (x,))
    assert ("encoder.s1.seg.conv0", "encoder.s1.seg.bn1") in done.folded
    # inside the residual block: conv1→bn1, conv2→bn2 (shortcut is Identity: 8→8); the
    # transposed convolution too
    assert ("encoder.s2.seg.resblock0.conv1", "encoder.s2.seg.resblock0.bn1") in done.folded
    assert ("encoder.s2.seg.deconv1", "encoder.s2.seg.bn2") in done.folded
    assert len(done.folded) == 4 and done.kept_bn == [] and done.dropout
    conv, bn = gm.encoder.s1.seg.conv0, gm.encoder.s1.seg.bn1
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = folded.encoder.s1.seg.conv0
    torch.testing.assert_close(fused.weight, conv.weight * s[:, None, None, None])
    torch.testing.assert_close(fused.bias, bn.bias - bn.running_mean * s)
    assert isinstance(folded.encoder.s1.seg.bn1, nn.Identity)
    assert not any(isinstance(m, nn.Dropout) for m in folded.modules())
    # parameters: s1 conv 8·3·9 = 216 (+8 bias after folding), its BN 16 removed;
    # resblock convs 2·(8·8·9) = 1152 (+2·8 bias), their BNs 2·16 removed;
    # deconv 8·4·2·2 + 4 = 132 (bias stays 4), its BN 8 removed; head 4·2 + 2 = 10
    before = 216 + 16 + 1152 + 32 + 132 + 8 + 10
    after = 216 + 8 + 1152 + 16 + 132 + 10
    assert sum(p.numel() for p in gm.parameters()) == before
    assert sum(p.numel() for p in folded.parameters()) == after
    _, atol, rtol = DTYPES["fp32"]
    with torch.no_grad():
        want, got = gm(x)["seg"], folded(x)["seg"]
    assert (got - want).abs().max() > 0  # folding is not the identity on these statistics
    scale = max(1.0, want.abs().max().item())
    assert ((got - want).abs() <= atol * scale + rtol * want.abs()).all()
    # the model that was folded keeps its own modules (it is the reference)
    assert isinstance(gm.encoder.s1.seg.bn1, nn.BatchNorm2d)


def test_bn_is_kept_when_the_conv_output_is_read_elsewhere():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return {"out": self.bn(y) + y}

    gm = fx.symbolic_trace(Both()).eval()
    _randomize_bn(gm)
    x = torch.randn(1, 2, 3, 3)
    folded, done = for_inference(gm, (x,))
    assert done.folded == [] and done.kept_bn == ["bn"]
    torch.testing.assert_close(folded(x)["out"], gm(x)["out"])


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_pt2(dtype, small_spec, tmp_path):
    out = tmp_path / "m.pt2"
    result = export(small_spec, out, dtype=dtype, tasks=["depth"])
    assert result.check.ok and result.check.max_diff > 0
    loaded = mtlc.load_exported(out)
    y = loaded(torch.randn(2, 3, 16, 16).to(DTYPES[dtype][0]))
    assert y["depth"].dtype == DTYPES[dtype][0] and y["depth"].shape == (2, 1, 16, 16)


def test_static_batch(small_spec, tmp_path):
    out = tmp_path / "m.pt2"
    export(small_spec, out, dynamic_batch=False, batch=3)
    loaded = mtlc.load_exported(out)
    assert loaded(torch.randn(3, 3, 16, 16))["seg"].shape == (3, 4, 16, 16)
    with pytest.raises(Exception):  # noqa: B017 - torch's guard error type varies
        loaded(torch.randn(2, 3, 16, 16))


# -- the command line ---------------------------------------------------------------------


def test_cli_checkpoint_and_run_folder(small_spec, tmp_path):
    ckpt = tmp_path / "best.pt"
    _trained(small_spec, ckpt)
    out = tmp_path / "seg.pt2"
    r = run("export", small_spec, "--checkpoint", ckpt, "-o", out, "--task", "seg")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and "match: max |exported − eager| = " in r.output
    assert "tolerance atol 0.0001" in r.output and "2 batch norms" in r.output
    _same(_eager(small_spec, ckpt, ["seg"]), mtlc.load_exported(out), torch.randn(2, 3, 16, 16))
    # a run folder: its spec.yaml and best.pt
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "spec.yaml").write_text(small_spec.read_text())
    (folder / "best.pt").write_bytes(ckpt.read_bytes())
    r = run("export", "--run", folder, "-o", tmp_path / "all.pt2")
    assert r.exit_code == 0, r.output
    _same(
        _eager(small_spec, ckpt, ["seg", "depth"]),
        mtlc.load_exported(tmp_path / "all.pt2"),
        torch.randn(5, 3, 16, 16),
    )


def test_cli_warns_without_checkpoint(small_spec, tmp_path):
    r = run("export", small_spec, "-o", tmp_path / "m.pt2")
    assert r.exit_code == 0, r.output
    assert "warning: no --checkpoint: exporting the spec's initial (untrained) weights" in r.output


def test_build_help_points_to_export():
    r = run("build", "--help")
    assert "mtlc export" in r.output


# -- bad input ----------------------------------------------------------------------------


def _refused(args, message: str, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run("export", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output, r.output
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) <= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_input_exits_2_and_writes_nothing(small_spec, write_spec, tmp_path):
    out = tmp_path / "m.pt2"
    _refused(
        [small_spec, "-o", out, "--task", "sge"],
        "unknown task 'sge' (did you mean 'seg'?)",
        tmp_path,
    )
    _refused([small_spec, "-o", tmp_path / "missing" / "m.pt2"], "does not exist", tmp_path)
    _refused([small_spec, "-o", tmp_path / "m.tflite"], "unknown output format '.tflite'", tmp_path)
    if Path("/proc").is_dir():  # a read-only folder, even for root
        _refused([small_spec, "-o", "/proc/m.pt2"], "is not writable", tmp_path)
    _refused(["-o", out], "give a SPEC or --run FOLDER", tmp_path)
    _refused(["--run", tmp_path / "nothing", "-o", out], "no such run folder", tmp_path)
    hard = write_spec(
        Path(__file__).resolve().parents[1].joinpath("specs/hard.yaml").read_text(), "hard.yaml"
    )
    _refused([hard, "-o", out, "--task", "edge"], "task 'edge' is auxiliary", tmp_path)
    # a checkpoint of another spec: the mismatched keys are named
    other = write_spec(CONV_BN, "other.yaml")
    ckpt = tmp_path / "other.pt"
    _trained(other, ckpt)
    _refused(
        [small_spec, "--checkpoint", ckpt, "-o", out],
        "was not trained from spec 'small': missing encoder.s1.shared.conv0.weight",
        tmp_path,
    )
    out.write_text("keep me")
    _refused([small_spec, "-o", out], "exists; pass --force", tmp_path)
    assert out.read_text() == "keep me"


def test_missing_onnx_gives_the_install_hint(small_spec, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    _refused([small_spec, "-o", tmp_path / "m.onnx"], "pip install 'mtlc[onnx]'", tmp_path)


@needs_onnx
def test_bf16_onnx_is_refused_before_any_work(small_spec, tmp_path):
    _refused([small_spec, "-o", tmp_path / "m.onnx", "--dtype", "bf16"], "use fp16", tmp_path)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


@torch.library.custom_op("mtlc_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _Twice(nn.Module):
    """A custom op with no ONNX translation: torch.export takes it, ONNX does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _twice(x)


@pytest.mark.parametrize(
    ("module", "suffix"),
    [(_Branchy, ".pt2"), pytest.param(_Twice, ".onnx", marks=needs_onnx)],
)
def test_a_refused_op_is_named_with_its_node_and_spec_block(
    module, suffix, small_spec, tmp_path, monkeypatch
):
    serve = pipeline.serving_graph

    def with_bad_op(compiled, tasks):
        gm = serve(compiled, tasks)
        gm.heads.seg.upsample1 = module()  # stands in for an op the exporter refuses
        return gm

    monkeypatch.setattr(pipeline, "serving_graph", with_bad_op)
    with pytest.raises(MtlcError) as info:
        export(small_spec, tmp_path / f"m{suffix}")
    message = str(info.value)
    assert message.startswith(f"{small_spec}:9:")  # the seg head's line in the spec
    assert "tasks.seg.head:" in message and "node 'heads_seg_upsample1'" in message
    assert f"({module.__name__})" in message and "block 'head/seg'" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_mismatch_exits_1_and_leaves_no_file(small_spec, tmp_path, monkeypatch):
    """A file that computes something else is caught by the comparison, not written."""
    from mtlc.export import writers

    fmt = writers.FORMATS[".pt2"]

    def off_by_a_little(path):
        module = fmt.load(path)
        return lambda x: {k: v + 1e-3 for k, v in module(x).items()}

    monkeypatch.setitem(
        writers.FORMATS,
        ".pt2",
        writers.Format(fmt.name, fmt.suffix, fmt.trace, fmt.write, off_by_a_little, fmt.dtypes),
    )
    out = tmp_path / "m.pt2"
    r = run("export", small_spec, "-o", out)
    assert r.exit_code == 1, r.output
    assert "MISMATCH: max |exported − eager| = 0.001" in r.output and "not written" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    with pytest.raises(ExportMismatch):
        export(small_spec, out)
