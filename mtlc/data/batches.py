"""Batches as slices of a split's pre-built tensors (no DataLoader, no workers)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mtlc.data import TensorData

__all__ = ["iterate_batches", "num_batches"]


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """How many batches :func:`iterate_batches` yields for ``n`` samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    data: TensorData,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``{key: tensor[idx]}`` batches covering the split once.

    With ``shuffle`` the order is a permutation drawn from ``generator`` (so a seeded
    generator gives a reproducible order) and batches are gathered with ``index_select``;
    without it they are contiguous views. ``drop_last`` drops a final short batch.
    """
    n = len(data)
    count = num_batches(n, batch_size, drop_last=drop_last)
    if shuffle:
        perm = torch.randperm(n, generator=generator)
        # data kept on a GPU is gathered there: the permutation moves once per epoch
        perm = perm.to(next(iter(data.tensors.values())).device)
        for b in range(count):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            yield {k: v.index_select(0, idx) for k, v in data.tensors.items()}
    else:
        for b in range(count):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n)
            yield {k: v[lo:hi] for k, v in data.tensors.items()}
