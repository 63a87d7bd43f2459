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

from mtlc.sharing.mmoe import emit

__all__ = ["emit"]
