"""FairGrad (Ban & Ji 2024): the optimality condition (G w)_t = w_t^{-1/α} against a direct
root-finding transcription on explicit gradients, α = 1 is Nash-MTL, α → ∞ equalises the
projections, invariances, masks and state."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_fast.methods.fairgrad import FairGrad, fairgrad_weights
from mtl_fast.methods.nash_mtl import nash_weights

T = 3


def _grads(Tn: int, D: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
    return J * torch.exp(spread * torch.randn(Tn, 1, generator=gen, dtype=torch.float64))


def paper_fairgrad(J: torch.Tensor, alpha: float, iters: int = 200) -> torch.Tensor:
    """The paper's update on explicit gradients: w > 0 solving Jᵀ-space residual
    r(w) = J Jᵀ w − w^{-1/α} = 0 (their least-squares root finding from w = 1), here by
    Gauss-Newton on log w (keeps w > 0), then d = Jᵀ w."""
    GG = J @ J.T
    v = torch.zeros(J.shape[0], dtype=torch.float64)  # v = log w
    for _ in range(iters):
        w = v.exp()
        r = GG @ w - w.pow(-1.0 / alpha)
        Jr = GG * w[None, :] + torch.diag(w.pow(-1.0 / alpha) / alpha)  # dr/dv
        step = torch.linalg.lstsq(Jr, r[:, None]).solution[:, 0]
        v = v - step.clamp(-2.0, 2.0)
    return J.T @ v.exp()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("seed", range(4))
def test_equals_paper_transcription(alpha, seed):
    J = _grads(4, 9, seed)
    w = fairgrad_weights(J @ J.T, alpha)
    torch.testing.assert_close(J.T @ w, paper_fairgrad(J, alpha), rtol=1e-8, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    Tn=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    alpha=st.floats(0.25, 8.0),
    spread=st.floats(0.0, 2.0),
)
def test_optimality_condition(Tn, seed, alpha, spread):
    """(G w)_t = w_t^{-1/α} with w > 0 on gradients of norms spread over e^±2·spread."""
    J = _grads(Tn, Tn + 3, seed, spread)
    G = J @ J.T
    w = fairgrad_weights(G, alpha)
    assert bool((w > 0).all())
    # rtol: the ridge ε I (float64 ε) on G, amplified by its conditioning (norm spreads e^±4)
    torch.testing.assert_close(G @ w, w.pow(-1.0 / alpha), rtol=1e-5, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_alpha_one_is_nash_mtl(seed):
    """α = 1: proportional fairness, the Nash bargaining solution α_t (Gα)_t = 1."""
    J = _grads(5, 8, seed, 1.0)
    G = J @ J.T
    torch.testing.assert_close(
        fairgrad_weights(G, 1.0), nash_weights(G, ridge=0.0), rtol=1e-7, atol=0
    )


def test_large_alpha_equalises_projections():
    """α → ∞: w^{-1/α} → 1, so G w → 1 (every task gets the same decrease g_tᵀd)."""
    J = _grads(4, 10, 7, 0.5)
    G = J @ J.T
    w = fairgrad_weights(G, 1e6)
    torch.testing.assert_close(G @ w, torch.ones(4, dtype=torch.float64), rtol=1e-4, atol=0)


def test_scale_of_g_changes_the_weights_as_the_equation_says():
    """G → sG: w → s^{-α/(α+1)} w (the change of variables of the solve)."""
    J = _grads(4, 9, 3)
    G = J @ J.T
    for s in (1e-3, 7.0):
        torch.testing.assert_close(
            fairgrad_weights(s * G, 2.0),
            s ** (-2.0 / 3.0) * fairgrad_weights(G, 2.0),
            rtol=1e-8,
            atol=0,
        )


def test_permutation_and_degenerate_inputs():
    J = _grads(4, 9, 4)
    G = J @ J.T
    perm = torch.tensor([3, 1, 0, 2])
    w = fairgrad_weights(G, 2.0)
    torch.testing.assert_close(fairgrad_weights(G[perm][:, perm], 2.0), w[perm], rtol=1e-9, atol=0)
    # zero gradient: weight 0, the others solved without it
    J0 = J.clone()
    J0[2] = 0
    w0 = fairgrad_weights(J0 @ J0.T, 2.0)
    keep = torch.tensor([0, 1, 3])
    assert w0[2] == 0
    torch.testing.assert_close(
        w0[keep], fairgrad_weights(J[keep] @ J[keep].T, 2.0), rtol=1e-8, atol=0
    )
    # duplicated gradients (singular G): finite, positive weights
    Jd = torch.cat([J[:2], J[:1]])
    wd = fairgrad_weights(Jd @ Jd.T, 2.0)
    assert bool(torch.isfinite(wd).all() and (wd > 0).all())
    assert fairgrad_weights(torch.zeros(3, 3), 2.0).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="alpha"):
        FairGrad(T, alpha=0.0)


def test_method_through_split():
    model = ToyMTL(T)
    m = FairGrad(T, alpha=2.0)
    x, ys = toy_batch(model)
    split_step(model, m, x, ys)
    got = [p.grad.clone() for p in model.encoder.parameters()]
    z, J = feature_gradients(model, x, ys)
    Jf = J.flatten(1).double()
    # the solve on the fp32 Gram matrix the method sees (its ridge is fp32's rounding level)
    J32 = J.flatten(1)
    w = fairgrad_weights(J32 @ J32.T, 2.0)
    torch.testing.assert_close(m.weights.double(), w, rtol=1e-4, atol=0)
    model.zero_grad(set_to_none=True)
    z.backward((Jf.T @ w).reshape(z.shape).float())
    for a, p in zip(got, model.encoder.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_masks_and_resume():
    m = check_mask_and_nan(lambda **kw: FairGrad(T, **kw))
    assert m.weights[1] == 0
    check_resume(lambda: FairGrad(T), T, steps=4, split_at=2, weights_only=True)
