"""Single-program Triton solves G → α for T ≤ 64 tasks: IMTL-G and MGDA (min-norm point).

Each launcher reads the T×T Gram matrix G = J Jᵀ (any float dtype, any strides) and writes the
task weights α [T] in ONE launch of ONE program: G is padded to a BLOCK×BLOCK tile
(BLOCK = max(16, next_power_of_2(T))) held in registers in float64, and every factorisation,
substitution and iteration runs on that tile with masked reductions. Loops whose exit depends on
data (Wolfe's algorithm) are ``while`` loops inside the kernel, so the host never reads a device
value: the launchers allocate the output, launch and return (capturable in a CUDA graph).

They reproduce :mod:`mtl_fast.reference.solve` (the specification) step by step, with the same
constants (read from :mod:`mtl_fast._solve_constants` at each launch, as compile-time constants
of the kernels), the same degenerate-input rules (a task whose diagonal G_tt is
zero or not finite, or whose row is not finite against the healthy tasks, is inactive: weight 0)
and float64 arithmetic. Only the order of floating-point operations differs (sums, Cholesky
solves through an explicit L⁻¹, the affine solve by a symmetric sweep instead of an LU of the
KKT matrix): results agree with the reference to ~1e-14 relative on well-posed problems.

Padding: rows/columns t ≥ T of the tile are those of the identity (decoupled, never active), so
every algorithm below runs unchanged on the BLOCK×BLOCK tile and leaves the first T entries
exactly as on the T×T problem.

Register budget: one float64 BLOCK×BLOCK tile is BLOCK² · 2 32-bit registers spread over the
32·num_warps threads of the program; two tiles are live at once (IMTL-G: the Cholesky working
matrix and L⁻¹, L itself is never stored; MGDA: the scaled Gram and the sweep matrix of the
affine solve). :func:`_num_warps` keeps that at 16 doubles per tile per thread (BLOCK = 64:
8 warps). Compiled for sm_90a (Triton 3.9 + ptxas) neither kernel spills at any BLOCK.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from mtl_fast import _solve_constants as SC

#: Largest T the single-program kernels accept (the whole problem is one register tile).
MAX_TASKS = 64
#: Smallest tile edge (tl.arange needs a power of two; below 16 there is nothing to save).
MIN_BLOCK = 16


# float64 limits, as constexpr globals (the only globals a @triton.jit function may read).
_F64_MAX = tl.constexpr(1.7976931348623157e308)
_F64_TINY = tl.constexpr(2.2250738585072014e-308)


# --------------------------------------------------------------------------------------------
# Shared device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _f64(value):
    """A float64 scalar holding ``value`` exactly (a bare Python float would be typed fp32)."""
    return tl.full([], value, tl.float64)


@triton.jit
def _isfinite(x):
    """Elementwise finiteness of a float64 tensor (NaN fails every ordered comparison)."""
    return tl.abs(x) <= _f64(_F64_MAX)


@triton.jit
def _load_gram(g_ptr, T, stride_r, stride_c, BLOCK: tl.constexpr):
    """Load G into a float64 BLOCK×BLOCK tile (zeros outside T×T) and find the active tasks.

    active_t ⇔ t < T, G_tt finite and > 0, and G_tu finite for every u with a healthy diagonal
    (:func:`mtl_fast.reference.solve.active_tasks`). Returns (tile, diag, active, idx, eye).
    """
    idx = tl.arange(0, BLOCK)
    ii = idx[:, None]
    jj = idx[None, :]
    valid = idx < T
    inside = valid[:, None] & valid[None, :]
    g = tl.load(g_ptr + ii * stride_r + jj * stride_c, mask=inside, other=0.0).to(tl.float64)
    eye = ii == jj
    diag = tl.sum(tl.where(eye, g, 0.0), axis=1)
    diag_ok = valid & _isfinite(diag) & (diag > 0.0)
    bad = (~_isfinite(g)) & diag_ok[None, :]
    row_bad = tl.max(bad.to(tl.int32), axis=1) > 0
    active = diag_ok & ~row_bad
    return g, diag, active, idx, eye


@triton.jit
def _matvec(A, v):
    """A v for a BLOCK×BLOCK tile A and a vector v."""
    return tl.sum(A * v[None, :], axis=1)


# --------------------------------------------------------------------------------------------
# IMTL-G
# --------------------------------------------------------------------------------------------


@triton.jit
def _unit_gram_shifted(g_ptr, T, stride_r, stride_c, rel_eps, BLOCK: tl.constexpr):
    """A = C + εI with C = N⁻¹ M N⁻¹ the unit-gradient Gram (identity rows/columns for inactive
    and padded tasks), ε = rel_eps · sqrt(T) (as the reference). Returns (A, ε, n, active)."""
    g, diag, active, _idx, eye = _load_gram(g_ptr, T, stride_r, stride_c, BLOCK)
    n = tl.where(active, tl.sqrt(tl.maximum(diag, 0.0)), 1.0)
    pair = active[:, None] & active[None, :]
    c = tl.where(pair, g, eye.to(tl.float64)) / (n[:, None] * n[None, :])
    eps = rel_eps * tl.sqrt(T.to(tl.float64))
    a = tl.where(eye, c + eps, c)
    return a, eps, n, active


@triton.jit
def _cholesky_inverse(a, idx, T):
    """W = L⁻¹ for the Cholesky factor L Lᵀ = A of a symmetric BLOCK×BLOCK tile.

    Right-looking Cholesky fused with the column-oriented forward substitution L W = I: at step
    k, l = A[:, k] / sqrt(A_kk) is column k of L (A's trailing block already updated), the
    trailing block is downdated by l lᵀ, and row k of W is final (W_k ← W_k / L_kk, then
    W_i ← W_i − L_ik W_k for i > k). L itself is never stored. Rows/columns k ≥ T (padding, the
    identity) are decoupled and skipped (W is the identity there). Returns (W, ok) with ok = 0
    when a pivot A_kk was not positive (A not numerically positive definite; W is then junk).
    """
    ii = idx[:, None]
    jj = idx[None, :]
    w = (ii == jj).to(tl.float64)
    ok = tl.full([], 1, tl.int32)
    for k in range(0, T):
        col = tl.sum(tl.where(jj == k, a, 0.0), axis=1)
        piv = tl.sum(tl.where(idx == k, col, 0.0), axis=0)
        good = piv > 0.0
        ok = ok & good.to(tl.int32)
        d = tl.sqrt(tl.where(good, piv, 1.0))
        low = tl.where(idx > k, col / d, 0.0)
        a = a - low[:, None] * low[None, :]
        wk = tl.sum(tl.where(ii == k, w, 0.0), axis=0) / d
        w = tl.where(ii == k, wk[None, :], w - low[:, None] * wk[None, :])
    return w, ok


@triton.jit
def _shrink(w, eps, y):
    """r(A) y = ε (A + εI)⁻¹ y = ε Wᵀ W y with W = L⁻¹ (two mat-vecs on the register tile)."""
    v = tl.sum(w * y[None, :], axis=1)
    return eps * tl.sum(w * v[:, None], axis=0)


# T is never specialised (T = 1 would become a Python int inside the kernel).
@triton.jit(do_not_specialize=["T"])
def _imtl_g_kernel(
    g_ptr,
    out_ptr,
    T,
    stride_r,
    stride_c,
    REL_EPS: tl.constexpr,
    FALLBACK_REL_EPS: tl.constexpr,
    STEPS: tl.constexpr,
    PROJECTIONS: tl.constexpr,
    SUM_REL_TOL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """IMTL-G: solve C β = 1 with the filtered pseudo-inverse of C, α ∝ β / n, Σα = 1."""
    a, eps, n, active = _unit_gram_shifted(g_ptr, T, stride_r, stride_c, _f64(REL_EPS), BLOCK)
    idx = tl.arange(0, BLOCK)
    w, ok = _cholesky_inverse(a, idx, T)
    if ok == 0:
        # C + εI not numerically positive definite: refactor C + ε'I with the fallback shift
        # (C recomputed from G rather than kept alive through the first factorisation).
        a, eps, n, active = _unit_gram_shifted(
            g_ptr, T, stride_r, stride_c, _f64(FALLBACK_REL_EPS), BLOCK
        )
        w, ok = _cholesky_inverse(a, idx, T)

    # Filtered pseudo-inverse (psd_pinv_solve): x = Σ_{m=1..k} r^m b / ε, then p times
    # x ← x − r^k x (the range projection).
    b = active.to(tl.float64)
    x = tl.zeros([BLOCK], tl.float64)
    y = b
    for _s in tl.static_range(STEPS):
        y = _shrink(w, eps, y)
        x = x + y
    x = x / eps
    for _p in tl.static_range(PROJECTIONS):
        z = x
        for _s in tl.static_range(STEPS):
            z = _shrink(w, eps, z)
        x = x - z
    beta = x

    # α_t = β_t / n_t on active tasks, normalised to Σα = 1 (by Σ|α| when Σα vanishes).
    alpha = tl.where(active, beta / n, 0.0)
    total = tl.sum(alpha, axis=0)
    mass = tl.sum(tl.abs(alpha), axis=0)
    tiny = _f64(_F64_TINY)
    denom = tl.where(tl.abs(total) > _f64(SUM_REL_TOL) * mass, total, mass)
    denom = tl.where(mass > tiny, denom, 1.0)
    alpha = tl.where(mass > tiny, alpha / denom, 0.0)
    tl.store(out_ptr + idx, alpha, mask=idx < T)


# --------------------------------------------------------------------------------------------
# MGDA
# --------------------------------------------------------------------------------------------


@triton.jit
def _project_simplex(v, active, idx):
    """Euclidean projection of v onto the simplex over the active coordinates (others 0).

    Exact, sort-free: with c_i = #{j active: v_j ≥ v_i} and s_i = Σ_{j active: v_j ≥ v_i} v_j
    (v_i's rank and prefix sum in decreasing order, ties counted as one block), the sorted
    algorithm's condition u_k − (Σ_{i≤k} u_i − 1)/k > 0 reads v_i − (s_i − 1)/c_i > 0; it is
    constant on a block of ties and holds exactly on the ρ largest entries, so
    θ = (Σ_{cond} v − 1) / #cond and the projection is max(v − θ, 0). O(BLOCK²), no sort.
    """
    ge = active[None, :] & (v[None, :] >= v[:, None])
    s = tl.sum(tl.where(ge, v[None, :], 0.0), axis=1)
    c = tl.sum(ge.to(tl.float64), axis=1)
    cond = active & (v - (s - 1.0) / tl.maximum(c, 1.0) > 0.0)
    cnt = tl.sum(cond.to(tl.float64), axis=0)
    theta = (tl.sum(tl.where(cond, v, 0.0), axis=0) - 1.0) / tl.maximum(cnt, 1.0)
    return tl.where(active, tl.maximum(v - theta, 0.0), 0.0)


@triton.jit
def _affine_min_norm(m, support, idx, ridge, floor, T):
    """y = argmin yᵀMy s.t. Σ_S y = 1, y = 0 off the corral S.

    The KKT conditions give (M_S + ρI) y ∝ 1_S, so y = u / Σu with u = (M_S + ρI)⁻¹ 1_S
    (ρ = the reference's tiny ridge, which keeps an affinely dependent corral regular).

    u comes from the symmetric sweep operator (Gauss–Jordan elimination that keeps the tile
    symmetric, so one column extraction per pivot): sweeping pivot k maps
    a_kk → −1/a_kk, a_ik → a_ik/a_kk, a_ij → a_ij − a_ik a_kj / a_kk, and after sweeping every
    k ∈ S the S×S block holds −(M_S + ρI)⁻¹, so u = −Σ_{j∈S} a_ij. Coordinates outside S carry
    identity rows/columns: they are decoupled and their (no-op) sweeps are skipped. No pivoting
    is needed for the symmetric, numerically semi-definite M_S + ρI (a pivot whose sign is
    flipped by rounding noise in a dependent corral is harmless: y is a ratio).
    """
    ii = idx[:, None]
    jj = idx[None, :]
    pair = support[:, None] & support[None, :]
    eye = ii == jj
    a = tl.where(pair, m, eye.to(tl.float64))
    a = tl.where(eye & support[:, None], a + ridge, a)
    s_i32 = support.to(tl.int32)
    tiny = floor
    for k in range(0, T):
        if tl.sum(tl.where(idx == k, s_i32, 0), axis=0) > 0:
            col = tl.sum(tl.where(jj == k, a, 0.0), axis=1)
            piv = tl.sum(tl.where(idx == k, col, 0.0), axis=0)
            piv = tl.where(tl.abs(piv) > tiny, piv, tiny)
            f = col / piv
            a = a - col[:, None] * f[None, :]
            a = tl.where(ii == k, f[None, :], tl.where(jj == k, f[:, None], a))
            a = tl.where(eye & (ii == k), -1.0 / piv, a)
    u = -tl.sum(tl.where(pair, a, 0.0), axis=1)
    u = tl.where(support, u, 0.0)
    return u / tl.sum(u, axis=0)


# T is never specialised (T = 1 would become a Python int inside the kernel).
@triton.jit(do_not_specialize=["T"])
def _mgda_kernel(
    g_ptr,
    out_ptr,
    T,
    stride_r,
    stride_c,
    budget,
    APG_ITERS: tl.constexpr,
    POWER: tl.constexpr,
    LIP_SAFETY: tl.constexpr,
    SUPPORT_REL: tl.constexpr,
    DROP_TOL: tl.constexpr,
    TOL: tl.constexpr,
    RIDGE: tl.constexpr,
    FLOOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """MGDA: min αᵀGα over the simplex; APG warm start, then Wolfe's algorithm (exact).
    ``budget`` caps Wolfe's iterations (:func:`mtl_fast._solve_constants.mgda_budget`)."""
    g, diag, active, idx, eye = _load_gram(g_ptr, T, stride_r, stride_c, BLOCK)
    valid = idx < T
    big = _f64(_F64_MAX)
    tiny = _f64(FLOOR)
    act_f = active.to(tl.float64)

    # Scale to unit largest active diagonal; identity rows/columns for inactive and padded tasks.
    scale = tl.maximum(tl.max(tl.where(active, diag, 0.0), axis=0), _f64(_F64_TINY))
    pair = active[:, None] & active[None, :]
    m = tl.where(pair, g / scale, eye.to(tl.float64))
    gmax = tl.max(tl.where(active, tl.sum(tl.where(eye, m, 0.0), axis=1), 0.0), axis=0)

    # ---- warm start: FISTA with function-value restart (reference _apg_simplex) ----
    v = valid.to(tl.float64)
    for _p in range(POWER):
        v = tl.sum(m * v[None, :], axis=1)
        v = v / tl.maximum(tl.sqrt(tl.sum(v * v, axis=0)), tiny)
    lip = _f64(LIP_SAFETY) * tl.maximum(tl.sum(v * _matvec(m, v), axis=0), tiny)
    x = act_f / tl.maximum(tl.sum(act_f, axis=0), 1.0)
    mx = _matvec(m, x)
    fx = tl.sum(x * mx, axis=0)
    y = x
    t = _f64(1.0)
    for _it in range(APG_ITERS):
        my = tl.sum(m * y[None, :], axis=1)
        x_new = _project_simplex(y - (2.0 * my) / lip, active, idx)
        f_new = tl.sum(x_new * tl.sum(m * x_new[None, :], axis=1), axis=0)
        restart = f_new > fx
        t_new = (1.0 + tl.sqrt(1.0 + 4.0 * t * t)) / 2.0
        momentum = tl.where(restart, 0.0, (t - 1.0) / t_new)
        y = x_new + momentum * (x_new - x)
        t = tl.where(restart, 1.0, t_new)
        x = x_new
        fx = f_new

    # ---- Wolfe's minimum-norm-point algorithm from the warm start's support ----
    support = active & (x > _f64(SUPPORT_REL) * tl.max(x, axis=0))
    lam = tl.where(support, x, 0.0)
    lam = lam / tl.maximum(tl.sum(lam, axis=0), tiny)
    in_minor = tl.max(support.to(tl.int32), axis=0)
    done = tl.zeros([], tl.int32)
    tol = _f64(TOL) * gmax
    ridge = _f64(RIDGE) * tl.maximum(gmax, tiny)
    drop_eps = _f64(DROP_TOL)
    it = tl.zeros([], tl.int32)
    while (it < budget) & (done == 0):
        # Major cycle (skipped while a minor cycle is pending): optimal when
        # min_t (Mλ)_t ≥ λᵀMλ − tol·max M_tt, else add the most violating vertex to the corral.
        w = tl.sum(m * lam[None, :], axis=1)
        obj = tl.sum(lam * w, axis=0)
        cand = tl.where(active & ~support, w, big)
        cmin = tl.min(cand, axis=0)
        j = tl.min(tl.where(cand == cmin, idx, BLOCK), axis=0)
        optimal = (cmin >= obj - tol).to(tl.int32)
        add = (1 - in_minor) * (1 - optimal)
        done = (1 - in_minor) * optimal
        support = support | ((idx == j) & (add > 0))
        in_minor = tl.zeros([], tl.int32)
        if done == 0:
            # Minor cycle: λ ← affine minimiser y over S if y > 0 on S, else move towards y until
            # a coordinate hits 0 and drop it from S.
            ya = _affine_min_norm(m, support, idx, ridge, tiny, T)
            all_inside = tl.min(((ya > 0.0) | ~support).to(tl.int32), axis=0)
            dec = support & ~(ya > 0.0)
            ratio = tl.where(dec, lam / tl.maximum(lam - ya, tiny), big)
            theta = tl.minimum(tl.maximum(tl.min(ratio, axis=0), 0.0), 1.0)
            lam_partial = lam + theta * (ya - lam)
            partial = all_inside == 0
            drop = support & partial & ((dec & (ratio <= theta)) | (lam_partial <= drop_eps))
            lam_partial = tl.where(drop, 0.0, lam_partial)
            lam = tl.where(partial, lam_partial, tl.maximum(ya, 0.0))
            support = support & ~drop
            in_minor = 1 - all_inside
        lam = lam / tl.maximum(tl.sum(lam, axis=0), tiny)
        it += 1

    tl.store(out_ptr + idx, tl.where(active, lam, 0.0), mask=valid)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _block(G: Tensor, what: str) -> int:
    if G.dim() != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"{what}: G must be a square [T, T] matrix; got {tuple(G.shape)}")
    T = G.shape[0]
    if T > MAX_TASKS:
        raise ValueError(
            f"{what}: the single-program Triton solve takes T <= {MAX_TASKS} tasks; got T = {T} "
            "(use the reference solve, mtl_fast.reference.solve)"
        )
    return max(MIN_BLOCK, triton.next_power_of_2(T))


def _num_warps(block: int) -> int:
    """Warps for a BLOCK×BLOCK float64 tile: 16 doubles per thread per tile (16→1, 32→2, 64→8)."""
    return max(1, block * block // (16 * 32))


def _out(G: Tensor) -> Tensor:
    dtype = torch.float64 if G.dtype == torch.float64 else torch.float32
    return torch.empty(G.shape[0], dtype=dtype, device=G.device)


def imtl_g_constants(dtype: torch.dtype) -> dict[str, float | int]:
    """The compile-time constants of the IMTL-G kernel for a Gram matrix of ``dtype``, read from
    :mod:`mtl_fast._solve_constants` at each launch."""
    eps = SC.pinv_rel_eps(dtype)
    return {
        "REL_EPS": eps,
        "FALLBACK_REL_EPS": eps * SC.PINV_FALLBACK_FACTOR,
        "STEPS": SC.PINV_STEPS,
        "PROJECTIONS": SC.PINV_PROJECTIONS,
        "SUM_REL_TOL": SC.SUM_REL_TOL,
    }


def mgda_constants() -> dict[str, float | int]:
    """The compile-time constants of the MGDA kernel, read from :mod:`mtl_fast._solve_constants`
    at each launch (the iteration budget is a runtime argument, ``mgda_budget(T)``)."""
    return {
        "APG_ITERS": SC.MGDA_APG_ITERS,
        "POWER": SC.MGDA_POWER_ITERS,
        "LIP_SAFETY": SC.MGDA_LIPSCHITZ_SAFETY,
        "SUPPORT_REL": SC.MGDA_SUPPORT_REL,
        "DROP_TOL": SC.MGDA_DROP_TOL,
        "TOL": SC.MGDA_TOL,
        "RIDGE": SC.MGDA_RIDGE,
        "FLOOR": SC.DIVISION_FLOOR,
    }


def _launch_imtl_g(G: Tensor, num_warps: int | None = None) -> tuple[Tensor, Any]:
    """Launch the IMTL-G kernel; returns (α, Triton's launch handle: on CUDA the compiled
    kernel, whose ``n_regs`` / ``n_spills`` show the register pressure)."""
    block = _block(G, "imtl_g_solve")
    out = _out(G)
    handle = _imtl_g_kernel[(1,)](
        G,
        out,
        G.shape[0],
        G.stride(0),
        G.stride(1),
        **imtl_g_constants(G.dtype),
        BLOCK=block,
        num_warps=num_warps or _num_warps(block),
    )
    return out, handle


def _launch_mgda(G: Tensor, num_warps: int | None = None) -> tuple[Tensor, Any]:
    """Launch the MGDA kernel; returns (α, Triton's launch handle) as :func:`_launch_imtl_g`."""
    block = _block(G, "mgda_solve")
    out = _out(G)
    handle = _mgda_kernel[(1,)](
        G,
        out,
        G.shape[0],
        G.stride(0),
        G.stride(1),
        SC.mgda_budget(G.shape[0]),
        **mgda_constants(),
        BLOCK=block,
        num_warps=num_warps or _num_warps(block),
    )
    return out, handle


def imtl_g_solve(G: Tensor) -> Tensor:
    """IMTL-G weights from the Gram matrix, one program (Liu et al. 2021 §3.1, eq. 1; App. B.1).

    g = Σ α_t g_t has equal projections on every unit gradient u_t = g_t / ‖g_t‖ and Σα = 1:

        (Gα)_t / n_t = const  ⇔  C β = 1 with C = N⁻¹GN⁻¹, n_t = sqrt(G_tt),  α_t ∝ β_t / n_t,

    which equals the paper's α_{2..T} = g_1Uᵀ(DUᵀ)⁻¹, α_1 = 1 − Σ_{t≥2} α_t where that is
    defined. As :func:`mtl_fast.reference.solve.imtl_g_weights`: β = the filtered
    pseudo-inverse of :func:`~mtl_fast.reference.solve.psd_pinv_solve` (one Cholesky of C + εI,
    ε = PINV_REL_EPS·tr C, or PINV_FALLBACK_REL_EPS·tr C if a pivot is not positive; PINV_STEPS
    iterated-Tikhonov steps and the range projection), inactive tasks 0, normalised to Σα = 1
    (by Σ|α| when Σα vanishes; all zeros when no task is active).

    Args:
        G: [T, T] float tensor, T ≤ 64, any strides, on a CUDA device (or the CPU under the
            Triton interpreter). Not validated beyond its shape (see :mod:`mtl_fast.ops`).

    Returns:
        α [T]: float32 (float64 for a float64 G), on G's device. No host synchronisation.
    """
    return _launch_imtl_g(G)[0]


def mgda_solve(G: Tensor) -> Tensor:
    """MGDA weights: the minimum-norm point of the convex hull of the gradients, one program.

    Sener & Koltun (2018), eq. 3: min_α αᵀGα over {α ≥ 0, Σα = 1}; optimal iff
    (Gα)_t ≥ αᵀGα for all t with equality where α_t > 0. As the reference
    (:func:`mtl_fast.reference.solve.mgda_weights`, ``solver="active_set"``): on G scaled to
    unit largest active diagonal, a warm start by FISTA with function-value restart (step 1/L,
    L = MGDA_LIPSCHITZ_SAFETY·λ_max from power iteration; exact sort-free simplex projection),
    then Wolfe's (1976) minimum-norm-point algorithm — major cycle: stop when
    min_t (Mλ)_t ≥ λᵀMλ − MGDA_TOL, else add the most violating vertex; minor cycle: affine
    minimiser y ∝ (M_S + ρI)⁻¹1 over the corral S, step to it or to the boundary and drop the
    blocking vertex — in a device ``while`` loop of at most ``mgda_budget(T)`` = 5T + 20
    iterations. Inactive tasks get 0; no active task gives all zeros.

    Args:
        G: [T, T] float tensor, T ≤ 64, any strides (see :func:`imtl_g_solve`).

    Returns:
        α [T]: float32 (float64 for a float64 G), on G's device. No host synchronisation.
    """
    return _launch_mgda(G)[0]
