"""UPGrad and DualProj (Quinton & Rey 2024): projections onto the dual cone of the gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from mtl_fast import reference
from mtl_fast.methods import upgrad as U
from mtl_fast.methods.upgrad import DualProj, UPGrad, dual_cone_weights
from mtl_fast.weighting import StepInputs

T = 3


def _inputs(Tn: int, device="cpu", present=None) -> StepInputs:
    if present is None:
        present = torch.ones(Tn, dtype=torch.bool)
    return StepInputs(losses=torch.zeros(Tn, device=device), present=present.to(device))


def _problem(seed: int, Tn: int, conflict: bool = True, D: int | None = None) -> torch.Tensor:
    """Explicit gradient rows J [Tn, D] (float64) with different norms and, when ``conflict``,
    a shared component pulling some of them against the others."""
    gen = torch.Generator().manual_seed(seed)
    D = D or 2 * Tn + 4
    J = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
    if conflict:
        common = torch.randn(1, D, generator=gen, dtype=torch.float64)
        J = J + 2.0 * torch.randn(Tn, 1, generator=gen, dtype=torch.float64) * common
    return J * torch.logspace(-1, 1, Tn, dtype=torch.float64)[:, None]


def project_dual_cone(J: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of x onto {y : J y ≥ 0}, solved in gradient space (the primal
    problem min ‖y − x‖² s.t. J y ≥ 0, SciPy SLSQP): an oracle independent of Proposition 1."""
    Jn, xn = J.numpy(), x.numpy()
    res = minimize(
        lambda y: 0.5 * np.sum((y - xn) ** 2),
        xn,
        jac=lambda y: y - xn,
        constraints=[{"type": "ineq", "fun": lambda y: Jn @ y, "jac": lambda y: Jn}],
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 500},
    )
    return torch.from_numpy(res.x)


def upgrad_transcription(J: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """Quinton & Rey's A_UPGrad on explicit gradients: Σ_i p_i π_J(g_i)."""
    return sum(p * project_dual_cone(J, g) for p, g in zip(pref, J))


def dualproj_transcription(J: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """π_J(Σ_t p_t g_t) on explicit gradients."""
    return project_dual_cone(J, pref @ J)


# ------------------------------------------------------------------------- definitions


@pytest.mark.parametrize("seed", range(4))
def test_equal_direct_transcription(seed):
    Tn = 2 + seed
    J = _problem(seed, Tn)
    pref = torch.full((Tn,), 1.0 / Tn, dtype=torch.float64)
    G = J @ J.T
    for cls, oracle in ((UPGrad, upgrad_transcription), (DualProj, dualproj_transcription)):
        alpha = cls(reg_eps=0.0).gram_weights(G, _inputs(Tn))
        expected = oracle(J, pref)
        torch.testing.assert_close(alpha @ J, expected, rtol=1e-6, atol=1e-8 * expected.norm())


def test_custom_preference_vector():
    J = _problem(11, 4)
    pref = torch.tensor([0.5, 0.0, 2.0, 1.0], dtype=torch.float64)
    G = J @ J.T
    a = UPGrad(pref_vector=pref, reg_eps=0.0).gram_weights(G, _inputs(4))
    torch.testing.assert_close(a @ J, upgrad_transcription(J, pref), rtol=1e-6, atol=1e-9)
    a = DualProj(pref_vector=pref.tolist(), reg_eps=0.0).gram_weights(G, _inputs(4))
    torch.testing.assert_close(a @ J, dualproj_transcription(J, pref), rtol=1e-6, atol=1e-9)


def test_mean_when_no_pair_conflicts():
    """v(u) = u when Ĝu ≥ 0: with pairwise non-conflicting gradients both reduce to the mean."""
    gen = torch.Generator().manual_seed(3)
    J = torch.rand(5, 9, generator=gen, dtype=torch.float64)  # non-negative: G ≥ 0
    for cls in (UPGrad, DualProj):
        alpha = cls().gram_weights(J @ J.T, _inputs(5))
        torch.testing.assert_close(alpha, torch.full((5,), 0.2, dtype=torch.float64))


# ------------------------------------------------------------------------------ torchjd


@pytest.mark.parametrize("Tn", [2, 3, 5, 10, 20])
@pytest.mark.parametrize("exact", [False, True], ids=["reg1e-4", "reg0"])
def test_agrees_with_torchjd(Tn, exact):
    """Σ α_t g_t equals torchjd 0.18's aggregation of the same Jacobian (quadprog), with its
    default regularisation (ε = 1e-4 on the trace-normalised Gram matrix) and without."""
    jd = pytest.importorskip("torchjd.aggregation")
    projector = None
    if exact:
        from torchjd._linalg._dual_cone import QuadprogProjector

        projector = QuadprogProjector(reg_eps=0.0)
    reg = 0.0 if exact else 1e-4
    for seed in range(3):
        J = _problem(100 + seed, Tn, conflict=seed != 0)
        G = J @ J.T
        for ours, theirs in (
            (UPGrad(reg_eps=reg), jd.UPGrad),
            (DualProj(reg_eps=reg), jd.DualProj),
        ):
            expected = theirs(projector=projector)(J)
            got = ours.gram_weights(G, _inputs(Tn)) @ J
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9 * expected.norm())


def test_agrees_with_torchjd_preference_vector():
    jd = pytest.importorskip("torchjd.aggregation")
    J = _problem(7, 5)
    pref = torch.tensor([0.1, 0.3, 0.2, 0.0, 0.4], dtype=torch.float64)
    for ours, theirs in ((UPGrad, jd.UPGrad), (DualProj, jd.DualProj)):
        expected = theirs(pref_vector=pref)(J)
        got = ours(pref_vector=pref).gram_weights(J @ J.T, _inputs(5)) @ J
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), Tn=st.integers(1, 12), reg=st.sampled_from([0.0, 1e-4]))
def test_non_conflicting(seed, Tn, reg):
    """G α ≥ 0: the update conflicts with no task (exactly for ε = 0; with ε the QP's
    stationarity gives (Gα)_t ≥ −ε tr(G) α_t)."""
    J = _problem(seed, Tn, conflict=True, D=max(2, Tn // 2 + seed % (Tn + 2)))
    G = J @ J.T
    tol = 1e-9 * G.diagonal().sum()
    for cls in (UPGrad, DualProj):
        alpha = cls(reg_eps=reg).gram_weights(G, _inputs(Tn))
        assert torch.isfinite(alpha).all()
        assert (alpha >= 1.0 / Tn - 1e-12).all()  # α ≥ p: v ≥ u
        slack = G @ alpha + reg * G.diagonal().sum() * alpha
        assert (slack >= -tol * (1 + alpha.abs().max())).all(), (cls.__name__, slack)


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_permutation_equivariance(cls):
    J = _problem(21, 6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    a = cls().gram_weights(J @ J.T, _inputs(6))
    Jp = J[perm]
    ap = cls().gram_weights(Jp @ Jp.T, _inputs(6))
    torch.testing.assert_close(ap, a[perm], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_global_scale(cls):
    """Scaling every gradient by k leaves α unchanged (ε is relative to tr G): update × k."""
    J = _problem(5, 4)
    a = cls().gram_weights(J @ J.T, _inputs(4))
    for k in (1e-3, 1e3):
        Jk = k * J
        torch.testing.assert_close(cls().gram_weights(Jk @ Jk.T, _inputs(4)), a)


@pytest.mark.parametrize("k", [0.1, 7.0])
def test_upgrad_linear_under_scaling(k):
    """Quinton & Rey's linearity under scaling: g_j → k g_j (k > 0) leaves the dual cone
    unchanged and multiplies the j-th projection by k: update(k) = Σ_i c_i p_i π_J(g_i)."""
    J = _problem(9, 4)
    j = 2
    W = dual_cone_weights(J @ J.T, torch.eye(4, dtype=torch.float64) / 4, reg_eps=0.0)
    parts = W @ J  # p_i π_J(g_i), one per row
    c = torch.ones(4, dtype=torch.float64)
    c[j] = k
    Jk = c[:, None] * J
    got = UPGrad(reg_eps=0.0).gram_weights(Jk @ Jk.T, _inputs(4)) @ Jk
    torch.testing.assert_close(got, c @ parts, rtol=1e-8, atol=1e-10)


def test_dualproj_one_scaled_gradient_stays_non_conflicting():
    """DualProj is not scale-invariant per task: scaling g_j by k changes the preferred
    direction Σ p_t g_t (and the update), but the update still conflicts with no task."""
    J = _problem(13, 4)
    a1 = DualProj(reg_eps=0.0).gram_weights(J @ J.T, _inputs(4)) @ J
    Jk = J.clone()
    Jk[1] *= 50.0
    a2 = DualProj(reg_eps=0.0).gram_weights(Jk @ Jk.T, _inputs(4)) @ Jk
    assert (Jk @ a2 >= -1e-9 * a2.norm() * Jk.norm(dim=1)).all()
    cos = torch.nn.functional.cosine_similarity(a1, a2, dim=0)
    assert cos < 0.999


# ------------------------------------------------------------------------------ solver


@pytest.mark.parametrize("Tn", [4, 12, 24])
def test_fixed_budget_path_equals_early_exit(Tn):
    """The accelerator path (APG warm start + a fixed active-set budget, no host reads) gives
    the CPU path's exact solution."""
    for seed in range(3):
        J = _problem(300 + seed, Tn)
        G = J @ J.T
        U_ = torch.eye(Tn, dtype=torch.float64) / Tn
        cpu = dual_cone_weights(G, U_)
        dev = dual_cone_weights(G, U_, stop_early=False)
        torch.testing.assert_close(dev, cpu, rtol=1e-9, atol=1e-12)


def test_batched_equals_one_by_one_and_kkt():
    J = _problem(41, 6)
    G = J @ J.T
    gen = torch.Generator().manual_seed(0)
    Um = torch.rand(5, 6, generator=gen, dtype=torch.float64) - 0.3  # mixed-sign u
    W = dual_cone_weights(G, Um, reg_eps=0.0)
    for k in range(5):
        torch.testing.assert_close(dual_cone_weights(G, Um[k], reg_eps=0.0), W[k])
        v, u = W[k], Um[k]
        grad = G @ v  # KKT: v ≥ u, Gv ≥ 0, (v − u)·Gv = 0
        scale = G.diagonal().sum() * v.abs().max()
        assert (v >= u - 1e-12).all()
        assert (grad >= -1e-9 * scale).all()
        assert abs(float((v - u) @ grad)) <= 1e-9 * float(scale)


def test_singular_gram_is_finite():
    """T > D and duplicated gradients: the regularised problem has a unique solution."""
    J = _problem(2, 6, D=3)
    J = torch.cat([J, J[:1]])
    for cls in (UPGrad, DualProj):
        alpha = cls().gram_weights(J @ J.T, _inputs(7))
        assert torch.isfinite(alpha).all()
        G = J @ J.T  # stationarity of the regularised QP: (Gα)_t ≥ −ε tr(G) α_t
        slack = G @ alpha + 1e-4 * G.diagonal().sum() * alpha
        assert (slack >= -1e-9 * G.diagonal().sum() * alpha.max()).all()


def test_float32_gram():
    J = _problem(8, 5)
    G32 = (J @ J.T).float()
    for cls in (UPGrad, DualProj):
        a32 = cls().gram_weights(G32, _inputs(5))
        a64 = cls().gram_weights(J @ J.T, _inputs(5))
        torch.testing.assert_close(a32.double(), a64, rtol=1e-5, atol=1e-7)


def test_no_host_reads_on_meta_device():
    """Every operation of the accelerator path runs on meta tensors (which have no data): the
    solve never reads a value on the host, so it cannot synchronise with a GPU."""
    G = torch.empty(6, 6, device="meta")
    inputs = _inputs(6, device="meta")
    for m in (UPGrad(), DualProj(), UPGrad(pref_vector=[1.0] * 6)):
        assert m.gram_weights(G, inputs).shape == (6,)


def test_cuda_sync_free(device):
    if device.type != "cuda":
        pytest.skip("needs CUDA")
    J = _problem(1, 5).to(device)
    G = (J @ J.T).float()
    inputs = _inputs(5, device=device)
    for m in (UPGrad(), DualProj()):
        m.gram_weights(G, inputs)  # first call: builds the cached constants
        torch.cuda.set_sync_debug_mode("error")
        try:
            m.gram_weights(G, inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------ through the base class


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_split_matches_gram_solution(cls, device):
    model = ToyMTL(T, device=device)
    x, ys = toy_batch(model, device=device)
    m = cls()
    split_step(model, m, x, ys)
    _, J = feature_gradients(model, x, ys)
    expected = cls().gram_weights(reference.gram(J).double(), _inputs(T, device))
    torch.testing.assert_close(m.weights.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_mask_and_nan(cls):
    check_mask_and_nan(lambda **kw: cls(**kw))
    model = ToyMTL(4)
    x, ys = toy_batch(model)
    m = cls()
    split_step(model, m, x, ys, mask=[True, True, False, True])
    _, J = feature_gradients(model, x, ys)
    sub = J[[0, 1, 3]].flatten(1).double()
    expected = cls().gram_weights(sub @ sub.T, _inputs(3))
    assert m.weights[2] == 0
    torch.testing.assert_close(m.weights[[0, 1, 3]].double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_resume_equals_unbroken(cls, device):
    check_resume(lambda: cls(pref_vector=[0.2, 0.5, 0.3]), T, device=device)


def test_invalid_options():
    with pytest.raises(ValueError, match="reg_eps"):
        UPGrad(reg_eps=-1.0)
    with pytest.raises(ValueError, match="pref_vector"):
        DualProj(pref_vector=[1.0, -1.0])
    with pytest.raises(ValueError, match="pref_vector"):
        UPGrad(3, pref_vector=[1.0, 1.0])
    with pytest.raises(ValueError, match="max_iter"):
        UPGrad(max_iter=0)
    with pytest.raises(ValueError, match="pref_vector"):
        UPGrad(pref_vector=[1.0, 1.0]).gram_weights(torch.eye(3), _inputs(3))
    assert "pref_vector" in repr(UPGrad(pref_vector=[1.0]))
    assert torch.equal(
        UPGrad(2, pref_vector=[0.25, 0.75]).initial_weights(2), torch.tensor([0.25, 0.75])
    )
    assert U.REG_EPS == 1e-4
