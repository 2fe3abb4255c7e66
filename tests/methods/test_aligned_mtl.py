"""Aligned-MTL (Senushkin et al. 2023) and the sync-free Jacobi eigensolver it uses off the CPU."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_fast import reference
from mtl_fast.methods._eigh import default_sweeps, jacobi_eigh, sym_eigh
from mtl_fast.methods.aligned_mtl import AlignedMTL, aligned_mtl_weights, balance_transformation
from mtl_fast.weighting import StepInputs

T = 3
F64 = torch.float64


def _inputs(Tn: int, device="cpu", present=None) -> StepInputs:
    if present is None:
        present = torch.ones(Tn, dtype=torch.bool)
    return StepInputs(losses=torch.zeros(Tn, device=device), present=present.to(device))


def _problem(seed: int, Tn: int, D: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    D = D or 2 * Tn + 4
    J = torch.randn(Tn, D, generator=gen, dtype=F64)
    J = J + 0.7 * torch.randn(Tn, 1, generator=gen, dtype=F64) * J[:1]
    return J * torch.logspace(-1, 1, Tn, dtype=F64)[:, None]


def aligned_transcription(J: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Senushkin et al. on explicit gradients, through the SVD J = U S Wᵀ (their Procrustes
    view, eq. 8–10): the aligned rows are J̃ = σ_R U_R W_Rᵀ (orthogonal, each of norm σ_R, the
    smallest singular value kept: σ² > λ_max · T · eps), and the update is J̃ᵀ w."""
    Uj, S, Wh = torch.linalg.svd(J, full_matrices=False)
    keep = S**2 > S.max() ** 2 * J.shape[0] * eps
    Uk, Sk, Wk = Uj[:, keep], S[keep], Wh[keep]
    aligned = Sk.min() * Uk @ Wk
    return aligned.T @ w


# ------------------------------------------------------------------------- definition


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eigensolver", ["eigh", "jacobi"])
def test_equals_direct_transcription(seed, eigensolver):
    Tn = 2 + seed
    for J in (_problem(seed, Tn), _problem(seed, Tn, D=max(1, Tn - 1))):  # full rank, deficient
        w = torch.full((Tn,), 1.0 / Tn, dtype=F64)
        m = AlignedMTL(eigensolver=eigensolver, rank_eps=1e-10)
        alpha = m.gram_weights(J @ J.T, _inputs(Tn))
        expected = aligned_transcription(J, w, 1e-10)
        torch.testing.assert_close(alpha @ J, expected, rtol=1e-8, atol=1e-12)


def test_aligned_system_is_orthogonal_with_equal_norms():
    """BᵀGB = σ_R² Π_R: with full rank, the aligned gradients g̃_t = Σ_s B_st g_s are orthogonal,
    each of norm σ_R = the smallest singular value of J."""
    J = _problem(5, 5)
    B = balance_transformation(J @ J.T)
    aligned = B.T @ J
    s_min = torch.linalg.svdvals(J).min()
    torch.testing.assert_close(aligned @ aligned.T, s_min**2 * torch.eye(5, dtype=F64))


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_scale_modes(mode):
    J = _problem(8, 6)
    lam = torch.linalg.eigvalsh(J @ J.T)
    scale = {"min": lam.min(), "median": torch.median(lam), "rmse": lam.mean()}[mode]
    B = balance_transformation(J @ J.T, scale_mode=mode)
    aligned = B.T @ J
    torch.testing.assert_close(aligned @ aligned.T, scale * torch.eye(6, dtype=F64))


# ------------------------------------------------------------------------------ torchjd


@pytest.mark.parametrize("Tn", [1, 2, 3, 5, 10, 20])
@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_agrees_with_torchjd(Tn, mode):
    """Σ α_t g_t equals torchjd 0.18's AlignedMTL on the same float64 Jacobian, with both
    eigensolvers, including a rank-deficient one (D < T)."""
    jd = pytest.importorskip("torchjd.aggregation")
    for J in (_problem(Tn, Tn), _problem(Tn + 1, Tn, D=max(1, Tn // 2))):
        expected = jd.AlignedMTL(scale_mode=mode)(J)
        for solver in ("eigh", "jacobi"):
            m = AlignedMTL(scale_mode=mode, eigensolver=solver)
            got = m.gram_weights(J @ J.T, _inputs(Tn)) @ J
            torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12 * expected.norm())


def test_agrees_with_torchjd_preference_vector():
    jd = pytest.importorskip("torchjd.aggregation")
    J = _problem(2, 4)
    pref = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=F64)
    expected = jd.AlignedMTL(pref_vector=pref)(J)
    got = AlignedMTL(pref_vector=pref).gram_weights(J @ J.T, _inputs(4)) @ J
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------------------- properties


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1e-3, 0.5, 20.0]))
def test_global_scale(seed, k):
    """Scaling every gradient by k leaves B (and α) unchanged, so the update scales by k."""
    J = _problem(seed, 4)
    a = aligned_mtl_weights(J @ J.T)
    Jk = k * J
    torch.testing.assert_close(aligned_mtl_weights(Jk @ Jk.T), a, rtol=1e-9, atol=0)


def test_one_scaled_gradient_keeps_the_aligned_system_balanced():
    """Scaling one g_t by k changes the alignment (no per-task invariance), but the aligned
    system stays orthogonal with equal norms σ_R of the new J."""
    J = _problem(4, 4)
    Jk = J.clone()
    Jk[2] *= 100.0
    d1 = aligned_mtl_weights(J @ J.T) @ J
    d2 = aligned_mtl_weights(Jk @ Jk.T) @ Jk
    assert torch.nn.functional.cosine_similarity(d1, d2, dim=0) < 0.999
    aligned = balance_transformation(Jk @ Jk.T).T @ Jk
    s_min = torch.linalg.svdvals(Jk).min()
    torch.testing.assert_close(aligned @ aligned.T, s_min**2 * torch.eye(4, dtype=F64))


def test_permutation_equivariance():
    J = _problem(6, 5)
    perm = torch.tensor([2, 4, 0, 1, 3])
    a = aligned_mtl_weights(J @ J.T)
    Jp = J[perm]
    for solver in ("eigh", "jacobi"):
        ap = aligned_mtl_weights(Jp @ Jp.T, eigensolver=solver)
        torch.testing.assert_close(ap, a[perm], rtol=1e-9, atol=1e-12)


def test_float32_gram_both_eigensolvers():
    """A Gram matrix accumulated in float32 is symmetric only up to rounding: both solvers see
    its symmetric part (and the float32 rank threshold), so they agree."""
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(12, 300, generator=gen) * torch.logspace(-1, 1, 12)[:, None]
    J = J - 3 * J.mean(0, keepdim=True)
    G = J @ J.T
    a = aligned_mtl_weights(G, eigensolver="eigh")
    b = aligned_mtl_weights(G, eigensolver="jacobi")
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_degenerate_inputs():
    """All tasks inactive: B = I (weights zeroed by the base); T = 1: α = w."""
    zero = torch.zeros(3, 3, dtype=F64)
    torch.testing.assert_close(balance_transformation(zero), torch.eye(3, dtype=F64))
    torch.testing.assert_close(
        aligned_mtl_weights(torch.tensor([[4.0]], dtype=F64)), torch.ones(1, dtype=F64)
    )


# --------------------------------------------------------------------------- eigensolver


def _matrices(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Symmetric test matrices of the structures Gram matrices have (and an indefinite one)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    def gram(Y: torch.Tensor) -> torch.Tensor:
        return Y @ Y.T

    Q, _ = torch.linalg.qr(r(n, n))
    clustered = torch.tensor([1.0] * (n // 2) + [1e-9] * (n - n // 2), dtype=F64)
    zero_row = gram(r(n, 3 * n + 1))
    zero_row[0] = 0
    zero_row[:, 0] = 0
    spread = torch.logspace(-3, 3, n, dtype=F64)[:, None]
    S = r(n, n)
    return {
        "full": gram(r(n, 3 * n + 1)),
        "rank_deficient": gram(r(n, max(1, n // 2))),
        "wide_range": gram(r(n, 2 * n) * spread),
        "wide_range_deficient": gram(r(n, max(1, n // 2)) * spread),
        "clustered": Q @ torch.diag(clustered) @ Q.T,
        "common_direction": gram(r(n, 2 * n) + 3 * r(1, 2 * n)),
        "zero_row": zero_row,
        "indefinite": S + S.T,
    }


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 17, 24])
def test_jacobi_matches_eigh(n):
    for name, A in _matrices(n, seed=n).items():
        lam, V = jacobi_eigh(A)
        lam0 = torch.linalg.eigvalsh(A)
        scale = A.abs().max().clamp_min(1e-300)
        err = (lam - lam0).abs().max() / scale
        assert err < 1e-13, (name, float(err))
        recon = (V * lam) @ V.T
        assert ((recon - A).abs().max() / scale) < 1e-13, name
        assert (V.T @ V - torch.eye(n, dtype=F64)).abs().max() < 1e-13, name
        assert (lam[1:] >= lam[:-1]).all(), name


def test_jacobi_details():
    """Zero rows stay exactly decoupled; float32 input; sweeps grow with n; dispatch."""
    A = _matrices(6, seed=0)["zero_row"]
    lam, V = jacobi_eigh(A)
    assert lam[0] == 0 and V[0].abs().max() == 1.0 and (V[0] == 0).sum() == 5
    A32 = _matrices(7, seed=1)["full"].float()
    lam32, _ = jacobi_eigh(A32)
    assert lam32.dtype == torch.float32
    torch.testing.assert_close(lam32, torch.linalg.eigvalsh(A32), rtol=1e-5, atol=1e-4)
    assert [default_sweeps(n) for n in (2, 16, 17, 32, 33, 64, 65)] == [8, 8, 10, 10, 12, 12, 14]
    A = _matrices(5, seed=2)["full"]
    torch.testing.assert_close(sym_eigh(A)[0], torch.linalg.eigvalsh(A))
    torch.testing.assert_close(sym_eigh(A, "jacobi")[0], torch.linalg.eigvalsh(A))
    with pytest.raises(ValueError, match="eigensolver"):
        sym_eigh(A, "qr")
    with pytest.raises(ValueError, match="square"):
        jacobi_eigh(torch.ones(2, 3))


def test_no_host_reads_on_meta_device():
    """The accelerator path (Jacobi, thresholds, medians) runs on meta tensors (no data): it
    never reads a value on the host, so it cannot synchronise with a GPU."""
    G = torch.empty(5, 5, device="meta")
    for mode in ("min", "median", "rmse"):
        m = AlignedMTL(scale_mode=mode)
        assert m.gram_weights(G, _inputs(5, device="meta")).shape == (5,)


def test_cuda_sync_free(device):
    if device.type != "cuda":
        pytest.skip("needs CUDA")
    J = _problem(1, 6).to(device)
    G = (J @ J.T).float()
    m = AlignedMTL()
    ref = AlignedMTL(eigensolver="eigh").gram_weights(G, _inputs(6, device=device))
    m.gram_weights(G, _inputs(6, device=device))  # first call: caches the schedule
    inputs = _inputs(6, device=device)  # built before: moving the mask to the GPU syncs
    torch.cuda.set_sync_debug_mode("error")
    try:
        alpha = m.gram_weights(G, inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(alpha, ref, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ through the base class


def test_split_matches_gram_solution(device):
    model = ToyMTL(T, device=device)
    x, ys = toy_batch(model, device=device)
    m = AlignedMTL()
    split_step(model, m, x, ys)
    _, J = feature_gradients(model, x, ys)
    expected = aligned_mtl_weights(reference.gram(J))  # fp32 Gram: float32 rank threshold
    torch.testing.assert_close(m.weights.double(), expected, rtol=1e-4, atol=1e-6)


def test_mask_and_nan():
    check_mask_and_nan(lambda **kw: AlignedMTL(**kw))
    model = ToyMTL(4)
    x, ys = toy_batch(model)
    m = AlignedMTL()
    split_step(model, m, x, ys, mask=[False, True, True, True])
    _, J = feature_gradients(model, x, ys)
    sub = reference.gram(J[[1, 2, 3]])
    assert m.weights[0] == 0
    torch.testing.assert_close(
        m.weights[1:].double(), aligned_mtl_weights(sub), rtol=1e-4, atol=1e-6
    )


def test_resume_equals_unbroken(device):
    check_resume(lambda: AlignedMTL(scale_mode="median"), T, device=device)


def test_invalid_options():
    with pytest.raises(ValueError, match="scale_mode"):
        AlignedMTL(scale_mode="max")
    with pytest.raises(ValueError, match="eigensolver"):
        AlignedMTL(eigensolver="qr")
    with pytest.raises(ValueError, match="rank_eps"):
        AlignedMTL(rank_eps=-1.0)
    with pytest.raises(ValueError, match="jacobi_sweeps"):
        AlignedMTL(jacobi_sweeps=0)
    with pytest.raises(ValueError, match="pref_vector"):
        AlignedMTL(2, pref_vector=[1.0])
    assert "scale_mode='min'" in repr(AlignedMTL())
