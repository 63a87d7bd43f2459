"""IMTL-G: impartial multi-task learning, gradient part (Liu, Li, Kuang, Xue, Chen, Yang,
Liao & Zhang, ICLR 2021).

Find ``d = Σ_t α_t g_t`` with ``Σ_t α_t = 1`` whose projection on every *unit* task
gradient is the same, ``d·u_1 = d·u_t`` (``u_t = g_t/‖g_t‖``). In Gramian form
``α ∝ G⁺ ‖g‖`` (``‖g‖`` the vector of row norms), normalised to sum to 1.

Engine: TorchJD's ``IMTLGWeighting`` (pseudo-inverse, so linearly dependent rows are
allowed; it returns zero weights if the sum vanishes). Scaling follows the paper (Σα = 1);
LibMTL solves the same system in its parameterisation. No options.
"""

from __future__ import annotations

from torch import Tensor

from mtlc.balancers.gradient import GramianMethod


class IMTLG(GramianMethod):
    def gramian_weights(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        from torchjd.aggregation import IMTLGWeighting

        return IMTLGWeighting()(gram)
