"""``mtlc train --nproc N``: check the job, then start N processes with torchrun's launcher.

The processes are started by ``torch.distributed.run`` (torchrun itself, standalone
rendezvous on this machine, elastic agent and its error reporting), each running
``python -m mtlc train ...`` with the same arguments minus ``--nproc``; they find their
rank in the environment (:mod:`mtlc.train.distributed`). Running mtlc under ``torchrun``
directly does the same, and is how several machines are used.

Everything that can be checked is checked here first, so bad input is one line and exit
2 before any process starts: the spec, its data and model (built once on the CPU), the
run folder, ``--resume`` with another number of processes, a global batch smaller than
the number of processes, ``sync_bn`` without CUDA, BatchNorm on 1-D features with batches
that leave a process a single sample. How the job ended is then read from
the processes' exit codes: 1 diverged (rank 0 printed why), 130 stopped by Ctrl-C after
saving, a rank killed by a signal named with the last good checkpoint.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from mtlc.errors import MtlcError
from mtlc.spec import Spec, load_spec, spec_error
from mtlc.train import runfolder
from mtlc.train.errors import TrainError


def check_job(spec: Spec, processes: int, device_type: str, samples: int | None = None) -> None:
    """What N processes need from the spec: a global batch and a split they can share."""
    batch = spec.train.batch_size
    if processes > batch:
        raise spec_error(
            spec,
            ("train", "batch_size"),
            f"{processes} processes share each batch, but train.batch_size is {batch}: it is "
            "the global batch (split across the processes) and must be at least their number",
        )
    if samples is not None and processes > samples:
        raise TrainError(
            f"{processes} processes but the training split has only {samples} sample(s): "
            "start at most that many"
        )
    if spec.train.sync_bn and processes > 1 and device_type != "cuda":
        raise spec_error(
            spec,
            ("train", "sync_bn"),
            "sync_bn needs CUDA (SyncBatchNorm has no CPU kernel): set it to false on the CPU",
        )


def cuda_wanted(device: str) -> bool:
    """Whether ``--device`` puts the processes on GPUs (one per process)."""
    import torch

    if device.startswith("cuda:"):
        raise MtlcError(
            f"--device {device}: with several processes each takes cuda:LOCAL_RANK; "
            "pass --device cuda (or auto)"
        )
    if device not in ("auto", "cpu", "cuda"):
        raise MtlcError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if device == "cuda" and not torch.cuda.is_available():
        raise MtlcError(f"--device {device}: no CUDA device is available (use cpu or auto)")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def check_launch(
    spec_path: Any,
    nproc: int,
    *,
    overrides: list[str],
    out: str | None,
    resume: bool,
    force: bool,
    device: str,
    allow_import: frozenset[str],
    tensorboard: bool,
    baselines: bool,
) -> Path:
    """Everything ``mtlc train`` would refuse, checked once before any process starts."""
    import torch

    from mtlc.train.baselines import baseline_tasks
    from mtlc.train.sinks import tensorboard_available
    from mtlc.train.state import check_resumable
    from mtlc.train.trainer import Trainer

    spec = load_spec(spec_path, overrides)
    run_dir = Path(out) if out is not None else runfolder.default_run_dir(spec.name)
    gpus = cuda_wanted(device)
    if gpus and torch.cuda.device_count() < nproc:
        raise MtlcError(
            f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s), one per "
            "process is needed (several machines: run torchrun on each, see the README)"
        )
    if baselines and not baseline_tasks(spec):
        raise TrainError("--baselines: no output task has metrics, so there is no Δm to compute")
    if tensorboard:
        tensorboard_available()
    runfolder.check(run_dir, resume=resume, force=force)
    if resume:
        check_resumable(spec, run_dir, nproc)
    check_job(spec, nproc, "cuda" if gpus else "cpu")
    trainer = Trainer(
        spec,
        device="cpu",
        allow_import=allow_import,
        console=None,
        progress=False,
        processes=nproc,
    )
    check_job(spec, nproc, "cuda" if gpus else "cpu", samples=len(trainer.train_data))
    return run_dir


def worker_argv(argv: list[str]) -> list[str]:
    """The command line of each process: this one without ``--nproc``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: list[str], run_dir: Path) -> int:
    """Run ``python -m mtlc <argv>`` in ``nproc`` processes under torchrun; the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "mtlc", *argv])
    try:
        run(args)
    except SignalException:
        return 130  # rank 0 said where it saved
    except ChildFailedError as exc:
        return _failed(exc, run_dir)
    return 0


def _failed(exc: Any, run_dir: Path) -> int:
    first_rank, failure = exc.get_first_failure()
    killed = [
        (r, f) for r, f in exc.failures.items() if f.exitcode < 0 and f.signal_name() != "SIGTERM"
    ]
    if killed:  # a rank killed from outside; the others then fail or get torchrun's SIGTERM
        first_rank, failure = min(killed, key=lambda rf: rf[1].timestamp)
    code = failure.exitcode
    if code in (1, 2, 130):
        return code  # diverged, bad input, Ctrl-C: the rank printed why
    last = run_dir / runfolder.LAST
    kept = f"{last} is the last good checkpoint" if last.exists() else "no checkpoint was written"
    if code < 0:
        try:
            why = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            why = f"was killed by signal {-code}"
    else:
        why = f"failed with exit code {code} (torchrun's report is above)"
    print(f"error: rank {first_rank} {why}; the job stopped; {kept}", file=sys.stderr)
    return 1
