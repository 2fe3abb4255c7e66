"""Impartial multi-task learning (Liu et al., ICLR 2021): IMTL-G, IMTL-L and IMTL.

* :class:`IMTLG` (§3.1), gradient balance: the shared gradient g = Σ α_t g_t has equal
  projections onto every task's unit gradient (eq. 1), with Σ α_t = 1.
* :class:`IMTLL` (§3.2), loss balance: learnable scales s_t, each task trained on the scaled loss
  e^{s_t} L_t − s_t (eq. 6), whose minimum over s_t is at e^{s_t} L_t = 1 (eq. 3).
* :class:`IMTL` (§3.3, Algorithm 1), hybrid: the task heads and s_t are trained by
  e^{s_t} L_t − s_t, the shared parameters by Σ α_t (e^{s_t} L_t) with α the IMTL-G weights of
  the gradients of the scaled losses e^{s_t} L_t.

IMTL-L and IMTL share the scale parameters and the scaled loss (:class:`_LossScales`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl_fast import ops
from mtl_fast.weighting import StepInputs, Weighting

#: |s_t| is clamped to this bound in the forward value of e^{s_t} (overflow guard; e^30 ≈ 1e13:
#: losses between ~1e-13 and ~1e13 reach their balance e^{s_t} L_t = 1 inside the bound).
MAX_LOG_SCALE = 30.0


class IMTLG(Weighting):
    """IMTL-G: the shared gradient has equal projections onto every task's unit gradient.

    Liu et al. 2021 §3.1, eq. 1 and the closed form "(IMTL-G)": g u_1ᵀ = g u_tᵀ for all t with
    Σ α_t = 1, solved in Gram space as G α ∝ n (n_t = ‖g_t‖; see
    :func:`mtl_fast.reference.imtl_g_weights`). Computed on the gradients of the raw losses with
    respect to the shared features (the paper's default, not "IMTL-G (exact)"); use
    :func:`mtl_fast.backward` with ``params=`` for the exact parameter-level variant.

    The direction of g does not change when a loss is multiplied by a positive constant
    (Theorem 2: α_t → (α_t/k_t) / Σ_τ α_τ/k_τ).

    ``weights``: α [T], Σ α = 1 over the present tasks (0 for absent ones). An α_t can be
    negative: the equal-projection condition allows it (the paper constrains only Σ α = 1), e.g.
    when one task's gradient nearly repeats another's in a conflicting pair; the combined
    gradient still has equal positive projections on the unit gradients whenever the tasks'
    gradients are linearly independent.

    Needs: feature gradients. Extra cost: one Gram pass and one combine pass over the T feature
    gradients, a T×T solve.
    """

    gradient_based = True

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        return ops.imtl_g_weights(G, backend=self.backend)

    def native_solve(self) -> str | None:
        return "imtl_g" if self.backend == "auto" else None


class _LossScales:
    """The learnable loss scales of IMTL-L (Liu et al. 2021 §3.2), shared by :class:`IMTLL` and
    :class:`IMTL` (mixed into a :class:`~mtl_fast.Weighting`).

    The parameter ``log_scales`` holds s [T], initialised to 0 (e^s = 1); put it in the
    optimizer. The scaled loss of a present task is (eq. 6, default a = e, b = 1)

        g(s_t) = e^{s_t} L_t − s_t,      ∂g/∂s_t = e^{s_t} L_t − 1,

    convex in s_t with its minimum where e^{s_t} L_t = 1 (eq. 3), so every scaled loss is driven
    towards 1. An absent task contributes 0 (no gradient to s_t nor to its head).

    Overflow guard: the value of e^{s_t} is computed at s_t clamped to ±``max_log_scale``, with
    the gradient of the unclamped exponential evaluated at the clamped point (a straight-through
    clamp). Inside the bound this is exact; outside it, ∂g/∂s_t = e^{±bound} L_t − 1 still
    points back towards the balance instead of vanishing.
    """

    log_scales: nn.Parameter
    max_log_scale: float

    def _init_scales(self, num_tasks: int, max_log_scale: float) -> None:
        if not max_log_scale > 0:
            raise ValueError(f"max_log_scale must be positive; got {max_log_scale!r}")
        self.max_log_scale = float(max_log_scale)
        self.log_scales = nn.Parameter(torch.zeros(num_tasks))

    def _exp_scales(self) -> Tensor:
        """e^{s} with the straight-through clamp (differentiable w.r.t. s)."""
        s = self.log_scales
        bound = self.max_log_scale
        if s.device.type == "cpu" and float(s.detach().abs().max()) <= bound:
            # inside the bound the clamp adds exactly 0 (NaN fails the test): skip its ops
            return torch.exp(s)
        s_clamped = s + (s.detach().clamp(-bound, bound) - s.detach())
        return torch.exp(s_clamped)

    @property
    def scales(self) -> Tensor:
        """e^{s_t} [T] (detached, clamped as in the forward): the factor on each raw loss."""
        with torch.no_grad():
            return self._exp_scales().detach()

    def _scaled_total(self, losses: Tensor, present: Tensor | None) -> tuple[Tensor, Tensor]:
        """(Σ_t present_t (e^{s_t} L_t − s_t), e^{s} detached); ``present=None``: every task
        (one dot product, no mask ops)."""
        e = self._exp_scales()
        s: Tensor = self.log_scales
        if s.device != losses.device:
            e, s = e.to(losses.device), s.to(losses.device)
        if present is None:
            factors = e if e.dtype == losses.dtype else e.to(losses.dtype)
            return torch.dot(factors, losses) - s.sum(), e.detach()
        terms = torch.where(present, e * losses - s, 0.0)
        return terms.sum(), e.detach()


class IMTLL(_LossScales, Weighting):
    """IMTL-L: learnable loss scales balancing the scaled losses at 1 (Liu et al. 2021 §3.2, eq. 6).

    total = Σ_t (e^{s_t} L_t − s_t), s_t learnable (``log_scales``, initialised 0: put it in the
    optimizer). Minimising over s_t gives e^{s_t} L_t = 1 (eq. 3): every task's loss is brought to
    the same scale without any distribution assumption. A loss-based method: ``split`` is a
    no-op. See :class:`_LossScales` for the overflow guard.

    ``weights``: e^{s_t} [T], the factor on each raw loss (0 for tasks absent this step); also
    :attr:`scales` (e^{s_t} for every task).

    Args:
        num_tasks: T.
        max_log_scale: bound on |s_t| in the value of e^{s_t} (default 30).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    Needs: losses. Extra cost: none (T scalars).
    """

    def __init__(self, num_tasks: int, *, max_log_scale: float = MAX_LOG_SCALE, **kwargs) -> None:
        super().__init__(num_tasks, **kwargs)
        self._init_scales(num_tasks, max_log_scale)

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        if self._all_present():
            total, e = self._scaled_total(losses, None)
            self._set_weights(e)
            return total
        total, e = self._scaled_total(losses, present)
        self._set_weights(torch.where(present, e, 0.0))
        return total


class IMTL(_LossScales, Weighting):
    """IMTL, the hybrid of IMTL-G and IMTL-L (Liu et al. 2021 §3.3, Algorithm 1).

    * Task heads θ_t and scales s_t: trained by the scaled losses e^{s_t} L_t − s_t (eq. 6);
      :meth:`loss` returns Σ_t (e^{s_t} L_t − s_t) (Algorithm 1, lines 5, 15, 16).
    * Shared parameters: trained by Σ_t α_t (e^{s_t} L_t), with α the IMTL-G weights (§3.1)
      computed from the feature gradients of the scaled losses, ∇_z (e^{s_t} L_t) (lines 6–13).
      These are exactly the gradients ``split``'s backward receives (the −s_t terms do not
      depend on z), so the IMTL-G solve runs on them unchanged.

    By Theorem 2 the direction of the shared gradient is the same as IMTL-G's on the raw losses;
    the scales change its length and train the heads on balanced losses.

    ``weights``: the effective weight on each raw loss's shared gradient, α_t · e^{s_t} [T]
    (g = Σ_t α_t e^{s_t} ∇_z L_t); :attr:`scales` gives e^{s_t}, :attr:`gradient_weights` the
    IMTL-G α of the scaled losses (Σ α = 1).

    Args:
        num_tasks: T.
        max_log_scale: bound on |s_t| in the value of e^{s_t} (default 30; see
            :class:`_LossScales`).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    Needs: losses and feature gradients. Extra cost: that of IMTL-G.
    """

    gradient_based = True

    def __init__(self, num_tasks: int, *, max_log_scale: float = MAX_LOG_SCALE, **kwargs) -> None:
        super().__init__(num_tasks, **kwargs)
        self._init_scales(num_tasks, max_log_scale)
        self._step_scales: Tensor | None = None
        self._state["alpha"] = None

    @property
    def gradient_weights(self) -> Tensor:
        """The last IMTL-G weights α of the scaled losses (Σ α = 1), detached."""
        a = self._state["alpha"]
        if a is None:
            return self.initial_weights(self.num_tasks)  # type: ignore[arg-type]
        return a

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        total, e = self._scaled_total(losses, None if self._all_present() else present)
        self._step_scales = e
        return total

    def loss_gradient_scales(self) -> Tensor | None:
        return self._step_scales

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        return ops.imtl_g_weights(G, backend=self.backend)

    def native_solve(self) -> str | None:
        return "imtl_g" if self.backend == "auto" else None

    def effective_weights(self, alpha: Tensor) -> Tensor:
        e = self._step_scales
        if e is None:  # loss() was not used: the gradients are those of the raw losses
            e = self.scales
        self._state["alpha"] = alpha.detach()
        return alpha * e.to(alpha.device, alpha.dtype)
