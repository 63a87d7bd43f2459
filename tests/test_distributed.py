"""Training on 2 processes (gloo on the CPU) is training on 1 process with the same global
batch: same weights, same balancer state on both ranks (MGDA's α included), same global
validation metrics; a NaN or a Ctrl-C on one rank stops both after the same step; rank 0
alone writes; resume needs the same number of processes; bad input is refused before
any process starts.

Three jobs are started (each costs a few seconds of process start-up on 2 cores): one
torchrun job running tests/distributed_worker.py through every case, one `mtlc train
--nproc 2` end to end, one whose rank 1 is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from distributed_worker import CASES, mask_pixels

from mtlc.metrics import build_metric
from mtlc.spec import load_spec
from mtlc.train import command, distributed, launch
from mtlc.train.trainer import Trainer

# no BatchNorm, no dropout: 2 processes must then give 1 process's numbers; 9 training
# samples in batches of 8: the last global batch holds 1 sample, so rank 1's share is empty
SPEC = """\
mtlc: 1
name: dist
input: {image: [3, 16, 16]}
encoder:
  stages:
    s1: [conv(6, 3), relu, maxpool(2)]
    s2: [conv(6, 3), relu]
tasks:
  seg:   {head: [conv(5, 1), upsample(2)], loss: cross_entropy, metrics: [miou, pixel_acc]}
  depth: {head: [conv(1, 1), upsample(2)], loss: l1, metrics: [abs_err]}
balancer: {type: fixed}
train:
  data: {name: shapes, train: 9, val: 5, size: 16}
  epochs: 2
  batch_size: 8
  optimizer: {type: adam, lr: 0.01}
"""
# BatchNorm on 1-D features: a share of one sample cannot train. 10 samples in batches of
# 4: one process keeps the last batch of 2, two processes would get 1 each and drop it
MLP = """\
mtlc: 1
name: mlp
input: {x: [8]}
encoder:
  stages:
    s1: [linear(16), bn, relu]
tasks:
  y1: {head: [linear(1)], loss: mse, metrics: [abs_err]}
  y2: {head: [linear(1)], loss: mse}
balancer: {type: fixed}
train:
  data: {name: correlated, train: 10, val: 4, dim: 8}
  epochs: 2
  batch_size: 4
"""
HERE = Path(__file__).parent
# faulthandler: a rank that aborts prints where (in the failure message below)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "dist.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "mlp.yaml"
    path.write_text(MLP)
    return path


@pytest.fixture(scope="module")
def job(spec_file: Path, mlp_file: Path, tmp_path_factory) -> Path:
    """The torchrun job of tests/distributed_worker.py; its reports' folder."""
    out = tmp_path_factory.mktemp("job")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [str(HERE / "distributed_worker.py"), str(out), str(spec_file), str(mlp_file)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    signs = ("rror", "what()", "terminate", "Fatal", "File ")
    errors = [line for line in done.stderr.splitlines() if any(s in line for s in signs)]
    assert done.returncode == 0, "\n".join(errors[:60]) + done.stderr[-2000:]
    return out


def reference(
    spec_file: Path, overrides: list[str], folder: Path, masked: bool = False
) -> tuple[Trainer, dict]:
    torch.set_num_threads(1)
    trainer = Trainer(load_spec(spec_file, overrides), device="cpu")
    if masked:
        mask_pixels(trainer)
    folder.mkdir(parents=True)
    return trainer, trainer.fit(folder).summary


def reports(job: Path, name: str) -> tuple[dict, dict]:
    return tuple(torch.load(job / f"{name}-rank{r}.pt", weights_only=False) for r in (0, 1))


def assert_close_states(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=tol, rtol=tol, msg=k)


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_like_one(job: Path, spec_file: Path, tmp_path: Path, case: str):
    masked = case.startswith("masked")
    one, summary = reference(spec_file, CASES[case], tmp_path / "one", masked)
    tol = 1e-5 if masked else 2e-5
    r0, r1 = reports(job, case)
    # the ranks hold the very same model and balancer state (MGDA's α, uncertainty's s_t)
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    for k in r0["balancer"]:
        assert torch.equal(r0["balancer"][k], r1["balancer"][k]), k
    assert r0["weights"] == r1["weights"]
    # ... and they equal one process with the same global batch, after 4 steps
    assert r0["step"] == one.step == 4
    assert_close_states(r0["model"], one.model.state_dict(), tol)
    assert_close_states(r0["balancer"], one.balancer.state_dict(), tol)
    # global validation metrics: the ranks' confusion matrices, sums and counts reduced
    two = r0["summary"]
    for t, metrics in summary["final"]["metrics"].items():
        for k, v in metrics.items():
            assert two["final"]["metrics"][t][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (t, k)
    assert two["final"]["val_loss"] == pytest.approx(summary["final"]["val_loss"], rel=1e-4)
    assert two["processes"] == 2 and summary["processes"] == 1
    # rank 0 alone wrote its run folder; rank 1's was never even created
    assert sorted(p.name for p in (job / case / "rank0").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    assert not (job / case / "rank1").exists()


def test_masked_cases_need_the_counts(spec_file: Path):
    """The masked cases above can fail: the ranks' shares hold different numbers of valid
    pixels, so weighting their means by their share of the samples (what DDP does) misses
    one process's loss of the batch (and the masked cases then fail on the weights), while
    weighting them by the losses' own counts of valid pixels gives it."""
    from mtlc.losses import normaliser

    trainer = Trainer(load_spec(spec_file, CASES["masked_fixed"]), device="cpu")
    mask_pixels(trainer)
    batch = {k: v[:8] for k, v in trainer.train_data.tensors.items()}
    with torch.no_grad():
        whole = trainer.forward_losses(batch, trainer.model)[2]
        halves = [
            trainer.forward_losses({k: v[r::2] for k, v in batch.items()}, trainer.model)[2]
            for r in (0, 1)
        ]
    for k in ("seg", "depth"):
        counts = [int(normaliser(h[k])) for h in halves]
        assert counts[0] != counts[1], counts
        assert int(normaliser(whole[k])) == sum(counts)
        by_count = sum(c * h[k] for c, h in zip(counts, halves)) / sum(counts)
        by_samples = (halves[0][k] + halves[1][k]) / 2
        assert float(by_count) == pytest.approx(float(whole[k]), rel=1e-6), k
        assert abs(float(by_samples) - float(whole[k])) > 1e-4, k
    assert normaliser(trainer.losses["seg"](torch.zeros(2, 5, 4, 4), -torch.ones(2, 4, 4))) == 0


def test_mgda_weights_are_not_trivial(job: Path):
    """The α compared above is a real solve (not the 1/T it starts from)."""
    for case in ("mgda_exact", "mgda_ub"):
        r0, _ = reports(job, case)
        assert abs(r0["weights"]["seg"] - 0.5) > 1e-3, r0["weights"]


def test_nan_on_rank_1_stops_both_at_the_same_step(job: Path):
    r0, r1 = reports(job, "nan")
    assert r0["outcome"] == r1["outcome"] == "diverged at step 2 on task depth"
    summary = json.loads((job / "nan" / "rank0" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert not (job / "nan" / "rank1").exists()


def test_ctrl_c_on_rank_1_stops_both_and_resume_continues(
    job: Path, spec_file: Path, tmp_path: Path
):
    r0, r1 = reports(job, "resume")
    assert r0["outcome"] == r1["outcome"] == "interrupted at step 2"
    one, _ = reference(spec_file, [], tmp_path / "one")
    assert r0["step"] == 4
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    assert_close_states(r0["model"], one.model.state_dict(), 2e-5)
    state = torch.load(job / "resume" / "last.pt", weights_only=True)
    assert state["processes"] == 2 and len(state["rng"]["ranks"]) == 2


# -- the command ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(spec_file: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cli") / "run"
    cmd = [sys.executable, "-m", "mtlc", "train", str(spec_file), "--nproc", "2"]
    cmd += ["--device", "cpu", "--out", str(out), "--set", "balancer={type: uncertainty}"]
    cmd += ["--baselines"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    return out, done


def test_train_nproc_2_end_to_end(cli_run, spec_file: Path, tmp_path: Path):
    out, done = cli_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("final validation metrics") == 1  # rank 0 alone prints
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["status"] == "completed"
    one, _ = reference(spec_file, ["balancer={type: uncertainty}"], tmp_path / "one")
    state = torch.load(out / "last.pt", weights_only=True)
    assert_close_states(state["model"], one.model.state_dict(), 2e-5)


def test_train_nproc_2_trains_the_baselines_on_both_processes(cli_run, spec_file: Path):
    """--baselines with --nproc 2: each single-task baseline trains on the 2 processes,
    one after the other, into <run>/baselines/<task>, and equals a 1-process baseline."""
    from mtlc.train.baselines import single_task_spec

    out, done = cli_run
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    found = {}
    for task in ("seg", "depth"):
        single = json.loads((out / "baselines" / task / "summary.json").read_text())
        assert single["processes"] == 2 and single["status"] == "completed"
        assert single["tasks"] == [task]
        found[task] = single["final"]["metrics"][task]
        spec = single_task_spec(load_spec(spec_file, ["balancer={type: uncertainty}"]), task)
        torch.set_num_threads(1)
        one = Trainer(spec, device="cpu")
        (out.parent / f"one-{task}").mkdir()
        alone = one.fit(out.parent / f"one-{task}").summary["final"]["metrics"][task]
        assert found[task] == pytest.approx(alone, rel=1e-4, abs=1e-6), task
        state = torch.load(out / "baselines" / task / "last.pt", weights_only=True)
        assert_close_states(state["model"], one.model.state_dict(), 2e-5)
    assert summary["baselines"] == found
    assert summary["final"]["delta_m"] is not None
    assert done.stdout.count("baseline 1/2: seg alone") == 1  # rank 0 alone prints


def test_resume_with_another_number_of_processes_is_refused(cli_run, spec_file: Path):
    out, done = cli_run
    assert done.returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for extra in (["--nproc", "1"], ["--nproc", "3"], []):
        result = CliRunner().invoke(
            command.train,
            [str(spec_file), "--out", str(out), "--resume", "--device", "cpu", *extra]
            + ["--set", "balancer={type: uncertainty}", "--epochs", "3"],
        )
        assert result.exit_code == 2, result.output
        assert "trained with 2 process(es)" in result.output
        assert "--nproc 2" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nproc", "0"], "--nproc"),
        (["--nproc", "3", "--set", "train.batch_size=2"], "train.batch_size"),
        (["--nproc", "4", "--set", "train.data.train=3"], "only 3 sample(s)"),
        (["--nproc", "2", "--set", "train.sync_bn=true"], "train.sync_bn"),
        (["--nproc", "2", "--device", "cuda:1"], "cuda:LOCAL_RANK"),
        (
            ["--nproc", "2", "--baselines", "--set", "tasks.seg.metrics=[]"]
            + ["--set", "tasks.depth.metrics=[]"],
            "--baselines: no output task has metrics",
        ),
    ],
)
def test_bad_launch_exits_2_before_any_process(
    spec_file: Path, tmp_path: Path, args: list[str], message: str
):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        command.train, [str(spec_file), "--out", str(out), "--device", "cpu", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_batchnorm_on_vectors_drops_a_last_batch_that_leaves_a_process_one_sample(
    job: Path, mlp_file: Path
):
    """The rule of one process (drop a last batch of one sample), for N: a last batch
    whose share leaves some process fewer than 2 samples is dropped, on every rank."""
    spec = load_spec(mlp_file)
    assert Trainer(spec, device="cpu").batches_per_epoch == 3  # 4, 4, 2: all kept
    assert Trainer(spec, device="cpu", processes=2).batches_per_epoch == 2  # 2 → 1 + 1
    three = load_spec(mlp_file, ["train.data.train=12", "train.batch_size=6"])
    assert Trainer(three, device="cpu", processes=3).batches_per_epoch == 2  # 6, 6 → 2 each
    r0, r1 = reports(job, "batchnorm")
    assert r0["outcome"] == r1["outcome"] == "completed"
    assert r0["step"] == r1["step"] == 4  # 2 epochs of 2 steps: the batch of 2 dropped
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "train.batch_size=2"],
            "train.batch_size: BatchNorm layer 'encoder.s1.shared.bn1' normalises one value per "
            "channel per sample and cannot train on batches of one sample: 2 processes share "
            "train.batch_size 2, so one gets 1 sample(s): set it to 4 or more",
        ),
        (
            ["--set", "train.data.train=3"],
            "train.data: BatchNorm layer 'encoder.s1.shared.bn1' normalises one value per "
            "channel per sample and cannot train on batches of one sample: the training split "
            "needs 4 samples or more for 2 processes",
        ),
    ],
)
def test_batchnorm_on_vectors_with_shares_of_one_is_refused_before_any_process(
    mlp_file: Path, tmp_path: Path, args: list[str], message: str
):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        command.train, [str(mlp_file), "--out", str(out), "--device", "cpu", "--nproc", "2", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_a_killed_rank_ends_the_job_with_a_clear_message(spec_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtlc", "train", str(spec_file), "--nproc", "2"]
    cmd += ["--device", "cpu", "--out", str(out), "--epochs", "100000"]
    launcher = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (out / "last.pt").exists():
            assert launcher.poll() is None, launcher.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(_rank_pid(launcher.pid, 1), signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1
    assert "error: rank 1 was killed by SIGKILL; the job stopped;" in err.decode()
    assert f"{out / 'last.pt'} is the last good checkpoint" in err.decode()
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] >= 1


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of the launcher's worker process with RANK=rank (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {parent}")


# -- the pieces ------------------------------------------------------------------------------


def test_shard_is_strided_and_an_empty_share_weighs_nothing():
    ranks = distributed.Ranks(rank=1, world=3, local_rank=1, device=torch.device("cpu"))
    batch = {"x": torch.arange(7.0)}
    local, share, n = distributed.shard(batch, ranks)
    assert local["x"].tolist() == [1.0, 4.0] and share == pytest.approx(2 / 7) and n == 7
    local, share, n = distributed.shard({"x": torch.arange(1.0)}, ranks)
    assert local["x"].tolist() == [0.0] and share == 0.0 and n == 1


def test_metrics_merged_over_halves_equal_the_whole():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3, 4, 4), torch.randint(0, 3, (6, 4, 4))
    pred, depth = torch.rand(6, 1, 4, 4) + 0.1, torch.rand(6, 1, 4, 4) + 0.1
    normals, target = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    cases = {
        "miou": (logits, labels),
        "pixel_acc": (logits, labels),
        "abs_err": (pred, depth),
        "rmse": (pred, depth),
        "angle_median": (normals, target),
        "within_11.25": (normals, target),
    }
    for name, (p, t) in cases.items():
        whole, a, b = build_metric(name), build_metric(name), build_metric(name)
        whole.update(p, t)
        a.update(p[:2], t[:2])
        b.update(p[2:], t[2:])
        a.merge(b)
        assert a.compute() == pytest.approx(whole.compute(), rel=1e-6), name
    empty, full = build_metric("miou"), build_metric("miou")
    full.update(logits, labels)
    empty.merge(full)
    assert empty.compute() == pytest.approx(full.compute())


def test_worker_command_line_drops_nproc_and_rank_0_keeps_the_seed():
    argv = ["train", "s.yaml", "--nproc", "2", "--out", "r", "--nproc=3", "--seed", "4"]
    assert launch.worker_argv(argv) == ["train", "s.yaml", "--out", "r", "--seed", "4"]
    assert distributed.rank_seed(7, 0) == 7
    assert len({distributed.rank_seed(7, r) for r in range(4)}) == 4


def test_sweep_jobs_2_trains_every_point_as_one_at_a_time_would(spec_file: Path, tmp_path: Path):
    from mtlc.train.sweep import sweep

    grid = ["balancer.weights.depth=0.5,2"]
    one = sweep(spec_file, grid, out=tmp_path / "one", device="cpu", progress=False)
    two = sweep(spec_file, grid, out=tmp_path / "two", device="cpu", progress=False, jobs=2)
    assert [r.point for r in two.rows] == [r.point for r in one.rows]
    for a, b in zip(one.rows, two.rows):
        assert b.status == "completed"
        for t, metrics in a.metrics.items():
            assert b.metrics[t] == pytest.approx(metrics, rel=1e-5)
    # run again: every point is finished, so nothing trains and the table is the same
    again = sweep(spec_file, grid, out=tmp_path / "two", device="cpu", progress=False, jobs=2)
    assert [r.metrics for r in again.rows] == [r.metrics for r in two.rows]
