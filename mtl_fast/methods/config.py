r"""ConFIG (Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", ICLR 2025), in Gram space.

With the unit gradients u_t = g_t/‖g_t‖ as the columns of U, ConFIG's direction is

    g_u = y / ‖y‖,    y = (Uᵀ)⁺ 1                  (the pseudo-inverse: least-norm solution)
    g_c = (Σ_t g_tᵀ g_u) g_u                                                  (their eq. 2)

When the gradients are linearly independent, u_tᵀ y = 1 for every t: g_c makes the same
positive cosine 1/‖y‖ with every task gradient (no conflict), and its length is the sum of the
gradients' projections on that direction.

Gram space: (Uᵀ)⁺ = U (UᵀU)⁺ and UᵀU = C, the unit-gradient Gram matrix (C = N⁻¹ G N⁻¹,
n_t = ‖g_t‖ = √G_tt). So y = Σ_t β_t u_t with β = C⁺ 1, ‖y‖² = βᵀCβ, Σ_t g_tᵀ y = nᵀCβ, and

    g_c = Σ_t α_t g_t,     α_t = (nᵀ C β) β_t / (βᵀ C β · n_t).

C⁺ is the pseudo-inverse from the eigen-decomposition of C (:func:`mtl_fast.methods._eigh.sym_eigh`,
no host synchronisation off the CPU), eigenvalues below the rounding level of G's dtype
(:func:`mtl_fast._solve_constants.pinv_rel_eps` × λ_max) cut as ``pinv`` cuts them: T > D or
duplicate gradients give finite weights and the least-norm y of the paper's ``pinv``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._solve_constants import pinv_rel_eps
from mtl_fast._validation import check_gram
from mtl_fast.methods._eigh import sym_eigh
from mtl_fast.reference import active_tasks, unit_gram
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["ConFIG", "config_weights"]


def config_weights(G: Tensor, active: Tensor | None = None) -> Tensor:
    """ConFIG's α [T] (float64) with g_c = Σ_t α_t g_t (module docstring); 0 for inactive
    tasks (zero or non-finite gradient, or ``active`` False)."""
    check_gram(G)
    G64 = G.to(torch.float64)
    act = active_tasks(G64) if active is None else active & active_tasks(G64)
    C, n, act = unit_gram(G64, act)
    C = (C + C.T) / 2
    ones = act.to(torch.float64)
    lam, V = sym_eigh(C)
    keep = lam > pinv_rel_eps(G.dtype) * lam.max().clamp_min(0.0)
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, 1.0), 0.0)
    beta = torch.where(act, V @ (inv * (V.T @ ones)), 0.0)
    Cb = C @ beta
    y2 = beta @ Cb
    length = torch.where(act, n, 0.0) @ Cb  # Σ_t g_tᵀ y
    ok = y2 > 0
    coef = torch.where(ok, length / torch.where(ok, y2, 1.0), 0.0)
    return torch.where(act, coef * beta / n, 0.0)


class ConFIG(Weighting):
    r"""ConFIG: the direction with equal positive cosine to every task gradient, scaled by the
    sum of the gradients' projections on it.

    Liu et al. (2025), see :mod:`mtl_fast.methods.config` for the equation and its Gram form.

    Args:
        num_tasks: T (optional).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: α [T] with g_c = Σ_t α_t g_t (0 for absent tasks).

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, one T×T
    pseudo-inverse solve. State: none besides the step count.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "not yet captured on a GPU (tests/test_cuda_graph_step.py); the solve reads no value "
        "on the host off the CPU."
    )

    gradient_based = True

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        return config_weights(G, inputs.present.to(G.device))
