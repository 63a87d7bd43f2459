"""Nash-MTL: multi-task learning as a bargaining game (Navon, Shamsian, Achituve, Maron,
Kawaguchi, Chechik & Fetaya, ICML 2022).

The update ``d = Σ_t α_t g_t`` is the Nash bargaining solution: α solves ``G α = 1/α``
(element-wise), so each task's share of the improvement ``g_t·d = 1/α_t`` is scale-fair.
The official code (and TorchJD's port) solves it by a sequence of convex problems
(``optim_niter`` = 20, ECOS) on G normalised by its Frobenius norm (the factor is put back
in the constraint, so α solves the equation for G itself), warm-starting from the previous α, and clips ``‖d‖`` to ``max_norm`` (1.0). Defaults are the official code's and
LibMTL's: ``max_norm 1``, ``update_weights_every 1``, ``optim_niter 20``.

Engine: TorchJD's Nash-MTL weighting (cvxpy + ECOS; the ``mtlc[balancers]`` extra), fed a
``T × T`` matrix with the same Gramian as J, so it also runs on the shared representation.
When ECOS fails, it keeps the previous α, exactly as the official code does; mtlc logs the
first such step. The previous α and the step count are buffers (``nash_alpha``,
``nash_step``): resume is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlc.balancers.gradient import GramianMethod, WarnOnce, require


def _engine(n: int, max_norm: float, every: int, niter: int, warn: WarnOnce) -> Any:
    from torchjd.aggregation._nash_mtl import _NashMTLWeighting

    class Logged(_NashMTLWeighting):
        def _init_optim_problem(self) -> None:
            super()._init_optim_problem()
            solve = self.prob.solve

            def solve_logged(*args: Any, **kwargs: Any) -> Any:
                try:
                    return solve(*args, **kwargs)
                except Exception as exc:
                    warn(type(exc).__name__)
                    raise

            self.prob.solve = solve_logged

    return Logged(n_tasks=n, max_norm=max_norm, update_weights_every=every, optim_niter=niter)


class NashMTL(GramianMethod):
    def __init__(
        self,
        tasks: Sequence[str],
        kinds: Mapping[str, str],
        *,
        wrt: str = "parameters",
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
    ) -> None:
        require("nash_mtl", ("cvxpy", "ecos"))
        super().__init__(tasks, kinds, wrt=wrt)
        n = len(self.tasks)
        self.fallback = WarnOnce("nash_mtl: ECOS failed; keeping the previous weights")
        self.engine = _engine(n, float(max_norm), update_weights_every, optim_niter, self.fallback)
        self.register_buffer("nash_alpha", torch.ones(n, dtype=torch.float64))
        self.register_buffer("nash_step", torch.zeros((), dtype=torch.float64))

    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        engine = self.engine
        n = gram.shape[0]
        if n != engine.n_tasks:  # a step without some task's loss: a fresh one-off solver
            engine = _engine(
                n, engine.max_norm, engine.update_weights_every, engine.optim_niter, self.fallback
            )
        else:
            step = float(self.nash_step)
            if step != engine.step:  # restored from a checkpoint
                engine.prvs_alpha = self.nash_alpha.cpu().numpy().copy()
                if step > 0 and engine.step == 0:
                    engine._init_optim_problem()
                engine.step = step
        eigval, eigvec = torch.linalg.eigh(gram)
        root = eigvec * eigval.clamp(min=0).sqrt()  # root @ root.T == gram
        weights = engine(root)
        if engine is self.engine:
            with torch.no_grad():
                self.nash_alpha.copy_(torch.from_numpy(np.asarray(engine.prvs_alpha, np.float64)))
                self.nash_step.fill_(engine.step)
        return weights
