"""Reference weight solves in Gram space (pure PyTorch, float64, any device, no host sync).

Every function maps the T×T Gram matrix G = J Jᵀ of the task gradients to task weights α. They
share one treatment of degenerate input (docs/design.md "Numerics"):

* a task whose diagonal G_tt is 0 (no gradient signal) or not finite is *inactive*: weight 0, and
  the others are solved as if it were absent;
* linearly dependent gradients (duplicates, collinear rows, T > D) are solved in the
  pseudo-inverse sense (:func:`psd_pinv_solve`), giving finite weights;
* T = 1 gives [1]; an all-zero G gives all-zero weights.

Nothing here branches on tensor values on the host, so the solves run on a CUDA device without
synchronisation (capturable in a CUDA graph). The only loops with a data-dependent exit (Wolfe's
algorithm) stop early on the CPU, where reading a flag is free, and run a fixed budget of masked
no-op iterations elsewhere.

The tolerances, iteration counts and floors are read at call time from
:mod:`mtl_fast._solve_constants`, the one module the Triton kernels (``kernels/solve.py``) and the
native solvers (:mod:`mtl_fast._C`) take them from too. Mirrors: ``kernels/solve.py``,
``tests/kernels/test_solve.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast import _solve_constants as SC
from mtl_fast._validation import check_gram


def _out_dtype(G: Tensor) -> torch.dtype:
    return torch.float64 if G.dtype == torch.float64 else torch.float32


def active_tasks(G: Tensor) -> Tensor:
    """bool [T]: tasks with a finite, strictly positive squared norm G_tt (and a finite row)."""
    diag = G.diagonal()
    diag_ok = torch.isfinite(diag) & (diag > 0)
    # Entries against inactive tasks (e.g. a NaN gradient) do not disqualify a healthy row.
    row_ok = (torch.isfinite(G) | ~diag_ok[None, :]).all(dim=1)
    return diag_ok & row_ok


def _masked(G64: Tensor, active: Tensor) -> Tensor:
    """G with inactive rows/columns replaced by those of the identity (decoupled, finite)."""
    pair = active[:, None] & active[None, :]
    eye = torch.eye(G64.shape[0], dtype=G64.dtype, device=G64.device)
    return torch.where(pair, torch.nan_to_num(G64), eye)


def unit_gram(G: Tensor, active: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Unit-gradient Gram C = N⁻¹ G N⁻¹ (N = diag(n), n_t = ‖g_t‖ = sqrt(G_tt)), in float64.

    Returns (C, n, active): inactive tasks get n_t = 1 and an identity row/column in C.
    """
    C = G.to(torch.float64)
    if C.data_ptr() == G.data_ptr():
        C = C.clone()
    if active is None:
        active = active_tasks(C)
    n = torch.where(active, torch.nan_to_num(C.diagonal()).clamp_min(0).sqrt(), 1.0)
    # In place on the one float64 copy (at large T the T×T temporaries are the memory cost):
    # inactive rows and columns zeroed (masked_fill, so a NaN/Inf there never meets a
    # multiplication), scaled by 1/n on both sides, and 1 on the inactive diagonal.
    inactive = ~active
    C.masked_fill_(inactive[:, None], 0.0).masked_fill_(inactive[None, :], 0.0)
    C.div_(n[:, None]).div_(n[None, :])
    C.diagonal().add_(inactive.to(C.dtype))
    return C, n, active


def psd_pinv_solve(A: Tensor, b: Tensor, rel_eps: float, *, overwrite_a: bool = False) -> Tensor:
    """x ≈ A⁺ b for a symmetric positive semi-definite A (float64), without a host sync.

    A spectral filter of the pseudo-inverse computed with one Cholesky factorisation of A + εI,
    ε = rel_eps · sqrt(T) (A has unit diagonal here, so its eigenvalues are O(1) to O(T)). With
    r(λ) = ε / (λ + ε) ∈ (0, 1] and R = ε(A + εI)⁻¹ (eigenvalues r):

        x_k = (1/ε) Σ_{j=1..k} R^j b        → (1 − r^k) / λ        (iterated Tikhonov)
        x   = (I − R^k)^p x_k               → (1 − r^k)^{p+1} / λ  (range projection, p times)

    on each eigenvector of A (k = PINV_STEPS, p = PINV_PROJECTIONS). For λ ≫ ε the filter is
    1/λ up to a relative bias ~(p+1)(ε/λ)^k; for λ ≪ ε it is ~k^{p+1} λ^p / ε^{p+1} → 0, so the
    null space of A (T > D, duplicate or collinear gradients) and rounding noise at the level of
    the matrix's precision are dropped as the Moore–Penrose pseudo-inverse drops them. If the
    factorisation fails (A indefinite beyond ε through noise) ε is multiplied by
    PINV_FALLBACK_FACTOR; off the CPU both factorisations are computed and the choice is made on
    the device with ``torch.where``.

    With ``overwrite_a=True`` the shift is added to A's diagonal in place (A is then garbage):
    the solve needs one T×T matrix besides the Cholesky factor instead of three.
    """
    T = A.shape[-1]
    eps = torch.full((), rel_eps * T**0.5, dtype=A.dtype, device=A.device)
    shifted = A if overwrite_a else A.clone()
    shifted.diagonal().add_(eps)
    L, info = torch.linalg.cholesky_ex(shifted)
    ok = info == 0
    if A.device.type != "cpu" or not bool(ok):  # on the CPU the flag is free to read
        eps_fb = eps * SC.PINV_FALLBACK_FACTOR
        shifted.diagonal().add_(eps_fb - eps)
        L_fb, _ = torch.linalg.cholesky_ex(shifted)
        L = torch.where(ok, L, L_fb)
        eps = torch.where(ok, eps, eps_fb)
    del shifted

    def shrink(y: Tensor) -> Tensor:  # R y = ε (A + εI)⁻¹ y = ε L⁻ᵀ L⁻¹ y
        return eps * torch.cholesky_solve(y[:, None], L)[:, 0]

    x = torch.zeros_like(b)
    y = b
    for _ in range(SC.PINV_STEPS):
        y = shrink(y)
        x = x + y
    x = x / eps
    for _ in range(SC.PINV_PROJECTIONS):
        z = x
        for _ in range(SC.PINV_STEPS):
            z = shrink(z)
        x = x - z
    return x


def _normalise_sum(alpha: Tensor) -> Tensor:
    """α / Σα; by Σ|α| when Σα vanishes (degenerate geometry); zeros stay zeros."""
    total = alpha.sum()
    mass = alpha.abs().sum()
    tiny = torch.finfo(alpha.dtype).tiny
    denom = torch.where(total.abs() > SC.SUM_REL_TOL * mass, total, mass)
    return torch.where(mass > tiny, alpha / torch.where(mass > tiny, denom, 1.0), 0.0)


def imtl_g_weights(G: Tensor) -> Tensor:
    """IMTL-G weights (Liu et al. 2021 §3.1, eq. 1 and "IMTL-G"; Appendix B.1 eq. 9–12).

    The aggregated gradient g = Σ α_t g_t has equal projections onto every unit gradient
    u_t = g_t/‖g_t‖ (eq. 1: g u_1ᵀ = g u_tᵀ) and Σ α_t = 1. In Gram space, with n_t = sqrt(G_tt)
    and the unit-gradient Gram C = N⁻¹ G N⁻¹:

        g · u_t = (G α)_t / n_t = const   ⇔   G α ∝ n   ⇔   C β = 1,  α_t ∝ β_t / n_t,

    normalised to Σ α = 1. Where the paper's α_{2..T} = g_1 Uᵀ (D Uᵀ)⁻¹ is defined the two are
    equal. Dependent gradients use the pseudo-inverse of C (:func:`psd_pinv_solve`); inactive
    tasks (zero or non-finite gradient) get 0.

    Returns:
        α [T]: float32 (float64 for a float64 G), on G's device.
    """
    check_gram(G)
    C, n, active = unit_gram(G)
    beta = psd_pinv_solve(C, active.to(C.dtype), SC.pinv_rel_eps(G.dtype), overwrite_a=True)
    alpha = torch.where(active, beta / n, 0.0)
    return _normalise_sum(alpha).to(_out_dtype(G))


def mgda_unconstrained_weights(G: Tensor) -> Tensor:
    """Minimum-norm point of the affine hull of the gradients (Liu et al. 2021 §4, eq. 7; App. C.2).

    min_α αᵀGα s.t. Σα = 1 (no α ≥ 0): g ⊥ (g_1 − g_t) for all t, i.e. G α ∝ 1, so
    α = G⁺1 / (1ᵀG⁺1). Solved in the unit-gradient basis like IMTL-G, so the pseudo-inverse's
    noise cutoff applies to the angles between gradients and not to their norms: with
    G = N C N, G α ∝ 1 ⇔ C γ ∝ n⁻¹ with γ = N α, hence α_t ∝ (C⁺ n⁻¹)_t / n_t.
    """
    check_gram(G)
    C, n, active = unit_gram(G)
    gamma = psd_pinv_solve(
        C, torch.where(active, 1.0 / n, 0.0), SC.pinv_rel_eps(G.dtype), overwrite_a=True
    )
    return _normalise_sum(torch.where(active, gamma / n, 0.0)).to(_out_dtype(G))


# --------------------------------------------------------------------------------------------
# MGDA: minimum-norm point of the convex hull (Sener & Koltun 2018, "MGDA-UB" solver problem)
# --------------------------------------------------------------------------------------------


def _affine_min_norm(G: Tensor, support: Tensor) -> Tensor:
    """argmin yᵀGy s.t. Σ_S y = 1, y_t = 0 off the support S (KKT system, float64).

    On the CPU the system is reduced to the support (|S|+1 unknowns); elsewhere it is the full
    (T+1)×(T+1) system with the rows off the support replaced by the identity (no sync).
    """
    T = G.shape[0]
    if G.device.type == "cpu":
        idx = support.nonzero().flatten()
        k = idx.numel()
        K = torch.zeros((k + 1, k + 1), dtype=G.dtype)
        K[:k, :k] = G[idx][:, idx]
        K[:k, :k] += (
            SC.MGDA_RIDGE
            * G.diagonal().max().clamp_min(SC.DIVISION_FLOOR)
            * torch.eye(k, dtype=G.dtype)
        )
        K[:k, k] = 1.0
        K[k, :k] = 1.0
        rhs = torch.zeros(k + 1, dtype=G.dtype)
        rhs[k] = 1.0
        sol, _ = torch.linalg.solve_ex(K, rhs)
        y = torch.zeros(T, dtype=G.dtype)
        y[idx] = sol[:k]
        return y
    eye = torch.eye(T, dtype=G.dtype, device=G.device)
    pair = support[:, None] & support[None, :]
    ones = support.to(G.dtype)
    K = torch.zeros((T + 1, T + 1), dtype=G.dtype, device=G.device)
    K[:T, :T] = torch.where(pair, G, eye)
    # Tiny ridge keeps the system regular when the corral is (numerically) affinely dependent.
    K[:T, :T] += (
        SC.MGDA_RIDGE * G.diagonal().max().clamp_min(SC.DIVISION_FLOOR) * eye * ones[:, None]
    )
    K[:T, T] = ones
    K[T, :T] = ones
    rhs = torch.zeros(T + 1, dtype=G.dtype, device=G.device)
    rhs[T:].fill_(1.0)  # not `rhs[T] = 1.0`: a Python scalar stored into a device tensor syncs
    sol, _ = torch.linalg.solve_ex(K, rhs)
    return torch.where(support, sol[:T], 0.0)


def project_simplex(v: Tensor, active: Tensor) -> Tensor:
    """Euclidean projection of v onto the simplex over the active coordinates (others 0).

    Sort-based (Held, Wolfe & Crowder 1974): θ = (Σ_{i≤ρ} u_i − 1)/ρ with u sorted decreasingly
    and ρ the largest k with u_k − (Σ_{i≤k} u_i − 1)/k > 0; result max(v − θ, 0).
    """
    T = v.shape[0]
    low = torch.finfo(v.dtype).min
    u, _ = torch.sort(torch.where(active, v, low), descending=True)
    valid = u > low
    css = torch.cumsum(torch.where(valid, u, 0.0), 0)
    k = torch.arange(1, T + 1, dtype=v.dtype, device=v.device)
    cond = valid & (u - (css - 1) / k > 0)
    rho = torch.where(cond, k, 0.0).max().clamp_min(1.0)
    theta = (css.gather(0, (rho - 1).long().view(1)) - 1) / rho
    return torch.where(active, (v - theta).clamp_min(0.0), 0.0)


def _apg_simplex(G: Tensor, active: Tensor, iters: int) -> Tensor:
    """Accelerated projected gradient (FISTA with function-value restart) for min αᵀGα on the
    simplex. Step 1/L with L = MGDA_LIPSCHITZ_SAFETY·λ_max(G), λ_max from MGDA_POWER_ITERS
    power iterations (2·λ_max is the Lipschitz constant of the gradient; the margin covers the
    power method's underestimate)."""
    T = G.shape[0]
    x = active.to(G.dtype) / active.sum().clamp_min(1)
    v = torch.ones(T, dtype=G.dtype, device=G.device)
    for _ in range(SC.MGDA_POWER_ITERS):
        v = G @ v
        v = v / v.norm().clamp_min(SC.DIVISION_FLOOR)
    lip = SC.MGDA_LIPSCHITZ_SAFETY * (v @ (G @ v)).clamp_min(SC.DIVISION_FLOOR)
    y = x
    t = torch.ones((), dtype=G.dtype, device=G.device)
    fx = x @ (G @ x)
    for _ in range(iters):
        x_new = project_simplex(y - (2 * (G @ y)) / lip, active)
        f_new = x_new @ (G @ x_new)
        restart = f_new > fx
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = torch.where(restart, 0.0, (t - 1) / t_new)
        y = x_new + momentum * (x_new - x)
        t = torch.where(restart, torch.ones_like(t), t_new)
        x, fx = x_new, f_new
    return x


def _wolfe_min_norm(
    G: Tensor, active: Tensor, max_iter: int, tol: float, start: Tensor | None = None
) -> Tensor:
    """Wolfe's (1976) minimum-norm-point algorithm on the convex hull, in Gram form.

    State: a corral S (support) and λ on the simplex supported on S. Major cycle: with
    w = Gλ (w_t = ⟨x, g_t⟩ for x = Σ λ_t g_t), stop when min_t w_t ≥ λᵀGλ − tol·max G_tt (x is
    then the minimum-norm point: the KKT conditions hold), else add argmin_t w_t to S. Minor
    cycle: y = affine minimiser over S; if y > 0 on S, λ = y; otherwise move λ towards y until a
    coordinate hits 0 and drop it from S. Exact in finitely many steps.

    ``start`` (a point of the simplex, e.g. from :func:`_apg_simplex`) warm-starts the corral
    with its support: the first iteration is then a minor cycle from that point, which is valid
    because any feasible λ may start the minor cycle. Otherwise the corral starts at the vertex
    of smallest norm.

    Written with masks so every iteration is a fixed sequence of tensor ops (a no-op once
    converged); on the CPU the loop exits as soon as the flag is set.
    """
    T = G.shape[0]
    big = torch.finfo(G.dtype).max
    gmax = torch.where(active, G.diagonal(), 0.0).max()
    if start is None:
        first = torch.argmin(torch.where(active, G.diagonal(), big))
        support = (torch.arange(T, device=G.device) == first) & active
        lam = support.to(G.dtype)
        in_minor = torch.zeros((), dtype=torch.bool, device=G.device)
    else:
        support = active & (start > SC.MGDA_SUPPORT_REL * start.max())
        lam = torch.where(support, start, 0.0)
        lam = lam / lam.sum().clamp_min(SC.DIVISION_FLOOR)
        in_minor = support.any()
    done = torch.zeros((), dtype=torch.bool, device=G.device)
    stop_early = G.device.type == "cpu"
    for _ in range(max_iter):
        # ---- major cycle (skipped while a minor cycle is pending) ----
        w = G @ lam
        obj = lam @ w
        cand = torch.where(active & ~support, w, big)
        j = torch.argmin(cand)
        optimal = cand.min() >= obj - tol * gmax
        add = ~done & ~in_minor & ~optimal
        done = done | (~in_minor & optimal)
        support = support | (add & (torch.arange(T, device=G.device) == j))
        # ---- minor cycle step ----
        y = _affine_min_norm(G, support)
        inside = (y > 0) | ~support
        all_inside = inside.all()
        # Largest step θ ∈ [0, 1] keeping λ + θ(y − λ) ≥ 0 on S.
        dec = support & (y <= 0)
        ratio = torch.where(dec, lam / (lam - y).clamp_min(SC.DIVISION_FLOOR), big)
        theta = torch.clamp(ratio.min(), 0.0, 1.0)
        step_y = ~done & all_inside
        step_partial = ~done & ~all_inside
        lam_partial = lam + theta * (y - lam)
        blocking = dec & (ratio <= theta)
        drop = support & step_partial & (blocking | (lam_partial <= SC.MGDA_DROP_TOL))
        lam_partial = torch.where(drop, 0.0, lam_partial)
        lam = torch.where(step_y, y.clamp_min(0.0), torch.where(step_partial, lam_partial, lam))
        support = support & ~drop
        lam = lam / lam.sum().clamp_min(SC.DIVISION_FLOOR)
        in_minor = step_partial
        if stop_early and bool(done):
            break
    return lam


#: The Frank-Wolfe solvers: ``"frank_wolfe"`` is the published loop (Sener & Koltun 2018,
#: ``find_min_norm_element_FW``: its iteration counter is never incremented, so it runs until
#: the step is below 1e-5), ``"frank_wolfe_capped"`` the same loop stopped after 250 iterations
#: (LibMTL's copy increments the counter).
FRANK_WOLFE_SOLVERS = ("frank_wolfe", "frank_wolfe_capped")
#: The values of ``mgda_weights(solver=)``.
MGDA_SOLVERS = ("active_set", *FRANK_WOLFE_SOLVERS)
#: Stopping tolerance (L1 norm of the step) and LibMTL's cap of the Frank-Wolfe loop.
FRANK_WOLFE_TOL = SC.MGDA_FW_TOL
#: LibMTL's cap on the iterations of ``"frank_wolfe_capped"``.
FRANK_WOLFE_CAP = SC.MGDA_FW_ITERS
#: A safety stop of the published loop: it has no cap and, where the minimum-norm point is 0
#: or nearly so (e.g. T > D), its steps can stay above the tolerance indefinitely. 20,000 is
#: well above what the published loop needed on our test problems (up to 5,652 steps at
#: T = 12, tests/methods/test_mgda.py).
FRANK_WOLFE_SAFETY = 20_000
#: On accelerators the uncapped loop reads its convergence flag every this many iterations
#: (one host synchronisation each; the extra iterations are masked no-ops).
FRANK_WOLFE_POLL = 32


def _two_point(v11: Tensor, v12: Tensor, v22: Tensor) -> Tensor:
    """γ of min_γ ‖γ x_1 + (1 − γ) x_2‖² as the published code computes it: 0.999 when
    ⟨x_1, x_2⟩ ≥ ‖x_1‖², else 0.001 when ⟨x_1, x_2⟩ ≥ ‖x_2‖², else the interior minimiser
    (‖x_2‖² − ⟨x_1, x_2⟩) / ‖x_1 − x_2‖² (elementwise over broadcast tensors)."""
    den = v11 + v22 - 2 * v12
    inner = (v22 - v12) / torch.where(den > 0, den, 1.0)
    return torch.where(v12 >= v11, 0.999, torch.where(v12 >= v22, 0.001, inner))


def _frank_wolfe_min_norm(G: Tensor, active: Tensor, max_iter: int | None, tol: float) -> Tensor:
    """Frank-Wolfe with the two-point line search, step for step as the published MGDA code.

    Start: the best pair (i < j, first minimum of the two-point cost, γ on g_i by
    :func:`_two_point`). Step: t = argmin_s (Gλ)_s, γ = two-point(λᵀGλ, (Gλ)_t, G_tt),
    λ' = γλ + (1 − γ)e_t; when ‖λ' − λ‖₁ < ``tol`` the loop returns λ (not λ'), as the
    published code does. ``max_iter=None``: the published loop, stopped only by
    :data:`FRANK_WOLFE_SAFETY` (the published code would run on); otherwise at most
    ``max_iter`` steps (LibMTL). T ≤ 2 returns the best pair, as the published code does.

    On the CPU the loop exits as soon as it converges; elsewhere it reads the flag every
    :data:`FRANK_WOLFE_POLL` iterations (a host synchronisation; not capturable in a CUDA
    graph when uncapped).
    """
    T = G.shape[0]
    big = torch.finfo(G.dtype).max
    d = G.diagonal()
    gamma = _two_point(d[:, None], G, d[None, :])
    cost = torch.where(
        gamma == 0.999,
        d[:, None],
        torch.where(gamma == 0.001, d[None, :], d[None, :] + gamma * (G - d[None, :])),
    )
    ar = torch.arange(T, device=G.device)
    upper = active[:, None] & active[None, :] & (ar[:, None] < ar[None, :])
    cost = torch.where(upper, cost, big)
    # Tensor indices only (gather / one-hot masks): a 0-d tensor index would read the host.
    flat = torch.argmin(cost)
    e_i, e_j = (ar == flat // T).to(G.dtype), (ar == flat % T).to(G.dtype)
    g_ij = gamma.reshape(-1).gather(0, flat.view(1))
    pair = torch.where(active, g_ij * e_i + (1 - g_ij) * e_j, 0.0)
    # Fewer than two active tasks: no pair; the single active task (if any) gets weight 1.
    lam = torch.where(active.sum() >= 2, pair, active.to(G.dtype))
    if T < 3:
        return lam
    cpu = G.device.type == "cpu"
    done = active.sum() < 2  # nothing to move: no task, or one with weight 1
    k = 0
    while k < (FRANK_WOLFE_SAFETY if max_iter is None else max_iter):
        k += 1
        w = G @ lam
        t = torch.argmin(torch.where(active, w, big)).view(1)
        g = _two_point(lam @ w, w.gather(0, t)[0], d.gather(0, t)[0])
        new = g * lam + (1 - g) * (ar == t).to(G.dtype)
        done = done | ((new - lam).abs().sum() < tol)
        lam = torch.where(done, lam, new)
        if (cpu or (max_iter is None and k % FRANK_WOLFE_POLL == 0)) and bool(done):
            break
    return lam


def mgda_weights(
    G: Tensor,
    *,
    constrained: bool = True,
    solver: str = "active_set",
    max_iter: int | None = None,
    tol: float | None = None,
) -> Tensor:
    """MGDA weights: the minimum-norm point of the convex hull of the gradients.

    Sener & Koltun (2018), eq. 3 / the MGDA-UB subproblem: min_α ‖Σ α_t g_t‖² = αᵀGα over the
    simplex {α ≥ 0, Σα = 1}. The KKT conditions characterise the solution: (Gα)_t ≥ αᵀGα for all
    t, with equality where α_t > 0.

    Args:
        G: [T, T] Gram matrix.
        constrained: ``False`` drops α ≥ 0 and returns the closed form G α ∝ 1 of Liu et al. 2021 §4
            (:func:`mgda_unconstrained_weights`).
        solver: ``"active_set"`` (default): Wolfe's minimum-norm-point algorithm, exact up to
            rounding (stops when the Frank-Wolfe gap is below ``tol`` = MGDA_TOL of the largest
            squared norm, then the corral's affine solve is exact); ``"frank_wolfe"``: the
            published Frank-Wolfe loop (Sener & Koltun 2018, ``find_min_norm_element_FW``),
            which runs until the step is below ``tol`` = 1e-5 with no iteration cap (its
            counter is never incremented; problems at T = 12 can need thousands of steps;
            here a safety stop at :data:`FRANK_WOLFE_SAFETY` steps ends the cases where it
            would never stop, e.g. T > D);
            ``"frank_wolfe_capped"``: the same loop stopped after 250 steps, as LibMTL's copy
            does. Neither is what the published training script calls: it uses the
            projected-gradient ``find_min_norm_element``, whose fixed point is the same
            minimum-norm point that ``"active_set"`` computes exactly (docs/design.md).
        max_iter, tol: override the solver's iteration budget / stopping tolerance
            (``max_iter`` caps ``"frank_wolfe"`` too).

    Inactive tasks (zero or non-finite gradient) get weight 0. The problem is solved on G scaled
    to unit maximum diagonal (the minimiser does not depend on the scale).
    """
    check_gram(G)
    if not constrained:
        return mgda_unconstrained_weights(G)
    G64 = G.to(torch.float64)
    active = active_tasks(G64)
    M = _masked(G64, active)
    scale = torch.where(active, M.diagonal(), 0.0).max().clamp_min(torch.finfo(M.dtype).tiny)
    M = torch.where(active[:, None] & active[None, :], M / scale, M)
    T = G.shape[0]
    if solver == "active_set":
        start = _apg_simplex(M, active, SC.MGDA_APG_ITERS)
        budget = max_iter or (
            SC.mgda_budget(T) if M.device.type == "cpu" or T <= 64 else SC.MGDA_DEVICE_BUDGET
        )
        lam = _wolfe_min_norm(M, active, budget, SC.MGDA_TOL if tol is None else tol, start=start)
    elif solver in FRANK_WOLFE_SOLVERS:
        cap = FRANK_WOLFE_CAP if solver == "frank_wolfe_capped" else None
        lam = _frank_wolfe_min_norm(
            M, active, max_iter or cap, FRANK_WOLFE_TOL if tol is None else tol
        )
    else:
        raise ValueError(f"unknown MGDA solver {solver!r}; expected one of {MGDA_SOLVERS}")
    lam = torch.where(active, lam, 0.0)
    return lam.to(_out_dtype(G))
