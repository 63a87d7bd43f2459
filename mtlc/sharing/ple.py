"""Progressive layered extraction (Tang et al., RecSys 2020, PLE): stacked CGC levels.

Consecutive `ple` stages are the levels j = 1 … N. At level j, task t's experts and
gate read task t's output of level j−1, the shared experts read the shared output of
level j−1 (level 1: the stage input, the same for all), and

    y_t^j = g_t^j(x_t^{j−1})ᵀ · [E_shared^j, E_t^j]                     (paper eq. 5)
    y_s^j = g_s^j(x_s^{j−1})ᵀ · [E_shared^j, E_1^j, …, E_T^j]           (paper eq. 6)

— the shared gate of a level mixes every expert of that level, tasks' own included, and
feeds the next level's shared experts. The last level (a `ple` stage not followed by
another) has no shared gate: nothing reads it. v, `top_k` and the weighted sum are
MMoE's (mtlc.sharing.mmoe); the topology says which experts each gate mixes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from mtlc.sharing.cgc import CGC
from mtlc.sharing.mmoe import MixturePoint


class PLE(CGC):
    """Tang et al. 2020: consecutive `ple` stages are stacked CGC levels; every level but
    the last also has a shared gate over all its experts, feeding the next level's shared
    experts (progressive layered extraction)."""

    chains: ClassVar[bool] = True
    type: Literal["ple"]  # type: ignore[assignment]


class PLEPoint(MixturePoint):
    Options = PLE
