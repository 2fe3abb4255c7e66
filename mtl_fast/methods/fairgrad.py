r"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024), in Gram
space.

The update d = Σ_t w_t g_t maximises the α-fair utility Σ_t u_α(g_tᵀ d) of the tasks' loss
decreases (α ≥ 0 the fairness parameter; α = 1: proportional fairness, Nash-MTL's bargaining
solution; α → ∞: max-min fairness). Its optimality condition is (their §4)

    (G w)_t = w_t^{−1/α},   w > 0,                                                        (1)

with G = J Jᵀ the Gram matrix of the task gradients. (1) is the stationary point of

    f(w) = ½ wᵀ G w − Σ_t ψ(w_t),   ψ(w) = w^{1−1/α}/(1 − 1/α)  (α ≠ 1),   log w  (α = 1),

which is strictly convex on w > 0 for every α > 0 (ψ is concave) when G is positive definite,
so (1) has one solution. It is solved here by damped Newton steps on f (Hessian
G + diag(w^{−1/α−1}/α)), evaluating f at a fixed set of step lengths along the Newton
direction and keeping the best feasible one (the scheme of :mod:`mtl_fast.methods.nash_mtl`),
on G scaled to unit maximum diagonal s: with Ĝ = G/s, (1) for G is w = s^{−α/(α+1)} v with v
the solution for Ĝ. A ridge ε I (ε = the machine epsilon of G's dtype) keeps f strictly convex
when the gradients are linearly dependent.

The authors' code solves (1) with ``scipy.optimize.least_squares`` (residual Gw − w^{−1/α},
bounds w ≥ 0, from w = 1) on the host; where it converges the two agree to its tolerance.
Here the solve runs on G's device, without host synchronisation off the CPU (a fixed Newton
budget). Compared with the paper: same equation, same update Σ w_t g_t, no further scaling.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._validation import check_gram
from mtl_fast.methods._newton import barrier_newton
from mtl_fast.reference import active_tasks
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["FairGrad", "fairgrad_weights"]


def _objective(C: Tensor, W: Tensor, alpha: float) -> Tensor:
    """f(w) = ½ wᵀCw − Σ ψ(w) for each row of W [S, T]; +inf outside w > 0 or if not finite."""
    feasible = (W > 0).all(dim=1)
    Wp = torch.where(W > 0, W, 1.0)
    if alpha == 1.0:
        psi = torch.log(Wp).sum(dim=1)
    else:
        p = 1.0 - 1.0 / alpha
        psi = (Wp.pow(p) / p).sum(dim=1)
    f = 0.5 * ((W @ C) * W).sum(dim=1) - psi
    return torch.where(feasible & torch.isfinite(f), f, torch.inf)


def fairgrad_weights(
    G: Tensor,
    alpha: float,
    *,
    active: Tensor | None = None,
    max_iter: int | None = None,
    stop_early: bool | None = None,
) -> Tensor:
    """The FairGrad weights: w > 0 with (G w)_t = w_t^{−1/α} (eq. (1) of
    :mod:`mtl_fast.methods.fairgrad`), float64 [T], 0 for inactive tasks.

    Args:
        G: [T, T] Gram matrix.
        alpha: the fairness parameter α > 0.
        active: bool [T], the tasks to include (default: finite, non-zero diagonal).
        max_iter: Newton iterations (default: up to 100 on the CPU, stopping when converged;
            :data:`mtl_fast.methods._newton.NEWTON_ITERS` elsewhere).
        stop_early: leave the loop once converged (reads a flag on the host; default: on the
            CPU only).
    """
    check_gram(G)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0; got {alpha!r}")
    T = G.shape[0]
    G64 = torch.nan_to_num(G.to(torch.float64))
    if active is None:
        active = active_tasks(G64)
    pair = active[:, None] & active[None, :]
    eye = torch.eye(T, dtype=torch.float64, device=G.device)
    s = torch.where(active, G64.diagonal(), 0.0).max().clamp_min(torch.finfo(torch.float64).tiny)
    # Inactive tasks: identity rows (decoupled; their own solution is 1, discarded at the end).
    C = torch.where(pair, G64 / s, eye)
    C = (C + C.T) / 2 + torch.finfo(G.dtype).eps * eye
    ones = active.to(torch.float64)
    # Start: the best multiple c·1 of the active tasks for the quadratic term, c² = k / 1ᵀC1.
    k = ones.sum().clamp_min(1.0)
    c = torch.sqrt(k / (ones @ C @ ones).clamp_min(1e-300))
    w = torch.where(active, c, 1.0)
    w = barrier_newton(
        C,
        w,
        slope=lambda v: v.pow(-1.0 / alpha),
        curvature=lambda v: v.pow(-1.0 / alpha - 1.0) / alpha,
        objective=lambda W: _objective(C, W, alpha),
        max_iter=max_iter,
        stop_early=stop_early,
    )
    scale = s.pow(-alpha / (alpha + 1.0))
    return torch.where(active, w * scale, 0.0)


class FairGrad(Weighting):
    r"""FairGrad: the α-fair allocation of the update among the tasks, (G w)_t = w_t^{−1/α}.

    Ban & Ji (2024), see :mod:`mtl_fast.methods.fairgrad` for the equation and the solve. The
    shared gradient is Σ_t w_t g_t.

    Args:
        num_tasks: T (optional).
        alpha: the fairness parameter α > 0 (default 2.0; the paper tunes α per benchmark;
            α = 1 gives Nash-MTL's weights without its norm clipping).
        max_iter: Newton iterations (see :func:`fairgrad_weights`).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: w [T] (0 for absent tasks).

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, ~10 Newton steps on
    a T×T system. State: none besides the step count.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "not yet captured on a GPU (tests/test_cuda_graph_step.py); the solve has a fixed "
        "budget and no host read off the CPU."
    )

    gradient_based = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        alpha: float = 2.0,
        max_iter: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0; got {alpha!r}")
        if max_iter is not None and (not isinstance(max_iter, int) or max_iter < 1):
            raise ValueError(f"max_iter must be a positive int; got {max_iter!r}")
        self.alpha = float(alpha)
        self.max_iter = max_iter

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        active = active_tasks(G.to(torch.float64)) & inputs.present.to(G.device)
        return fairgrad_weights(G, self.alpha, active=active, max_iter=self.max_iter)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, alpha={self.alpha}"
