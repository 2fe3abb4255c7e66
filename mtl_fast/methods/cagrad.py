"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021),
in Gram space.

CAGrad looks for the update d that maximises the worst task improvement in a ball around the
average gradient g_0 = (1/T) Σ_t g_t:

    max_d min_t ⟨g_t, d⟩   s.t.   ‖d − g_0‖ ≤ c ‖g_0‖,          c ∈ [0, 1).

Its dual is a problem over the simplex (g_w = Σ_t w_t g_t, φ = c² ‖g_0‖²):

    w* = argmin_{w ∈ Δ} F(w),   F(w) = g_wᵀ g_0 + sqrt(φ) ‖g_w‖,

and the update is d = g_0 + (sqrt(φ) / ‖g_w*‖) g_w*. Everything is a function of G:
g_wᵀ g_0 = wᵀ G b (b = 1/T), ‖g_w‖² = wᵀ G w, ‖g_0‖² = bᵀ G b, so
d = Σ_t α_t g_t with α = b + (sqrt(φ)/‖g_w*‖) w*.

The original code divides d by 1 + c² (its default ``rescale=1``; ``rescale=2`` divides by
1 + c, ``rescale=0`` not at all); ``rescale=`` offers the three, the default follows the code.

Solver (exact, on the device, no SciPy, no host transfer). With sqrt(x) = min_{t>0} x/(2t) + t/2,

    min_w F(w) = min_{t>0} min_{w ∈ Δ} (r/2t) ‖g_w + β g_0‖² + const(t),   r = sqrt(φ), β = t/r,

because Σ w = 1 makes g_w + β g_0 = Σ_t w_t (g_t + β g_0). For fixed t the inner problem is the
minimum-norm point of the convex hull of the shifted gradients g_t + β g_0, i.e. MGDA on the
shifted Gram matrix G_β = G + β (a 1ᵀ + 1 aᵀ) + β² q 11ᵀ (a = G b, q = bᵀ G b), solved exactly
by :func:`mtl_fast.mgda_weights`. The outer problem is convex in t and optimal where
t = ρ(t) ≡ ‖g_{w*(t)}‖; ρ(t)/t is non-increasing, so the root of φ(u) = log ρ(e^u) − u is
bracketed by t_lo = ‖g_MGDA‖ (ρ ≥ the hull's minimum norm) and t_hi = max_t ‖g_t‖, and found
by the Illinois variant of regula falsi (a fixed number of steps off the CPU: no host sync).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtl_fast import ops
from mtl_fast.reference import active_tasks
from mtl_fast.weighting import StepInputs, Weighting

#: The values of ``CAGrad(rescale=)``: the divisor 1, 1 + c² or 1 + c of the direction.
RESCALES = (0, 1, 2)
#: Regula-falsi (Illinois) steps of the outer 1-D search off the CPU (on the CPU it stops as soon
#: as the bracket is below ROOT_TOL, which is read for free).
ROOT_ITERS = 24
#: Relative width of the bracket on log t at which the CPU search stops.
ROOT_TOL = 1e-13


def _shifted_gram(G: Tensor, a: Tensor, q: Tensor, beta: Tensor, active: Tensor) -> Tensor:
    """Gram matrix of g_t + β g_0 over the active tasks (inactive rows/columns 0)."""
    Gb = G + beta * (a[:, None] + a[None, :]) + (beta * beta) * q
    return torch.where(active[:, None] & active[None, :], Gb, 0.0)


def cagrad_dual(
    G: Tensor,
    c: float,
    *,
    iters: int = ROOT_ITERS,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """(w*, ρ = ‖g_w*‖): the minimiser over the simplex of F(w) = wᵀGb + c‖g_0‖ sqrt(wᵀGw).

    b is uniform over the active tasks (nonzero, finite G_tt); inactive tasks get w = 0. float64.
    When c‖g_0‖ = 0 the problem is degenerate (F = wᵀGb); b is returned.
    """
    G64 = G.to(torch.float64)
    active = active_tasks(G64)
    pair = active[:, None] & active[None, :]
    G64 = torch.where(pair, torch.nan_to_num(G64), 0.0)
    n_active = active.sum().clamp_min(1)
    b = active.to(torch.float64) / n_active
    a = G64 @ b
    q = (b @ a).clamp_min(0.0)
    r = c * q.sqrt()
    # float64 where the exact solvers take it cheaply (the CPU); off the CPU the fast solve
    # kernel is served float32 (ops.mgda_weights sends float64 to the slower reference there).
    solve_dtype = torch.float64 if G.device.type == "cpu" else torch.float32

    def w_of(t: Tensor) -> tuple[Tensor, Tensor]:
        beta = t / torch.where(r > 0, r, 1.0)
        Gb = _shifted_gram(G64, a, q, beta, active).to(solve_dtype)
        w = ops.mgda_weights(Gb, backend=backend).to(torch.float64)
        rho = (w @ (G64 @ w)).clamp_min(0.0).sqrt()
        return w, rho

    tiny = torch.finfo(torch.float64).tiny
    # Bracket on u = log t: phi(u) = log rho(e^u) - u is >= 0 at t_lo and <= 0 at t_hi.
    hi_t = torch.where(active, G64.diagonal(), 0.0).max().clamp_min(tiny).sqrt()
    _, rho0 = w_of(torch.zeros((), dtype=torch.float64, device=G.device))
    lo_t = torch.maximum(rho0, hi_t * 1e-12)
    u_lo, u_hi = lo_t.log(), hi_t.log()

    def phi(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w, rho = w_of(u.exp())
        return rho.clamp_min(tiny).log() - u, w, rho

    f_lo, w_lo, rho_lo = phi(u_lo)
    f_hi, w_hi, rho_hi = phi(u_hi)
    # The best point so far (smallest |phi|): the answer.
    lo_better = f_lo.abs() <= f_hi.abs()
    best_f = torch.where(lo_better, f_lo, f_hi).abs()
    w = torch.where(lo_better, w_lo, w_hi)
    rho = torch.where(lo_better, rho_lo, rho_hi)
    f_lo = f_lo.clamp_min(0.0)  # >= 0 and <= 0 in exact arithmetic
    f_hi = f_hi.clamp_max(0.0)
    side = torch.zeros((), dtype=torch.int64, device=G.device)
    stop_early = G.device.type == "cpu"
    for _ in range(iters):
        if stop_early and bool(
            (best_f <= ROOT_TOL) | (u_hi - u_lo <= ROOT_TOL * (1.0 + u_lo.abs()))
        ):
            break
        denom = f_lo - f_hi
        u_sec = u_lo + (u_hi - u_lo) * f_lo / denom.clamp_min(tiny)
        inside = (denom > 0) & (u_sec > u_lo) & (u_sec < u_hi)
        u = torch.where(inside, u_sec, 0.5 * (u_lo + u_hi))
        f, w_u, rho_u = phi(u)
        better = f.abs() < best_f
        best_f = torch.where(better, f.abs(), best_f)
        w = torch.where(better, w_u, w)
        rho = torch.where(better, rho_u, rho)
        up = f > 0  # the root lies above u
        u_lo = torch.where(up, u, u_lo)
        u_hi = torch.where(up, u_hi, u)
        # Illinois: halve the value kept at the end that stayed twice in a row.
        f_hi = torch.where(up, torch.where(side == 1, f_hi / 2, f_hi), f)
        f_lo = torch.where(up, f, torch.where(side == -1, f_lo / 2, f_lo))
        side = torch.where(up, 1, -1).to(side.dtype)
    degenerate = ~(r > 0)
    w = torch.where(degenerate, b, torch.where(active, w, 0.0))
    rho = torch.where(degenerate, (b @ a).clamp_min(0.0).sqrt(), rho)
    return w, rho


def cagrad_weights(
    G: Tensor, c: float = 0.5, *, rescale: int = 1, iters: int = ROOT_ITERS, backend: str = "auto"
) -> Tensor:
    """CAGrad weights α [T] (float64): d = Σ_t α_t g_t (module docstring).

    α = (b + (c‖g_0‖ / ‖g_w*‖) w*) / s with b uniform over the active tasks and
    s = 1 (``rescale=0``), 1 + c² (``rescale=1``, the original default) or 1 + c (``rescale=2``).
    If ‖g_w*‖ = 0 (possible only for c ≥ 1, when 0 is in the convex hull) the correction term is
    undefined and dropped: d = g_0 / s.
    """
    if rescale not in RESCALES:
        raise ValueError(f"rescale must be one of {RESCALES}; got {rescale!r}")
    if not (c >= 0 and math.isfinite(c)):
        raise ValueError(f"c must be a finite number >= 0; got {c!r}")
    G64 = G.to(torch.float64)
    active = active_tasks(G64)
    b = active.to(torch.float64) / active.sum().clamp_min(1)
    s = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    if c == 0:  # d = g_0: no solve needed
        return b / s
    Gm = torch.where(active[:, None] & active[None, :], torch.nan_to_num(G64), 0.0)
    r = c * (b @ (Gm @ b)).clamp_min(0.0).sqrt()
    w, rho = cagrad_dual(G, c, iters=iters, backend=backend)
    scale_ref = torch.where(active, Gm.diagonal(), 0.0).max().clamp_min(0.0).sqrt()
    usable = (r > 0) & (rho > 1e-12 * scale_ref)
    lam = torch.where(usable, r / torch.where(usable, rho, 1.0), 0.0)
    alpha = b + lam * w
    return torch.where(active, alpha / s, 0.0)


class CAGrad(Weighting):
    """CAGrad: the update maximising the worst task's improvement near the average gradient.

    d = g_0 + (c‖g_0‖/‖g_w*‖) g_w*, w* the minimiser over the simplex of
    g_wᵀg_0 + c‖g_0‖‖g_w‖ (module :mod:`mtl_fast.methods.cagrad`), divided by 1 + c² by default
    (as the original code). Solved exactly in Gram space on the gradients' device: a 1-D search
    whose steps are MGDA min-norm solves (:func:`mtl_fast.mgda_weights`) of a shifted Gram matrix.

    Args:
        num_tasks: T (optional).
        c: the radius of the ball around g_0, relative to ‖g_0‖ (default 0.5; the paper uses
            c ∈ [0, 1); c = 0 is the average gradient).
        rescale: 1 (default, the original code): divide d by 1 + c²; 2: by 1 + c; 0: no rescaling.
        iters: steps of the outer 1-D search off the CPU (default 24; the CPU stops at
            convergence).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    Absent tasks are left out of g_0 (the mean is over the present tasks) and of the solve.

    ``weights``: α [T] with d = Σ_t α_t g_t.

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, ~10–25 T×T MGDA solves.
    """

    gradient_based = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        c: float = 0.5,
        rescale: int = 1,
        iters: int = ROOT_ITERS,
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        if not (isinstance(c, (int, float)) and c >= 0 and math.isfinite(c)):
            raise ValueError(f"c must be a finite number >= 0; got {c!r}")
        if rescale not in RESCALES:
            raise ValueError(f"rescale must be one of {RESCALES}; got {rescale!r}")
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be a positive int; got {iters!r}")
        self.c = float(c)
        self.rescale = rescale
        self.iters = iters

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        return cagrad_weights(
            G, self.c, rescale=self.rescale, iters=self.iters, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, c={self.c}, rescale={self.rescale}"
