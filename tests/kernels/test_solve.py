"""Tests of the single-program Triton solves (kernels/solve.py): IMTL-G and MGDA for T ≤ 64.

Checked against the reference (:mod:`mtl_fast.reference.solve`, the specification), against
independent float64 NumPy oracles (IMTL-G: the paper's α_{2..T} = g_1Uᵀ(DUᵀ)⁻¹; MGDA: KKT
systems enumerated over every support for T ≤ 6, and the KKT stationarity conditions), on the
published two-task case, on degenerate input, and through the public API. Without a GPU the
kernels run in the Triton interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET).

Tolerances (relative to max_t |α_t| unless stated):
    * float64 G vs the reference: 1e-9 (measured ~1e-14; only the order of sums differs);
    * float32 G vs the reference: 1e-6 (both round float64 results to float32);
    * vs the NumPy oracles: 1e-8 on weights (the reference's filtered pseudo-inverse has a
      relative bias (ε/λ)³ by design) and 1e-9 relative on the MGDA objective;
    * T > D IMTL-G (no exact solution; the filtered pseudo-inverse answer moves by up to O(1)
      under a 1e-14 relative perturbation of G): the reference's own sensitivity to such a
      perturbation, plus exact invariants (finite, Σα = 1).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from mtl_fast import _backend, ops
from mtl_fast import _solve_constants as SC
from mtl_fast import reference as ref

if not _backend.triton_available():  # pragma: no cover - Triton installed but kernels broken
    pytest.skip(
        f"Triton kernels unavailable: {_backend.triton_import_error()}", allow_module_level=True
    )

from mtl_fast.kernels.solve import _launch_imtl_g, _launch_mgda, imtl_g_solve, mgda_solve

TASK_COUNTS = [1, 2, 3, 5, 16, 17, 40, 64]


# --------------------------------------------------------------------------------- helpers


def _jacobian(T: int, D: int, seed: int, shared: float = 0.7) -> np.ndarray:
    """T gradients of D elements: norms spread over e^±3, plus a component shared by all tasks."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(-3.0, 3.0, size=(T, 1)))
    return scale * (rng.standard_normal((T, D)) + shared * rng.standard_normal((1, D)))


def _gram(J: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """G = J Jᵀ, computed in float64 (float64 G) or from the float32 rows (float32 G)."""
    Jt = torch.from_numpy(J)
    if dtype == torch.float32:
        Jt = Jt.float()
    return (Jt @ Jt.T).to(device)


def _np64(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().to(torch.float64).numpy()


def _assert_rel(actual: torch.Tensor | np.ndarray, expected, rtol: float, what: str = "") -> None:
    """max |actual − expected| ≤ rtol · max |expected| (absolute rtol when expected is 0)."""
    a = _np64(actual) if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    e = _np64(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected, np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    assert np.all(np.isfinite(a)), f"{what}: non-finite weights {a}"
    err = np.max(np.abs(a - e), initial=0.0)
    bound = rtol * np.max(np.abs(e)) if np.any(e) else rtol
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}\n got {a}\n want {e}"


def imtl_paper_oracle(J: np.ndarray) -> np.ndarray:
    """Paper 004, Algorithm 1 lines 9–12 in float64: α_{2..T} = g_1Uᵀ(DUᵀ)⁻¹, α_1 = 1 − Σ."""
    J = np.asarray(J, np.float64)
    if len(J) == 1:
        return np.ones(1)
    u = J / np.linalg.norm(J, axis=1, keepdims=True)
    Dm = J[0] - J[1:]
    Um = u[0] - u[1:]
    rest = np.linalg.solve((Dm @ Um.T).T, (J[0] @ Um.T))
    return np.concatenate([[1.0 - rest.sum()], rest])


def mgda_enum_oracle(G: np.ndarray) -> tuple[np.ndarray, float]:
    """Min αᵀGα over the simplex for T ≤ 6 by enumerating supports (KKT system on each)."""
    G = np.asarray(G, np.float64)
    T = len(G)
    best, best_obj = None, np.inf
    for k in range(1, T + 1):
        for S in itertools.combinations(range(T), k):
            idx = list(S)
            K = np.zeros((k + 1, k + 1))
            K[:k, :k] = G[np.ix_(idx, idx)]
            K[:k, k] = K[k, :k] = 1.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            sol = np.linalg.lstsq(K, rhs, rcond=None)[0][:k]
            if sol.min() < -1e-12 or abs(sol.sum() - 1) > 1e-9:
                continue
            a = np.zeros(T)
            a[idx] = np.maximum(sol, 0.0)
            a /= a.sum()
            obj = a @ G @ a
            if obj < best_obj:
                best, best_obj = a, obj
    assert best is not None
    return best, float(best_obj)


def assert_mgda_kkt(G: np.ndarray, alpha: np.ndarray, tol: float) -> None:
    """Simplex feasibility and stationarity: (Gα)_t ≥ αᵀGα − tol·max G_tt, = on the support."""
    G = np.asarray(G, np.float64)
    alpha = np.asarray(alpha, np.float64)
    scale = np.max(np.diag(G))
    w = G @ alpha
    obj = alpha @ w
    assert np.all(alpha >= 0) and abs(alpha.sum() - 1) <= 1e-6, alpha
    assert np.all(w >= obj - tol * scale), (w - obj) / scale
    on = alpha > 1e-6 * alpha.max()
    assert np.all(np.abs(w[on] - obj) <= tol * scale), (w[on] - obj) / scale


def _objective(G: np.ndarray, alpha) -> float:
    a = _np64(alpha) if isinstance(alpha, torch.Tensor) else np.asarray(alpha, np.float64)
    return float(a @ np.asarray(G, np.float64) @ a)


# ------------------------------------------------------------------------ published case


def test_published_two_task_case(dev):
    """J = [[-4, 1, 1], [6, 1, 1]]: IMTL-G ≈ [0.5923, 0.4077], MGDA = [0.6, 0.4]."""
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], device=dev)
    G = J @ J.T
    a = imtl_g_solve(G)
    assert a.dtype == torch.float32 and a.device == G.device and a.shape == (2,)
    _assert_rel(a, [0.5923, 0.4077], 1e-4, "IMTL-G")
    _assert_rel(a, imtl_paper_oracle(_np64(J)), 1e-6, "IMTL-G vs paper formula")
    m = mgda_solve(G)
    _assert_rel(m, [0.6, 0.4], 1e-6, "MGDA")


# ------------------------------------------------------------------- IMTL-G vs reference


@pytest.mark.parametrize("T", TASK_COUNTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_imtl_g_matches_reference(dev, T, dtype):
    G = _gram(_jacobian(T, 2 * T + 8, seed=T), dtype, dev)
    got = imtl_g_solve(G)
    want = ref.imtl_g_weights(G)
    assert got.dtype == want.dtype and got.device == G.device
    _assert_rel(got, want, 1e-9 if dtype == torch.float64 else 1e-6, f"T={T}")
    assert abs(float(got.double().sum()) - 1.0) <= 1e-6


@pytest.mark.parametrize("T", [2, 3, 5, 16])
def test_imtl_g_matches_paper_formula(dev, T):
    J = _jacobian(T, 3 * T, seed=100 + T)
    got = imtl_g_solve(_gram(J, torch.float64, dev))
    _assert_rel(got, imtl_paper_oracle(J), 1e-8, f"T={T}")
    # The defining property (Liu et al. 2021 eq. 1): equal projections of g on every unit gradient.
    g = _np64(got) @ J
    proj = (J / np.linalg.norm(J, axis=1, keepdims=True)) @ g
    assert np.ptp(proj) <= 1e-8 * np.abs(proj).max()


def test_imtl_g_fallback_shift(dev):
    """C + εI indefinite through noise between ε and the fallback shift: the kernel refactors
    with the fallback shift, like the reference."""
    eps = SC.pinv_rel_eps(torch.float64) * 3**0.5
    delta = 10 * eps  # C_01 = 1 + δ: λ_min(C) ≈ −δ, beyond ε but within the fallback shift
    G = torch.tensor(
        [[1.0, 1.0 + delta, 0.1], [1.0 + delta, 1.0, 0.1], [0.1, 0.1, 2.0]],
        dtype=torch.float64,
    )
    n = G.diagonal().sqrt()
    C = G / (n[:, None] * n[None, :])
    eye = torch.eye(3, dtype=torch.float64)
    assert int(torch.linalg.cholesky_ex(C + eps * eye)[1]) != 0  # the first factorisation fails
    fallback = eps * SC.PINV_FALLBACK_FACTOR
    assert int(torch.linalg.cholesky_ex(C + fallback * eye)[1]) == 0  # the fallback succeeds
    want = ref.imtl_g_weights(G)
    _assert_rel(imtl_g_solve(G.to(dev)), want, 1e-9, "fallback")


# ---------------------------------------------------------------------- MGDA vs reference


@pytest.mark.parametrize("T", TASK_COUNTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mgda_matches_reference(dev, T, dtype):
    G = _gram(_jacobian(T, 2 * T + 8, seed=7 * T), dtype, dev)
    got = mgda_solve(G)
    want = ref.mgda_weights(G)
    assert got.dtype == want.dtype and got.device == G.device
    G64 = _np64(G)
    _assert_rel(got, want, 1e-9 if dtype == torch.float64 else 1e-6, f"T={T}")
    obj, obj_ref = _objective(G64, got), _objective(G64, want)
    assert abs(obj - obj_ref) <= (1e-12 if dtype == torch.float64 else 1e-6) * obj_ref
    assert_mgda_kkt(G64, _np64(got), 1e-9 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("T", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("D", [3, 20])
def test_mgda_matches_support_enumeration(dev, T, D):
    J = _jacobian(T, D, seed=1000 + 10 * T + D)
    G = _gram(J, torch.float64, dev)
    got = _np64(mgda_solve(G))
    alpha, obj = mgda_enum_oracle(_np64(G))
    scale = np.max(np.diag(_np64(G)))
    assert abs(_objective(_np64(G), got) - obj) <= 1e-9 * obj + 1e-14 * scale
    if obj > 1e-9 * scale:  # 0 outside the hull: the minimiser is unique
        _assert_rel(got, alpha, 1e-7, f"T={T} D={D}")
    assert_mgda_kkt(_np64(G), got, 1e-9)


# ------------------------------------------------------------------------ degenerate input


def _with_bad_task(G: torch.Tensor, t: int, value: float) -> torch.Tensor:
    G = G.clone()
    G[t, :] = value
    G[:, t] = value
    return G


@pytest.mark.parametrize("value", [0.0, float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inactive_task_is_dropped(dev, value, dtype):
    """A zero, NaN or Inf row: weight 0; the others as if the task were absent."""
    T, bad = 5, 2
    G = _gram(_jacobian(T, 12, seed=3), dtype, dev)
    Gb = _with_bad_task(G, bad, value)
    keep = [t for t in range(T) if t != bad]
    Gk = G[keep][:, keep]
    rtol = 1e-9 if dtype == torch.float64 else 1e-6
    for solve, reference in ((imtl_g_solve, ref.imtl_g_weights), (mgda_solve, ref.mgda_weights)):
        got = solve(Gb)
        assert got[bad].item() == 0.0
        _assert_rel(got[keep], solve(Gk), rtol, f"{solve.__name__} {value}")
        _assert_rel(got, reference(Gb), rtol, f"{solve.__name__} {value} vs reference")


def test_nonfinite_entry_against_inactive_task_only(dev):
    """An Inf between a healthy task and a NaN task does not disqualify the healthy one."""
    G = _gram(_jacobian(4, 10, seed=4), torch.float64, dev)
    healthy = G[:3, :3].clone()
    G[3, :] = float("nan")
    G[0, 3] = float("inf")
    for solve, reference in ((imtl_g_solve, ref.imtl_g_weights), (mgda_solve, ref.mgda_weights)):
        got = solve(G)
        assert got[3].item() == 0.0
        _assert_rel(got[:3], solve(healthy), 1e-12, solve.__name__)
        _assert_rel(got, reference(G), 1e-9, solve.__name__)
    assert torch.all(imtl_g_solve(G)[:3] != 0)


def test_duplicate_tasks(dev):
    """Duplicated gradients: IMTL-G splits the merged weight equally (min-norm pseudo-inverse);
    MGDA's objective and the duplicates' total weight equal those of the merged problem."""
    J = _jacobian(4, 10, seed=5)
    Jd = np.concatenate([J, J[1:2]])  # task 4 duplicates task 1
    G = _gram(Jd, torch.float64, dev)
    merged = imtl_paper_oracle(J)
    want = np.concatenate([merged, [0.0]])
    want[1] = want[4] = merged[1] / 2
    _assert_rel(imtl_g_solve(G), want, 1e-6, "IMTL-G duplicates")
    _assert_rel(imtl_g_solve(G), ref.imtl_g_weights(G), 1e-9, "IMTL-G vs reference")

    got = _np64(mgda_solve(G))
    alpha, obj = mgda_enum_oracle(J @ J.T)
    assert abs(_objective(Jd @ Jd.T, got) - obj) <= 1e-9 * obj
    pooled = np.array([got[0], got[1] + got[4], got[2], got[3]])
    _assert_rel(pooled, alpha, 1e-7, "MGDA duplicates pooled")
    assert_mgda_kkt(_np64(G), got, 1e-9)


def _reference_sensitivity(G: torch.Tensor, rel: float = 1e-14) -> float:
    """How far the reference IMTL-G answer moves (relative to max |α|) when G is perturbed by a
    symmetric relative noise of size ``rel``: the accuracy to which the problem is defined."""
    rng = np.random.default_rng(0)
    E = rng.standard_normal(tuple(G.shape))
    E = torch.from_numpy((E + E.T) / 2).to(G.device)
    G64 = G.to(torch.float64)
    want = _np64(ref.imtl_g_weights(G64))
    moved = _np64(ref.imtl_g_weights(G64 * (1 + rel * E)))
    return float(np.max(np.abs(moved - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize(("T", "D"), [(5, 3), (17, 5)])
def test_more_tasks_than_dimensions(dev, T, D):
    """T > D (C singular, no exact IMTL-G solution): finite weights summing to 1.

    IMTL-G's filtered pseudo-inverse answer is then ill-conditioned (its null-space leakage
    ≈ k²·λ_noise/ε² is set by the rounding of G: a 1e-14 relative perturbation of G moves the
    reference's weights by 1e-3 – 1), so the kernel is required to agree with the reference to
    within that sensitivity (measured: ≤ 0.06 of it). MGDA stays exact (objective).
    """
    J = _jacobian(T, D, seed=11 * T)
    for dtype in (torch.float64, torch.float32):
        G = _gram(J, dtype, dev)
        a = imtl_g_solve(G)
        assert torch.isfinite(a).all() and abs(float(a.double().sum()) - 1) <= 1e-6
        rtol = max(1e-6, _reference_sensitivity(G))
        _assert_rel(a, ref.imtl_g_weights(G), rtol, f"IMTL-G T={T} D={D} {dtype}")
    G = _gram(J, torch.float64, dev)
    got = _np64(mgda_solve(G))
    G64 = _np64(G)
    obj_ref = _objective(G64, ref.mgda_weights(G))
    assert abs(_objective(G64, got) - obj_ref) <= 1e-9 * obj_ref + 1e-13 * G64.diagonal().max()
    if T <= 6:
        _, obj = mgda_enum_oracle(G64)
        assert abs(_objective(G64, got) - obj) <= 1e-9 * obj + 1e-13 * G64.diagonal().max()
    assert_mgda_kkt(G64, got, 1e-9)


def test_all_zero_and_single_task(dev):
    """All-zero G: all zeros. T = 1: [1], or [0] for a zero or non-finite gradient."""
    for solve in (imtl_g_solve, mgda_solve):
        zeros = solve(torch.zeros(4, 4, dtype=torch.float64, device=dev))
        assert zeros.dtype == torch.float64 and torch.equal(zeros.cpu(), torch.zeros(4).double())
        assert torch.equal(solve(torch.zeros(3, 3, device=dev)).cpu(), torch.zeros(3))
        assert solve(torch.full((1, 1), 3.5, device=dev)).tolist() == [1.0]
        assert solve(torch.full((1, 1), 1e-30, dtype=torch.float64, device=dev)).tolist() == [1.0]
        assert solve(torch.zeros(1, 1, device=dev)).tolist() == [0.0]
        assert solve(torch.full((1, 1), float("nan"), device=dev)).tolist() == [0.0]


# ------------------------------------------------------------- dtypes, strides, public API


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gram(dev, dtype):
    """The kernels read any float dtype; the reference sees the same values (cast to float64)."""
    G = _gram(_jacobian(6, 20, seed=6) / 8.0, torch.float64, dev).to(dtype)
    _assert_rel(imtl_g_solve(G), ref.imtl_g_weights(G), 1e-6, "IMTL-G")
    _assert_rel(mgda_solve(G), ref.mgda_weights(G), 1e-6, "MGDA")


def test_strided_gram(dev):
    """Non-contiguous G (a strided view of a larger buffer, and its transpose)."""
    T = 7
    G = _gram(_jacobian(T, 16, seed=8), torch.float32, dev)
    buf = torch.full((2 * T, 3 * T), float("nan"), device=dev)
    view = buf[::2, 1::3]
    view.copy_(G)
    assert not view.is_contiguous()
    for solve in (imtl_g_solve, mgda_solve):
        want = solve(G.contiguous())
        assert torch.equal(solve(view), want)
        assert torch.equal(solve(view.T), solve(G.T.contiguous()))


def test_public_api_dispatches_to_kernels(dev):
    G = _gram(_jacobian(5, 12, seed=9), torch.float32, dev)
    a = ops.imtl_g_weights(G, backend="triton")
    assert torch.equal(a, imtl_g_solve(G))
    _assert_rel(a, ops.imtl_g_weights(G, backend="torch"), 1e-6, "ops IMTL-G")
    m = ops.mgda_weights(G, backend="triton")
    assert torch.equal(m, mgda_solve(G))
    _assert_rel(m, ops.mgda_weights(G, backend="torch"), 1e-6, "ops MGDA")


def test_launcher_errors():
    with pytest.raises(ValueError, match="T <= 64"):
        imtl_g_solve(torch.eye(65))
    with pytest.raises(ValueError, match="T <= 64"):
        mgda_solve(torch.eye(65))
    with pytest.raises(ValueError, match="square"):
        imtl_g_solve(torch.ones(2, 3))
    with pytest.raises(ValueError, match="square"):
        mgda_solve(torch.ones(4))


@settings(max_examples=5, deadline=None)
@given(
    T=st.integers(1, 8),
    extra=st.integers(0, 8),
    seed=st.integers(0, 2**31 - 1),
    shared=st.floats(0.0, 3.0),
)
def test_random_problems_match_reference(T, extra, seed, shared):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _backend.triton_can_run(device):
        pytest.skip("Triton kernels cannot run here")
    G = _gram(_jacobian(T, T + extra, seed, shared), torch.float64, device)
    _assert_rel(imtl_g_solve(G), ref.imtl_g_weights(G), 1e-7, "IMTL-G")
    got, want = mgda_solve(G), ref.mgda_weights(G)
    G64 = _np64(G)
    obj = _objective(G64, want)
    assert abs(_objective(G64, got) - obj) <= 1e-10 * obj
    assert_mgda_kkt(G64, _np64(got), 1e-9)


# --------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("T", [3, 64])
def test_cuda_graph_capture(T):
    """No host synchronisation: both launchers can be captured in a CUDA graph and replayed."""
    G = _gram(_jacobian(T, 2 * T, seed=T), torch.float32, torch.device("cuda"))
    imtl_g_solve(G), mgda_solve(G)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        a = imtl_g_solve(G)
        m = mgda_solve(G)
    G.copy_(_gram(_jacobian(T, 2 * T, seed=T + 1), torch.float32, torch.device("cuda")))
    graph.replay()
    torch.cuda.synchronize()
    _assert_rel(a, ref.imtl_g_weights(G), 1e-6, "graph IMTL-G")
    _assert_rel(m, ref.mgda_weights(G), 1e-6, "graph MGDA")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("T", [16, 32, 64])
def test_cuda_register_pressure(T):
    """Compiled kernels: correct results, and a warning (not a failure) if registers spill.

    Reference point: compiled for sm_90a with Triton 3.9, neither kernel spills (T = 64,
    8 warps: IMTL-G 222 registers, MGDA 254). If they spill here, try ``num_warps=16`` for
    BLOCK = 64 (``_launch_mgda(G, num_warps=16)``).
    """
    G = _gram(_jacobian(T, 2 * T, seed=T), torch.float32, torch.device("cuda"))
    for name, launch, reference in (
        ("IMTL-G", _launch_imtl_g, ref.imtl_g_weights),
        ("MGDA", _launch_mgda, ref.mgda_weights),
    ):
        out, handle = launch(G)
        _assert_rel(out, reference(G), 1e-6, name)
        regs, spills = getattr(handle, "n_regs", None), getattr(handle, "n_spills", None)
        print(f"{name} T={T}: {regs} registers, {spills} spilled")
        if spills:
            warnings.warn(f"{name} kernel spills {spills} registers at T={T}", stacklevel=1)
