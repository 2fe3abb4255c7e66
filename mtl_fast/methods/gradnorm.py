"""GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks", ICML 2018), on the shared-feature gradients, in Gram space.

Learnable loss weights w_t (renormalised so that Σ_t w_t = T) train the shared parameters through
g = Σ_t w_t g_t and are themselves trained by the gradient-norm loss (their eq. 2)::

    L_grad = Σ_t | G_W^(t) − Ḡ_W · r_t^γ |,

    G_W^(t) = ‖∇ w_t L_t‖ = w_t ‖g_t‖          (the weighted gradient norms; ‖g_t‖ = sqrt(G_tt)),
    Ḡ_W     = mean_t G_W^(t),
    L̃_t    = L_t / L_t(0)                        (the inverse training rate),
    r_t     = L̃_t / mean_τ L̃_τ                  (the relative inverse training rate),

with the target Ḡ_W r_t^γ treated as a constant, so ∂L_grad/∂w_t = sign(w_t‖g_t‖ − target_t)·‖g_t‖.
γ (the asymmetry) pulls slower-training tasks (larger r_t) towards larger gradient norms.

γ = 0: the fixed point has equal weighted norms w_t ‖g_t‖ = const, i.e. α_t ∝ 1/‖g_t‖
(Liu et al. 2021, Theorem 1 and Corollary 4: α_t = ‖g_t‖⁻¹ / Σ_τ ‖g_τ‖⁻¹ when Σα = 1); available
directly with ``closed_form=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl_fast.weighting import StepInputs, Weighting


def inverse_norm_weights(G: Tensor, total: float = 1.0) -> Tensor:
    """α_t = total · ‖g_t‖⁻¹ / Σ_τ ‖g_τ‖⁻¹ over the tasks with a non-zero, finite gradient (others
    0): GradNorm's γ = 0 fixed point (Liu et al. 2021, Corollary 4). float64 [T]."""
    d = G.to(torch.float64).diagonal()
    ok = torch.isfinite(d) & (d > 0)
    inv = torch.where(ok, d.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    return total * inv / inv.sum().clamp_min(torch.finfo(torch.float64).tiny)


class GradNorm(Weighting):
    """GradNorm: learnable loss weights trained to equalise the weighted gradient norms.

    Each step, inside ``split``'s backward:

    1. the weights w (the parameter ``loss_weights``, initialised to 1) are projected in place
       onto {w ≥ 0, Σ w = T} (clamp at 0, then rescale; the paper renormalises after every
       update; the clamp only acts after a step so large that a weight became negative);
    2. the shared gradient is Σ_t w_t g_t (the current weights);
    3. the gradient of L_grad (module docstring) with respect to w is added to
       ``loss_weights.grad``: the user's optimizer steps it (put ``loss_weights`` in it, usually
       with its own learning rate as in the paper).

    The norms come from the diagonal of G (no extra pass). L_t(0) is the loss of the first step
    in which task t is present, or with ``initial_loss_steps=N`` the mean over its first N
    present steps (e.g. one epoch); while the mean is accumulating, the running mean serves.

    Args:
        num_tasks: T.
        gamma: the asymmetry γ (default 1.5, the paper's NYUv2 setting); γ = 0 asks for equal
            weighted norms.
        initial_loss_steps: number of (present) steps averaged into L_t(0) (default 1).
        closed_form: use the γ = 0 fixed point α_t = T ‖g_t‖⁻¹ / Σ_τ ‖g_τ‖⁻¹ directly (Liu et
            al. 2021, Corollary 4, scaled to Σα = T), without learnable weights; requires
            ``gamma=0``.
        **kwargs: see :class:`~mtl_fast.Weighting`.

    Absent tasks (mask / NaN loss): weight 0 in the combine, excluded from the means, no
    gradient to their w_t, L_t(0) not updated. GradNorm assumes positive losses: a task with
    L_t(0) ≤ 0 gets r_t from L̃_t = 1.

    ``weights``: the weights used in the combine, α = w (Σ = T over all tasks; 0 for absent
    tasks). :attr:`grad_norm_loss` holds the last L_grad.

    Needs: losses and feature gradients. Extra cost: that of one Gram pass and one combine pass,
    O(T) for the weights' gradient.

    Under ``torch.distributed`` the norms come from the full-batch Gram matrix and the loss
    ratios from the averaged losses, so the weights' gradient is identical on every process
    without a collective of its own. It is written into ``loss_weights.grad`` directly, not by
    autograd: keep GradNorm outside the DDP-wrapped module (:mod:`mtl_fast.distributed`).
    """

    gradient_based = True
    needs_losses_in_backward = True

    def __init__(
        self,
        num_tasks: int,
        *,
        gamma: float = 1.5,
        initial_loss_steps: int = 1,
        closed_form: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0; got {gamma!r}")
        if not isinstance(initial_loss_steps, int) or initial_loss_steps < 1:
            raise ValueError(
                f"initial_loss_steps must be a positive int; got {initial_loss_steps!r}"
            )
        if closed_form and gamma != 0:
            raise ValueError("closed_form=True is GradNorm's gamma=0 fixed point: pass gamma=0")
        self.gamma = float(gamma)
        self.initial_loss_steps = initial_loss_steps
        self.closed_form = bool(closed_form)
        if closed_form:
            self.needs_losses_in_backward = False
        else:
            self.loss_weights = nn.Parameter(torch.ones(num_tasks))
        T = num_tasks
        self._state.update(
            {
                "initial_loss_sum": torch.zeros(T, dtype=torch.float64),
                "initial_loss_count": torch.zeros(T, dtype=torch.float64),
                "grad_norm_loss": None,
            }
        )

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def initial_losses(self) -> Tensor:
        """L_t(0) [T] (float64; NaN for tasks not seen yet)."""
        s, c = self._state["initial_loss_sum"], self._state["initial_loss_count"]
        return torch.where(c > 0, s / c.clamp_min(1.0), float("nan"))

    @property
    def grad_norm_loss(self) -> Tensor | None:
        """The last L_grad (detached, float64), or None before the first step."""
        return self._state["grad_norm_loss"]

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        T = G.shape[0]
        if self.closed_form:
            return inverse_norm_weights(G, float(T))
        w_param = self.loss_weights
        with torch.no_grad():
            w_param.clamp_(min=0.0)
            total = w_param.sum()
            fallback = torch.ones_like(w_param)
            w_param.copy_(torch.where(total > 0, w_param * (T / total.clamp_min(1e-30)), fallback))
        dev = G.device
        w = w_param.detach().to(device=dev, dtype=torch.float64)
        present = inputs.present.to(dev)
        G64 = G.to(torch.float64)
        norms = torch.nan_to_num(G64.diagonal()).clamp_min(0.0).sqrt()
        L = inputs.losses.to(device=dev, dtype=torch.float64)

        # L_t(0): running mean over the first `initial_loss_steps` present steps of each task.
        s0 = self._state["initial_loss_sum"].to(dev)
        c0 = self._state["initial_loss_count"].to(dev)
        take = present & (c0 < self.initial_loss_steps)
        s0 = torch.where(take, s0 + L, s0)
        c0 = torch.where(take, c0 + 1, c0)
        self._state["initial_loss_sum"], self._state["initial_loss_count"] = s0, c0
        L0 = s0 / c0.clamp_min(1.0)

        count = present.sum().clamp_min(1)
        tilde = torch.where(present & (L0 > 0), L / torch.where(L0 > 0, L0, 1.0), 1.0)
        tilde = torch.where(present, tilde, 0.0)
        mean_tilde = tilde.sum() / count
        r = torch.where(present, tilde / mean_tilde.clamp_min(1e-300), 0.0)
        weighted = w * norms
        mean_weighted = torch.where(present, weighted, 0.0).sum() / count
        target = mean_weighted * r.pow(self.gamma)
        diff = torch.where(present, weighted - target, 0.0)
        self._state["grad_norm_loss"] = diff.abs().sum().detach()
        grad = (torch.sign(diff) * norms).to(device=w_param.device, dtype=w_param.dtype)
        if inputs.grad_scale is not None:  # a scaled step (mtl_fast.amp): the scaler unscales it
            grad = grad * inputs.grad_scale.to(grad)
        if w_param.grad is None:
            w_param.grad = grad
        else:
            w_param.grad.add_(grad)
        return torch.where(present, w, 0.0)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, gamma={self.gamma}, "
            f"initial_loss_steps={self.initial_loss_steps}, closed_form={self.closed_form}"
        )
