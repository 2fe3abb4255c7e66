"""MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

The common descent direction of all tasks is the minimum-norm point of the convex hull of the
task gradients (their eq. 3 / the multiple-gradient descent algorithm):

    λ = argmin_{λ ≥ 0, Σλ = 1} ‖Σ_t λ_t ĝ_t‖² = argmin λᵀ Ĝ λ,

computed on the gradients with respect to the shared representation z (MGDA-UB, their §3.3, an
upper bound of the parameter-level problem that needs a single backward pass).

Gradient normalisation (the original code's ``normalization_type``): ĝ_t = g_t / s_t with

    "none":  s_t = 1;   "l2": s_t = ‖g_t‖;   "loss": s_t = L_t;   "loss+": s_t = L_t ‖g_t‖.

In Gram space this is the diagonal scaling Ĝ = S⁻¹ G S⁻¹ (S = diag(s)): no gradient is copied.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast import ops
from mtl_fast.reference.solve import MGDA_SOLVERS
from mtl_fast.weighting import StepInputs, Weighting

#: The values of ``MGDA(normalization=)``.
NORMALIZATIONS = ("none", "l2", "loss", "loss+")
#: The values of ``MGDA(apply_to=)``.
APPLY_TO = ("raw", "normalized")


def gradient_normalizers(G: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """s [T] (float64) with ĝ_t = g_t / s_t, from diag G = ‖g_t‖² and the loss values.

    A divisor that is not positive and finite (a zero gradient for "l2", a loss ≤ 0 for "loss"
    and "loss+", which assume positive losses) is replaced by 1: the task is left unnormalised.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}; got {normalization!r}")
    G64 = G.to(torch.float64)
    norms = torch.nan_to_num(G64.diagonal()).clamp_min(0.0).sqrt()
    L = losses.to(device=G.device, dtype=torch.float64)
    if normalization == "none":
        s = torch.ones_like(norms)
    elif normalization == "l2":
        s = norms
    elif normalization == "loss":
        s = L
    else:
        s = L * norms
    return torch.where(torch.isfinite(s) & (s > 0), s, 1.0)


class MGDA(Weighting):
    """MGDA-UB: the minimum-norm point of the convex hull of the feature gradients.

    λ = argmin over the simplex of λᵀ Ĝ λ with Ĝ = S⁻¹ G S⁻¹ the Gram matrix of the normalised
    gradients ĝ_t = g_t / s_t (see :mod:`mtl_fast.methods.mgda` for s), solved by
    :func:`mtl_fast.mgda_weights`.

    Which gradients the factors λ multiply (``apply_to``):

    * ``"raw"`` (default, the original code): λ_t scales the raw loss L_t, so the shared gradient
      is g = Σ λ_t g_t and α = λ. The normalisation only changes the solve.
    * ``"normalized"`` (LibMTL's implementation): g = Σ λ_t ĝ_t, i.e. α_t = λ_t / s_t.

    With ``normalization="none"`` the two coincide.

    Args:
        num_tasks: T (optional).
        normalization: ``"none"`` (default), ``"l2"``, ``"loss"`` or ``"loss+"``. The loss-based
            normalisations use the loss values of the step (averaged across processes under
            ``torch.distributed``) and assume positive losses (a task with L_t ≤ 0 is left
            unnormalised).
        constrained: ``False`` drops α ≥ 0: the closed form G α ∝ 1 of Liu et al. 2021 §4 (the
            minimum-norm point of the affine hull), on Ĝ.
        solver: ``"active_set"`` (exact, default), ``"frank_wolfe"`` (the published
            Frank-Wolfe loop: no iteration cap, until the step is below 1e-5) or
            ``"frank_wolfe_capped"`` (LibMTL's copy: at most 250 steps), passed to
            :func:`mtl_fast.mgda_weights`. The published training script itself calls the
            projected-gradient solver, whose solution ``"active_set"`` computes exactly.
        apply_to: ``"raw"`` (default) or ``"normalized"``, see above.
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: α [T], the factors on the raw losses' gradients (g = Σ α_t g_t); Σ α = 1 for
    ``apply_to="raw"``.

    Needs: feature gradients (and losses for ``"loss"``/``"loss+"``). Extra cost: one Gram pass,
    one combine pass, a T×T solve.
    """

    gradient_based = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        normalization: str = "none",
        constrained: bool = True,
        solver: str = "active_set",
        apply_to: str = "raw",
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}; got {normalization!r}"
            )
        if solver not in MGDA_SOLVERS:
            raise ValueError(f"solver must be one of {MGDA_SOLVERS}; got {solver!r}")
        if apply_to not in APPLY_TO:
            raise ValueError(f"apply_to must be one of {APPLY_TO}; got {apply_to!r}")
        self.normalization = normalization
        self.constrained = bool(constrained)
        self.solver = solver
        self.apply_to = apply_to
        self.needs_losses_in_backward = normalization in ("loss", "loss+")

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        if self.normalization == "none":
            return ops.mgda_weights(
                G, constrained=self.constrained, solver=self.solver, backend=self.backend
            )
        s = gradient_normalizers(G, inputs.losses, self.normalization)
        G_hat = (G.to(torch.float64) / (s[:, None] * s[None, :])).to(G.dtype)
        lam = ops.mgda_weights(
            G_hat, constrained=self.constrained, solver=self.solver, backend=self.backend
        )
        if self.apply_to == "raw":
            return lam
        return (lam.to(torch.float64) / s).to(lam.dtype)

    def native_solve(self) -> str | None:
        exact = self.constrained and self.solver == "active_set" and self.normalization == "none"
        return "mgda" if exact and self.backend == "auto" else None

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, normalization={self.normalization!r}, "
            f"constrained={self.constrained}, solver={self.solver!r}, apply_to={self.apply_to!r}"
        )
