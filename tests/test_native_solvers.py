"""Tests of the native CPU solves mtl_fast._C.imtl_g_solve / mgda_solve against the reference
(mtl_fast.reference.solve, the specification), and of their use by mtl_fast.ops on the CPU.

The native solvers take every constant as a required keyword; :func:`_imtl` and :func:`_mgda`
call them with the values of mtl_fast._solve_constants, overridden by the keywords given."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtl_fast._C as _C
from mtl_fast import _solve_constants as SC
from mtl_fast import ops
from mtl_fast.reference import imtl_g_weights, mgda_weights

TS = [1, 2, 3, 5, 8, 16, 40, 64, 128, 256]


def _imtl(G, **override) -> np.ndarray:
    """``_C.imtl_g_solve`` with the float64 constants of mtl_fast._solve_constants."""
    return _C.imtl_g_solve(G, **{**SC.native_imtl_g_options(torch.float64), **override})


def _mgda(G, **override) -> np.ndarray:
    """``_C.mgda_solve`` with the constants of mtl_fast._solve_constants (budget for G's T; T = 1
    when G has no square shape, for the validation tests)."""
    T = np.shape(G)[0] if np.ndim(G) == 2 else 1
    return _C.mgda_solve(G, **{**SC.native_mgda_options(T), **override})


def _seeds(T: int) -> range:
    """Random matrices per T: the reference MGDA costs ~0.1-1 s per solve at T >= 128."""
    return range(1 if T >= 128 else 3)


def _jacobian(T: int, D: int, seed: int, shared: float = 1.0) -> np.ndarray:
    """T gradients of dimension D: a common component plus independent ones, norms over e^±3."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((T, D)) + shared * rng.standard_normal(D)
    return J * np.exp(rng.uniform(-3.0, 3.0, (T, 1)))


def _gram(T: int, D: int | None = None, seed: int = 0) -> np.ndarray:
    """float64 Gram matrix, positive definite for D >= T (the default D = T + 8)."""
    J = _jacobian(T, T + 8 if D is None else D, seed)
    return J @ J.T


def _ref_imtl(G: np.ndarray | torch.Tensor) -> np.ndarray:
    return imtl_g_weights(torch.as_tensor(G)).double().numpy()


def _ref_mgda(G: np.ndarray) -> np.ndarray:
    return mgda_weights(torch.as_tensor(G)).numpy()


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _objective(G: np.ndarray, a: np.ndarray) -> float:
    return float(a @ G @ a)


def _assert_same_objective(G: np.ndarray, a: np.ndarray, b: np.ndarray, rtol=1e-12) -> None:
    """αᵀGα equal to rtol relative, with a floor of 1e-15 max G_tt (0 in the hull: obj ≈ 0)."""
    oa, ob = _objective(G, a), _objective(G, b)
    scale = float(np.max(np.diag(G)))
    assert abs(oa - ob) <= rtol * abs(ob) + 1e-15 * scale, (oa, ob)


def _assert_kkt(G: np.ndarray, a: np.ndarray, tol: float = 1e-10) -> None:
    """α on the simplex over the active tasks, (Gα)_t >= αᵀGα − tol on them, equality where
    α_t > 0 (Sener & Koltun 2018; tol relative to the largest active G_tt)."""
    d = np.diag(G)
    active = np.isfinite(d) & (d > 0)
    assert np.all(a >= 0) and np.all(a[~active] == 0)
    assert abs(a.sum() - 1.0) <= 1e-12
    Ga = G[np.ix_(active, active)] @ a[active]
    obj = a[active] @ Ga
    scale = d[active].max()
    assert np.all(Ga >= obj - tol * scale), (Ga - obj).min() / scale
    on = a[active] > 0
    assert np.all(np.abs(Ga[on] - obj) <= tol * scale), np.abs(Ga[on] - obj).max() / scale


# --------------------------------------------------------------------------------------------
# Agreement with the reference on random Gram matrices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", TS)
def test_imtl_g_matches_reference(T: int) -> None:
    for seed in _seeds(T):
        G = _gram(T, seed=seed)
        a = _imtl(G)
        assert a.dtype == np.float64 and a.shape == (T,)
        assert _rel_err(a, _ref_imtl(G)) <= 1e-10
        assert abs(a.sum() - 1.0) <= 1e-12


@pytest.mark.parametrize("T", TS)
def test_mgda_matches_reference(T: int) -> None:
    for seed in _seeds(T):
        G = _gram(T, seed=seed)  # positive definite: the minimiser is unique
        a, ref = _mgda(G), _ref_mgda(G)
        assert a.dtype == np.float64 and a.shape == (T,)
        _assert_same_objective(G, a, ref)
        np.testing.assert_allclose(a, ref, rtol=0, atol=1e-9)
        _assert_kkt(G, a)


@pytest.mark.parametrize("T", [3, 8, 40, 128, 300])
def test_mgda_rank_deficient(T: int) -> None:
    """T > D: the minimiser need not be unique; the objective is, and the KKT conditions hold."""
    G = _gram(T, D=max(T // 2, 1), seed=T)
    a = _mgda(G)
    _assert_kkt(G, a)
    if T <= 128:
        _assert_same_objective(G, a, _ref_mgda(G))


@pytest.mark.parametrize("T", [3, 8, 40])
def test_imtl_g_rank_deficient(T: int) -> None:
    """T > D. For a Gram matrix of fp32 precision (shift 1e-5 sqrt(T)) the filter is well
    conditioned; at the float64 shift (1e-10 sqrt(T)) both implementations carry ~1e-6 of
    rounding noise in the null-space directions of C, which do not change the direction of the
    aggregated gradient Jᵀα."""
    J = _jacobian(T, max(T // 2, 1), seed=T)
    G32 = torch.from_numpy(J @ J.T).float()
    a32 = _imtl(G32.double().numpy(), rel_eps=SC.pinv_rel_eps(torch.float32))
    assert _rel_err(a32, _ref_imtl(G32)) <= 1e-6
    G = J @ J.T
    a, ref = _imtl(G), _ref_imtl(G)
    assert _rel_err(a, ref) <= 1e-3
    ga, gr = J.T @ a, J.T @ ref
    assert ga @ gr / (np.linalg.norm(ga) * np.linalg.norm(gr)) >= 1 - 1e-9


def test_non_symmetric_input() -> None:
    """A Gram matrix that is not exactly symmetric (the solves read G as given)."""
    G = _gram(12, seed=5)
    G = G + 1e-13 * np.triu(np.ones_like(G), 1) * np.abs(G).max()
    assert not np.array_equal(G, G.T)
    assert _rel_err(_imtl(G), _ref_imtl(G)) <= 1e-10
    np.testing.assert_allclose(_mgda(G), _ref_mgda(G), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Published and degenerate cases
# --------------------------------------------------------------------------------------------


def test_published_case() -> None:
    """J = [[-4, 1, 1], [6, 1, 1]] (the IMTL/MGDA comparison example)."""
    J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    G = J @ J.T
    np.testing.assert_allclose(_imtl(G), [0.5923, 0.4077], atol=5e-5)
    np.testing.assert_allclose(_mgda(G), [0.6, 0.4], rtol=0, atol=1e-14)
    g = J.T @ _imtl(G)  # equal projections onto the unit gradients
    u = J / np.linalg.norm(J, axis=1, keepdims=True)
    assert abs(u[0] @ g - u[1] @ g) <= 1e-12 * np.linalg.norm(g)


def _without(G: np.ndarray, t: int) -> np.ndarray:
    keep = [i for i in range(G.shape[0]) if i != t]
    return G[np.ix_(keep, keep)]


def _bad_row(G: np.ndarray, t: int, value: float) -> np.ndarray:
    G = G.copy()
    G[t, :] = value
    G[:, t] = value
    return G


@pytest.mark.parametrize("value", [0.0, np.nan, np.inf, -np.inf])
def test_inactive_task(value: float) -> None:
    """A zero / NaN / Inf gradient: weight 0, the others solved as if it were absent."""
    t = 2
    base = _gram(6, seed=1)
    G = _bad_row(base, t, value)
    for solve, tol in ((_imtl, 1e-10), (_mgda, 1e-9)):
        a = solve(G)
        assert a[t] == 0.0
        np.testing.assert_allclose(np.delete(a, t), solve(_without(base, t)), rtol=0, atol=tol)
    np.testing.assert_allclose(_imtl(G), _ref_imtl(G), rtol=0, atol=1e-10)
    np.testing.assert_allclose(_mgda(G), _ref_mgda(G), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "edit",
    [
        lambda G: G.__setitem__((1, 1), np.inf),  # non-finite diagonal only
        lambda G: G.__setitem__((1, 1), -1.0),  # negative squared norm
        lambda G: G.__setitem__((0, 3), np.nan),  # one non-finite entry: row 0 is inactive
    ],
)
def test_inactive_like_reference(edit) -> None:
    G = _gram(5, seed=2)
    edit(G)
    np.testing.assert_allclose(_imtl(G), _ref_imtl(G), rtol=0, atol=1e-10)
    np.testing.assert_allclose(_mgda(G), _ref_mgda(G), rtol=0, atol=1e-9)


def test_duplicate_rows() -> None:
    """Duplicate gradients: IMTL-G splits the weight of the pair equally (pseudo-inverse); MGDA's
    minimiser is not unique but its objective is."""
    J = _jacobian(5, 9, seed=3)
    Jd = np.vstack([J, J[1:2]])  # task 5 duplicates task 1
    G, Gd = J @ J.T, Jd @ Jd.T
    a, ad = _imtl(G), _imtl(Gd)
    np.testing.assert_allclose(ad[1], ad[5], rtol=1e-5)
    np.testing.assert_allclose(np.r_[ad[0], ad[1] + ad[5], ad[2:5]], a, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ad, _ref_imtl(Gd), rtol=0, atol=1e-5)
    m, md = _mgda(G), _mgda(Gd)
    _assert_kkt(Gd, md)
    _assert_same_objective(Gd, md, _ref_mgda(Gd))
    _assert_same_objective(G, m, np.r_[md[0], md[1] + md[5], md[2:5]])


def test_all_zero_and_single_task() -> None:
    for T in (1, 2, 7):
        Z = np.zeros((T, T))
        assert np.array_equal(_imtl(Z), np.zeros(T))
        assert np.array_equal(_mgda(Z), np.zeros(T))
    for g in (1e-30, 3.0, 1e30):
        assert np.array_equal(_imtl(np.array([[g]])), [1.0])
        assert np.array_equal(_mgda(np.array([[g]])), [1.0])


def test_antipodal_pair() -> None:
    """g_2 = −g_1: 0 lies in the hull, α = (½, ½); also through the bordered-system fallback
    (ridge 0 makes the corral's matrix exactly singular, so its Cholesky factorisation fails)."""
    G = np.array([[4.0, -4.0], [-4.0, 4.0]])
    for ridge in (SC.MGDA_RIDGE, 0.0):
        np.testing.assert_allclose(_mgda(G, ridge=ridge), [0.5, 0.5], atol=1e-12)
    J = _jacobian(4, 6, seed=4)
    Jd = np.vstack([J, J, -J[:1]])  # every task twice, and one reversed: singular corrals
    Gd = Jd @ Jd.T
    a = _mgda(Gd)
    _assert_kkt(Gd, a)
    _assert_same_objective(Gd, a, _ref_mgda(Gd))


def test_pinv_fallback_shift() -> None:
    """C indefinite beyond ε (not a Gram matrix, e.g. noisy): the first Cholesky fails and the
    shift is multiplied by PINV_FALLBACK_FACTOR; if that fails too, both implementations use
    the partial factor LAPACK leaves (garbage in, the same garbage out)."""
    J = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])  # T > D: C is singular
    C = J @ J.T
    C = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    null = np.linalg.eigh(C)[1][:, 0]
    for depth in (1e-9, 1e-3):  # below / above the fallback shift 1e-8 sqrt(3)
        G = C - depth * np.outer(null, null)
        assert np.linalg.eigvalsh(G).min() < 0
        np.testing.assert_allclose(_imtl(G), _ref_imtl(G), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solve", "options"),
    [
        (_C.imtl_g_solve, SC.native_imtl_g_options(torch.float64)),
        (_C.mgda_solve, SC.native_mgda_options(7)),
    ],
    ids=["imtl_g", "mgda"],
)
def test_every_constant_is_a_required_keyword(solve, options: dict) -> None:
    """The native solvers have no constants of their own: each keyword of the options that
    mtl_fast._solve_constants builds is required (leaving one out raises, no hidden default),
    and they take no other keyword (one the module does not know raises)."""
    G = _gram(7, seed=6)
    assert np.all(np.isfinite(solve(G, **options)))
    for name in options:
        partial = {k: v for k, v in options.items() if k != name}
        with pytest.raises(TypeError):
            solve(G, **partial)
    with pytest.raises(TypeError):
        solve(G, **options, unknown_constant=1.0)


def test_warm_start_does_not_change_the_minimiser() -> None:
    """Wolfe's algorithm is exact from any warm start (apg_iters = 0: from the barycentre)."""
    G = _gram(30, seed=7)
    np.testing.assert_allclose(_mgda(G, apg_iters=0), _mgda(G), atol=1e-9)


def test_float32_precision_shift() -> None:
    """rel_eps is the caller's: the fp32 shift gives the reference's weights for a float32 G."""
    G32 = torch.from_numpy(_gram(10, D=6, seed=8)).float()
    a = _imtl(G32.double().numpy(), rel_eps=SC.pinv_rel_eps(torch.float32))
    assert _rel_err(a, _ref_imtl(G32)) <= 1e-6


@pytest.mark.parametrize(
    ("G", "match"),
    [
        (np.zeros(3), "2-D"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.zeros((2, 3)), "square"),
        (np.zeros((0, 0)), "T >= 1"),
        (np.zeros((2, 2), dtype=np.float32), "float64"),
        (np.zeros((2, 2), dtype=np.int64), "float64"),
        (np.zeros((2, 2), dtype=">f8"), "float64"),
        (np.zeros((4, 4))[::2, ::2], "C-contiguous"),
        (np.asfortranarray(np.arange(4.0).reshape(2, 2)), "C-contiguous"),
        (None, "2-D"),
        ("abc", "2-D"),
    ],
)
def test_validation(G, match: str) -> None:
    for solve in (_imtl, _mgda):
        with pytest.raises(ValueError, match=match):
            solve(G)


@pytest.mark.parametrize(
    ("solve", "kwargs", "match"),
    [
        (_imtl, {"rel_eps": 0.0}, "rel_eps"),
        (_imtl, {"rel_eps": float("nan")}, "rel_eps"),
        (_imtl, {"fallback_factor": 0.5}, "fallback_factor"),
        (_imtl, {"steps": 0}, "steps"),
        (_imtl, {"projections": -1}, "projections"),
        (_mgda, {"apg_iters": -1}, "apg_iters"),
        (_mgda, {"power_iters": 0}, "power_iters"),
        (_mgda, {"lipschitz_safety": 0.0}, "lipschitz_safety"),
        (_mgda, {"support_rel": 1.0}, "support_rel"),
        (_mgda, {"drop_tol": -1.0}, "drop_tol"),
        (_mgda, {"ridge": float("inf")}, "ridge"),
        (_mgda, {"tol": -1e-3}, "tol"),
        (_mgda, {"max_iter": 0}, "max_iter"),
    ],
)
def test_keyword_validation(solve, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        solve(np.eye(2), **kwargs)


def test_input_untouched_and_threads() -> None:
    """G is only read; concurrent calls (the GIL is released) give the serial results."""
    mats = [_gram(T, seed=T) for T in (5, 20, 60, 90) for _ in range(2)]
    copies = [G.copy() for G in mats]
    serial = [(_imtl(G), _mgda(G)) for G in mats]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda G: (_imtl(G), _mgda(G)), mats * 2))
    for (a, m), (b, n) in zip(serial * 2, threaded):
        assert np.array_equal(a, b) and np.array_equal(m, n)
    assert all(np.array_equal(G, C) for G, C in zip(mats, copies))


# --------------------------------------------------------------------------------------------
# Through the public API
# --------------------------------------------------------------------------------------------


def _spy(monkeypatch, name: str) -> list[dict]:
    """Record the options of every native ``name`` solve ("imtl_g" or "mgda") the dispatcher
    runs, through ``mtl_fast._C.solve_gram`` (G read in place)."""
    calls: list[dict] = []
    real = _C.solve_gram

    def wrapper(G, num_tasks, dtype, solver, weights_out, weights_dtype, **kwargs):
        if solver == name:
            calls.append(kwargs)
        return real(G, num_tasks, dtype, solver, weights_out, weights_dtype, **kwargs)

    monkeypatch.setattr(_C, "solve_gram", wrapper)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [2, 9, 33])
def test_ops_auto_uses_native(monkeypatch, dtype: torch.dtype, T: int) -> None:
    G = torch.from_numpy(_gram(T, seed=T)).to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 0}
    for op, name in ((ops.imtl_g_weights, "imtl_g"), (ops.mgda_weights, "mgda")):
        calls = _spy(monkeypatch, name)
        got = op(G)
        assert len(calls) == 1, f"{op.__name__} did not use the native {name} solve"
        want = op(G, backend="torch")
        assert got.dtype == want.dtype == dtype and got.device == G.device
        torch.testing.assert_close(got, want, **tol)
        assert len(calls) == 1  # backend="torch" stays on the reference
        # The same weights as the array entry points (G converted to a float64 array).
        legacy = getattr(_C, f"{name}_solve")
        opts = SC.native_imtl_g_options(dtype) if name == "imtl_g" else SC.native_mgda_options(T)
        direct = torch.from_numpy(legacy(G.double().numpy(), **opts)).to(dtype)
        assert torch.equal(got, direct)


def test_ops_native_solve_rejects_nonfinite_gram() -> None:
    """A NaN/Inf in G raises naming its rows, as on the reference path, and writes nothing."""
    G = torch.from_numpy(_gram(4, seed=2)).float()
    G[2, 1] = float("nan")
    for op in (ops.imtl_g_weights, ops.mgda_weights):
        with pytest.raises(ValueError, match="Gram matrix row for task 2"):
            op(G)


def test_ops_passes_the_solve_constants(monkeypatch) -> None:
    """The dispatcher passes the constants of mtl_fast._solve_constants, with the shift for G's
    precision and the budget for its T."""
    for dtype in (torch.float32, torch.float64):
        G = torch.from_numpy(_gram(6, seed=9)).to(dtype)
        calls = _spy(monkeypatch, "imtl_g")
        ops.imtl_g_weights(G)
        assert calls == [SC.native_imtl_g_options(dtype)]
        assert calls[0]["rel_eps"] == SC.PINV_REL_EPS[dtype]
        calls = _spy(monkeypatch, "mgda")
        ops.mgda_weights(G)
        assert calls == [SC.native_mgda_options(6)]
        assert calls[0]["max_iter"] == SC.mgda_budget(6)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_permutation_equivariance(T: int, seed: int, data) -> None:
    G = _gram(T, D=T + 3, seed=seed)
    perm = np.array(data.draw(st.permutations(range(T))))
    Gp = G[np.ix_(perm, perm)]
    a, ap = _imtl(G), _imtl(Gp)
    assert abs(a.sum() - 1) <= 1e-12 and abs(ap.sum() - 1) <= 1e-12
    assert _rel_err(ap, a[perm]) <= 1e-9
    m, mp = _mgda(G), _mgda(Gp)
    assert np.all(m >= 0) and abs(m.sum() - 1) <= 1e-12
    np.testing.assert_allclose(mp, m[perm], rtol=0, atol=1e-9)
    _assert_kkt(G, m)
