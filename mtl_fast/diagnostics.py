"""Gram diagnostics: what the Gram matrix G = J Jᵀ of the task gradients, which the gradient
methods form anyway, says about the step, at no extra pass over the gradients.

:func:`gram_diagnostics` maps (G [T, T], the weights α [T]) to

* ``norms`` [T]: ‖g_t‖ = √G_tt;
* ``cosines`` [T, T]: G_st / (‖g_s‖ ‖g_t‖) (0 in the rows/columns of zero gradients, 1 on
  their diagonal);
* ``conflict_rate``: the share of negative cosines among the pairs s < t of non-zero gradients
  (0 with fewer than two such tasks);
* ``norm_spread``: max_t ‖g_t‖ / min_t ‖g_t‖ over the non-zero gradients (1 with fewer than
  two);
* ``weight_entropy``: the entropy −Σ p_t log p_t of the effective weights' shares
  p_t = |α_t| ‖g_t‖ / Σ_s |α_s| ‖g_s‖ (how evenly the update's terms are sized; log T when
  every task contributes a term of the same norm, 0 when one task does all; 0 when no term).

All are tensors on G's device (float64), computed without a host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_fast._validation import check_gram

__all__ = ["GramDiagnostics", "gram_diagnostics"]


@dataclass(frozen=True)
class GramDiagnostics:
    """The diagnostics of one step (see :mod:`mtl_fast.diagnostics`)."""

    norms: Tensor
    cosines: Tensor
    conflict_rate: Tensor
    norm_spread: Tensor
    weight_entropy: Tensor


def gram_diagnostics(G: Tensor, alpha: Tensor) -> GramDiagnostics:
    """Diagnostics of a step from its Gram matrix G [T, T] and weights α [T]."""
    check_gram(G)
    T = G.shape[0]
    if alpha.shape != (T,):
        raise ValueError(f"alpha must have shape ({T},); got {tuple(alpha.shape)}")
    G64 = torch.nan_to_num(G.to(torch.float64))
    a = torch.nan_to_num(alpha.to(device=G.device, dtype=torch.float64))
    norms = G64.diagonal().clamp_min(0.0).sqrt()
    live = norms > 0
    safe = torch.where(live, norms, 1.0)
    pair = live[:, None] & live[None, :]
    eye = torch.eye(T, dtype=torch.bool, device=G.device)
    cos = torch.where(pair, G64 / (safe[:, None] * safe[None, :]), 0.0).clamp(-1.0, 1.0)
    cos = torch.where(eye, 1.0, cos)
    upper = pair & torch.triu(torch.ones_like(eye), diagonal=1)
    n_pairs = upper.sum()
    conflicts = (upper & (cos < 0)).sum()
    conflict_rate = torch.where(
        n_pairs > 0, conflicts.to(torch.float64) / n_pairs.clamp_min(1), 0.0
    )
    big = torch.where(live, norms, 0.0).max()
    small = torch.where(live, norms, torch.inf).min()
    norm_spread = torch.where(live.sum() >= 2, big / torch.where(live.sum() >= 2, small, 1.0), 1.0)
    terms = a.abs() * norms
    total = terms.sum()
    p = torch.where(total > 0, terms / torch.where(total > 0, total, 1.0), 0.0)
    entropy = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0).sum()
    return GramDiagnostics(norms, cos, conflict_rate, norm_spread, entropy)
