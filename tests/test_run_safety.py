"""The run side under hostile conditions: folders mtlc did not make, links, full disks,
files of the wrong shape, data that cannot be read or held, and the plan of a run.

Every case ends in one line and the documented exit code (2: could not start, nothing
written; 1: failed during the run, the last good checkpoint kept), never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mtlc import atomic, commands
from mtlc.train import command, runfolder
from mtlc.train.checkpoint import load_checkpoint
from mtlc.train.run import train
from tests.conftest import TINY_TRAIN

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(cmd, *args) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cmd, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output.strip().splitlines()


def files(folder: Path) -> dict[str, bytes]:
    """Every entry under ``folder`` (links as their target text), to compare before/after."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = b"-> " + os.readlink(p).encode()
        elif p.is_file():
            out[key] = p.read_bytes()
    return out


def one_error(code: int, lines: list[str], expected_code: int, *parts: str) -> None:
    """Exit ``expected_code`` with one error line; a run that failed (exit 1) may have
    printed its progress before."""
    assert code == expected_code, lines
    assert lines and lines[-1].startswith("error: "), lines
    assert len(lines) == 1 or expected_code == 1, lines
    for part in parts:
        assert part in lines[-1], lines[-1]


def trained(tiny: Path, out: Path, *args) -> Path:
    code, lines = cli(command.train, tiny, "--out", out, "--device", "cpu", "--epochs", 1, *args)
    assert code == 0, lines
    return out


# -- --force and folders mtlc did not make --------------------------------------------------


def test_force_in_the_specs_own_folder_removes_nothing(tiny: Path, tmp_path: Path):
    """The audit's case: `mtlc train spec.yaml --out . --force` in the spec's folder."""
    (tmp_path / "spec.yaml").write_text("# my spec, with comments\n" + TINY_TRAIN)
    (tmp_path / "summary.json").write_text('{"mine": true}')
    before = files(tmp_path)
    code, lines = cli(command.train, tmp_path / "spec.yaml", "--out", tmp_path, "--force")
    one_error(code, lines, 2, "which mtlc did not write", "choose a new or empty folder")
    assert files(tmp_path) == before


def test_own_file_names_without_the_marker_are_not_mtlcs(tiny: Path, tmp_path: Path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "spec.yaml").write_text("mine")
    (folder / "summary.json").write_text("{}")
    before = files(folder)
    code, lines = cli(command.train, tiny, "--out", folder, "--force", "--device", "cpu")
    one_error(code, lines, 2, "spec.yaml, summary.json but mtlc did not create this folder")
    assert files(folder) == before


def test_force_removes_only_mtlcs_files_and_keeps_baselines(tiny: Path, tmp_path: Path):
    out = trained(tiny, tmp_path / "run")
    (out / "baselines").mkdir()
    (out / "baselines" / "keep.txt").write_text("kept")
    (out / ".last.pt.abcd1234.tmp").write_bytes(b"half a checkpoint")  # a killed write
    trained(tiny, out, "--force")
    assert (out / "baselines" / "keep.txt").read_text() == "kept"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert (out / runfolder.MARKER).is_file()


def test_a_killed_checkpoint_write_leaves_no_temp_file_after_resume(tiny: Path, tmp_path: Path):
    out = trained(tiny, tmp_path / "run")
    stale = out / ".last.pt.k1ll3d00.tmp"
    stale.write_bytes(b"PK\x03\x04 truncated")
    code, lines = cli(
        command.train, tiny, "--out", out, "--resume", "--epochs", 2, "--device", "cpu"
    )
    assert code == 0, lines
    assert not stale.exists()
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


# -- links ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["loss.png", "metrics.jsonl", "summary.json", "last.pt"])
def test_a_link_in_a_run_folder_is_refused_and_never_written_through(
    tiny: Path, tmp_path: Path, name: str
):
    out = trained(tiny, tmp_path / "run")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    (out / name).unlink()
    (out / name).symlink_to(notes)
    before = files(out)
    args = ["--resume", "--epochs", 2] if name != "last.pt" else ["--force"]
    code, lines = cli(command.train, tiny, "--out", out, "--device", "cpu", *args)
    one_error(code, lines, 2, f"holds a symbolic link '{name}'")
    assert notes.read_text() == "my notes" and files(out) == before


@pytest.mark.parametrize("name", ["metrics.jsonl", "loss.png"])
def test_a_folder_holding_only_a_dangling_link_is_refused(tiny: Path, tmp_path: Path, name: str):
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "elsewhere" / "target"
    (out / name).symlink_to(target)
    code, lines = cli(command.train, tiny, "--out", out, "--device", "cpu")
    one_error(code, lines, 2, f"holds a symbolic link '{name}'")
    assert not target.exists() and not target.parent.exists()
    assert runfolder.is_run_folder(out)  # a dangling link is seen


def test_the_atomic_writer_never_follows_a_link(tmp_path: Path):
    target = tmp_path / "target.txt"
    target.write_text("precious")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with pytest.raises(atomic.OutputError, match="is a symbolic link"):
        atomic.write_text(link, "overwritten")
    with pytest.raises(atomic.OutputError, match="is a symbolic link"):
        atomic.AppendFile(link)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(atomic.OutputError, match="is a symbolic link"):
        atomic.AppendFile(dangling)
    assert target.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link.txt", "target.txt"]


# -- a full disk ---------------------------------------------------------------------------


class _Full:
    """A file object whose writes fail as on a full disk (after `room` bytes)."""

    def __init__(self, fh, room: int = 0):
        self._fh, self.room = fh, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def _fill_disk(monkeypatch, when=lambda: True) -> None:
    real = atomic._fdopen
    monkeypatch.setattr(
        atomic, "_fdopen", lambda fd, mode: _Full(real(fd, mode)) if when() else real(fd, mode)
    )


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(
    tiny: Path, tmp_path: Path, monkeypatch
):
    from mtlc.train.trainer import Trainer

    full = {"now": False}
    real_end = Trainer._end_epoch

    def end_epoch_then_fill(self, *args):
        real_end(self, *args)
        full["now"] = True  # the disk fills up after the first epoch's checkpoint

    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch_then_fill)
    _fill_disk(monkeypatch, lambda: full["now"])
    out = tmp_path / "run"
    code, lines = cli(command.train, tiny, "--out", out, "--device", "cpu", "--epochs", 2)
    one_error(code, lines, 1, "No space left on device", "epoch 1) is the last good checkpoint")
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["epoch"] == 1  # the summary of the last epoch that was saved
    assert all(p.stat().st_size > 0 for p in out.iterdir() if p.is_file()), files(out)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_build_o_on_a_full_disk_leaves_no_file(small_spec: Path, tmp_path: Path, monkeypatch):
    _fill_disk(monkeypatch)
    target = tmp_path / "model.pt"
    code, lines = cli(commands.build, small_spec, "-o", target)
    one_error(code, lines, 1, f"cannot write '{target}': No space left on device")
    assert list(tmp_path.iterdir()) == [small_spec]


# -- outputs that cannot be written -----------------------------------------------------


def test_output_paths_longer_than_the_file_system_allows(tiny: Path, tmp_path: Path):
    name = "x" * 300
    code, lines = cli(command.train, tiny, "--out", tmp_path / name, "--device", "cpu")
    one_error(code, lines, 2, "bytes long; this file system allows at most")
    code, lines = cli(commands.build, tiny, "-o", tmp_path / name / "m.pt")
    one_error(code, lines, 2, "bytes long")
    code, lines = cli(commands.schema, "-o", tmp_path / f"{name}.json")
    one_error(code, lines, 2, "bytes long")
    deep = tmp_path.joinpath(*["d" * 200] * 25)
    code, lines = cli(command.train, tiny, "--out", deep, "--device", "cpu")
    one_error(code, lines, 2, "the path is longer than this file system allows")
    assert list(tmp_path.iterdir()) == [tiny]


def test_read_only_and_missing_output_folders(tiny: Path, tmp_path: Path, monkeypatch):
    (tmp_path / "file").write_text("x")
    code, lines = cli(command.train, tiny, "--out", tmp_path / "file" / "run", "--device", "cpu")
    one_error(code, lines, 2, "is not a folder")
    code, lines = cli(commands.schema, "-o", tmp_path / "file" / "schema.json")
    one_error(code, lines, 2, "is not a folder")
    # a missing folder is created for -o
    code, lines = cli(commands.schema, "-o", tmp_path / "new" / "schema.json")
    assert code == 0 and json.loads((tmp_path / "new" / "schema.json").read_text())["title"]
    # read-only: simulated (the tests may run as root, whom permissions do not stop)
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(atomic.os, "access", lambda p, m: real(p, m) and Path(p) != ro)
    for cmd, args in [
        (command.train, [tiny, "--out", ro / "run", "--device", "cpu"]),
        (commands.build, [tiny, "-o", ro / "m.pt"]),
        (commands.schema, ["-o", ro / "schema.json"]),
    ]:
        code, lines = cli(cmd, *args)
        one_error(code, lines, 2, f"cannot write in {ro}")
    assert list(ro.iterdir()) == []


# -- files of the wrong shape -----------------------------------------------------------


def _corrupt(state: dict, key: str) -> None:
    bad = {
        "model": {"w": [1, 2]},
        "balancer": [1],
        "optimizer": {"state": [], "param_groups": {}},
        "epoch": "one",
        "step": -3,
        "batch": 1.5,
        "rng": {"torch": torch.zeros(3)},
        "progress": {"epoch_sums": {}, "epoch_count": 0, "best": {"epoch": "x"}},
        "scheduler": [],
        "spec": "a spec",
    }
    state[key] = bad[key]


@pytest.mark.parametrize(
    "key",
    ["model", "balancer", "optimizer", "epoch", "step", "batch", "rng", "progress", "scheduler"],
)
def test_a_checkpoint_with_a_wrong_field_type_is_one_line(tiny: Path, tmp_path: Path, key: str):
    out = trained(tiny, tmp_path / "run")
    state = torch.load(out / "last.pt", weights_only=True)
    _corrupt(state, key)
    torch.save(state, out / "last.pt")
    code, lines = cli(command.train, tiny, "--out", out, "--resume", "--epochs", 2)
    one_error(code, lines, 2, f"its '{key}' entry")


def test_a_fifo_given_as_a_checkpoint_is_refused_without_blocking(tiny: Path, tmp_path: Path):
    fifo = tmp_path / "last.pt"
    os.mkfifo(fifo)
    code, lines = cli(command.evaluate, tiny, "--checkpoint", fifo, "--device", "cpu")
    one_error(code, lines, 2, f"{fifo}: not a regular file")


def test_hostile_metrics_and_summary_files(tiny: Path, tmp_path: Path):
    out = trained(tiny, tmp_path / "run")
    good = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text("[1, 2]\n" + good)
    before = files(out)
    code, lines = cli(command.train, tiny, "--out", out, "--resume", "--epochs", 2)
    one_error(code, lines, 2, "metrics.jsonl:1: not a metrics record (a JSON list")
    assert files(out) == before
    (out / "metrics.jsonl").write_text(good + '{"type": "step", "step": "7"}\n{"torn')
    code, lines = cli(command.train, tiny, "--out", out, "--resume", "--epochs", 2)
    one_error(code, lines, 2, f"metrics.jsonl:{good.count(chr(10)) + 1}:", "'step'")
    for summary, what in [
        ({"final": [1]}, "'final' is not an object"),
        ({"final": {"metrics": {"seg": {"miou": "high"}}}}, "'final.metrics'"),
        ({"final": {"metrics": {"seg": 1}}}, "'final.metrics'"),
        ({"baselines": {"seg": [1]}}, "'baselines'"),
        ({"outputs": "seg"}, "'outputs'"),
    ]:
        (out / "summary.json").write_text(json.dumps(summary))
        code, lines = cli(command.compare, out, "--baseline", out)
        one_error(code, lines, 2, "not a run summary", what)


# -- data that cannot be read or held ---------------------------------------------------


def _npy_root(tmp_path: Path) -> Path:
    root = tmp_path / "nyu"
    shapes = {"image": (8, 8, 3), "label": (8, 8), "depth": (8, 8, 1), "normal": (8, 8, 3)}
    for split in ("train", "val"):
        for folder, shape in shapes.items():
            (root / split / folder).mkdir(parents=True)
            for i in range(3):
                np.save(root / split / folder / f"{i}.npy", np.zeros(shape, np.float32))
    return root


def _forged_header(path: Path) -> None:
    header = np.lib.format.header_data_from_array_1_0(np.zeros((8, 8, 3), np.float32))
    header["shape"] = (10**6, 10**6, 3)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: np.save(p, np.full((8, 8, 3), "a")), "holds <U1 values; expected numbers"),
        (_forged_header, "its header declares [1000000, 1000000, 3] float32"),
        (lambda p: p.write_bytes(b""), "not an .npy file (empty)"),
        (lambda p: p.write_bytes(b"\x93NUMPY\x01"), "not a valid .npy header"),
        (
            lambda p: (
                np.savez(p.with_suffix(".npz"), a=np.zeros(3)),
                p.with_suffix(".npz").rename(p),
            ),
            "an .npz archive",
        ),
        (lambda p: (p.unlink(), os.mkfifo(p)), "not a regular file"),
    ],
    ids=["strings", "forged-header", "empty", "torn-header", "npz", "fifo"],
)
def test_npy_files_that_are_not_numbers_are_one_line(
    tiny: Path, tmp_path: Path, damage, message: str
):
    root = _npy_root(tmp_path)
    bad = root / "train" / "image" / "1.npy"
    damage(bad)
    spec = [
        "--set",
        f"train.data={{name: nyuv2, root: '{root}'}}",
        "--set",
        "input.image=[3, 8, 8]",
    ]
    previous = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("blocked on the .npy file"))
    signal.alarm(60)
    try:
        code, lines = cli(command.train, tiny, "--out", tmp_path / "run", "--device", "cpu", *spec)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    one_error(code, lines, 2, f"train.data.root: '{bad}' (image): {message}")
    assert not (tmp_path / "run").exists()


def test_an_unreadable_data_folder_is_one_line(tmp_path: Path, monkeypatch):
    from mtlc.data import DataError, load_dataset

    root = _npy_root(tmp_path)
    real = Path.iterdir

    def iterdir(self):
        if self.name == "depth":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError, match=r"cannot read the folder '.*depth': Permission denied"):
        load_dataset({"name": "nyuv2", "root": str(root)}, "train")


CORRELATED = """\
mtlc: 1
name: x
input: {x: [8]}
encoder:
  stages: {s: [linear(4), relu]}
tasks:
  y1: {head: [linear(1)], loss: mse}
  y2: {head: [linear(1)], loss: mse}
train:
  data: {name: correlated, train: 16, val: 8, dim: 8, %s}
"""


@pytest.mark.parametrize(
    "option, where, message",
    [
        # the value (column 68) of an option the data set checks when it loads
        (
            "sine_params: integers",
            "10:68: train.data.sine_params:",
            "expected one of normal, integer, got 'integers' (did you mean 'integer'?).",
        ),
        ("correlation: 2.0", "10:68: train.data.correlation:", "expected a value between"),
        # the key (column 55) of an option it does not know
        (
            "sine_param: integer",
            "10:55: train.data.sine_param:",
            "unknown option for data set 'correlated' (did you mean 'sine_params'?)",
        ),
    ],
)
def test_a_data_option_error_points_at_the_option_in_the_file(
    write_spec, tmp_path: Path, option: str, where: str, message: str
):
    spec = write_spec(CORRELATED % option)
    code, lines = cli(command.train, spec, "--out", tmp_path / "run", "--device", "cpu")
    one_error(code, lines, 2, f"error: {spec}:{where} {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "data, message",
    [
        ("{name: shapes, train: 100000000, val: 8, size: 16}", "100000000 scenes of 16×16 pixels"),
        ("{name: correlated, train: 1000000, val: 8, dim: 100000}", "1000000 samples of 100000"),
    ],
)
def test_data_too_large_to_hold_says_how_much_memory_it_needs(
    tiny: Path, tmp_path: Path, monkeypatch, data: str, message: str
):
    import mtlc.memory

    monkeypatch.setattr(mtlc.memory, "available_memory", lambda: 8 * 10**9)
    code, lines = cli(command.train, tiny, "--out", tmp_path / "run", "--set", f"train.data={data}")
    one_error(code, lines, 2, message, "need about", "only 8.0 GB is available")
    assert not (tmp_path / "run").exists()


def test_npy_folders_too_large_to_hold_are_refused_from_their_headers(tmp_path: Path, monkeypatch):
    import mtlc.memory
    from mtlc.data import DataError, load_dataset

    root = _npy_root(tmp_path)
    monkeypatch.setattr(mtlc.memory, "available_memory", lambda: 1000)
    # per sample: image 8·8·3 + depth 8·8 + normal 8·8·3 float32, labels 8·8 int64,
    # held three times (the arrays, their stack, the tensor): 3 · 3 · 2304 bytes
    with pytest.raises(DataError, match=r"the 3 samples in .* need about 20.7 kB"):
        load_dataset({"name": "nyuv2", "root": str(root)}, "train")


REFUSAL = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
    "memory: you tried to allocate 491520000000 bytes. Error code 12 (Cannot allocate memory)"
)


def test_a_batch_that_does_not_fit_in_memory_is_one_line(tiny: Path, tmp_path: Path, monkeypatch):
    from mtlc.train.trainer import Trainer

    real = Trainer.launch_step

    def launch(self, batch, **shard):
        if self.step == 3:  # the second epoch's first step asks for too much
            raise RuntimeError(REFUSAL)
        return real(self, batch, **shard)

    monkeypatch.setattr(Trainer, "launch_step", launch)
    out = tmp_path / "run"
    code, lines = cli(command.train, tiny, "--out", out, "--device", "cpu", "--epochs", 2)
    one_error(
        code,
        lines,
        1,
        "out of memory at step 4 (epoch 2) with train.batch_size 8 on cpu (one allocation "
        "alone needed 491.5 GB): lower train.batch_size",
        "(epoch 1) is the last good checkpoint",
    )
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_profile_latency_at_a_batch_beyond_memory_is_one_line(small_spec: Path):
    from mtlc.profile.command import profile

    code, lines = cli(profile, small_spec, "--latency", "--device", "cpu", "--batch", 10**15)
    one_error(code, lines, 2, f"--latency: batch {10**15} does not fit in memory on cpu")


# -- BatchNorm and batches of one sample ------------------------------------------------

MLP = """\
mtlc: 1
name: mlp
input: {x: [8]}
encoder:
  stages:
    s1: [linear(16), bn, relu]
tasks:
  y1: {head: [linear(1)], loss: mse}
  y2: {head: [linear(1)], loss: mse}
balancer: {type: fixed}
train:
  data: {name: correlated, train: 9, val: 4, dim: 8}
  epochs: 1
  batch_size: 4
"""


def test_batchnorm_drops_a_last_batch_of_one_and_refuses_batches_of_one(write_spec, tmp_path: Path):
    spec = write_spec(MLP, "mlp.yaml")
    result = train(spec, out=tmp_path / "a", device="cpu")
    assert result.summary["steps"] == 2  # 9 samples at 4 a batch: 4, 4, and 1 dropped
    steps = [r for r in runfolder.read_metrics(tmp_path / "a") if r["type"] == "step"]
    assert len(steps) == 2
    # an even split keeps every batch
    assert (
        train(spec, out=tmp_path / "b", device="cpu", overrides=["train.data.train=10"]).summary[
            "steps"
        ]
        == 3
    )
    code, lines = cli(command.train, spec, "--out", tmp_path / "c", "--set", "train.batch_size=1")
    one_error(code, lines, 2, "train.batch_size: BatchNorm layer", "set train.batch_size to 2")
    assert not (tmp_path / "c").exists()
    # images: BatchNorm normalises over the pixels too, so a last batch of one trains
    tiny = write_spec(TINY_TRAIN.replace("train: 24", "train: 25"), "tiny25.yaml")
    assert (
        train(tiny, out=tmp_path / "d", device="cpu", overrides=["train.epochs=1"]).summary["steps"]
        == 4
    )


# -- divergence through overflow --------------------------------------------------------


def test_an_overflowing_uncertainty_weight_is_a_divergence(tiny: Path):
    from mtlc.spec import load_spec
    from mtlc.train.errors import Diverged
    from mtlc.train.trainer import Trainer

    trainer = Trainer(load_spec(tiny, ["balancer=uncertainty"]), device="cpu", console=None)
    with torch.no_grad():
        trainer.balancer.log_vars[1] = -1e30  # exp(-s) overflows a float
    batch = {k: v[:8] for k, v in trainer.train_data.tensors.items()}
    with pytest.raises(Diverged, match=r"the balancer's weight of task 'depth' is inf at step 1"):
        trainer.train_step(batch)


def test_a_learning_rate_beyond_float32_is_a_divergence(tiny: Path, tmp_path: Path):
    code, lines = cli(
        command.train,
        tiny,
        "--out",
        tmp_path / "run",
        "--device",
        "cpu",
        "--set",
        "train.optimizer.lr=1e300",
    )
    one_error(code, lines, 1, "the optimizer's update overflowed at step 1", "lr is 1e+300")


# -- the plan of a run --------------------------------------------------------------------


def test_resume_says_a_finished_run_is_complete(tiny: Path, tmp_path: Path):
    out = trained(tiny, tmp_path / "run")
    before = files(out)
    code, lines = cli(command.train, tiny, "--out", out, "--resume", "--epochs", 1)
    assert code == 0
    assert f"the run in {out} is already complete (1 of 1 epochs): nothing was trained" in lines[0]
    assert files(out) == before


def test_resume_with_other_epochs_is_refused_or_said(tiny: Path, tmp_path: Path):
    out = trained(tiny, tmp_path / "run", "--epochs", 2)
    code, lines = cli(command.train, tiny, "--out", out, "--resume", "--epochs", 1)
    one_error(code, lines, 2, "has already trained 2 epoch(s), more than the 1 asked for")
    code, lines = cli(command.train, tiny, "--out", out, "--resume", "--epochs", 3)
    assert code == 0 and lines[0] == (
        "resuming with train.epochs 3: the run was planned for 2 and has trained 2"
    )
    cosine = tmp_path / "cosine"
    trained(tiny, cosine, "--set", "train.scheduler=cosine")
    before = files(cosine)
    code, lines = cli(
        command.train,
        tiny,
        "--out",
        cosine,
        "--resume",
        "--epochs",
        2,
        "--set",
        "train.scheduler=cosine",
    )
    one_error(code, lines, 2, "planned for 1 epochs and its cosine schedule")
    assert files(cosine) == before


def test_a_refused_sweep_leaves_no_folder(tiny: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    code, lines = cli(
        command.sweep,
        tiny,
        "--grid",
        "train.seed=1,2",
        "--out",
        out,
        "--set",
        "train.data={name: nyuv2, root: /nonexistent}",
    )
    assert code == 2 and lines[-1].startswith("error: --set train.data={name: nyuv2,"), lines
    assert lines[-1].endswith(": train.data.root: the folder '/nonexistent' does not exist.")
    assert not out.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, lines = cli(command.sweep, tiny, "--grid", "train.seed=1,2", "--out", foreign)
    one_error(code, lines, 2, "holds 'notes.txt', which mtlc did not write")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_compare_refuses_runs_trained_on_different_data(tiny: Path, tmp_path: Path):
    a = trained(tiny, tmp_path / "a", "--baselines")
    b = trained(
        tiny,
        tmp_path / "b",
        "--baselines",
        "--set",
        "train.data.size=24",
        "--set",
        "input.image=[3, 24, 24]",
    )
    code, lines = cli(command.compare, a, b)
    one_error(
        code, lines, 2, f"{a} and {b} were trained on different data", "train.data.size: 16 vs 24"
    )
    code, lines = cli(
        command.compare,
        b,
        "--baseline",
        a / "baselines" / "seg",
        "--baseline",
        a / "baselines" / "depth",
    )
    one_error(code, lines, 2, "were trained on different data")
    assert cli(command.compare, a)[0] == 0  # one run against its own baselines


def test_make_install_draws_the_demos_plots():
    """`make demo` depends on `install`, which must bring the plots extra (matplotlib)."""
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    install = makefile.split("\ninstall:", 1)[1].split("\n\n", 1)[0]
    assert '-e ".[plots]"' in install and "matplotlib" in install
    assert "\ndemo: install" in makefile
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'plots = ["matplotlib' in pyproject


def test_outputs_named_by_a_link_are_refused(small_spec: Path, tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    link = tmp_path / "out.pt"
    link.symlink_to(notes)
    for cmd, args in [
        (commands.build, [small_spec, "-o", link, "--force"]),
        (commands.schema, ["-o", link]),
    ]:
        code, lines = cli(cmd, *args)
        one_error(code, lines, 2, f"{link}: is a symbolic link; mtlc never writes through a link")
    assert notes.read_text() == "my notes" and link.is_symlink()
