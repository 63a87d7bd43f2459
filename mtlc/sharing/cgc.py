"""Customized gate control (Tang et al., RecSys 2020, CGC): the one-level form of PLE.

S shared experts read the input every task shares, and each task t has K experts of its
own; task t's gate mixes the shared experts and its own only:

    y_t = Σ_i g_t(x)_i · E_t,i(x),   E_t = [f_shared,1 … f_shared,S, f_t,1 … f_t,K],
    g_t(x) = softmax(W_t · v(x))                                        (paper eq. 2–4)

so a task cannot be dragged by another task's experts (the seesaw the paper names),
while the shared experts still learn from all. v, `top_k` and the weighted sum are
MMoE's (mtlc.sharing.mmoe); the topology lists which experts a gate mixes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mtlc.sharing.mmoe import EXPERTS_HELP, Experts, MixtureOfExperts, MixturePoint, check_experts


class CGC(MixtureOfExperts):
    """Tang et al. 2020: shared experts plus each task's own, a gate per task over both."""

    type: Literal["cgc"]
    shared_experts: Experts = Field(1, description=EXPERTS_HELP)
    task_experts: Experts = Field(1, description="each task's own experts; " + EXPERTS_HELP)

    _check = field_validator("shared_experts", "task_experts")(check_experts)

    def expert_sets(self) -> tuple[Experts, Experts]:
        return self.shared_experts, self.task_experts


class CGCPoint(MixturePoint):
    Options = CGC
