r"""LibMTL-style IMTL-G and MGDA: the peers mtl_fast is measured against.

Written here from the papers, the way published multi-task code computes them (not copied from
any library):

* IMTL-G from Liu et al. 2021, Algorithm 1 lines 6–12: the unit-gradient matrix u_t = g_t/‖g_t‖, the
  difference matrices Dᵀ = [g_1ᵀ − g_tᵀ] and Uᵀ = [u_1ᵀ − u_tᵀ] built from stacked copies of
  the first row, α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹ with an explicit inverse, α_1 = 1 − Σ α_{2:T};
* MGDA from Sener & Koltun (2018), Algorithm 2 (Frank-Wolfe on min ‖Σ α_t g_t‖² over the
  simplex, initialised at the best pair of gradients, exact two-point line search, stop when the
  update is below 1e-5 or after 250 iterations), with the branch conditions and the stopping
  test read on the host (``.item()``) as published code does;
* the aggregated gradient as Σ α_t g_t through a broadcast product (a T×D temporary), and the
  weights read back to the host at the end of the step (published code returns them as NumPy
  for logging);
* the training step of "rep_grad" feature-level balancing: one backward per task from the
  detached shared features with ``retain_graph=True``, the T feature gradients copied into one
  stacked [T, D] matrix, the weights from it, and the weighted feature gradient back-propagated
  through the encoder.

The float32 IMTL-G closed form is also the "LibMTL-style fp32 formula" whose error against a
float64 oracle the benchmarks report next to mtl_fast's (``tests/test_bench.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

#: Frank-Wolfe budget and stopping threshold of the published MGDA solver.
FW_MAX_ITER = 250
FW_STOP = 1e-5


# ------------------------------------------------------------ IMTL-G (Liu et al. 2021)


def imtl_g_weights(grads: Tensor) -> Tensor:
    """IMTL-G weights of a stacked gradient matrix [T, D] by Algorithm 1 of Liu et al. 2021.

    Works in the gradients' dtype throughout (float32 for float32 gradients: the "LibMTL-style
    fp32 formula"); only the (T−1)×(T−1) matrix D Uᵀ is widened to float32 for the explicit
    inverse when the gradients are 16-bit (``torch.inverse`` has no bf16/fp16 kernel).
    Returns α [T] in the gradients' dtype (float32 for 16-bit gradients).
    """
    T = grads.shape[0]
    if T == 1:
        return torch.ones(1, dtype=grads.dtype, device=grads.device)
    norms = grads.norm(dim=1, keepdim=True)
    unit = grads / norms  # u_t: a T×D copy (line 7)
    first_g = grads[:1].repeat(T - 1, 1)  # stacked copies of g_1
    first_u = unit[:1].repeat(T - 1, 1)  # stacked copies of u_1
    diff_g = first_g - grads[1:]  # Dᵀ rows: g_1 − g_t (line 9)
    diff_u = first_u - unit[1:]  # Uᵀ rows: u_1 − u_t (line 10)
    lhs = grads[0] @ diff_u.T  # g_1 Uᵀ
    inner = diff_g @ diff_u.T  # D Uᵀ
    if grads.dtype in (torch.bfloat16, torch.float16):
        lhs, inner = lhs.float(), inner.float()
    rest = lhs @ torch.inverse(inner)  # α_{2:T} (line 11)
    return torch.cat([1 - rest.sum().reshape(1), rest])  # α_1 = 1 − Σ α_{2:T} (line 12)


def combine(grads: Tensor, weights: Tensor) -> Tensor:
    """Σ α_t g_t as published code writes it: a broadcast product [T, D], then a sum."""
    return (weights.to(grads.dtype)[:, None] * grads).sum(0)


def imtl_g_step(grads: Tensor) -> Tensor:
    """The full IMTL-G step on a stacked [T, D] matrix: weights, aggregate, weights to host."""
    alpha = imtl_g_weights(grads)
    shared = combine(grads, alpha)
    alpha.tolist()  # host read: published code hands the weights back as NumPy
    return shared


# --------------------------------------------------------------------------- MGDA (Frank-Wolfe)


def _two_point(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """min_γ ‖γ a + (1−γ) b‖² for ‖a‖² = v11, ⟨a, b⟩ = v12, ‖b‖² = v22: (γ, cost)."""
    if v12 >= v11:
        return 1.0, v11
    if v12 >= v22:
        return 0.0, v22
    gamma = (v22 - v12) / (v11 + v22 - 2 * v12)
    return gamma, v22 + gamma * (v12 - v22)


def mgda_weights_from_gram(G: Tensor) -> Tensor:
    """Frank-Wolfe MGDA weights from the Gram matrix, host reads as in published code.

    Initialisation: the pair (i, j) with the smallest two-point minimum norm (every pair's
    entries read with ``.item()``). Iteration: t = argmin (Gλ)_t, exact line search between λ
    and the vertex e_t, stop when ‖Δλ‖₁ < 1e-5 or after 250 iterations.
    """
    T = G.shape[0]
    sol = torch.zeros(T, dtype=G.dtype, device=G.device)
    if T == 1:
        return sol + 1
    best = (float("inf"), 0, 1, 0.5)
    for i in range(T):
        for j in range(i + 1, T):
            gamma, cost = _two_point(G[i, i].item(), G[i, j].item(), G[j, j].item())
            if cost < best[0]:
                best = (cost, i, j, gamma)
    _, i, j, gamma = best
    sol[i] = gamma
    sol[j] = 1 - gamma
    for _ in range(FW_MAX_ITER):
        direction = G @ sol
        t = int(torch.argmin(direction).item())
        v11 = (sol @ direction).item()
        v12 = direction[t].item()
        v22 = G[t, t].item()
        gamma, _ = _two_point(v11, v12, v22)
        new = gamma * sol
        new[t] += 1 - gamma
        change = (new - sol).abs().sum().item()
        sol = new
        if change < FW_STOP:
            break
    return sol


def mgda_weights(grads: Tensor) -> Tensor:
    """MGDA weights of a stacked [T, D] matrix: Gram by one matmul, then Frank-Wolfe."""
    G = grads @ grads.T
    return mgda_weights_from_gram(G.float() if G.dtype != torch.float64 else G)


def mgda_step(grads: Tensor) -> Tensor:
    """The full MGDA step on a stacked [T, D] matrix: weights, aggregate, weights to host."""
    alpha = mgda_weights(grads)
    shared = combine(grads, alpha)
    alpha.tolist()
    return shared


# --------------------------------------------------------------------------- training step


def train_step(
    encoder: nn.Module,
    heads: Sequence[nn.Module] | nn.ModuleList,
    task_loss: Callable[[int, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    weighting: str,
    log_scales: Tensor | None = None,
) -> Tensor:
    """One LibMTL-style training step with feature-level ("rep_grad") gradient balancing.

    Args:
        encoder, heads: the shared encoder and the T task heads.
        task_loss: ``task_loss(t, head_output)`` → the scalar loss of task t.
        optimizer: over the encoder, the heads (and ``log_scales``).
        x: the input batch.
        weighting: ``"imtl"`` (IMTL-G on the gradients of the scaled losses) or ``"mgda"``.
        log_scales: IMTL-L's s_t (Liu et al. 2021 eq. 6: the losses become e^{s_t} L_t − s_t), for
            the full IMTL; ``None`` for raw losses.

    Returns the weights (on the host side they were already read, as published code does).
    """
    T = len(heads)
    optimizer.zero_grad(set_to_none=True)
    z = encoder(x)
    rep = z.detach().requires_grad_(True)
    losses = [task_loss(t, heads[t](rep)) for t in range(T)]
    if log_scales is not None:
        losses = [torch.exp(log_scales[t]) * losses[t] - log_scales[t] for t in range(T)]
    grads = torch.zeros(T, rep.numel(), dtype=rep.dtype, device=rep.device)
    for t in range(T):
        losses[t].backward(retain_graph=True)  # heads (and s_t) get their gradients here
        grads[t] = rep.grad.reshape(-1)  # gathered into the stacked matrix (a copy)
        rep.grad.zero_()
    if weighting == "imtl":
        alpha = imtl_g_weights(grads)
    elif weighting == "mgda":
        alpha = mgda_weights(grads)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected 'imtl' or 'mgda'")
    shared = combine(grads, alpha)
    z.backward(shared.view_as(z))
    optimizer.step()
    alpha.tolist()
    return alpha
