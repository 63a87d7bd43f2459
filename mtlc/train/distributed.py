"""Training on several processes: ``torch.distributed`` as set up by torchrun.

A process started by ``torchrun`` (or by ``mtlc train --nproc N``, which runs torchrun's
own launcher) finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in
its environment; :func:`join` turns them into a process group (NCCL on CUDA, gloo on the
CPU) and a :class:`Ranks` the trainer carries. What makes N processes train *the same
model as one process with the same global batch*:

* **Sharding.** Every rank draws the same permutation (the shuffling generator is seeded
  by ``train.seed`` alone), cuts it into the same global batches of ``train.batch_size``
  and keeps samples ``rank, rank + N, …`` of each (:func:`shard`), the strided split
  ``DistributedSampler`` makes, without its padding: a short last batch is split unevenly.
* **Losses.** A rank's loss ``L_k^r`` is a mean over ``c_k^r`` elements: its samples
  (``n_r``), or for a loss that masks (ignored pixels) the valid elements it counted
  (:func:`mtlc.losses.masked_mean`). The global loss is ``L_k = Σ_r c_k^r L_k^r / C_k``
  with ``C_k = Σ_r c_k^r``, exactly the mean one process takes over the whole batch. One
  all-reduce of the 2K values ``c·L`` and ``c`` (K losses: tasks and intermediate
  predictions) gives every rank ``L_k``; the balancer then sees
  ``ℓ_k = L_k + (c_k^r·N/C_k)(L_k^r − sg(L_k^r))`` (sg: stop gradient), whose value is
  the global loss and whose gradient, after DDP averages it over the N ranks, is
  ``Σ_r (c_k^r/C_k) ∇L_k^r = ∇L_k``. Any loss-level balancer, linear in the losses or
  not, therefore gets the single-process gradient, and its learned parameters
  (uncertainty's s_t), which depend only on the global values, stay equal on every rank.
  A rank whose share of a short last batch is empty runs one sample with weight 0.
* **Gradient-level balancers** reduce what they measure before solving
  (:class:`Ranks.mean` for per-task parameter gradients, :class:`Ranks.sample_gramian`
  for Gram matrices of per-sample gradients), so every rank solves the same problem and
  gets the same weights.
* **Stopping.** The same all-reduce carries a stop flag (Ctrl-C or SIGTERM on any rank),
  and a NaN on one rank makes the global loss NaN on all of them, so every rank stops
  after the same step and none is left waiting in a collective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlc.errors import MtlcError
from mtlc.losses import normaliser

SEED_STRIDE = 1_000_003  # rank r > 0 seeds its own random stream with seed + r × this


def launched() -> bool:
    """Whether this process was started by torchrun (or ``mtlc train --nproc``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world_size() -> int:
    """The number of processes of this job (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def rank_seed(seed: int, rank: int) -> int:
    """Rank r's seed for its own random numbers (dropout): rank 0 keeps ``train.seed``."""
    return (seed + rank * SEED_STRIDE) % (2**63)


@dataclass
class Ranks:
    """This process's place in the job and the collectives the trainer needs."""

    rank: int
    world: int
    local_rank: int
    device: torch.device  # where collectives run: cuda:LOCAL_RANK (NCCL) or the CPU (gloo)

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes the run folder."""
        return self.rank == 0

    def all_sum(self, x: Tensor) -> Tensor:
        """Σ over ranks of ``x`` (a new tensor on ``x``'s device)."""
        y = x.detach().to(self.device, copy=True)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y.to(x.device)

    def mean(self, x: Tensor) -> Tensor:
        """The mean over ranks: per-task gradients of the shared parameters, Jacobians."""
        return self.all_sum(x) / self.world

    def sample_gramian(self, gram: Tensor) -> Tensor:
        """The global Gram matrix of per-sample-stacked gradients from the ranks' local ones.

        Rows of gradients w.r.t. a per-sample representation concatenate over ranks, so
        the global Gram matrix is the sum of the local ones; each rank's gradients are N
        times the global ones (the loss weighting in the module docstring), hence / N².
        """
        return self.all_sum(gram) / self.world**2

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def merge_metrics(self, metrics: dict[str, dict[str, Any]]) -> None:
        """Add the other ranks' metric totals to ``metrics`` (``{task: {name: Metric}}``)."""
        everyone = self.gather(metrics)
        for r, theirs in enumerate(everyone):
            if r == self.rank:
                continue
            for t, ms in metrics.items():
                for name, m in ms.items():
                    m.merge(theirs[t][name])

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank, before validating."""
        for buffer in model.buffers():
            y = buffer.detach().to(self.device, copy=True)
            dist.broadcast(y, src=0)
            buffer.copy_(y.to(buffer.device))

    def global_losses(
        self, losses: dict[str, Tensor], counts: dict[str, Tensor | float], stop: bool
    ) -> tuple[dict[str, Tensor], bool]:
        """(ℓ_k per loss, whether any rank asked to stop): the module docstring's ℓ_k.

        ``counts[k]`` is what this rank's mean ``losses[k]`` is over (:func:`loss_counts`).
        The sums are taken in float64 so that pixel counts stay exact.
        """
        k = len(losses)
        local = torch.stack([v.detach().double().reshape(()) for v in losses.values()])
        count = torch.stack([count_tensor(counts[key], local) for key in losses])
        flag = torch.tensor([1.0 if stop else 0.0], dtype=local.dtype, device=local.device)
        summed = self.all_sum(torch.cat([local * count, count, flag]))
        total, everyone = summed[:k], summed[k : 2 * k]
        some = everyone > 0  # no valid element on any rank: the loss is 0, as in one process
        mean = torch.where(some, total / everyone.where(some, 1.0), 0.0)
        scale = count / everyone.where(some, 1.0) * self.world
        out = {
            key: g.to(v.dtype) + s.to(v.dtype) * (v - v.detach())
            for (key, v), g, s in zip(losses.items(), mean, scale)
        }
        return out, bool(summed[-1] > 0)

    def barrier(self) -> None:
        dist.barrier()


def loss_counts(losses: dict[str, Tensor], share: float) -> dict[str, Tensor | float]:
    """What each of this rank's mean losses is over, for :meth:`Ranks.global_losses`.

    A masked loss's own count of valid elements (:func:`mtlc.losses.normaliser`); for a
    plain mean, the rank's share n_r/n of the samples (every sample has as many elements).
    A rank with an empty share (share 0) counts nothing.
    """
    out: dict[str, Tensor | float] = {}
    for key, loss in losses.items():
        count = normaliser(loss)
        out[key] = share if count is None else (count if share > 0 else count * 0)
    return out


def count_tensor(count: Tensor | float, like: Tensor) -> Tensor:
    """A :func:`loss_counts` value as a 0-d tensor of ``like``'s dtype and device.

    A plain loss's count is a Python float: filled in on the device, not built on the
    host and copied (a copy from ordinary host memory waits for the device).
    """
    if isinstance(count, Tensor):
        return count.to(like).reshape(())
    return like.new_full((), count)


def shard(batch: dict[str, Tensor], ranks: Ranks) -> tuple[dict[str, Tensor], float, int]:
    """(this rank's samples of a global batch, their share n_r/n of it, n).

    A rank left without samples (a last batch shorter than N) gets the batch's first
    sample with share 0: it keeps step with the collectives and contributes nothing.
    """
    n = next(iter(batch.values())).shape[0]
    local = {k: v[ranks.rank :: ranks.world].contiguous() for k, v in batch.items()}
    m = next(iter(local.values())).shape[0]
    if m == 0:
        return {k: v[:1] for k, v in batch.items()}, 0.0, n
    return local, m / n, n


def wrap(model: nn.Module, spec: Any, ranks: Ranks) -> nn.Module:
    """The model in DistributedDataParallel (BatchNorm made SyncBatchNorm with train.sync_bn).

    The conversion swaps modules inside ``model`` (same parameters), so the trainer's
    plain reference keeps working for checkpoints and validation.
    """
    from torch.nn.parallel import DistributedDataParallel

    if spec.train.sync_bn and ranks.world > 1:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(
        model,
        device_ids=[ranks.local_rank] if ranks.device.type == "cuda" else None,
        find_unused_parameters=bool(unused_parameters(model)),
    )


def unused_parameters(model: nn.Module) -> list[str]:
    """Parameters of modules the graph never calls (DDP must then look for them each step).

    Read from the GraphModule's nodes: a parameter is used when it, or a module holding
    it, is a ``call_module`` or ``get_attr`` target. A plain module counts as all used.
    """
    graph = getattr(model, "graph", None)
    if graph is None:
        return []
    used = {n.target for n in graph.nodes if n.op in ("call_module", "get_attr")}
    out = []
    for name, p in model.named_parameters():
        parts = name.split(".")
        if p.requires_grad and not any(
            ".".join(parts[:i]) in used for i in range(1, len(parts) + 1)
        ):
            out.append(name)
    return out


def join(device: str) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun described in the environment; this rank's device.

    CUDA (``auto`` with GPUs, or ``cuda``) gives each process ``cuda:LOCAL_RANK`` and NCCL;
    the CPU uses gloo. A fixed ``cuda:N`` cannot hold N processes and is refused.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda:"):
        raise MtlcError(
            f"--device {device}: with several processes each takes cuda:LOCAL_RANK; "
            "pass --device cuda (or auto)"
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise MtlcError(
                f"local rank {local_rank} needs cuda:{local_rank}, but this machine has "
                f"{torch.cuda.device_count()} GPU(s): start at most that many processes per node"
            )
        where = torch.device("cuda", local_rank)
        torch.cuda.set_device(where)
    else:
        where = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Ranks(rank=rank, world=world, local_rank=local_rank, device=where), where


def leave(together: bool = True) -> None:
    """Leave the process group (end of the run, whatever its outcome).

    ``together``: every rank ended the same way (done, or a stop they agreed on), so they
    meet in a barrier first and tear the group down at the same moment. A rank that
    leaves while another still works in the group (rank 0 writes the summary and plots
    after the last collective) can abort in gloo's teardown (SIGABRT, "terminate called
    without an active exception"), which fails the job after it succeeded. A rank that
    fails alone skips the barrier (the others may never reach it); torchrun stops them.
    ``python -m mtlc`` ranks also skip the interpreter's teardown afterwards
    (mtlc.clitools.exit_without_teardown); the barrier is still what keeps a process that
    calls ``train`` from Python and goes on running from tearing down early.
    """
    if not dist.is_initialized():
        return
    if together:
        dist.barrier()
    dist.destroy_process_group()
