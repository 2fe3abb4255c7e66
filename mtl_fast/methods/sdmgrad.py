r"""SDMGrad (Xiao et al., "Direction-oriented Multi-objective Learning: Simple and Provable
Stochastic Algorithms", NeurIPS 2023), in Gram space.

The update is d = (G_w + λ g_0)/(1 + λ) with G_w = Σ_t w_t g_t, g_0 = (1/T) Σ_t g_t the average
gradient and w on the simplex minimising the direction-oriented objective

    φ(w) = ½ ‖G_w + λ g_0‖²  =  ½ wᵀĜw + λ wᵀĜ1/T + ½ λ² 1ᵀĜ1/T²                    (their eq. 7)

by projected stochastic gradient steps, warm-started from the previous step's w. The weights on
the task gradients are α_t = (w_t + λ/T)/(1 + λ).

The paper's analysis estimates ∇φ with two independent samples (ξ, ξ'), Ĝ(ξ)ᵀĜ(ξ'), to make the
estimate unbiased. This implementation follows the authors' public training code instead, which
uses the Gram matrix of one batch for both factors: with ``split`` the per-task gradients of
two half-batches are feature gradients of different samples, i.e. different coordinates, so
their cross products estimate nothing (the parameter-space cross Gram g(ξ)ᵀg(ξ') would need the
encoder's Jacobian of each half, i.e. two backward passes), and :func:`mtl_fast.backward`
``params=`` forms the gradients of the whole batch. The solve, step for step as that code::

    Ĝ = G / s²,  s = mean_t √(G_tt + 10⁻⁴);    Gg = Ĝ 1/T
    repeat ``iters`` (20) times:  ∇ = Ĝ w + λ Gg;  b ← μ b + ∇ (b = ∇ at the first of the
        ``iters``);  w ← Π_Δ(w − η b)     (SGD with momentum μ = 0.5, learning rate η = 10)

with Π_Δ the Euclidean projection onto the simplex and w kept across steps (w = 1/T at the
start). Absent tasks: left out of the means, the simplex and the update (weight 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast.reference import active_tasks, project_simplex
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["SDMGrad", "sdmgrad_weights"]

#: The absolute shift inside s = mean √(G_tt + 10⁻⁴) (the authors' code).
NORM_SHIFT = 1e-4


def sdmgrad_weights(
    G: Tensor,
    w: Tensor,
    lam: float,
    *,
    active: Tensor | None = None,
    iters: int = 20,
    lr: float = 10.0,
    momentum: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """One SDMGrad solve (module docstring). Returns (α [T] float64 with
    d = Σ_t α_t g_t, the new simplex weights w [T] float64)."""
    G64 = torch.nan_to_num(G.to(torch.float64))
    act = active_tasks(G64) if active is None else active & active_tasks(G64)
    k = act.sum().clamp_min(1).to(torch.float64)
    pair = act[:, None] & act[None, :]
    G64 = torch.where(pair, G64, 0.0)
    scale = torch.where(act, (G64.diagonal() + NORM_SHIFT).sqrt(), 0.0).sum() / k
    Gh = G64 / scale.clamp_min(1e-300).pow(2)
    Gg = Gh @ act.to(torch.float64) / k
    w = project_simplex(w.to(device=G.device, dtype=torch.float64), act)
    buf = torch.zeros_like(w)
    for i in range(iters):
        grad = Gh @ w + lam * Gg
        buf = grad if i == 0 else momentum * buf + grad
        w = project_simplex(w - lr * buf, act)
    alpha = torch.where(act, (w + lam / k) / (1.0 + lam), 0.0)
    return alpha, w


class SDMGrad(Weighting):
    r"""SDMGrad: MGDA's min-norm weights pulled towards the average gradient by λ.

    Xiao et al. (2023), see :mod:`mtl_fast.methods.sdmgrad` for the objective, the solve and
    how the two-sample estimate of the paper is (not) obtained.

    Args:
        num_tasks: T.
        lam: λ, the pull towards the average gradient (default 0.3; λ = 0: a few projected
            steps towards MGDA's weights; λ → ∞: equal weights 1/T).
        iters, lr, momentum: the inner solve (defaults 20, 10, 0.5: the authors' code).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: α [T] = (w + λ/T)/(1 + λ) (0 for absent tasks); :attr:`simplex_weights`: w.

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, ``iters`` T×T
    projected steps. State: w [T] (in ``state_dict()``).
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "not yet captured on a GPU (tests/test_cuda_graph_step.py); the solve has a fixed "
        "number of steps and reads no value on the host."
    )

    gradient_based = True

    def __init__(
        self,
        num_tasks: int,
        *,
        lam: float = 0.3,
        iters: int = 20,
        lr: float = 10.0,
        momentum: float = 0.5,
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        super().__init__(num_tasks, **kwargs)
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0; got {lam!r}")
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be a positive int; got {iters!r}")
        if not lr > 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr > 0 and 0 <= momentum < 1; got {lr!r}, {momentum!r}")
        self.lam = float(lam)
        self.iters = iters
        self.lr = float(lr)
        self.momentum = float(momentum)
        self._state["w"] = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)

    @property
    def simplex_weights(self) -> Tensor:
        """w [T] (float64): the simplex weights kept from step to step."""
        return self._state["w"]

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        alpha, w = sdmgrad_weights(
            G,
            self._state["w"],
            self.lam,
            active=inputs.present.to(G.device),
            iters=self.iters,
            lr=self.lr,
            momentum=self.momentum,
        )
        self._state["w"] = w
        return alpha

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, lam={self.lam}"
