"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022), in Gram space.

The update Δθ = Σ_t α_t g_t is the Nash bargaining solution of the tasks: it maximises
Σ_t log(g_tᵀ Δθ) over a ball, and its weights are characterised by (their §3, the optimality
condition of the bargaining problem)

    Gᵀ α = 1/α   (element-wise),   α > 0,        i.e.   α_t (G α)_t = 1 for every t,      (1)

with G = J Jᵀ the Gram matrix of the task gradients. Their Algorithm 1 solves (1) by a sequence
of convex problems (with cvxpy); here (1) is solved exactly, on the device, as the stationary point
of a strictly convex function:

    α* = argmin_{α > 0} f(α),   f(α) = ½ αᵀ G α − Σ_t log α_t,   ∇f = G α − 1/α.          (2)

f is the sum of a convex quadratic and a self-concordant barrier, so damped Newton steps
α ← α − Δ/(1 + λ), Δ = H⁻¹∇f, H = G + diag(1/α²), λ² = ∇fᵀΔ (the Newton decrement) stay in
α > 0, decrease f, and converge quadratically (Nesterov & Nemirovski). Each iteration here
evaluates f at a fixed set of step lengths along Δ (the damped step, the Newton step, and
powers of 2 above and below it) and keeps the best feasible one: at least the damped step's
guaranteed decrease, and much larger steps far from the solution. The system is solved on the
unit-gradient Gram matrix C = N⁻¹ G N⁻¹ (n_t = ‖g_t‖), with α = β / n where β solves (1) for C —
an exact change of variables that makes the iteration invariant to the gradients' scales —
started from the best multiple of 1 (β = s·1, s² = T / 1ᵀC1).

Solution properties (tested): α_t (Gα)_t = 1; ‖Σ_t α_t g_t‖² = αᵀGα = T; scaling one gradient
by k > 0 divides its weight by k and leaves the update unchanged (the Nash solution is invariant
to the tasks' loss scales, a property the paper proves).

Degenerate inputs: (1) has no solution when 0 is a non-negative combination of the gradients
(a Pareto-stationary point). A ridge ε I is added to C (ε = the machine epsilon of G's dtype by
default, the rounding level of G), so α stays finite (large) and the update tends to 0 there.
Absent or zero gradients: weight 0, excluded from (1).

Differences from the paper's code and torchjd 0.18 (deliberate): they run at most 20 rounds of
their convex-concave procedure (cvxpy/ECOS, warm-started from the previous step's α) and stop
when ‖Gα − 1/α‖ < 1e-3 (on G normalised to unit Frobenius norm) or α stops moving; on
conflicting gradients they can stop at a feasible point with some α_t (Gα)_t > 1, i.e. not at
the Nash solution (an independent check found this on 2 of 30 random 4-task problems whose
gradient norms spread over e^±2; how often it happens depends on the problem mix, so no rate is
claimed here), and their α depends on the previous steps. Here (1) is solved to rounding
precision from a fixed start, so α depends only on the current G. Where their iteration does
reach the Nash point the two agree to its tolerance (~1e-5 relative on the update). Their
max-norm clipping acts on the gradient of the shared parameters; here on the combined feature
gradient (what ``split`` sees).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._validation import check_gram
from mtl_fast.methods._newton import barrier_newton
from mtl_fast.reference import active_tasks, unit_gram
from mtl_fast.weighting import StepInputs, Weighting


def _objective(C: Tensor, B: Tensor) -> Tensor:
    """f(β) = ½ βᵀCβ − Σ log β for each row of B [S, T]; +inf outside β > 0 or if not finite."""
    feasible = (B > 0).all(dim=1)
    logs = torch.log(torch.where(B > 0, B, 1.0)).sum(dim=1)
    f = 0.5 * ((B @ C) * B).sum(dim=1) - logs
    return torch.where(feasible & torch.isfinite(f), f, torch.inf)


def nash_weights(
    G: Tensor,
    *,
    active: Tensor | None = None,
    ridge: float | None = None,
    max_iter: int | None = None,
    stop_early: bool | None = None,
) -> Tensor:
    """The Nash bargaining weights: α > 0 with α_t (G α)_t = 1 (eq. (1) of
    :mod:`mtl_fast.methods.nash_mtl`), float64 [T], 0 for inactive tasks.

    Args:
        G: [T, T] Gram matrix.
        active: bool [T], the tasks to include (default: finite, non-zero diagonal).
        ridge: ε added to the unit-gradient Gram matrix (default: machine epsilon of G's dtype).
        max_iter: Newton iterations (default: up to 100 on the CPU, stopping when converged;
            :data:`mtl_fast.methods._newton.NEWTON_ITERS` elsewhere).
        stop_early: leave the loop once converged (reads a flag on the host; default: on the
            CPU only). ``False`` runs the fixed, sync-free sequence used on accelerators.
    """
    check_gram(G)
    T = G.shape[0]
    G64 = G.to(torch.float64)
    if active is None:
        active = active_tasks(G64)
    C, n, active = unit_gram(G64, active)
    C = (C + C.T) / 2  # a Gram matrix accumulated in fp32 may be asymmetric by rounding
    eps = torch.finfo(G.dtype).eps if ridge is None else float(ridge)
    eye = torch.eye(T, dtype=torch.float64, device=G.device)
    C = C + eps * eye
    # Start at the best multiple of 1 over the active tasks; inactive ones (identity rows of C)
    # are decoupled and start at their own solution 1/sqrt(1 + ε).
    ones = active.to(torch.float64)
    k = ones.sum().clamp_min(1.0)
    s = torch.sqrt(k / (ones @ C @ ones).clamp_min(1e-300))
    beta = torch.where(active, s, 1.0 / (1.0 + eps) ** 0.5)
    beta = barrier_newton(
        C,
        beta,
        slope=lambda b: 1.0 / b,
        curvature=lambda b: 1.0 / (b * b),
        objective=lambda B: _objective(C, B),
        max_iter=max_iter,
        stop_early=stop_early,
    )
    return torch.where(active, beta / n, 0.0)


def clip_to_max_norm(alpha: Tensor, G: Tensor, max_norm: float) -> Tensor:
    """α scaled so that ‖Σ_t α_t g_t‖ = sqrt(αᵀGα) ≤ max_norm (unchanged when already below, or
    when max_norm ≤ 0). No host synchronisation."""
    if max_norm <= 0:
        return alpha
    G64 = torch.nan_to_num(G.to(torch.float64))
    a = alpha.to(torch.float64)
    norm = (a @ G64 @ a).clamp_min(0.0).sqrt()
    factor = torch.where(norm > max_norm, max_norm / torch.where(norm > 0, norm, 1.0), 1.0)
    return (a * factor).to(alpha.dtype)


class NashMTL(Weighting):
    """Nash-MTL: the Nash bargaining solution of the tasks, α_t (G α)_t = 1.

    Navon et al. (2022), §3 and Algorithm 1 (see :mod:`mtl_fast.methods.nash_mtl`
    for the Newton solve of α_t (Gα)_t = 1 used instead of the paper's cvxpy sequence of convex
    problems). The update g = Σ_t α_t g_t is invariant to the scale of each task's loss.

    Scale of the weights: α solves (1) for the raw Gram matrix G, so ‖g‖² = αᵀGα = T exactly.
    This is the paper's α: its code normalises G by its Frobenius norm for the solver but keeps
    the constraint α_t(Gα)_t ≥ 1 in the original scale (its cvxpy constraint carries the
    normalisation factor back), so when its iteration reaches the Nash point its weights equal
    these. The paper's code then clips the norm of the shared parameters' gradient to
    ``max_norm`` = 1 (``clip_grad_norm_``); here the same clipping is applied to the combined
    feature gradient: α ← α · min(1, max_norm / sqrt(αᵀGα)), recomputed every step with the
    current G (also on steps that reuse the weights), as torchjd does.

    Args:
        num_tasks: T (optional).
        max_norm: bound on ‖Σ α_t g_t‖ (default 1.0, the paper's code and torchjd); 0 disables.
        update_weights_every: solve every k-th step and reuse the last solution in between
            (the paper's speed-up; default 1). The counter and the last solution are in
            ``state_dict()``. A task absent at the last solve keeps weight 0 until the next one.
        max_iter: Newton iterations (see :func:`nash_weights`).
        ridge: ε of :func:`nash_weights` (default: machine epsilon of G's dtype).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: α [T] after the max-norm scaling (0 for absent tasks); :attr:`nash_weights`
    gives the unclipped solution of the last solve.

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, ~10 Newton steps on a
    T×T system (every ``update_weights_every`` steps).
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "its capture failed on an H200 (2026-12-04: a host-to-device copy of the step lengths); "
        "the copy is now made once per device, but the capture has not been re-checked on a GPU."
    )

    gradient_based = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        max_iter: int | None = None,
        ridge: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be non-negative; got {max_norm!r}")
        if not isinstance(update_weights_every, int) or update_weights_every < 1:
            raise ValueError(
                f"update_weights_every must be a positive int; got {update_weights_every!r}"
            )
        if max_iter is not None and (not isinstance(max_iter, int) or max_iter < 1):
            raise ValueError(f"max_iter must be a positive int; got {max_iter!r}")
        if ridge is not None and not ridge >= 0:
            raise ValueError(f"ridge must be non-negative; got {ridge!r}")
        self.max_norm = float(max_norm)
        self.update_weights_every = update_weights_every
        self.max_iter = max_iter
        self.ridge = ridge
        self._state["nash_calls"] = 0
        self._state["nash_alpha"] = None

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def nash_weights(self) -> Tensor:
        """The unclipped solution α of the last solve (detached), or ones before the first."""
        a = self._state["nash_alpha"]
        if a is None:
            return self.initial_weights(self.num_tasks)  # type: ignore[arg-type]
        return a

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        calls = int(self._state["nash_calls"])
        self._state["nash_calls"] = calls + 1
        stored = self._state["nash_alpha"]
        active = active_tasks(G.to(torch.float64)) & inputs.present.to(G.device)
        if stored is None or calls % self.update_weights_every == 0:
            alpha = nash_weights(G, active=active, ridge=self.ridge, max_iter=self.max_iter)
            self._state["nash_alpha"] = alpha.detach()
        else:
            alpha = stored.to(G.device)
        alpha = torch.where(active, alpha, 0.0)
        return clip_to_max_norm(alpha, G, self.max_norm)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, max_norm={self.max_norm}, "
            f"update_weights_every={self.update_weights_every}"
        )
