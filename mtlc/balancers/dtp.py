"""Dynamic task prioritization (Guo, Haque, Huang, Yeung & Fei-Fei, ECCV 2018).

``w_t = −(1 − κ̄_t)^{γ_t} · log κ̄_t``: the focal-loss form applied to a task's
KPI κ_t ∈ [0, 1] (accuracy, mIoU, 1/(1+error), …), so tasks that are doing
badly get more weight. There is no public code; the choices below are ours.

* Moving average: ``κ̄ ← momentum·κ̄ + (1 − momentum)·κ``. ``momentum`` is the
  weight of the *old* average, as in ``torch.optim`` and batch norm. The paper
  and the reference facts write ``κ̄ ← α·κ + (1−α)·κ̄`` with α the weight of the
  *new* value, so α = 1 − momentum (the default 0.9 means α = 0.1).
* κ̄ starts at ``init`` (0.5) without bias correction, so the first steps are
  pulled towards it.
* κ̄ is clamped to [1e-4, 1 − 1e-4] when the weight is computed: log 0 would be
  infinite, and κ̄ = 1 would give a weight of exactly 0 (the task would stop
  training for good).
* The weights are constants for the backward pass (they depend on KPIs, not on
  the parameters), as in the paper.
* κ̄ is kept on the host too (the buffer, for checkpoints, follows it): the KPIs are
  read on the host after each step (:meth:`DTP.after_step`: one wait per step, the only
  one DTP has), so the weights and the log need no further read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer, BalancerError, StepView, is_number

KPI_CLAMP = 1e-4


class DTP(Balancer):
    """Options: ``gamma`` (focusing parameter, a number or ``{task: number}``, default 1),
    ``momentum`` (0.9), ``kpi`` (``{task: metric name}`` resolved by the trainer) and
    ``init`` (initial κ̄, 0.5). The averages κ̄ are the buffer ``kpi_avg`` (task order).
    """

    level = "loss"

    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        gamma: float | Mapping[str, float] = 1.0,
        momentum: float = 0.9,
        kpi: Mapping[str, str] | None = None,
        init: float = 0.5,
    ) -> None:
        super().__init__(tasks, kinds)
        self.gamma = self.per_task("gamma", gamma, 1.0, lambda v: v >= 0, "a number ≥ 0")
        if not is_number(momentum) or not 0 <= momentum < 1:
            raise BalancerError(
                f"balancer option 'momentum' must be in [0, 1), got {momentum!r}", ("momentum",)
            )
        self.momentum = float(momentum)
        if not is_number(init) or not 0 < init < 1:
            raise BalancerError(
                f"balancer option 'init' must be in (0, 1), got {init!r}", ("init",)
            )
        if kpi is None:
            kpi = {}
        if not isinstance(kpi, Mapping):
            raise BalancerError(
                f"balancer option 'kpi' must map task → metric name, got {kpi!r}", ("kpi",)
            )
        self.kpi: dict[str, str] = {}
        for task, metric in kpi.items():
            self.check_task(task, "balancer option 'kpi'", ("kpi", str(task)))
            if not isinstance(metric, str):
                raise BalancerError(
                    f"balancer option 'kpi' for task {task!r} must be a metric name, got {metric!r}",
                    ("kpi", task),
                )
            self.kpi[task] = metric
        self.register_buffer(
            "kpi_avg", torch.full((len(self.tasks),), float(init), dtype=torch.float64)
        )
        self._kpi = [float(init)] * len(self.tasks)  # the host copy of kpi_avg

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._kpi = self.kpi_avg.tolist()

    def observe(self, kpis: Mapping[str, float]) -> None:
        """Fold one step's KPIs into κ̄; a NaN KPI (e.g. mIoU of a batch with no class) is skipped."""
        for task, value in kpis.items():
            self.check_task(task, "observe()")
            value = float(value)
            if math.isnan(value):
                continue
            if not 0.0 <= value <= 1.0:
                raise BalancerError(f"the KPI of task {task!r} must be in [0, 1], got {value}")
            i = self.index(task)
            self._kpi[i] = self.momentum * self._kpi[i] + (1.0 - self.momentum) * value
            self.kpi_avg[i] = self._kpi[i]  # a fill on the device: nothing waits

    def after_step(self, view: StepView) -> None:
        """This step's KPIs: each task's KPI metric (``kpi``, else its first metric) on the
        step's batch, mapped into [0, 1] (:func:`mtlc.metrics.kpi`), then :meth:`observe`."""
        from mtlc.metrics import build_metric, kpi

        metrics = {}
        with torch.no_grad():
            for t in self.tasks:
                names = list(view.metrics.get(t, ()))
                name = self.kpi.get(t) or (names[0] if names else None)
                if name is None:
                    continue
                metrics[t] = {name: build_metric(name)}
                if t in view.outputs and t in view.targets:
                    metrics[t][name].update(view.outputs[t], view.targets[t])
        if view.merge is not None:  # several processes: the global batch's KPIs
            view.merge(metrics)
        kpis = {}
        for t, ms in metrics.items():
            ((name, metric),) = ms.items()
            value = metric.compute()
            if math.isfinite(value):
                kpis[t] = kpi(name, value)
        self.observe(kpis)

    def weights(self) -> dict[str, float]:
        out = {}
        for i, t in enumerate(self.tasks):
            k = min(max(self._kpi[i], KPI_CLAMP), 1.0 - KPI_CLAMP)
            out[t] = -((1.0 - k) ** self.gamma[t]) * math.log(k)
        return out

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        names = self.present(losses)
        w = self.weights()
        return sum(w[t] * losses[t].reshape(()) for t in names)

    def extra_state_for_log(self) -> dict[str, float]:
        return {f"kpi_avg_{t}": self._kpi[i] for i, t in enumerate(self.tasks)}
