r"""DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning", 2023), in Gram space.

Dual balancing, with k the step and ε = 1e-8:

* loss-scale balancing: every task is trained on its log-loss, ℓ_t = log(L_t + ε); the task
  heads get ∇ log(L_t + ε) = ∇L_t / (L_t + ε);
* gradient-magnitude balancing of the shared parameters: with g_t = ∇_θ log(L_t + ε),

      ĝ_t ← β_k ĝ_t + (1 − β_k) g_t,       β_k = β / k^σ,   ĝ_t = 0 before the first step
      u   = Σ_t (max_s ‖ĝ_s‖ / ‖ĝ_t‖) ĝ_t  = max_s ‖ĝ_s‖ · Σ_t ĝ_t / ‖ĝ_t‖

  (defaults of the authors' code: β = 0.9, σ = 0, so β_k = β): every task contributes its
  (smoothed) direction with the magnitude of the largest (smoothed) task gradient.

The original keeps ĝ, a T×D state (one EMA gradient per task over all shared parameters).
Gram space has only the current gradients and their T×T Gram matrix G, so this implementation
keeps T numbers: an EMA of each task's gradient NORM, with the same recursion and zero start,

      n̂_t ← β_k n̂_t + (1 − β_k) ‖g_t‖,     ‖g_t‖ = √G_tt,

and returns

      u' = (max_s n̂_s) Σ_t g_t / ‖g_t‖,      i.e.  α_t = max_s n̂_s / ‖g_t‖.

What is and is not equivalent (each statement is checked in tests/methods/test_dbmtl.py):

* β = 0 (no smoothing): ĝ = g, n̂ = ‖g‖, and u' = u exactly.
* Each task's gradient keeps its direction over time (g_t^{(k)} = c_t^{(k)} d_t with c > 0):
  ĝ_t = n̂_t d_t, so ‖ĝ_t‖ = n̂_t and ĝ_t/‖ĝ_t‖ = g_t/‖g_t‖ = d_t: u' = u exactly, at every
  step (including the zero-start bias of the first steps, which both share).
* In general they differ in two ways: (1) DIRECTIONS: u' combines the current unit gradients,
  u the unit EMA gradients (the original also smooths the direction, like per-task momentum);
  (2) MAGNITUDE: max_s n̂_s ≥ max_s ‖ĝ_s‖ (the EMA of the norms bounds the norm of the EMA,
  triangle inequality; equal iff each task's past gradients are positively collinear). What
  u' keeps exactly is the paper's balancing property: every task contributes a term of the
  same norm, max_s n̂_s, at every step.
* The natural alternative α_t = max_s n̂_s / n̂_t (EMA norm in the denominator) would NOT keep
  that property (term norms max n̂ · ‖g_t‖/n̂_t) and equals u only for β = 0 or constant
  gradients; it is not used.

No exact variant is offered: the EMA of gradients needs the T×D buffer and a combine of that
buffer (not of the current rows) in the backward, which the Gram-space pipeline does not
expose; at the feature level (``split``) an EMA of feature gradients would not even be
meaningful (each batch has different features). With :func:`mtl_fast.backward` and
``params=`` the norms are those of the parameter gradients, as in the original.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast.methods.baselines import positive_losses
from mtl_fast.reference import active_tasks
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["DBMTL", "dbmtl_weights"]

#: ε of log(L_t + ε) (the authors' code).
DEFAULT_EPS = 1e-8


def dbmtl_weights(
    G: Tensor, ema_norms: Tensor, counts: Tensor, beta: float, sigma: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    r"""One DB-MTL gradient-balancing step in Gram space.

    Args:
        G: the Gram matrix [T, T] of the (log-loss) task gradients.
        ema_norms: n̂ [T] before this step (0 at the start).
        counts: [T] int64, how many times each task's n̂ has been updated.
        beta, sigma: β_k = β / k^σ with k the task's update count after this step.

    Returns:
        (α [T] float64 with u' = Σ_t α_t g_t, the updated n̂, the updated counts).

    Only active tasks (finite, non-zero gradient) update n̂ and their count and take part in
    the max; inactive tasks get α = 0 and keep their state.
    """
    G64 = G.to(torch.float64)
    active = active_tasks(G64)
    norms = torch.where(active, torch.nan_to_num(G64.diagonal()).clamp_min(0.0).sqrt(), 0.0)
    counts = counts.to(G.device) + active.to(torch.int64)
    k = counts.clamp_min(1).to(torch.float64)
    b = beta / torch.pow(k, sigma) if sigma != 0.0 else torch.full_like(k, beta)
    ema = ema_norms.to(device=G.device, dtype=torch.float64)
    ema = torch.where(active, b * ema + (1.0 - b) * norms, ema)
    top = torch.where(active, ema, 0.0).max()
    alpha = torch.where(active, top / torch.where(active, norms, 1.0), 0.0)
    return alpha, ema, counts


class DBMTL(Weighting):
    r"""DB-MTL: log-loss scale balancing plus max-norm gradient-magnitude balancing.

    See :mod:`mtl_fast.methods.dbmtl` for the equations and exactly how the Gram-space state
    (an EMA of the T gradient norms) relates to the original's EMA of the T gradients.

    * ``loss(losses)`` returns Σ_t log(L_t + ε) over the present tasks: each head is trained on
      its log-loss, and ``split``'s backward receives g_t = ∇_z log(L_t + ε).
    * In ``split``'s backward: n̂_t ← β_k n̂_t + (1 − β_k)‖g_t‖ and the shared gradient is
      Σ_t (max_s n̂_s / ‖g_t‖) g_t.

    Args:
        num_tasks: T.
        beta: β of the EMA (default 0.9, the authors' code).
        sigma: σ in β_k = β / k^σ (default 0: a constant β, the authors' code).
        eps: ε in log(L_t + ε) (default 1e-8).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    Masks: an absent (or zero-gradient) task has weight 0, its n̂_t and its update count are
    untouched (β_k uses per-task counts, equal to the global step when no task is ever absent)
    and it is left out of the max. L_t + ε must be > 0 (CPU: ``ValueError``; other devices: the
    task is absent for the step and the error is raised at the next call).

    ``weights``: the effective factor of each raw loss's feature gradient,
    α_t / (L_t + ε) (u' = Σ_t α_t ∇_z log(L_t + ε) = Σ_t α_t/(L_t + ε) ∇_z L_t);
    :attr:`gradient_weights` gives α_t = max_s n̂_s / ‖g_t‖; :attr:`ema_norms` gives n̂.

    Needs: losses and feature gradients. Extra cost: one Gram pass, one combine pass, T numbers
    of state (the original: T×D).

    Under ``torch.distributed`` the log-losses are those of the losses averaged across
    processes, linearised (c_t = 1/(L̄_t + ε) on every process), so DDP's averaged gradient is
    that of one process on the whole batch (:mod:`mtl_fast.distributed`).
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "replays diverged from eager steps on an H200 (2026-12-04): part of its per-step state "
        "lives on the host and is frozen into the graph."
    )

    gradient_based = True

    def __init__(
        self,
        num_tasks: int,
        *,
        beta: float = 0.9,
        sigma: float = 0.0,
        eps: float = DEFAULT_EPS,
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        super().__init__(num_tasks, **kwargs)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1); got {beta!r}")
        if not sigma >= 0.0:
            raise ValueError(f"sigma must be >= 0; got {sigma!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0; got {eps!r}")
        self.beta = float(beta)
        self.sigma = float(sigma)
        self.eps = float(eps)
        self._state["ema_norms"] = torch.zeros(num_tasks, dtype=torch.float64)
        self._state["counts"] = torch.zeros(num_tasks, dtype=torch.int64)
        self._state["alpha"] = None
        self._step_scales: Tensor | None = None

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def ema_norms(self) -> Tensor:
        """n̂ [T] (float64): the EMA of each task's log-loss gradient norm."""
        return self._state["ema_norms"]

    @property
    def gradient_weights(self) -> Tensor:
        """α [T] of the last step (on the log-loss gradients), detached."""
        a = self._state["alpha"]
        if a is None:
            return self.initial_weights(self.num_tasks)  # type: ignore[arg-type]
        return a

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        # Log-losses are not linear in the losses: under torch.distributed, those of the losses
        # averaged across processes, linearised (Weighting._linearised_total), so the heads and
        # the Gram matrix see c_t = 1/(L̄_t + ε) on every process.
        return self._linearised_total(self._log_total, losses, present)

    def _log_total(self, losses: Tensor, present: Tensor) -> Tensor:
        shifted = losses + self.eps
        present = positive_losses(self, shifted, present, "DBMTL")
        safe = torch.where(present, shifted, torch.ones_like(shifted))
        self._step_scales = torch.where(present, 1.0 / safe.detach(), 0.0)
        return torch.where(present, torch.log(safe), 0.0).sum()

    def loss_gradient_scales(self) -> Tensor | None:
        return self._step_scales

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        alpha, ema, counts = dbmtl_weights(
            G, self._state["ema_norms"], self._state["counts"], self.beta, self.sigma
        )
        self._state["ema_norms"] = ema
        self._state["counts"] = counts
        return alpha

    def effective_weights(self, alpha: Tensor) -> Tensor:
        self._state["alpha"] = alpha.detach()
        c = self._step_scales
        self._step_scales = None
        return alpha if c is None else alpha * c.to(alpha.device, alpha.dtype)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, beta={self.beta}, sigma={self.sigma}"
