"""MGDA-UB (Sener & Koltun 2018) with the original code's gradient normalisations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

import mtl_fast as mf
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


# --------------------------------------------------------------------------- published Frank-Wolfe


def _published_frank_wolfe(G: np.ndarray, cap: int | None) -> tuple[np.ndarray, int]:
    """Sener & Koltun (2018), find_min_norm_element_FW, transcribed on the Gram matrix: best
    pair, then Frank-Wolfe steps with the two-point rule (0.999 / 0.001 at the ends), returning
    the iterate BEFORE the first step whose L1 length is below 1e-5. ``cap``: LibMTL's counter
    (250); None: the published loop, whose counter is never incremented."""

    def two(v11: float, v12: float, v22: float) -> tuple[float, float]:
        if v12 >= v11:
            return 0.999, v11
        if v12 >= v22:
            return 0.001, v22
        g = -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))
        return g, v22 + g * (v12 - v22)

    T = G.shape[0]
    best, sol = 1e8, None
    for i in range(T):
        for j in range(i + 1, T):
            c, d = two(G[i, i], G[i, j], G[j, j])
            if d < best:
                best, sol = d, (i, j, c)
    assert sol is not None
    lam = np.zeros(T)
    lam[sol[0]], lam[sol[1]] = sol[2], 1 - sol[2]
    if T < 3:
        return lam, 0
    steps = 0
    while cap is None or steps < cap:
        steps += 1
        t = int(np.argmin(G @ lam))
        g, _ = two(lam @ G @ lam, lam @ G[:, t], G[t, t])
        new = g * lam
        new[t] += 1 - g
        if np.abs(new - lam).sum() < 1e-5:
            return lam, steps
        lam = new
    return lam, steps


def _slow_fw_problem(seed: int, T: int = 12) -> np.ndarray:
    """Gradients with norms spread over e^±2.5 and no shared component: Frank-Wolfe zig-zags."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((T, T + 4)) * np.exp(rng.uniform(-2.5, 2.5, (T, 1)))
    G = J @ J.T
    return G / np.diag(G).max()  # the solver works on G scaled to unit maximum diagonal


@pytest.mark.parametrize("seed", range(6))
def test_frank_wolfe_solvers_match_published_loop(seed: int) -> None:
    """``"frank_wolfe"`` is the published loop (no cap), ``"frank_wolfe_capped"`` LibMTL's copy
    (250 steps): both equal a direct transcription to rounding; where the published loop needs
    more than 250 steps the two differ."""
    G = _slow_fw_problem(seed)
    want, steps = _published_frank_wolfe(G, None)
    want_capped, _ = _published_frank_wolfe(G, 250)
    Gt = torch.tensor(G, dtype=torch.float64)
    got = mf.mgda_weights(Gt, solver="frank_wolfe").numpy()
    got_capped = mf.mgda_weights(Gt, solver="frank_wolfe_capped").numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got_capped, want_capped, rtol=0, atol=1e-9)
    if steps > 250:
        assert np.abs(got - got_capped).max() > 1e-6


def test_some_problem_needs_more_than_the_cap() -> None:
    """The cap matters: at least one of the test problems needs more than 250 steps."""
    steps = [_published_frank_wolfe(_slow_fw_problem(s), None)[1] for s in range(6)]
    assert max(steps) > 250, steps


def test_unknown_solver_names_the_choices() -> None:
    with pytest.raises(ValueError, match="frank_wolfe_capped"):
        MGDA(solver="fw")
    with pytest.raises(ValueError, match="frank_wolfe_capped"):
        mf.mgda_weights(torch.eye(3), solver="fw")
