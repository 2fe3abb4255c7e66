"""IMTL-G, IMTL-L and IMTL (Liu et al. 2021)."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_fast import reference
from mtl_fast.methods.imtl import IMTL, IMTLG, IMTLL, MAX_LOG_SCALE
from mtl_fast.weighting import StepInputs

T = 3


def imtl_g_algorithm1(J: torch.Tensor) -> torch.Tensor:
    """Paper 004 Algorithm 1, lines 7–12, transcribed on explicit gradient rows (float64):
    D = [g_1 − g_t], U = [u_1 − u_t], α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 − Σ α_{2:T}."""
    J = J.flatten(1).double()
    U = J / J.norm(dim=1, keepdim=True)
    D = J[0:1] - J[1:]
    Ud = U[0:1] - U[1:]
    a = J[0:1] @ Ud.T @ torch.linalg.inv(D @ Ud.T)
    return torch.cat([1 - a.sum(1), a[0]])


def _inputs(T: int) -> StepInputs:
    return StepInputs(losses=torch.zeros(T), present=torch.ones(T, dtype=torch.bool))


# ------------------------------------------------------------------------------------ IMTL-G


@pytest.mark.parametrize("seed", range(5))
def test_imtlg_equals_algorithm1(seed):
    gen = torch.Generator().manual_seed(seed)
    Tn = 2 + seed % 4
    J = torch.randn(Tn, 20, generator=gen, dtype=torch.float64)
    J = J * torch.logspace(-2, 2, Tn, dtype=torch.float64)[:, None]
    alpha = IMTLG(Tn).gram_weights(J @ J.T, _inputs(Tn))
    torch.testing.assert_close(alpha.double(), imtl_g_algorithm1(J), rtol=1e-5, atol=1e-7)
    g = alpha.double() @ J
    proj = (J @ g) / J.norm(dim=1)  # eq. 1: equal projections onto the unit gradients
    torch.testing.assert_close(proj, proj[0].expand(Tn), rtol=1e-5, atol=0)


@settings(max_examples=15, deadline=None)
@given(
    task=st.integers(0, T - 1),
    factor=st.sampled_from([10.0, 0.1, 1000.0]),
    seed=st.integers(0, 10_000),
)
def test_imtlg_scale_invariance(task, factor, seed):
    """Paper 004 Theorem 2 / Table 1: multiplying one task's loss by k > 0 leaves the direction
    of the shared gradient unchanged."""
    x, ys = toy_batch(ToyMTL(T), seed=seed)
    grads = []
    for k in (1.0, factor):
        scales = [1.0, 2.0, 0.5]
        scales[task] *= k
        model = ToyMTL(T, seed=seed % 7, loss_scales=scales)
        split_step(model, IMTLG(), x, ys)
        grads.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]))
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 1 - 1e-4, cos


def test_imtlg_mask_equals_subproblem():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    m = IMTLG()
    split_step(model, m, x, ys, mask=[True, False, True])
    _, J = feature_gradients(model, x, ys)
    sub = reference.imtl_g_weights(reference.gram(J[[0, 2]]))
    torch.testing.assert_close(m.weights[[0, 2]], sub, rtol=1e-5, atol=1e-7)
    assert m.weights[1] == 0


@pytest.mark.parametrize("cls", ["IMTLG", "IMTL", "IMTLL"])
def test_mask_and_nan_policy(cls):
    make = {
        "IMTLG": lambda **kw: IMTLG(**kw),
        "IMTL": lambda **kw: IMTL(T, **kw),
        "IMTLL": lambda **kw: IMTLL(T, **kw),
    }[cls]
    m = check_mask_and_nan(make)
    if cls != "IMTLG":
        assert m.log_scales.grad[1] == 0  # absent: no gradient to s_t


@pytest.mark.parametrize(
    "make", [lambda: IMTLG(), lambda: IMTL(T), lambda: IMTLL(T)], ids=["IMTLG", "IMTL", "IMTLL"]
)
def test_resume_equals_unbroken(make):
    check_resume(make, T)


# ------------------------------------------------------------------------------------ IMTL-L


def test_imtll_total_weights_and_gradients():
    m = IMTLL(T)
    with torch.no_grad():
        m.log_scales.copy_(torch.tensor([0.0, 1.0, -2.0]))
    L = torch.tensor([2.0, 0.5, 3.0], requires_grad=True)
    total = m.loss(L)
    s = m.log_scales.detach()
    torch.testing.assert_close(total, (s.exp() * L.detach() - s).sum())
    total.backward()
    torch.testing.assert_close(m.log_scales.grad, s.exp() * L.detach() - 1)  # eq. 6 derivative
    torch.testing.assert_close(L.grad, s.exp())
    torch.testing.assert_close(m.weights, s.exp())
    torch.testing.assert_close(m.scales, s.exp())
    assert torch.equal(IMTLL(T).weights, torch.ones(T))


def test_imtll_converges_to_unit_scaled_losses():
    """Paper 004 eq. 3: with fixed losses, s_t → −log L_t, i.e. e^{s_t} L_t → 1."""
    m = IMTLL(4)
    L = torch.tensor([0.01, 1.0, 20.0, 300.0])
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    # Task 3's first step overshoots to s = −149.5, beyond the clamp: the straight-through
    # gradient e^{−30} L − 1 ≈ −1 brings it back (0.5 per step) instead of vanishing.
    for _ in range(400):
        opt.zero_grad()
        m.loss(L).backward()
        opt.step()
    torch.testing.assert_close(m.scales * L, torch.ones(4), rtol=1e-3, atol=0)


def test_log_scale_clamp_keeps_values_finite_and_gradient_restoring():
    m = IMTLL(2)
    with torch.no_grad():
        m.log_scales.copy_(torch.tensor([200.0, -200.0]))
    L = torch.tensor([1.0, 1.0])
    total = m.loss(L)
    assert torch.isfinite(total)
    total.backward()
    bound = torch.tensor(MAX_LOG_SCALE)
    expected = torch.stack([bound.exp() - 1, (-bound).exp() - 1])
    torch.testing.assert_close(m.log_scales.grad, expected)
    assert m.log_scales.grad[0] > 0 > m.log_scales.grad[1]  # back towards the balance
    with pytest.raises(ValueError):
        IMTLL(2, max_log_scale=0.0)


# -------------------------------------------------------------------------------------- IMTL


def test_imtl_shared_gradient_is_imtlg_of_scaled_losses(device):
    model = ToyMTL(T, device=device)
    x, ys = toy_batch(model, device=device)
    m = IMTL(T).to(device)
    with torch.no_grad():
        m.log_scales.copy_(torch.tensor([1.0, -0.5, 0.3]))
    e = m.scales
    split_step(model, m, x, ys)
    _, J = feature_gradients(model, x, ys)
    Js = J * e[:, None, None].to(J.dtype)  # ∇_z (e^{s_t} L_t)
    alpha = reference.imtl_g_weights(reference.gram(Js))
    torch.testing.assert_close(m.gradient_weights, alpha, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m.weights, alpha * e, rtol=1e-5, atol=1e-7)
    # Theorem 2: the direction equals IMTL-G's on the raw losses.
    raw = reference.imtl_g_weights(reference.gram(J))
    g_imtl = torch.einsum("t,t...->...", m.weights, J).flatten()
    g_raw = torch.einsum("t,t...->...", raw, J).flatten()
    cos = torch.nn.functional.cosine_similarity(g_imtl, g_raw, dim=0)
    assert cos > 1 - 1e-5
    # s_t is trained by e^{s_t} L_t − s_t.
    losses = model.losses(x, ys).detach()
    torch.testing.assert_close(m.log_scales.grad, e * losses - 1, rtol=1e-5, atol=1e-6)


def test_imtl_loss_value_and_initial_weights():
    m = IMTL(T)
    torch.testing.assert_close(m.initial_weights(T), torch.full((T,), 1 / T))
    with pytest.raises(RuntimeError, match="no weights yet"):
        _ = m.weights  # a gradient method has no weights before its first solve
    torch.testing.assert_close(m.gradient_weights, torch.full((T,), 1 / T))
    L = torch.tensor([1.0, 2.0, 3.0])
    present = torch.ones(T, dtype=torch.bool)
    torch.testing.assert_close(m.total_loss(L, present), L.sum())  # s = 0: Σ(e^0 L − 0)
    with pytest.raises(RuntimeError, match="no split is pending"):
        m.loss(L)  # training without split would apply no weights
    m.eval()
    torch.testing.assert_close(m.loss(L), L.sum())  # evaluation before a solve: Σ L_t
