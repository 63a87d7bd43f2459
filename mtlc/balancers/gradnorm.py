"""GradNorm: gradient normalisation (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

The network trains on ``Σ_t w_t L_t``; the weights learn to equalise the tasks' training
rates at the last shared layer W: with ``G_t = ‖∇_W w_t L_t‖``, ``Ḡ`` its mean over tasks,
``r_t = (L_t/L_t(0)) / mean_s(L_s/L_s(0))`` the relative inverse training rate,

    L_grad = Σ_t | G_t − Ḡ · r_t^α |        (Ḡ · r_t^α held constant)

and only the weights receive ``∂L_grad/∂w``. ``alpha`` = 1.5 (the paper's NYUv2 value and
LibMTL's default). Weights: ``w = T·softmax(s)`` with learned s (init 0), LibMTL's form
of the paper's "renormalise so that Σ w_t = T". ``L_t(0)`` is the first step's loss (the
paper's; LibMTL uses the first epoch's mean), a buffer, so resume is exact.

W is the last shared weight tensor (dim ≥ 2) in the compiler's order of shared
parameters (graph order): the last shared layer. The cost is T extra backward passes that
stop at W.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlc.balancers.base import Balancer, BalancerError


class GradNorm(Balancer):
    level = "loss"

    def __init__(
        self, tasks: Sequence[str], kinds: Mapping[str, str], *, alpha: float = 1.5
    ) -> None:
        super().__init__(tasks, kinds)
        self.alpha = float(alpha)
        n = len(self.tasks)
        self.logits = torch.nn.Parameter(torch.zeros(n))
        self.register_buffer("initial", torch.zeros(n, dtype=torch.float64))

    def loss_weights(self) -> Tensor:
        return len(self.tasks) * torch.softmax(self.logits, dim=0)

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        shared_params: Sequence[Tensor],
        shared_repr: Tensor | None = None,
    ) -> Tensor:
        names = self.present(losses)
        idx = [self.index(t) for t in names]
        task_losses = [losses[t].reshape(()) for t in names]
        w = self.loss_weights()
        layer = [p for p in shared_params if p.requires_grad and p.dim() >= 2]
        if not layer:
            raise BalancerError(
                "gradnorm needs a shared layer (a shared weight tensor) to measure gradients at;"
                " this model has none",
                ("type",),
            )
        last = layer[-1]
        # all on the device, no index tensor sent: the step never waits for the host
        device = task_losses[0].device
        with torch.no_grad():
            values = torch.stack([x.detach().double() for x in task_losses])
            if names == list(self.tasks):  # every task: one where over the whole buffer
                initial = torch.where(self.initial == 0, values.to(self.initial), self.initial)
                self.initial.copy_(initial)
                initial = initial.to(device)
            else:
                initial = torch.stack([self.initial[i] for i in idx]).to(device)
                initial = torch.where(initial == 0, values, initial)  # L_t(0): the first's
                for j, i in enumerate(idx):
                    self.initial[i] = initial[j]
        norms = []
        for x in task_losses:
            (g,) = torch.autograd.grad(x, last, retain_graph=True, allow_unused=True)
            norms.append(torch.zeros((), device=device) if g is None else g.detach().norm())
        if len(names) > 1:
            wi = torch.stack([w[i] for i in idx]).to(device)
            G = wi * torch.stack(norms).to(wi.dtype)
            ratio = (values / initial.clamp(min=1e-12)).to(wi.dtype)
            r = ratio / ratio.mean()
            target = (G.mean() * r**self.alpha).detach()
            (G - target).abs().sum().backward()
        wd = w.detach()
        total = sum(wd[i].to(x.device) * x for i, x in zip(idx, task_losses))
        total.backward()
        return total.detach()

    def log_tensors(self) -> tuple[Tensor, ...]:
        return (self.loss_weights(),)
