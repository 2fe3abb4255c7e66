r"""MoCo (Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably
Convergent Approach", ICLR 2023): MGDA-style weights on tracked gradients with a moving
correction.

Stochastic MGDA is biased: its weights are a non-linear function of noisy gradients. MoCo keeps
a tracking variable y_t per task, an average of the task's stochastic gradients, and solves for
the weights λ on the y_t with one projected-gradient step per iteration (their Algorithm 1):

    y_t ← y_t − β_k (y_t − h_t)                              (tracking, y_t = 0 at the start)
    λ   ← Π_Δ(λ − γ_k (YᵀY + ρ I) λ)                         (λ = 1/T at the start)
    d   = Σ_t λ_t y_t                                         (the update direction)

with β_k = β / k^{σ_β}, γ_k = γ / k^{σ_γ}, Π_Δ the projection onto the simplex and h_t the
task gradient. The defaults follow the authors' shared code (as LibMTL's
``LibMTL/weighting/MoCo.py`` reproduces it, read for the details, not copied): h_t is the
gradient rescaled to the loss' size, h_t = L_t g_t / (‖g_t‖ + 10⁻⁸) (``normalize=True``), the
simplex step is a softmax, λ ← softmax(λ − γ_k (YᵀY + ρI) λ) (``simplex="softmax"``), and
β = 0.5, σ_β = 0.5, γ = 0.1, σ_γ = 0.5, ρ = 0. ``normalize=False, simplex="project"`` is the
paper's Algorithm 1 (without the optional projection of y_t onto a ball of radius L_t). Here k
counts each task's updates (the step number when no task is ever absent).

In Gram space: YᵀY is the Gram matrix of the tracked gradients, so the λ step is a T×T
operation on the device; the tracking itself is not: y is T×D state (D: the shared features'
size with ``split``, indexed by sample position, so the feature shape must be constant from
step to step, e.g. ``drop_last=True``; the shared parameters' count with
``mf.backward(params=)``, which is the paper's setting; at the feature level, with reshuffled
batches, y mixes different samples' gradients and the method warns once). Cost per step on top of an
equal-weighting step: with ``normalize=True`` one Gram pass over the raw rows for their norms
(and their finiteness), the tracking pass (reads the rows and y, writes y and the rows), then
the Gram and combine passes every gradient method makes, on y; state T×D (float32, float64 for
float64 gradients) + λ [T].

Distributed: y is kept per process for its block of the gradient (the tracking is linear, so
the blocks' Gram matrices add up); the norms are those of the global gradient (T numbers summed
over the processes) and, with ``normalize=True``, the losses are averaged across processes in
``loss()`` (2T numbers), so every process gets the same λ as one process on the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._row_step import RowStep
from mtl_fast.methods._rows import (
    ema_buffers,
    ema_rows_,
    squared_norms,
    warn_sample_indexed_ema,
    writable_rows,
)
from mtl_fast.reference import project_simplex
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["SIMPLEX_STEPS", "MoCo", "moco_lambda"]

#: ``simplex=``: the authors' softmax step or the paper's Euclidean projection.
SIMPLEX_STEPS = ("softmax", "project")
#: Added to ‖g_t‖ in h_t = L_t g_t / (‖g_t‖ + NORM_EPS) (the authors' code).
NORM_EPS = 1e-8


def moco_lambda(
    G: Tensor, lam: Tensor, gamma: float, rho: float, active: Tensor, simplex: str = "softmax"
) -> Tensor:
    r"""One λ step from the Gram matrix G = YᵀY of the tracked gradients (float64 [T]):
    softmax(λ − γ (G + ρI) λ) or Π_Δ(λ − γ (G + ρI) λ) over the active tasks; the others keep
    their λ and get no weight in this step's direction (see :class:`MoCo`)."""
    G64 = torch.nan_to_num(G.to(torch.float64))
    act = active.to(G.device)
    pair = act[:, None] & act[None, :]
    lam = lam.to(device=G.device, dtype=torch.float64)
    lam_act = torch.where(act, lam, 0.0)
    v = lam - gamma * (torch.where(pair, G64, 0.0) @ lam_act + rho * lam_act)
    if simplex == "softmax":
        z = torch.where(act, v, -torch.inf)
        new = torch.softmax(z, dim=0)
        new = torch.where(act.any(), new, 0.0)
    else:
        new = project_simplex(v, act)
    return torch.where(act, new, lam)


class MoCo(Weighting):
    r"""MoCo: tracked task gradients y_t and a projected-gradient step for their weights λ.

    Fernando et al. (2023); see :mod:`mtl_fast.methods.moco` for the update, the two variants
    and the cost. Per step (Algorithm 1; h_t the task gradient, Y the tracked gradients)::

        y_t ← y_t − β_k (y_t − h_t)
        λ   ← Π_Δ(λ − γ_k (YᵀY + ρ I) λ)
        d   = Σ_t λ_t y_t

    with β_k = β / k^σ_β, γ_k = γ / k^σ_γ and Π_Δ the projection onto the simplex (a softmax
    with ``simplex="softmax"``).

    Args:
        num_tasks: T.
        beta, beta_sigma: β_k = β / k^σ_β, the tracking rate (defaults 0.5, 0.5).
        gamma, gamma_sigma: γ_k = γ / k^σ_γ, the λ step size (defaults 0.1, 0.5).
        rho: ρ, the ℓ₂ regularisation of the λ step (default 0).
        normalize: track h_t = L_t g_t / (‖g_t‖ + 10⁻⁸) (default, the authors' code) or the raw
            gradients (``False``, the paper).
        simplex: ``"softmax"`` (default, the authors' code) or ``"project"`` (the paper).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: λ [T] of the step for the tasks present (0 for absent ones), the weights on the
    tracked gradients; :attr:`lambdas` keeps λ of every task, :attr:`tracked_gradients` y.

    Masks: an absent task (or one whose gradient is not finite) keeps y_t, its update count and
    λ_t, and takes no part in the λ step of the present tasks.

    Needs: losses (``normalize=True``) and the gradient rows (``split`` or ``mf.backward``;
    not MultiTaskLinear; with ``split`` a constant feature shape). Extra cost: with
    ``normalize=True`` one Gram pass for the rows' norms, the tracking pass (reads the rows and
    y, writes both), then the Gram and combine passes on y; the λ step is T×T. State: the
    tracked gradients y (T×D) and λ [T].
    """

    cuda_graph_capturable = False
    cuda_graph_note = "not yet captured on a GPU (tests/test_cuda_graph_step.py)."

    gradient_based = True
    needs_gradient_rows = True

    def __init__(
        self,
        num_tasks: int,
        *,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize: bool = True,
        simplex: str = "softmax",
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        super().__init__(num_tasks, **kwargs)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1]; got {beta!r}")
        if not gamma > 0.0:
            raise ValueError(f"gamma must be > 0; got {gamma!r}")
        if not (beta_sigma >= 0.0 and gamma_sigma >= 0.0 and rho >= 0.0):
            raise ValueError("beta_sigma, gamma_sigma and rho must be >= 0")
        if simplex not in SIMPLEX_STEPS:
            raise ValueError(f"simplex must be one of {SIMPLEX_STEPS}; got {simplex!r}")
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho = float(rho)
        self.normalize = bool(normalize)
        self.simplex = simplex
        self._state["y"] = None
        self._state["counts"] = torch.zeros(num_tasks, dtype=torch.int64)
        self._state["lambda"] = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        self._step_losses: tuple[Tensor, Tensor] | None = None

    @property
    def lambdas(self) -> Tensor:
        """λ [T] (float64), every task's weight as kept from step to step."""
        return self._state["lambda"]

    @property
    def tracked_gradients(self) -> list[Tensor] | None:
        """y: one [T, D_k] tensor per feature tensor, ``None`` before the first step."""
        return self._state["y"]

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        if self.normalize:  # h_t needs L_t: the losses averaged across processes
            self._step_losses = self._synced_losses(losses, present)
        return losses.sum()

    def prepare_rows(self, step: RowStep) -> None:
        """y_t ← y_t − β_k (y_t − h_t) for the present tasks with a finite gradient, written into
        the step's rows (the Gram matrix, the λ step and the combine then act on y)."""
        rows = list(step.rows)
        device = rows[0].device
        norms2 = squared_norms(rows, self.backend)  # also says which rows are finite
        # Global gradient = per-process blocks / N: ‖g‖² = Σ_r ‖g_r‖² / N² = mean_r / N.
        norms2 = step.mean_over_processes_(norms2) / step.processes
        grad_scale = self._step_grad_scale()  # a gradient scaler's s: y tracks the true g
        if grad_scale is not None:
            norms2 = norms2 / grad_scale.to(norms2.device, norms2.dtype) ** 2
        present = step.present
        losses = step.losses.to(torch.float64)
        if self._step_losses is not None:
            losses, present = (x.to(device) for x in self._step_losses)
            losses = losses.to(torch.float64)
        self._step_losses = None
        update = present & torch.isfinite(norms2)
        counts = self._state["counts"].to(device) + update.to(torch.int64)
        beta_k = self.beta / counts.clamp_min(1).to(torch.float64).pow(self.beta_sigma)
        scale = None
        if self.normalize:
            scale = losses / (torch.nan_to_num(norms2).clamp_min(0.0).sqrt() + NORM_EPS)
        warn_sample_indexed_ema(
            self,
            step,
            "MoCo",
            "Balance the shared parameters' gradients (mtl_fast.backward(losses, params=...), as "
            "the paper does); ignore this when every step has the same batch.",
        )
        bufs = ema_buffers(
            self._state["y"],
            rows,
            "MoCo",
            "keep the shared features' shape constant (e.g. drop_last=True) or pass params= "
            "to mtl_fast.backward",
        )
        for r, buf in zip(rows, bufs):
            ema_rows_(buf, writable_rows(r, "MoCo"), 1.0 - beta_k, update, scale, grad_scale)
        self._state["counts"] = counts
        self._state["y"] = bufs

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        active = inputs.present.to(G.device)
        k = max(self.step, 1)
        gamma_k = self.gamma / k**self.gamma_sigma
        lam = moco_lambda(G, self._state["lambda"], gamma_k, self.rho, active, self.simplex)
        self._state["lambda"] = lam
        return torch.where(active, lam, 0.0)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, beta={self.beta}, gamma={self.gamma}, "
            f"normalize={self.normalize}, simplex={self.simplex!r}"
        )
