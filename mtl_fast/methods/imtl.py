"""IMTL-G (paper 004 §3.1): impartial gradient balance in Gram space."""

from __future__ import annotations

from torch import Tensor

from mtl_fast import ops
from mtl_fast.weighting import StepInputs, Weighting


class IMTLG(Weighting):
    """IMTL-G: the shared gradient has equal projections onto every task's unit gradient.

    Paper 004 §3.1, eq. 1 and the closed form "(IMTL-G)": g u_1ᵀ = g u_tᵀ for all t with
    Σ α_t = 1, solved in Gram space as G α ∝ n (n_t = ‖g_t‖; see
    :func:`mtl_fast.reference.imtl_g_weights`). Computed on the gradients of the raw losses with
    respect to the shared features (the paper's default, not "IMTL-G (exact)"); use
    :func:`mtl_fast.backward` with ``params=`` for the exact parameter-level variant.

    Needs: feature gradients. Extra cost: one Gram pass and one combine pass over the T feature
    gradients, a T×T solve.
    """

    gradient_based = True

    def _gradient_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        return ops.imtl_g_weights(G, backend=self.backend)
