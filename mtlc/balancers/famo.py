"""FAMO: fast adaptive multitask optimization (Liu, Liu, Stone & Liu, NeurIPS 2023).

Balances the *rate* at which each loss falls with O(1) extra cost: task logits ξ give
``z = softmax(ξ)``, and the network trains on

    L = Σ_t z_t log(L_t − b_t + ε) / c,       c = Σ_t z_t / (L_t − b_t + ε)   (c detached)

whose gradient is ``Σ_t (z_t / c) ∇L_t / (L_t − b_t + ε)``. After the optimizer step, with
``δ_t = log(L_t^{before} − b_t + ε) − log(L_t^{after} − b_t + ε)`` (the same batch, new
weights), ξ takes one Adam step along ``J_softmax(ξ)ᵀ δ`` (lr ``w_lr``, weight decay
``gamma``). Defaults are the authors' code and LibMTL's: ``w_lr`` 0.025, ``gamma`` 1e-3,
``b_t = 0``, ε 1e-8.

mtlc's trainer gives the "after" losses through :meth:`after_step` (one extra forward
without gradients, as in the official code). ξ and its Adam moments are buffers, and the
"before" losses too, so resume is exact. All of it stays on the device: the Adam step
count and whether the step had every task's loss are mirrored on the host, so a step
never waits for the device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer, StepView

EPS = 1e-8
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class FAMO(Balancer):
    level = "loss"

    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        w_lr: float = 0.025,
        gamma: float = 1e-3,
    ) -> None:
        super().__init__(tasks, kinds)
        self.w_lr, self.gamma = float(w_lr), float(gamma)
        n = len(self.tasks)
        for name in ("logits", "adam_m", "adam_v", "before"):
            self.register_buffer(name, torch.zeros(n, dtype=torch.float64))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.float64))
        self.register_buffer("pending", torch.zeros((), dtype=torch.bool))
        self._pending, self._steps = False, 0  # host copies of `pending` and `adam_step`

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._pending, self._steps = bool(self.pending), int(self.adam_step)

    def z(self) -> Tensor:
        return torch.softmax(self.logits, dim=0)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        names = self.present(losses)
        idx = [self.index(t) for t in names]
        full = len(names) == len(self.tasks)
        stacked = torch.stack([losses[t].reshape(()) for t in names])
        z = self.z()
        z = (z if full else torch.stack([z[i] for i in idx])).to(stacked.device, stacked.dtype)
        d = stacked - 0.0 + EPS
        c = (z / d).sum().detach()
        self.store_per_task(self.before, stacked, names)
        self.pending.fill_(full)
        self._pending = full
        return (torch.log(d) * z / c).sum()

    def after_step(self, view: StepView) -> None:
        if not self._pending:  # a step without every task's loss: no rate to compare
            return
        after = view.recompute()
        with torch.no_grad():
            now = torch.stack([after[t].detach().reshape(()).double() for t in self.tasks])
            now = now.to(self.before.device)
            delta = torch.log(self.before + EPS) - torch.log(now + EPS)
            z = self.z()
            grad = z * (delta - (z * delta).sum())  # J_softmax(ξ)ᵀ δ
            grad = grad + self.gamma * self.logits  # Adam's L2 weight decay, as torch.optim.Adam
            self.adam_step += 1
            self._steps += 1
            k = float(self._steps)
            self.adam_m.mul_(BETAS[0]).add_((1 - BETAS[0]) * grad)
            self.adam_v.mul_(BETAS[1]).add_((1 - BETAS[1]) * grad * grad)
            m_hat = self.adam_m / (1 - BETAS[0] ** k)
            v_hat = self.adam_v / (1 - BETAS[1] ** k)
            self.logits -= self.w_lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
            self.pending.fill_(False)
            self._pending = False

    def log_tensors(self) -> tuple[Tensor, ...]:
        """The task weights z_t (the effective weight of L_t also has 1/(c·L_t))."""
        return (self.z(),)
