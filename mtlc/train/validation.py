"""Validation: every task's loss and metrics over the whole validation split.

On several processes each rank scores its share of every batch (the same strided split
as training) with the plain model (its forward runs no collective, so ranks may skip an
empty share), and the totals are summed over the ranks: loss sums and sample counts in
one all-reduce, metric totals (confusion matrices, sums, counts) merged, so N processes
report the metrics of one process on the same data.
"""

from __future__ import annotations

import torch

from mtlc.train.distributed import shard


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
        sums = dict.fromkeys(self.tasks, 0.0)
        n = 0
        for batch in iterate_batches(self.val_data, self.spec.train.batch_size, shuffle=False):
            if self.ranks is not None:
                batch, share, _ = shard(batch, self.ranks)
                if share == 0:
                    continue
            batch = self._to_device(batch)
            out, per_task, _ = self.forward_losses(batch, self.model)
            size = batch[self.spec.input_name].shape[0]
            values = torch.stack([v.float() for v in per_task.values()]).tolist()
            for t, v in zip(per_task, values):
                sums[t] += v * size
            n += size
            for t, ms in metrics.items():
                for m in ms.values():
                    m.update(out[t], batch[self.targets[t]])
        if self.ranks is not None:
            totals = self.ranks.all_sum(torch.tensor([*sums.values(), n], dtype=torch.float64))
            sums, n = dict(zip(sums, totals[:-1].tolist())), int(totals[-1])
            self.ranks.merge_metrics(metrics)
        val_loss = {t: s / max(n, 1) for t, s in sums.items()}
        results = {t: {k: m.compute() for k, m in ms.items()} for t, ms in metrics.items() if ms}
        return val_loss, results
