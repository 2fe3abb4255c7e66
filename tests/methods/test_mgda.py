"""MGDA-UB (Sener & Koltun 2018) with the original code's gradient normalisations."""

from __future__ import annotations

import itertools

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

from mtl_fast.methods.mgda import MGDA, gradient_normalizers
from mtl_fast.weighting import StepInputs

T = 3


def min_norm_by_enumeration(V: torch.Tensor) -> torch.Tensor:
    """argmin ‖Σ λ_t v_t‖ over the simplex by trying every support S: the affine minimiser on S
    (KKT system), kept when λ ≥ 0 and optimal ((Gλ)_t ≥ λᵀGλ for all t). Independent oracle."""
    V = V.flatten(1).double()
    n = V.shape[0]
    G = V @ V.T
    best, best_val = None, float("inf")
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            idx = list(S)
            K = torch.zeros(k + 1, k + 1, dtype=torch.float64)
            K[:k, :k] = G[idx][:, idx]
            K[:k, k] = 1
            K[k, :k] = 1
            rhs = torch.zeros(k + 1, dtype=torch.float64)
            rhs[k] = 1
            sol = torch.linalg.lstsq(K, rhs).solution
            lam = torch.zeros(n, dtype=torch.float64)
            lam[idx] = sol[:k]
            if (lam < -1e-12).any():
                continue
            val = float(lam @ G @ lam)
            if val < best_val - 1e-15:
                best, best_val = lam.clamp_min(0), val
    return best / best.sum()


def original_mgda(J: torch.Tensor, losses: torch.Tensor, normalization: str, apply_to: str):
    """A direct transcription on explicit gradients: normalise the gradient vectors, solve the
    min-norm problem, apply the factors to the raw (or the normalised) gradients."""
    J = J.flatten(1).double()
    norms = J.norm(dim=1)
    L = losses.double()
    s = {"none": torch.ones_like(norms), "l2": norms, "loss": L, "loss+": L * norms}[normalization]
    lam = min_norm_by_enumeration(J / s[:, None])
    return lam if apply_to == "raw" else lam / s


def _problem(seed: int, Tn: int = T):
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(Tn, 12, generator=gen, dtype=torch.float64)
    J = J * torch.logspace(-1, 1, Tn, dtype=torch.float64)[:, None]
    losses = torch.rand(Tn, generator=gen, dtype=torch.float64) * 3 + 0.1
    return J, losses


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("apply_to", ["raw", "normalized"])
@pytest.mark.parametrize("seed", range(3))
def test_weights_equal_direct_transcription(normalization, apply_to, seed):
    J, losses = _problem(seed, Tn=2 + seed)
    m = MGDA(normalization=normalization, apply_to=apply_to)
    inputs = StepInputs(losses=losses, present=torch.ones(J.shape[0], dtype=torch.bool))
    alpha = m.gram_weights(J @ J.T, inputs)
    expected = original_mgda(J, losses, normalization, apply_to)
    torch.testing.assert_close(alpha.double(), expected, rtol=1e-5, atol=1e-7)


def test_needs_losses_only_for_loss_normalisations():
    assert not MGDA().needs_losses_in_backward
    assert not MGDA(normalization="l2").needs_losses_in_backward
    assert MGDA(normalization="loss").needs_losses_in_backward
    assert MGDA(normalization="loss+").needs_losses_in_backward


def test_loss_normalisation_uses_the_step_losses_through_split():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    m = MGDA(normalization="loss+", apply_to="normalized")
    losses, _ = split_step(model, m, x, ys)
    _, J = feature_gradients(model, x, ys)
    expected = original_mgda(J, losses, "loss+", "normalized")
    torch.testing.assert_close(m.weights.double(), expected, rtol=1e-4, atol=1e-6)


def test_nonpositive_divisors_are_left_unnormalised():
    G = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    L = torch.tensor([2.0, 1.0, -1.0])
    torch.testing.assert_close(
        gradient_normalizers(G, L, "l2"), torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        gradient_normalizers(G, L, "loss"), torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    )


def test_unconstrained_closed_form_is_perpendicular_to_differences():
    """Paper 004 §4 eq. 7: g ⊥ (g_1 − g_t), i.e. g·g_t equal for all t."""
    J, _ = _problem(5, Tn=4)
    alpha = MGDA(constrained=False).gram_weights(
        J @ J.T, StepInputs(torch.zeros(4), torch.ones(4, dtype=torch.bool))
    )
    g = alpha.double() @ J
    dots = J @ g
    torch.testing.assert_close(dots, dots[0].expand(4), rtol=1e-5, atol=0)
    torch.testing.assert_close(alpha.sum().double(), torch.tensor(1.0, dtype=torch.float64))


def test_frank_wolfe_solver_is_close():
    J, _ = _problem(7, Tn=3)
    inputs = StepInputs(torch.zeros(3), torch.ones(3, dtype=torch.bool))
    exact = MGDA().gram_weights(J @ J.T, inputs)
    fw = MGDA(solver="frank_wolfe").gram_weights(J @ J.T, inputs)
    torch.testing.assert_close(fw, exact, rtol=0, atol=5e-3)


def test_mask_and_nan_policy_and_subproblem():
    check_mask_and_nan(lambda **kw: MGDA(**kw))
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    m = MGDA(normalization="loss")
    losses, _ = split_step(model, m, x, ys, mask=[True, False, True])
    _, J = feature_gradients(model, x, ys)
    expected = original_mgda(J[[0, 2]], losses[[0, 2]], "loss", "raw")
    torch.testing.assert_close(m.weights[[0, 2]].double(), expected, rtol=1e-4, atol=1e-6)


def test_resume_equals_unbroken():
    check_resume(lambda: MGDA(normalization="loss+"), T)


def test_invalid_options():
    with pytest.raises(ValueError, match="normalization"):
        MGDA(normalization="l1")
    with pytest.raises(ValueError, match="apply_to"):
        MGDA(apply_to="both")
    with pytest.raises(ValueError, match="solver"):
        MGDA(solver="qp")
