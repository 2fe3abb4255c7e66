"""CAGrad (Liu et al. 2021): the Gram-space dual solve against SciPy, the final update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

from mtl_fast.methods.cagrad import CAGrad, cagrad_dual, cagrad_weights
from mtl_fast.weighting import StepInputs

scipy_optimize = pytest.importorskip("scipy.optimize")

T = 3


def dual_objective(G: np.ndarray, c: float):
    Tn = G.shape[0]
    b = np.full(Tn, 1.0 / Tn)
    a = G @ b
    r = c * np.sqrt(b @ G @ b)
    return lambda w: float(w @ a + r * np.sqrt(max(w @ G @ w, 0.0)))


def scipy_dual(G: np.ndarray, c: float) -> np.ndarray:
    """The same dual problem by SLSQP (several starts, tight tolerance)."""
    Tn = G.shape[0]
    f = dual_objective(G, c)
    rng = np.random.default_rng(0)
    starts = [np.full(Tn, 1.0 / Tn)] + [rng.dirichlet(np.ones(Tn)) for _ in range(3)]
    best = None
    for x0 in starts:
        res = scipy_optimize.minimize(
            f,
            x0,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * Tn,
            constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum()},),
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def _problem(seed: int, Tn: int, D: int = 10) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
    if seed % 2 == 0:
        J[1] = -0.6 * J[0] + 0.2 * J[1]  # conflict
    return J * torch.logspace(-1, 1, Tn, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("seed", range(4))
def test_dual_solution_matches_scipy(c, seed):
    Tn = 2 + seed
    J = _problem(seed, Tn)
    G = (J @ J.T).numpy()
    w, rho = cagrad_dual(torch.from_numpy(G), c)
    f = dual_objective(G, c)
    w_ref = scipy_dual(G, c)
    scale = np.abs(f(w_ref)) + 1e-12 * G.diagonal().max()
    assert f(w.numpy()) <= f(w_ref) + 1e-7 * scale  # at least as good as SciPy
    torch.testing.assert_close(rho, torch.tensor(np.sqrt(w_ref @ G @ w_ref)), rtol=1e-4, atol=0)
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-9


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_final_update_and_rescaling(rescale):
    c = 0.5
    J = _problem(0, 4)
    G = J @ J.T
    w = torch.from_numpy(scipy_dual(G.numpy(), c))
    g0 = J.mean(0)
    gw = w @ J
    d = g0 + c * g0.norm() / gw.norm() * gw
    d = d / {0: 1.0, 1: 1 + c**2, 2: 1 + c}[rescale]
    alpha = cagrad_weights(G, c, rescale=rescale)
    torch.testing.assert_close(alpha @ J, d, rtol=1e-4, atol=1e-8)


def test_update_is_the_worst_case_maximiser_on_the_ball():
    """Primal check: ‖d − g_0‖ = c‖g_0‖ and min_t ⟨g_t, d⟩ beats random points of the ball."""
    c = 0.5
    J = _problem(2, 4)
    d = cagrad_weights(J @ J.T, c, rescale=0) @ J
    g0 = J.mean(0)
    torch.testing.assert_close((d - g0).norm(), c * g0.norm(), rtol=1e-6, atol=0)
    worst = (J @ d).min()
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2000, J.shape[1], generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    candidates = g0 + c * g0.norm() * u
    assert worst >= (candidates @ J.T).min(dim=1).values.max() - 1e-9


def test_c_zero_is_the_mean_and_single_task():
    J = _problem(1, 3)
    torch.testing.assert_close(
        cagrad_weights(J @ J.T, 0.0), torch.full((3,), 1 / 3, dtype=torch.float64)
    )
    G1 = torch.tensor([[4.0]], dtype=torch.float64)
    torch.testing.assert_close(
        cagrad_weights(G1, 0.5), torch.tensor([1.5 / 1.25], dtype=torch.float64)
    )


def test_absent_tasks_are_left_out_of_the_mean():
    J = _problem(0, 4)
    G = J @ J.T
    G[2, :] = 0
    G[:, 2] = 0
    alpha = cagrad_weights(G, 0.5)
    keep = [0, 1, 3]
    sub = cagrad_weights((J[keep] @ J[keep].T), 0.5)
    assert alpha[2] == 0
    torch.testing.assert_close(alpha[keep], sub, rtol=1e-6, atol=1e-9)


def test_method_through_split(device):
    model = ToyMTL(T, device=device)
    x, ys = toy_batch(model, device=device)
    m = CAGrad(c=0.4).to(device)
    split_step(model, m, x, ys)
    _, J = feature_gradients(model, x, ys)
    Jf = J.flatten(1).double().cpu()
    w_ref = torch.from_numpy(scipy_dual((Jf @ Jf.T).numpy(), 0.4))
    g0 = Jf.mean(0)
    gw = w_ref @ Jf
    d = (g0 + 0.4 * g0.norm() / gw.norm() * gw) / (1 + 0.4**2)
    torch.testing.assert_close((m.weights.double().cpu() @ Jf), d, rtol=1e-3, atol=1e-6)
    inputs = StepInputs(torch.zeros(T), torch.ones(T, dtype=torch.bool))
    assert m.gram_weights(Jf @ Jf.T, inputs).dtype == torch.float64


def test_mask_and_nan_policy():
    check_mask_and_nan(lambda **kw: CAGrad(**kw))


def test_resume_equals_unbroken():
    check_resume(lambda: CAGrad(c=0.5), T, steps=4, split_at=2)


def test_invalid_options():
    with pytest.raises(ValueError):
        CAGrad(c=-0.1)
    with pytest.raises(ValueError):
        CAGrad(rescale=3)
    with pytest.raises(ValueError):
        CAGrad(iters=0)
