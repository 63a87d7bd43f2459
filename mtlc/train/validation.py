"""Validation: every task's loss and metrics over the whole validation split.

A loss is the mean over the split's elements it counts: each batch's mean is weighted by
what it is over (its valid elements for a masked loss, :func:`mtlc.losses.masked_mean`,
else its samples), so batches with few valid pixels weigh little, as in one mean over
the split. On several processes each rank scores its share of every batch (the same
strided split as training) with the plain model (its forward runs no collective, so
ranks may skip an empty share), and the totals are summed over the ranks: loss sums and
counts in one all-reduce, metric totals (confusion matrices, sums, counts) merged, so N
processes report the losses and metrics of one process on the same data.
"""

from __future__ import annotations

import torch

from mtlc.train.distributed import count_tensor, loss_counts, shard


class Validating:
    """The trainer's validation half (mixed into :class:`~mtlc.train.trainer.Trainer`)."""

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Validation loss per task and every task's metrics over the whole split."""
        from mtlc.data.batches import iterate_batches
        from mtlc.metrics import build_metric

        self.model.eval()
        if self.ranks is not None:
            self.ranks.broadcast_buffers(self.model)  # every rank scores rank 0's model
        metrics = {t: {m: build_metric(m) for m in self.spec.tasks[t].metrics} for t in self.tasks}
        sums = dict.fromkeys(self.pred_keys, 0.0)  # Σ count·mean per supervised prediction
        counts = dict.fromkeys(self.pred_keys, 0.0)
        for batch in iterate_batches(self.val_data, self.spec.train.batch_size, shuffle=False):
            if self.ranks is not None:
                batch, share, _ = shard(batch, self.ranks)
                if share == 0:
                    continue
            batch = self._to_device(batch)
            out, _, parts = self.forward_losses(batch, self.model)
            size = batch[self.spec.input_name].shape[0]
            weights = loss_counts(parts, float(size))
            means = {k: v.detach().double().reshape(()) for k, v in parts.items()}
            pairs = [(m, count_tensor(weights[k], m)) for k, m in means.items()]
            values = torch.stack([m * c for m, c in pairs] + [c for _, c in pairs]).tolist()
            for k, v, c in zip(parts, values, values[len(parts) :]):
                sums[k] += v
                counts[k] += c
            for t, ms in metrics.items():
                for m in ms.values():
                    m.update(out[t], batch[self.targets[t]])
        if self.ranks is not None:
            local = torch.tensor([*sums.values(), *counts.values()], dtype=torch.float64)
            totals = self.ranks.all_sum(local).tolist()
            sums, counts = dict(zip(sums, totals)), dict(zip(counts, totals[len(sums) :]))
            self.ranks.merge_metrics(metrics)
        means = {k: torch.tensor(s / counts[k] if counts[k] else 0.0) for k, s in sums.items()}
        val_loss = {t: float(v) for t, v in self.task_losses(means).items()}
        results = {t: {k: m.compute() for k, m in ms.items()} for t, ms in metrics.items() if ms}
        return val_loss, results
