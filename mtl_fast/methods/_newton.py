"""The damped Newton solve shared by Nash-MTL and FairGrad.

Both weightings are the minimiser x > 0 of f(x) = ½ xᵀCx − Σ_t ψ(x_t) for a symmetric positive
definite C (the unit-gradient or scaled Gram matrix) and a concave barrier ψ: Nash-MTL's
ψ = log (Navon et al. 2022, α_t (Gα)_t = 1), FairGrad's ψ(w) = w^{1−1/α}/(1 − 1/α) (Ban & Ji
2024, (Gw)_t = w_t^{−1/α}). The stationarity condition is C x = ψ'(x); each iteration solves
(C + diag(−ψ''(x))) δ = C x − ψ'(x) by Cholesky and keeps the best of the damped step
1/(1 + λ) and a fixed ladder of step lengths, so that the loop needs no host read off the CPU.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

#: Newton iterations off the CPU (a fixed budget: no host sync). On the CPU the loop stops as
#: soon as the Newton decrement is negligible (typically 5–12 iterations).
NEWTON_ITERS = 30
#: Step lengths tried along the Newton direction, besides the damped step 1/(1 + λ).
STEP_LENGTHS = (8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 1 / 16, 1 / 64, 1 / 256)
#: Stop (on the CPU) when λ², i.e. about twice the remaining decrease f − f*, is below this.
DECREMENT_TOL = 1e-24

_step_length_tensors: dict[torch.device, Tensor] = {}


def _step_lengths(device: torch.device) -> Tensor:
    """:data:`STEP_LENGTHS` as a float64 tensor on ``device``, made once per device: a fresh
    host-to-device copy every step would cost a copy per call and cannot be captured in a CUDA
    graph (the eager warm-up before a capture creates it)."""
    taus = _step_length_tensors.get(device)
    if taus is None:
        taus = torch.tensor(STEP_LENGTHS, dtype=torch.float64, device=device)
        _step_length_tensors[device] = taus
    return taus


def barrier_newton(
    C: Tensor,
    x: Tensor,
    *,
    slope: Callable[[Tensor], Tensor],
    curvature: Callable[[Tensor], Tensor],
    objective: Callable[[Tensor], Tensor],
    max_iter: int | None,
    stop_early: bool | None,
) -> Tensor:
    """Minimise f(x) = ½ xᵀCx − Σ ψ(x_t) from the start ``x`` > 0 (module docstring).

    Args:
        C: [T, T] float64, symmetric positive definite.
        x: [T] float64 start.
        slope: ψ'(x), elementwise.
        curvature: −ψ''(x) > 0, elementwise.
        objective: f for each row of a [S, T] batch, +inf where infeasible.
        max_iter: iterations (default: up to 100 on the CPU, stopping when converged;
            :data:`NEWTON_ITERS` elsewhere).
        stop_early: leave the loop once converged (reads a flag on the host; default: on the
            CPU only). ``False`` runs the fixed, sync-free sequence used on accelerators.
    """
    taus = _step_lengths(C.device)
    if stop_early is None:
        stop_early = C.device.type == "cpu"
    if max_iter is None:
        max_iter = 100 if stop_early else NEWTON_ITERS
    f = objective(x[None])[0]
    for _ in range(max_iter):
        grad = C @ x - slope(x)
        H = C + torch.diag(curvature(x))
        L, _ = torch.linalg.cholesky_ex(H)
        delta = torch.cholesky_solve(grad[:, None], L)[:, 0]
        dec2 = (grad @ delta).clamp_min(0.0)
        if stop_early and float(dec2) < DECREMENT_TOL:
            break
        damped = 1.0 / (1.0 + dec2.sqrt())
        steps = torch.cat([damped[None], taus])
        cand = x[None, :] - steps[:, None] * delta[None, :]
        f_cand = objective(cand)
        f_best, best = f_cand.min(dim=0, keepdim=True)  # no 0-d tensor indexing: it syncs
        better = (f_best < f)[0]
        x = torch.where(better, cand.index_select(0, best)[0], x)
        f = torch.where(better, f_best[0], f)
        if stop_early and not bool(better):  # stalled at rounding level
            break
    return x
