"""Tests of the pure-PyTorch reference (:mod:`mtl_fast.reference`, the specification) against
independent oracles and the papers' properties.

Oracles, all float64 NumPy written here:
    * Gram ``J Jᵀ`` and combine ``αᵀJ`` of the exact input values;
    * IMTL-G by Liu et al. 2021's (T−1)-system (§3.1, Alg. 1 lines 9–12, App. B.1):
      α_{2..T} = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σ α_{2..T};
    * unconstrained MGDA by Liu et al. 2021 §4 / App. C.2: α_{2..T} = g₁Dᵀ(DDᵀ)⁻¹;
    * MGDA (min-norm point of the convex hull) exactly, by enumerating every support and solving
      its KKT system, keeping the stationary feasible point of least norm;
    * pseudo-inverse solutions (``numpy.linalg.pinv`` with a relative cutoff) for dependent
      gradients.

The Triton kernels and the native solvers are checked against the reference elsewhere
(tests/kernels, tests/test_native_solvers.py); the public ops layer in tests/test_ops.py.
"""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from mtl_fast import reference as ref
from mtl_fast.reference import _chunks

#: The module (``mtl_fast.reference.gram`` is the function of the same name).
gram_module = importlib.import_module("mtl_fast.reference.gram")

U32 = 2.0**-24
U64 = 2.0**-53

# --------------------------------------------------------------------------------- oracles


def _jacobian(T: int, D: int, seed: int, spread: float = 3.0, shared: float = 1.0) -> np.ndarray:
    """float64 [T, D]: independent rows plus a shared component, row norms spread over e^±spread."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((T, D)) + shared * rng.standard_normal(D)
    return J * np.exp(rng.uniform(-spread, spread, (T, 1)))


def _np_gram(J: np.ndarray) -> np.ndarray:
    J = np.asarray(J, dtype=np.float64)
    return J @ J.T


def _paper_imtl_g(J: np.ndarray) -> np.ndarray:
    """Paper 004 §3.1: α_{2..T} = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σ α_{2..T} (row-vector convention).

    D has rows g₁ − g_t and U rows u₁ − u_t (t = 2..T), u_t = g_t/‖g_t‖.
    """
    J = np.asarray(J, dtype=np.float64)
    u = J / np.linalg.norm(J, axis=1, keepdims=True)
    g1 = J[0]
    Dm = g1[None, :] - J[1:]
    U = u[0][None, :] - u[1:]
    rest = g1 @ U.T @ np.linalg.inv(Dm @ U.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def _paper_mgda_unconstrained(J: np.ndarray) -> np.ndarray:
    """Paper 004 §4 / App. C.2: g ⊥ (g₁ − g_t) ⇒ α_{2..T} = g₁Dᵀ(DDᵀ)⁻¹, α₁ = 1 − Σ."""
    J = np.asarray(J, dtype=np.float64)
    g1 = J[0]
    Dm = g1[None, :] - J[1:]
    rest = g1 @ Dm.T @ np.linalg.inv(Dm @ Dm.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def _exact_mgda(G: np.ndarray) -> np.ndarray:
    """min αᵀGα over the simplex, exactly: for every support S solve the KKT system
    [G_SS 1; 1ᵀ 0][α_S; −μ] = [0; 1], keep the feasible (α_S ≥ 0) stationary points
    ((Gα)_t ≥ αᵀGα for all t) and return the one of least objective. For small T only."""
    T = G.shape[0]
    scale = np.max(np.diag(G))
    best, best_obj = None, np.inf
    for k in range(1, T + 1):
        for sup in itertools.combinations(range(T), k):
            idx = list(sup)
            K = np.zeros((k + 1, k + 1))
            K[:k, :k] = G[np.ix_(idx, idx)]
            K[:k, k] = 1.0
            K[k, :k] = 1.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            try:
                sol = np.linalg.solve(K, rhs)
            except np.linalg.LinAlgError:
                continue
            if np.any(sol[:k] < 0):
                continue
            a = np.zeros(T)
            a[idx] = sol[:k]
            Ga = G @ a
            obj = a @ Ga
            if np.all(Ga >= obj - 1e-12 * scale) and obj < best_obj:
                best, best_obj = a, obj
    assert best is not None
    return best


def _objective(G: np.ndarray, a: np.ndarray) -> float:
    return float(a @ G @ a)


def _assert_mgda_kkt(G: np.ndarray, a: np.ndarray, tol: float = 1e-10) -> None:
    """α on the simplex, (Gα)_t ≥ αᵀGα − tol·max G_tt for all t, equality on the support."""
    assert np.all(a >= 0), a
    assert abs(a.sum() - 1.0) <= 1e-12, a.sum()
    Ga = G @ a
    obj = a @ Ga
    scale = np.max(np.diag(G))
    assert np.all(Ga >= obj - tol * scale), (Ga - obj).min() / scale
    on = a > 0
    assert np.all(np.abs(Ga[on] - obj) <= tol * scale), np.abs(Ga[on] - obj).max() / scale


def _projections(J: np.ndarray, a: np.ndarray) -> np.ndarray:
    """g·u_t for g = Σ α_t g_t, in float64."""
    J = np.asarray(J, dtype=np.float64)
    g = np.asarray(a, dtype=np.float64) @ J
    return (J @ g) / np.linalg.norm(J, axis=1)


def _pinv_imtl_g(J: np.ndarray, rcond: float) -> np.ndarray:
    """IMTL-G in the pseudo-inverse sense: β = pinv(C)1 (eigenvalues below rcond·λ_max cut),
    α_t ∝ β_t/n_t, Σα = 1."""
    G = _np_gram(J)
    n = np.sqrt(np.diag(G))
    C = G / np.outer(n, n)
    beta = np.linalg.pinv(C, rcond=rcond, hermitian=True) @ np.ones(len(n))
    a = beta / n
    return a / a.sum()


def _t(x: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x)).to(dtype)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ------------------------------------------------------------------------- Gram and combine


def _gram_bound(J: torch.Tensor) -> np.ndarray:
    """Entrywise bound on |G − J Jᵀ| of the reference Gram, with B = |J||J|ᵀ.

    Products are summed in the accumulation dtype over ``block`` columns at most
    (``fine_block(T)`` for T ≤ FINE_MAX_T, else one chunk), in float64 across blocks, then rounded
    once to the output dtype: |error| ≤ (block + 2)·u·B.
    """
    T, D = J.shape[0], J[0].numel()
    Jd = J.reshape(T, -1).double().numpy()
    B = np.abs(Jd) @ np.abs(Jd).T
    if J.dtype == torch.float64:
        return (D + 2) * U64 * B
    widen = max(1, 32 // torch.finfo(J.dtype).bits)
    if T <= gram_module.FINE_MAX_T:
        block = gram_module.fine_block(T)
    else:
        block = _chunks.chunk_size(D, widen, gram_module.FINE_BLOCK)
    return (min(block, D) + 2) * U32 * B


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", [1, 3, 40, 70, 130])
def test_gram_matches_float64_oracle(T: int, dtype: torch.dtype) -> None:
    J = torch.tensor(_jacobian(T, 3001, seed=T), dtype=torch.float32).to(dtype)
    G = ref.gram(J)
    assert G.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert G.shape == (T, T)
    G64 = _np_gram(J.double().numpy())
    err = np.abs(G.double().numpy() - G64)
    assert np.all(err <= _gram_bound(J)), (err / _gram_bound(J)).max()
    # Exactly symmetric (the upper triangle is mirrored), on both paths (fine blocks, T > 128).
    assert torch.equal(G, G.T)


@pytest.mark.parametrize("shape", [(17, 241), (5, (_chunks.MIN_CHUNK + 1) // 5)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gram_deterministic_and_layout_independent(
    dtype: torch.dtype, shape: tuple[int, int]
) -> None:
    """Two calls on the same input are bitwise equal. A stacked tensor, a list of rows, a
    non-contiguous (transposed) tensor and per-task non-contiguous tensors of the same values
    give the same G: each within the float64-oracle bound (a missing or doubled column would
    exceed it on the diagonal).

    Not bitwise across layouts: the fp32 batched GEMM of a chunk rounds differently depending on
    the row stride of its operand (the caller's stacked tensor, row stride D, vs the reusable
    buffer, row stride = chunk), e.g. at D = MIN_CHUNK + 1 (a few ulps)."""
    D = shape[0] * shape[1]  # 4097, and MIN_CHUNK + 1 (two chunks)
    J = torch.tensor(_jacobian(5, D, seed=1), dtype=torch.float32).to(dtype)
    J3 = J.reshape(5, *shape)
    Jt = J.T.contiguous().T  # same values, column-major
    assert not Jt.is_contiguous()
    rows = [r.T.contiguous().T for r in J3]  # each task a non-contiguous (column-major) view
    assert not rows[0].is_contiguous()
    bound = _gram_bound(J)
    G64 = _np_gram(J.double().numpy())
    G = ref.gram(J)
    for grads in (J, list(J), Jt, rows, J3, list(J3)):
        Gx = ref.gram(grads)
        assert torch.equal(Gx, ref.gram(grads))  # bitwise deterministic
        assert Gx.shape == (5, 5) and Gx.dtype == G.dtype
        assert np.all(np.abs(Gx.double().numpy() - G64) <= bound)
        torch.testing.assert_close(Gx, G, rtol=1e-6, atol=1e-6 * float(G.abs().max()))


def _chunk_dims() -> list[int]:
    C = _chunks.chunk_size(10**5, 1, gram_module.FINE_BLOCK)
    assert C == _chunks.MIN_CHUNK and C % gram_module.FINE_BLOCK == 0
    return [C - 1, C, C + 1, C + gram_module.FINE_BLOCK // 2 + 3, 2 * C + 1]


@pytest.mark.parametrize("D", _chunk_dims())
@pytest.mark.parametrize("T", [3, 40, 130])
def test_gram_and_combine_at_chunk_boundaries(T: int, D: int) -> None:
    """D around the chunk size (MIN_CHUNK columns), and not a multiple of FINE_BLOCK: every
    column is counted once, through each path (fine blocks, symmetric blocks), for stacked and
    listed rows."""
    J = torch.tensor(_jacobian(T, D, seed=D), dtype=torch.float32)
    Jd = J.double().numpy()
    for grads in (J, list(J)):
        err = np.abs(ref.gram(grads).double().numpy() - _np_gram(Jd))
        assert np.all(err <= _gram_bound(J))
    w = torch.linspace(-1.0, 2.0, T)
    c = ref.combine(J, w).double().numpy()
    exact = w.double().numpy() @ Jd
    bound = (T + 2) * U32 * (np.abs(w.double().numpy()) @ np.abs(Jd))
    assert np.all(np.abs(c - exact) <= bound)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_chunks(monkeypatch, dtype: torch.dtype) -> None:
    """A small MIN_CHUNK forces many chunks (direct, stacked-buffer and widening paths), the last
    one partial and not a multiple of FINE_BLOCK: same values as the default chunking."""
    J = torch.tensor(_jacobian(6, 5 * 2048 + 517, seed=7), dtype=torch.float32).to(dtype)
    w = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, 3.0])
    G_default, c_default = ref.gram(J), ref.combine(J, w)
    monkeypatch.setattr(_chunks, "MIN_CHUNK", 2048)
    assert _chunks.chunk_size(J.shape[1], 1, gram_module.FINE_BLOCK) == 2048
    for grads in (J, list(J)):
        G = ref.gram(grads)
        assert np.all(np.abs(G.double().numpy() - _np_gram(J.double().numpy())) <= _gram_bound(J))
        torch.testing.assert_close(G, G_default, rtol=1e-6, atol=0)
        torch.testing.assert_close(ref.combine(grads, w), c_default)


@pytest.mark.parametrize("T", [4, 40])
def test_gram_error_does_not_grow_with_d(T: int) -> None:
    """Relative error vs float64 at D = 10⁶ is no worse than at D = 10⁴ (fp32 partial sums are
    bounded, reduced in float64). Non-negative data: errors add up systematically; a plain fp32
    GEMM over D = 10⁶ columns is ~50× worse here."""

    def rel_err(D: int) -> float:
        J = torch.rand(T, D, generator=torch.Generator().manual_seed(D))
        G64 = torch.zeros(T, T, dtype=torch.float64)
        for s in range(0, D, 1 << 17):
            X = J[:, s : s + (1 << 17)].double()
            G64 += X @ X.T
        return float(((ref.gram(J).double() - G64).abs() / G64).max())

    small, large = rel_err(10**4), rel_err(10**6)
    assert large <= 2 * max(small, U32), (small, large)
    assert large <= 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_combine_matches_float64_oracle(dtype: torch.dtype) -> None:
    T, D = 7, 2500
    J = torch.tensor(_jacobian(T, D, seed=3), dtype=torch.float32).to(dtype)
    w = torch.tensor(np.random.default_rng(0).uniform(-1, 2, T), dtype=torch.float32)
    c = ref.combine(J, w)
    assert c.dtype == dtype and c.shape == (D,)
    Jd, wd = J.double().numpy(), w.double().numpy()
    exact = wd @ Jd
    u_acc = U64 if dtype == torch.float64 else U32
    u_out = {torch.float32: U32, torch.float64: U64, torch.bfloat16: 2.0**-8, torch.float16: 2**-11}
    bound = (T + 2) * u_acc * (np.abs(wd) @ np.abs(Jd)) + u_out[dtype] * np.abs(exact)
    assert np.all(np.abs(c.double().numpy() - exact) <= bound)
    # Deterministic and layout independent; shape [T, ...] preserved.
    assert torch.equal(c, ref.combine(J, w))
    assert torch.equal(c, ref.combine(list(J), w))
    assert torch.equal(c, ref.combine(J.T.contiguous().T, w))
    c3 = ref.combine(J.reshape(T, 50, 50), w)
    assert c3.shape == (50, 50) and torch.equal(c3.reshape(-1), c)


def test_combine_out_accumulates() -> None:
    J = torch.tensor(_jacobian(3, 200, seed=2), dtype=torch.float32).reshape(3, 4, 50)
    w = torch.tensor([0.2, 0.5, 0.3])
    start = torch.full((4, 50), 1.5)
    out = start.clone()
    res = ref.combine(J, w, out=out)
    assert res is out
    torch.testing.assert_close(out, start + ref.combine(J, w))
    ref.combine(J, w, out=out)  # accumulates again
    torch.testing.assert_close(out, start + 2 * ref.combine(J, w))
    # A wider out dtype is accepted: the fp32 sum is added to it.
    out64 = torch.zeros(4, 50, dtype=torch.float64)
    ref.combine(J, w, out=out64)
    torch.testing.assert_close(out64, ref.combine(J, w).double())


@pytest.mark.parametrize("D", [300, 2 * _chunks.MIN_CHUNK + 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_combine_skips_zero_weight_nonfinite_rows(dtype: torch.dtype, D: int) -> None:
    """Zero-weight rows are never read on the CPU (only the kept rows are gathered, chunk by
    chunk): their NaN/Inf cannot leak, for stacked and listed rows, fp32 and widened bf16; all
    weights zero gives a zero vector."""
    J = torch.tensor(_jacobian(4, D, seed=4), dtype=torch.float32).to(dtype)
    w = torch.tensor([0.25, 0.0, 0.5, 0.0])
    bad = J.clone()
    bad[1] = float("nan")
    bad[3, ::7] = float("inf")
    expected = ref.combine(J[[0, 2]], w[[0, 2]])
    for grads in (bad, list(bad)):
        c = ref.combine(grads, w)
        assert torch.isfinite(c).all()
        torch.testing.assert_close(c, expected, rtol=1e-6, atol=1e-6)
        zero = ref.combine(grads, torch.zeros(4))
        assert zero.dtype == dtype and not zero.any()


# ------------------------------------------------------------------------- IMTL-G oracles


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("T,D", [(2, 6), (3, 7), (5, 9), (8, 12), (16, 50)])
def test_imtl_g_equals_paper_formula(T: int, D: int, seed: int) -> None:
    """Gram-space IMTL-G (C β = 1, α ∝ β/n) equals Liu et al. 2021's g₁Uᵀ(DUᵀ)⁻¹ (float64 NumPy)."""
    J = _jacobian(T, D, seed)
    alpha = ref.imtl_g_weights(_t(_np_gram(J)))
    assert alpha.dtype == torch.float64
    np.testing.assert_allclose(alpha.numpy(), _paper_imtl_g(J), rtol=1e-9, atol=1e-11)
    # And from a float32 Gram matrix of the same gradients (float32 weights).
    a32 = ref.imtl_g_weights(_t(_np_gram(J), torch.float32))
    assert a32.dtype == torch.float32
    np.testing.assert_allclose(a32.double().numpy(), _paper_imtl_g(J), rtol=1e-4, atol=1e-5)


def test_published_two_task_case() -> None:
    """Paper 004's example J = [[-4, 1, 1], [6, 1, 1]]: IMTL-G ≈ [0.5923, 0.4077] (α ∝ 1/‖g_t‖
    for two tasks), MGDA [0.6, 0.4] (min over a of (6 − 10a)² + 2)."""
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    G = ref.gram(J)
    inv = np.array([1 / np.sqrt(18.0), 1 / np.sqrt(38.0)])
    imtl = ref.imtl_g_weights(G)
    np.testing.assert_allclose(imtl.numpy(), [0.5923, 0.4077], atol=5e-5)
    np.testing.assert_allclose(imtl.numpy(), inv / inv.sum(), rtol=1e-6)
    np.testing.assert_allclose(imtl.double().numpy(), _paper_imtl_g(J.numpy()), rtol=1e-6)
    for solver in ("active_set", "frank_wolfe"):
        np.testing.assert_allclose(
            ref.mgda_weights(G, solver=solver).numpy(), [0.6, 0.4], atol=1e-6
        )
    # Interior optimum: dropping α ≥ 0 changes nothing.
    np.testing.assert_allclose(
        ref.mgda_weights(G, constrained=False).numpy(), [0.6, 0.4], atol=1e-6
    )


# --------------------------------------------------------------------------- MGDA oracles


MGDA_CASES = [
    (T, seed, spread, shared)
    for T, spread, shared in [(3, 3.0, 1.0), (5, 3.0, 0.0), (6, 5.0, 1.0), (8, 3.0, 0.0)]
    for seed in range(3)
]


@pytest.mark.parametrize("T,seed,spread,shared", MGDA_CASES)
def test_mgda_active_set_is_exact(T: int, seed: int, spread: float, shared: float) -> None:
    """Objective within 1e-6 (relative) of the enumerated exact minimum on gradients whose norms
    differ by up to e^±5, and the KKT conditions hold (float64 and float32 G)."""
    J = _jacobian(T, T + 2, seed, spread, shared)
    G = _np_gram(J)
    exact = _exact_mgda(G)
    _assert_mgda_kkt(G, exact, tol=1e-12)  # the oracle itself is stationary
    best = _objective(G, exact)
    a = ref.mgda_weights(_t(G)).numpy()
    assert abs(_objective(G, a) - best) <= 1e-6 * best
    _assert_mgda_kkt(G, a, tol=1e-10)
    a32 = ref.mgda_weights(_t(G, torch.float32)).double().numpy()
    assert np.all(a32 >= 0) and abs(a32.sum() - 1) <= 1e-6
    assert abs(_objective(G, a32) - best) <= 1e-3 * best


FW_CASES = [(8, 10, 19, 3.0), (7, 9, 15, 5.0), (8, 10, 12, 5.0), (7, 9, 1, 5.0)]


def test_frank_wolfe_can_miss_where_active_set_does_not() -> None:
    """``solver="frank_wolfe"`` (kept for fidelity with the original MGDA code) stops on a small
    step, not on optimality: on gradients of very different norms (e^±3..5, no shared component)
    its objective can be far above the minimum, while the active-set solver is exact."""
    fw_errors = []
    for T, D, seed, spread in FW_CASES:
        G = _np_gram(_jacobian(T, D, seed, spread, shared=0.0))
        best = _objective(G, _exact_mgda(G))
        active = ref.mgda_weights(_t(G), solver="active_set").numpy()
        fw = ref.mgda_weights(_t(G), solver="frank_wolfe").numpy()
        assert abs(_objective(G, active) - best) <= 1e-6 * best
        assert np.all(fw >= 0) and abs(fw.sum() - 1) <= 1e-9  # still a feasible point
        fw_errors.append(abs(_objective(G, fw) - best) / best)
    assert max(fw_errors) > 1e-6, fw_errors


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("T", [2, 4, 7])
def test_mgda_unconstrained_closed_form(T: int, seed: int) -> None:
    """``constrained=False``: G α ∝ 1 and Σα = 1 (Liu et al. 2021 §4), equal to g₁Dᵀ(DDᵀ)⁻¹."""
    J = _jacobian(T, T + 3, seed)
    G = _np_gram(J)
    a = ref.mgda_weights(_t(G), constrained=False).numpy()
    np.testing.assert_allclose(a, ref.mgda_unconstrained_weights(_t(G)).numpy(), rtol=0, atol=0)
    assert abs(a.sum() - 1) <= 1e-12
    Ga = G @ a
    assert np.abs(Ga - Ga.mean()).max() <= 1e-9 * np.abs(Ga).max()
    np.testing.assert_allclose(a, _paper_mgda_unconstrained(J), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------- properties


@st.composite
def jacobians(draw, min_t: int = 2, max_t: int = 6) -> np.ndarray:
    """float64 [T, D] with D > T (independent rows), norms over e^±3, a shared component."""
    T = draw(st.integers(min_t, max_t))
    D = T + draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    log_norms = draw(st.lists(st.floats(-3.0, 3.0), min_size=T, max_size=T))
    shared = draw(st.floats(0.0, 2.0))
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((T, D)) + shared * rng.standard_normal(D)
    J /= np.linalg.norm(J, axis=1, keepdims=True)
    return J * np.exp(np.array(log_norms))[:, None]


def _well_posed_imtl(J: np.ndarray) -> None:
    """Skip geometries where Σα = 1 cannot be imposed (Σ β_t/n_t ≈ 0: g·u_t = const forces
    g ≈ 0) or C is nearly singular: the properties are about the regular case."""
    G = _np_gram(J)
    n = np.sqrt(np.diag(G))
    C = G / np.outer(n, n)
    assume(np.linalg.cond(C) < 1e8)
    a = np.linalg.solve(C, np.ones(len(n))) / n
    assume(abs(a.sum()) > 1e-3 * np.abs(a).sum())


@given(jacobians())
def test_imtl_g_equal_projections(J: np.ndarray) -> None:
    """Paper 004 eq. 1: g·u_t equal for every task, g = Σ α_t g_t; Σα = 1."""
    _well_posed_imtl(J)
    a = ref.imtl_g_weights(_t(_np_gram(J))).numpy()
    assert abs(a.sum() - 1) <= 1e-12
    p = _projections(J, a)
    assert np.abs(p - p.mean()).max() <= 1e-7 * np.abs(p).max()


@given(jacobians(), st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6))
def test_imtl_g_scale_invariance(J: np.ndarray, log_k: list[float]) -> None:
    """Paper 004 Theorem 2: scaling g_t by k_t > 0 leaves the direction of g unchanged; the new
    weights are eq. 14's α'_t = (α_t/k_t)/Σ(α_τ/k_τ) and g' = g/Σ(α_τ/k_τ)."""
    _well_posed_imtl(J)
    k = np.exp(np.array(log_k[: J.shape[0]]))
    a = ref.imtl_g_weights(_t(_np_gram(J))).numpy()
    Jk = J * k[:, None]
    ak = ref.imtl_g_weights(_t(_np_gram(Jk))).numpy()
    lam = 1.0 / np.sum(a / k)
    np.testing.assert_allclose(ak, lam * a / k, rtol=1e-7, atol=1e-9 * np.abs(ak).max())
    g, gk = a @ J, ak @ Jk
    np.testing.assert_allclose(gk, lam * g, rtol=0, atol=1e-7 * np.abs(gk).max())
    cos = (g @ gk) / (np.linalg.norm(g) * np.linalg.norm(gk))
    assert abs(abs(cos) - 1) <= 1e-10


@given(jacobians(), st.data())
def test_permutation_equivariance(J: np.ndarray, data) -> None:
    """Permuting the tasks permutes the weights (IMTL-G, MGDA, unconstrained MGDA)."""
    T = J.shape[0]
    perm = np.array(data.draw(st.permutations(range(T))))
    G, Gp = _np_gram(J), _np_gram(J[perm])
    for solve in (ref.imtl_g_weights, ref.mgda_weights, ref.mgda_unconstrained_weights):
        a, ap = solve(_t(G)).numpy(), solve(_t(Gp)).numpy()
        np.testing.assert_allclose(ap, a[perm], rtol=1e-7, atol=1e-9)


@given(jacobians(max_t=7))
def test_weights_sum_to_one_and_mgda_on_simplex(J: np.ndarray) -> None:
    G = _np_gram(J)
    for dtype in (torch.float64, torch.float32):
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        for solve in (ref.imtl_g_weights, ref.mgda_unconstrained_weights):
            a = solve(_t(G, dtype)).double().numpy()
            assert np.all(np.isfinite(a))
            assert abs(a.sum() - 1) <= tol
        for solver in ("active_set", "frank_wolfe"):
            m = ref.mgda_weights(_t(G, dtype), solver=solver).double().numpy()
            assert np.all(m >= 0) and abs(m.sum() - 1) <= tol
    _assert_mgda_kkt(G, ref.mgda_weights(_t(G)).numpy(), tol=1e-10)


# ------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("T", [2, 8, 33, 64])
def test_float32_accuracy(T: int, seed: int) -> None:
    """float32 Jacobians (norms over e^±3, shared component, D = 2·10⁴) through the fp32
    reference pipeline: |α − α_float64| ≤ 1e-4 (α_float64 from the float64 Gram of the same
    values) and the IMTL-G projections equal to 1e-3 relative."""
    J = torch.tensor(_jacobian(T, 20_000, seed), dtype=torch.float32)
    Jd = J.double().numpy()
    G = ref.gram(J)
    assert G.dtype == torch.float32
    G64 = _t(_np_gram(Jd))
    a = ref.imtl_g_weights(G)
    assert np.abs(a.double().numpy() - ref.imtl_g_weights(G64).numpy()).max() <= 1e-4
    assert np.abs(a.double().numpy() - _paper_imtl_g(Jd)).max() <= 1e-4
    m = ref.mgda_weights(G)
    assert np.abs(m.double().numpy() - ref.mgda_weights(G64).numpy()).max() <= 1e-4
    # The projections of the fp32 combined gradient itself.
    g = ref.combine(J, a).double().numpy()
    p = (Jd @ g) / np.linalg.norm(Jd, axis=1)
    assert np.abs(p - p.mean()).max() <= 1e-3 * abs(p.mean())


@pytest.mark.parametrize("spread", [1.0, 2.0, 3.0])
def test_mgda_unconstrained_float32_gram_accuracy(spread: float) -> None:
    """``mgda_weights(G, constrained=False)`` on a float32 Gram matrix (what ``gram`` returns for
    fp32/bf16/fp16 gradients) must match the float64 closed form to 1e-4 like IMTL-G does, for
    task-gradient norms spread over e^±spread.

    KNOWN BUG (fails at spread ≥ 2): :func:`mgda_unconstrained_weights` runs
    :func:`psd_pinv_solve` on G scaled to unit *trace*, with the float32 cutoff
    ε = 1e-5·√T that is calibrated for a unit-*diagonal* matrix. Tasks with small gradients
    contribute eigenvalues ~ n_t²/Σn² ≲ ε, which the filter then treats as rounding noise: the
    weights are off by up to ~0.9 (absolute) at e^±3. The same G in float64 (ε = 1e-10·√T) is
    exact. Solving in the unit-diagonal basis (C γ = N⁻¹1, α = N⁻¹γ, as IMTL-G does) would avoid it.
    """
    errors = []
    for T in (5, 8):
        for seed in range(3):
            J = torch.tensor(_jacobian(T, T + 10, seed, spread), dtype=torch.float32)
            exact = _paper_mgda_unconstrained(J.double().numpy())
            a64 = ref.mgda_unconstrained_weights(_t(_np_gram(J.double().numpy()))).numpy()
            assert np.abs(a64 - exact).max() <= 1e-9  # the float64 solve is exact
            a32 = ref.mgda_weights(ref.gram(J), constrained=False).double().numpy()
            errors.append(float(np.abs(a32 - exact).max()))
    assert max(errors) <= 1e-4, (
        f"float32-Gram unconstrained MGDA off by {max(errors):.2e} (absolute weight error) at "
        f"norms e^±{spread}: psd_pinv_solve's fp32 cutoff cuts small-norm tasks' directions"
    )


# ----------------------------------------------------------------------- degenerate input

SOLVES = {
    "imtl_g": ref.imtl_g_weights,
    "mgda": ref.mgda_weights,
    "mgda_fw": lambda G: ref.mgda_weights(G, solver="frank_wolfe"),
    "mgda_unconstrained": ref.mgda_unconstrained_weights,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(SOLVES))
def test_zero_gradient_task_is_dropped(name: str, dtype: torch.dtype) -> None:
    """A zero gradient gets weight 0; the others equal the solve without that task. (Norms over
    e^±1: the float32 unconstrained solve is inaccurate for wider spreads, see
    test_mgda_unconstrained_float32_gram_accuracy.)"""
    solve = SOLVES[name]
    J = torch.tensor(_jacobian(5, 12, seed=5, spread=1.0), dtype=dtype)
    J[2] = 0
    a = solve(ref.gram(J))
    keep = [0, 1, 3, 4]
    a_without = solve(ref.gram(J[keep]))
    assert a[2] == 0
    torch.testing.assert_close(a[keep], a_without, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(SOLVES))
def test_nonfinite_gram_entry_task_is_dropped(name: str) -> None:
    """A task whose Gram row/column is NaN (what a NaN gradient produces on the no-sync path)
    gets weight 0; the others equal the solve without it."""
    solve = SOLVES[name]
    G = _t(_np_gram(_jacobian(4, 9, seed=8)))
    Gn = G.clone()
    Gn[1, :] = float("nan")
    Gn[:, 1] = float("nan")
    a = solve(Gn)
    assert a[1] == 0 and torch.isfinite(a).all()
    torch.testing.assert_close(a[[0, 2, 3]], solve(G[[0, 2, 3]][:, [0, 2, 3]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_collinear_gradients_pseudo_inverse(dtype: torch.dtype) -> None:
    """g₂ = 3g₁ (and a third independent task): IMTL-G in the pseudo-inverse sense splits the
    shared direction's weight so that α₁ = 3α₂ (minimum-norm β: β₁ = β₂, α_t ∝ β_t/n_t); the
    result equals IMTL-G on [g₁, g₃] with the merged weight. MGDA puts the weight on g₁ (the
    shorter of the two)."""
    base = _jacobian(2, 10, seed=9)
    J = torch.tensor(np.stack([base[0], 3 * base[0], base[1]]), dtype=dtype)
    a = ref.imtl_g_weights(ref.gram(J)).double().numpy()
    assert np.all(np.isfinite(a)) and abs(a.sum() - 1) <= 1e-6
    np.testing.assert_allclose(a[0], 3 * a[1], rtol=1e-5)
    # Same direction as IMTL-G on [g₁, g₃]: g = (α₁ + 3α₂) g₁ + α₃ g₃ ∝ merged₁ g₁ + merged₂ g₃.
    merged = ref.imtl_g_weights(_t(_np_gram(base))).numpy()
    coef = np.array([a[0] + 3 * a[1], a[2]])
    np.testing.assert_allclose(coef / coef.sum(), merged, rtol=1e-5)
    np.testing.assert_allclose(a, _pinv_imtl_g(J.double().numpy(), 1e-10), rtol=1e-5)
    m = ref.mgda_weights(ref.gram(J)).double().numpy()
    np.testing.assert_allclose(m[[0, 2]], ref.mgda_weights(_t(_np_gram(base))).numpy(), atol=1e-6)
    assert m[1] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_duplicate_gradients(dtype: torch.dtype) -> None:
    """g₂ = g₁: IMTL-G splits evenly; every solve is finite and gives the combined gradient of
    the problem without the duplicate (MGDA's split between the copies is not unique)."""
    base = _jacobian(3, 10, seed=10)
    J = torch.tensor(np.stack([base[0], base[0], base[1], base[2]]), dtype=dtype)
    G = ref.gram(J)
    Gb = _t(_np_gram(base))
    for name, solve in SOLVES.items():
        a = solve(G).double().numpy()
        assert np.all(np.isfinite(a)), name
        b = solve(Gb).numpy()
        np.testing.assert_allclose(a @ J.double().numpy(), b @ base, rtol=1e-5, atol=1e-5)
    a = ref.imtl_g_weights(G).double().numpy()
    np.testing.assert_allclose(a[0], a[1], rtol=1e-6)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("T,D", [(5, 3), (8, 4), (16, 5), (40, 10)])
def test_more_tasks_than_dimensions(T: int, D: int, seed: int) -> None:
    """T > D (C singular, rank D): finite weights, no exception, close to β = pinv(C)1.

    Tolerance (max-abs error relative to max|α|): float64 G, 1e-4: the filtered pseudo-inverse
    (ε = 1e-10·√T) builds null-space terms of size ~1/ε that the range projection cancels,
    leaving ~u/ε ≈ 1e-6 (observed ≤ 5e-6). float32 G, 1e-2: its rounding puts the null
    eigenvalues at δ ~ 1e-7, which the filter (ε = 1e-5·√T) keeps with weight ~k^{p+1}(δ/ε)^p/ε
    (k = 3 steps, p = 4 projections): ~1e-3 relative (observed ≤ 2.3e-3). The oracle is the
    exact float64 Gram of the same values, eigenvalues below 1e-10·λ_max cut.
    """
    for dtype, tol in ((torch.float64, 1e-4), (torch.float32, 1e-2)):
        J = torch.tensor(_jacobian(T, D, seed), dtype=dtype)
        G = ref.gram(J)
        a = ref.imtl_g_weights(G).double().numpy()
        assert np.all(np.isfinite(a))
        assert _rel(a, _pinv_imtl_g(J.double().numpy(), 1e-10)) <= tol
        for solve in SOLVES.values():
            w = solve(G)
            assert torch.isfinite(w).all() and abs(float(w.double().sum()) - 1) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(SOLVES))
def test_single_task_and_all_zero(name: str, dtype: torch.dtype) -> None:
    solve = SOLVES[name]
    one = solve(torch.tensor([[2.5]], dtype=dtype))
    assert one.dtype == dtype and one.tolist() == [1.0]
    for T in (1, 4):
        w = solve(torch.zeros(T, T, dtype=dtype))
        assert w.dtype == dtype and torch.equal(w, torch.zeros(T, dtype=dtype))
    J = torch.zeros(4, 30, dtype=dtype)
    w = solve(ref.gram(J))
    g = ref.combine(J, w)
    assert torch.equal(g, torch.zeros(30, dtype=dtype))


def test_gram_names_nonfinite_tasks() -> None:
    J = torch.tensor(_jacobian(5, 40, seed=11), dtype=torch.float32)
    J[3, 7] = float("nan")
    with pytest.raises(ValueError, match=r"task 3\b"):
        ref.gram(J)
    J[1, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"tasks 1, 3\b"):
        ref.gram(list(J))
    big = torch.tensor(_jacobian(2, 40, seed=12), dtype=torch.float32)
    big[0] *= 1e20  # finite values whose squared norm overflows fp32
    with pytest.raises(ValueError, match=r"overflowing.*task 0\b"):
        ref.gram(big)
    G = ref.gram(J, check_finite=False)  # no check: the NaN stays on the task's diagonal
    assert not torch.isfinite(G.diagonal()[[1, 3]]).any()


# ---------------------------------------------------------------------------- no host sync


def test_meta_tensors_cannot_be_read() -> None:
    """The premise of the next test: any host read of a meta tensor raises."""
    with pytest.raises(RuntimeError):
        bool(torch.zeros((), device="meta"))


@pytest.mark.parametrize(
    "T,dtype", [(5, torch.float32), (70, torch.float64)], ids=["T5-fp32", "T70-fp64"]
)
def test_solves_run_on_meta_without_host_sync(T: int, dtype: torch.dtype) -> None:
    """The reference solves only queue tensor ops: on ``device="meta"`` (where reading a value
    raises) they run through, including Wolfe's loop off the CPU (T ≤ 64: full budget; T > 64:
    the fixed device budget) and the capped Frank-Wolfe loop, and return [T] weights on the
    device. (The published, uncapped loop reads its convergence flag on the host every 32 steps
    off the CPU: it is not sync-free, as its docstring says.)"""
    G = torch.empty(T, T, dtype=dtype, device="meta")
    calls = [
        ref.imtl_g_weights,
        ref.mgda_unconstrained_weights,
        lambda G: ref.mgda_weights(G, solver="active_set"),
        lambda G: ref.mgda_weights(G, constrained=False),
    ]
    if T <= 64:
        calls.append(lambda G: ref.mgda_weights(G, solver="frank_wolfe_capped"))
    for solve in calls:
        w = solve(G)
        assert w.device.type == "meta" and w.shape == (T,) and w.dtype == dtype


def test_psd_pinv_solve_leaves_a_unless_overwrite() -> None:
    """The public solve does not touch A by default; ``overwrite_a=True`` (what IMTL-G uses to
    keep one T×T matrix besides the factor) gives the same solution."""
    from mtl_fast.reference import psd_pinv_solve

    X = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    A = X @ X.T  # rank 4: the pseudo-inverse path
    b = torch.ones(6, dtype=torch.float64)
    A_copy = A.clone()
    x = psd_pinv_solve(A, b, 1e-10)
    assert torch.equal(A, A_copy)
    assert torch.equal(psd_pinv_solve(A.clone(), b, 1e-10, overwrite_a=True), x)
    # x is the minimum-norm least-squares solution A⁺b, up to the filter's small bias.
    exact = torch.linalg.pinv(A_copy, hermitian=True) @ b
    torch.testing.assert_close(x, exact, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_combine_out_layouts_and_dtypes(dtype, layout: str, out_dtype) -> None:
    """``out=`` of any floating dtype and layout receives the fp32 chunk sums (several chunks,
    a zero weight): the same as adding the fp32 total computed separately."""
    T, rows, cols = 5, 130, 2 * _chunks.MIN_CHUNK // 128
    J = torch.tensor(_jacobian(T, rows * cols, seed=9), dtype=torch.float32).to(dtype)
    J = J.reshape(T, rows, cols)
    w = torch.tensor([0.5, 0.0, -1.0, 2.0, 0.25])
    start = torch.linspace(-1, 1, rows * cols).reshape(rows, cols)
    out = start.to(out_dtype)
    if layout == "transposed":
        out = out.T.contiguous().T
        assert not out.is_contiguous()
    total = (w.double() @ J.reshape(T, -1).double()).reshape(rows, cols)
    expected = (out.double() + total.float().double()).to(out_dtype)
    res = ref.combine(J, w, out=out)
    assert res is out
    tol = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 1e-2}[out_dtype]
    torch.testing.assert_close(out.double(), expected.double(), rtol=tol, atol=tol)


def test_fine_gram_groups_match_one_batched_gemm(monkeypatch) -> None:
    """Grouping the fine blocks (bounded fp32 partial products) changes only the float64
    reduction order: the same Gram to float64 rounding as one batched GEMM over all blocks."""
    J = torch.tensor(_jacobian(5, 40 * gram_module.FINE_BLOCK + 77, seed=11), dtype=torch.float32)
    grouped = ref.gram(J)
    monkeypatch.setattr(gram_module, "FINE_GROUP_ELEMS", 1 << 40)  # one group
    whole = ref.gram(J)
    monkeypatch.setattr(gram_module, "FINE_GROUP_ELEMS", 3 * 25)  # three blocks per group
    small = ref.gram(J)
    torch.testing.assert_close(grouped, whole, rtol=1e-7, atol=0)
    torch.testing.assert_close(small, whole, rtol=1e-7, atol=0)
    assert np.all(np.abs(small.double().numpy() - _np_gram(J.double().numpy())) <= _gram_bound(J))
