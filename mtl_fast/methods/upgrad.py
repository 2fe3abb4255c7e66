"""UPGrad and DualProj (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024).

Both project onto the *dual cone* of the task gradients, C(J) = {x : J x ≥ 0} = {x : g_t·x ≥ 0
for all t}, the set of update directions that conflict with no task. For J = [g_1; …; g_T]
and a weight vector u, the projection of Jᵀu onto C(J) is a combination of the gradients
(their Proposition 1):

    π_J(Jᵀu) = Jᵀ v(u),      v(u) = argmin_{v ≥ u} vᵀ G v,      G = J Jᵀ,             (1)

a T-variable quadratic program with box constraints, in Gram space. For a preference vector
p ≥ 0 (default: the mean, p_t = 1/T):

    DualProj:  α = v(p)                       (project the p-weighted combination; GEM's eq. 11)
    UPGrad:    α = Σ_i v(p_i e_i)             (project every p_i g_i, then sum: A_UPGrad)

so the update Σ_t α_t g_t is non-conflicting: G α ≥ 0 (each projection lies in the convex cone
C(J), and so does a sum of them). UPGrad is also linear under positive scaling of the rows:
scaling g_k by c > 0 leaves C(J) unchanged and multiplies the k-th projection by c.

Solver (:func:`dual_cone_weights`, the K problems of a batch at once, no host synchronisation):
with v = u + x, x ≥ 0, and the Jacobi scaling y = d ∘ x (d_t = sqrt(Ĝ_tt)), each problem is the
non-negative quadratic program

    min_{y ≥ 0} ½ yᵀ Ā y + yᵀ b,      Ā = D⁻¹ Ĝ D⁻¹ (unit diagonal),  b = D⁻¹ Ĝ u,          (2)

solved by accelerated projected gradient (FISTA with restart; it finds the active set) and then
an exact primal active-set method warm-started from it (Lawson–Hanson / Wolfe type: on the free
set F solve Ā_FF y_F = −b_F; if that leaves the orthant, step back to the boundary and drop the
blocking variable; otherwise add the most negative reduced gradient; stop when (Āy + b) ≥ −tol
off F). Every iteration is a fixed sequence of batched tensor operations (masks, one batched
Cholesky); on the CPU the loop stops as soon as every problem satisfies its KKT conditions, on
other devices it runs a fixed budget.

Regularisation (as torchjd's default ``QuadprogProjector``): the QP is solved with
Ĝ = G / tr(G) + ε I, ε = ``reg_eps`` = 1e-4, which makes v unique when G is singular (T > D,
duplicated gradients); ``reg_eps=0`` gives the exact projection (1) for a non-singular G.
With ε > 0 the stationarity of the QP gives (G α)_t ≥ −ε tr(G) α_t: non-conflicting up to ε.

Differences from torchjd 0.18 (deliberate): torchjd replaces G by 0 when tr(G) < 1e-4 (an
absolute threshold, ``norm_eps``), which turns UPGrad/DualProj into the plain mean whenever the
gradients are small; here the normalisation is scale-free (α depends only on the directions and
relative norms of the gradients). Otherwise the problems are identical: Σ α_t g_t agrees with
torchjd's quadprog solution to ~1e-13 relative (tested to 1e-6). Off the CPU the active-set
budget is fixed (:data:`DEVICE_ACTIVE_SET_ITERS` + T/2 iterations after the warm start, well
above the ≤ 9 measured at T = 40); if it were ever exhausted the result is still feasible
(α ≥ p) but not exactly optimal.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from mtl_fast._validation import check_gram
from mtl_fast.reference import active_tasks
from mtl_fast.weighting import StepInputs, Weighting

PrefLike = Union[Tensor, Sequence[float], None]

#: Relative regularisation of the Gram matrix (torchjd's ``QuadprogProjector`` default).
REG_EPS = 1e-4
#: Accelerated-projected-gradient iterations that warm-start the active-set method.
APG_ITERS = 40
#: Smallest T for which the CPU path warm-starts with APG (below it, the active-set method
#: from y = 0 needs only a few cheap iterations).
CPU_APG_MIN_T = 16
#: Active-set iterations after the warm start off the CPU (a fixed budget: no host sync).
DEVICE_ACTIVE_SET_ITERS = 8
#: Stationarity tolerance of the active-set method, relative to max |b| of each problem.
KKT_TOL = 1e-13


def _dtype_noise(dtype: torch.dtype) -> float:
    """10 ulps of the Gram matrix's dtype: the smallest regularisation that keeps the trace-
    normalised matrix positive definite despite its rounding noise."""
    return 10 * torch.finfo(dtype).eps


def _regularised_gram(G: Tensor, active: Tensor, reg_eps: float) -> tuple[Tensor, Tensor]:
    """(Ĝ = G/tr(G) + ε I on the active tasks, identity rows elsewhere; d = sqrt(diag Ĝ)),
    float64. ε = max(reg_eps, 10 ulps of G's dtype)."""
    T = G.shape[0]
    G64 = G.to(torch.float64)
    pair = active[:, None] & active[None, :]
    M = torch.where(pair, torch.nan_to_num(G64), 0.0)
    M = (M + M.T) / 2  # a Gram matrix accumulated in fp32 may be asymmetric by rounding
    trace = M.diagonal().sum().clamp_min(torch.finfo(torch.float64).tiny)
    eps = max(float(reg_eps), _dtype_noise(G.dtype))
    eye = torch.eye(T, dtype=torch.float64, device=G.device)
    M = torch.where(pair, M / trace + eps * eye, eye)
    return M, M.diagonal().sqrt()


def _lipschitz(A: Tensor) -> Tensor:
    """An upper estimate of λ_max(A) for a symmetric PSD A: 1.1 × 20 power iterations, capped
    by the Gershgorin bound (a guaranteed upper bound)."""
    v = torch.ones(A.shape[0], dtype=A.dtype, device=A.device)
    for _ in range(20):
        v = A @ v
        v = v / v.norm().clamp_min(1e-300)
    power = (v @ (A @ v)).clamp_min(1e-300)
    gersh = A.abs().sum(dim=1).max()
    return torch.minimum(1.1 * power, gersh)


def _apg(A: Tensor, b: Tensor, iters: int) -> Tensor:
    """FISTA with function-value restart for the K problems (2) at once: Y [K, T] ≥ 0."""
    lip = _lipschitz(A)
    Y = torch.zeros_like(b)
    Z = Y
    t = torch.ones(b.shape[0], 1, dtype=b.dtype, device=b.device)
    f = torch.zeros(b.shape[0], 1, dtype=b.dtype, device=b.device)
    for _ in range(iters):
        Y_new = (Z - (Z @ A + b) / lip).clamp_min(0.0)
        f_new = (0.5 * (Y_new @ A) + b).mul(Y_new).sum(dim=1, keepdim=True)
        restart = f_new > f
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = torch.where(restart, 0.0, (t - 1) / t_new)
        Z = Y_new + momentum * (Y_new - Y)
        t = torch.where(restart, 1.0, t_new)
        Y, f = Y_new, f_new
    return Y


def _free_set_solve(A: Tensor, b: Tensor, free: Tensor) -> Tensor:
    """For each problem k: z with Ā_FF z_F = −b_F on its free set F = free[k], z = 0 off F
    (one batched Cholesky factorisation of the K masked matrices; inactive rows: identity)."""
    T = A.shape[0]
    eye = torch.eye(T, dtype=A.dtype, device=A.device)
    pair = free[:, :, None] & free[:, None, :]
    M = torch.where(pair, A, eye)
    L, _ = torch.linalg.cholesky_ex(M)
    rhs = torch.where(free, -b, 0.0)
    # Two triangular solves (L y = rhs, Lᵀ z = y) rather than torch.cholesky_solve: on CUDA the
    # latter goes through MAGMA's batched potrs, which allocates device memory per call and
    # cannot be captured in a CUDA graph; the triangular solves are cuBLAS trsm.
    y = torch.linalg.solve_triangular(L, rhs[:, :, None], upper=False)
    z = torch.linalg.solve_triangular(L.mT, y, upper=True)[:, :, 0]
    return torch.where(free, z, 0.0)


def _active_set(A: Tensor, b: Tensor, Y: Tensor, max_iter: int, stop_early: bool) -> Tensor:
    """Primal active-set method for the K problems (2), warm-started at the feasible Y ≥ 0.

    State per problem: a feasible y and its free set F ⊇ supp(y). One iteration:

    * major step (when the last minor step ended inside the orthant): with the gradient
      r = Āy + b, stop if r_j ≥ −tol for all j ∉ F (then y is optimal: the KKT conditions of
      (2) hold, r_F = 0 from the minor step); else add j = argmin_{j ∉ F} r_j to F;
    * minor step: z = the minimiser on F; if z_F > 0, y = z; else move y towards z until the
      first coordinate of F reaches 0 and drop it from F (the next iteration is a minor step).

    The objective decreases strictly at every change, so the method is exact in finitely many
    steps.
    """
    K, T = b.shape
    big = torch.finfo(A.dtype).max
    tol = KKT_TOL * b.abs().amax(dim=1)
    free = Y > 0
    Y = torch.where(free, Y, 0.0)
    in_minor = free.any(dim=1)  # a warm start begins with a minor step on its support
    done = torch.zeros(K, dtype=torch.bool, device=b.device)
    cols = torch.arange(T, device=b.device)
    for _ in range(max_iter):
        r = Y @ A + b
        cand = torch.where(free, big, r)
        j = cand.argmin(dim=1)
        optimal = cand.gather(1, j[:, None])[:, 0] >= -tol
        major = ~done & ~in_minor
        add = major & ~optimal
        done = done | (major & optimal)
        free = free | (add[:, None] & (cols[None, :] == j[:, None]))
        z = _free_set_solve(A, b, free)
        z = torch.where(torch.isfinite(z).all(dim=1, keepdim=True), z, Y)  # failed factorisation
        inside = ((z > 0) | ~free).all(dim=1)
        dec = free & (z <= 0)
        ratio = torch.where(dec, Y / (Y - z).clamp_min(1e-300), big)
        theta = ratio.amin(dim=1, keepdim=True).clamp(0.0, 1.0)
        Y_partial = Y + theta * (z - Y)
        blocking = dec & (ratio <= theta)
        drop = free & ~inside[:, None] & (blocking | (Y_partial <= 0))
        step = ~done
        Y = torch.where(
            (step & inside)[:, None], z, torch.where((step & ~inside)[:, None], Y_partial, Y)
        )
        Y = torch.where(drop & step[:, None], 0.0, Y).clamp_min(0.0)
        free = free & ~(drop & step[:, None])
        in_minor = step & ~inside
        if stop_early and bool(done.all()):
            break
    return Y


def dual_cone_weights(
    G: Tensor,
    U: Tensor,
    *,
    reg_eps: float = REG_EPS,
    active: Tensor | None = None,
    max_iter: int | None = None,
    apg_iters: int | None = None,
    stop_early: bool | None = None,
) -> Tensor:
    """The weights of the projections of Jᵀu onto the dual cone of the rows of J, in batch.

    For each row u of U: w = argmin_{v ≥ u} vᵀ Ĝ v with Ĝ = G/tr(G) + ε I (eq. (1) of
    :mod:`mtl_fast.methods.upgrad`), so that π_J(Jᵀu) = Jᵀw (exactly when ε = 0).

    Args:
        G: [T, T] Gram matrix of the task gradients.
        U: [K, T] or [T] weight vectors (float).
        reg_eps: ε, relative to the trace of G (torchjd's default 1e-4); raised to 10 ulps of
            G's dtype if smaller.
        active: bool [T], tasks to include (default: finite, non-zero diagonal). Inactive tasks
            get w = 0 and do not constrain the others.
        max_iter: active-set iterations (default: 3T + 10 on the CPU, stopping as soon as every
            problem is solved; :data:`DEVICE_ACTIVE_SET_ITERS` + T/2 elsewhere).
        apg_iters: warm-start iterations (default :data:`APG_ITERS`; on the CPU none up to
            T = :data:`CPU_APG_MIN_T`, where the active-set method alone is faster).
        stop_early: leave the active-set loop once every problem is solved (reads a flag on the
            host; default: on the CPU only). ``False`` runs the fixed, sync-free sequence used
            on accelerators (with its budget unless ``max_iter`` is given).

    Returns:
        W [K, T] (or [T] for a 1-D U), float64.
    """
    check_gram(G)
    T = G.shape[0]
    squeeze = U.dim() == 1
    U64 = U.to(device=G.device, dtype=torch.float64).reshape(-1, T)
    if active is None:
        active = active_tasks(G.to(torch.float64))
    A_hat, d = _regularised_gram(G, active, reg_eps)
    U64 = torch.where(active, U64, 0.0)
    A = A_hat / (d[:, None] * d[None, :])
    b = (U64 @ A_hat) / d
    if stop_early is None:
        stop_early = G.device.type == "cpu"
    if max_iter is None:
        max_iter = 3 * T + 10 if stop_early else DEVICE_ACTIVE_SET_ITERS + T // 2
    if apg_iters is None:
        apg_iters = 0 if stop_early and T < CPU_APG_MIN_T else APG_ITERS
    Y = _apg(A, b, apg_iters) if apg_iters > 0 else torch.zeros_like(b)
    Y = _active_set(A, b, Y, max_iter, stop_early=stop_early)
    W = torch.where(active, U64 + Y / d, 0.0)
    return W[0] if squeeze else W


def preference(pref: Tensor | None, active: Tensor) -> Tensor:
    """The preference vector over the active tasks, float64: the mean 1/|active| by default, the
    given p_t otherwise (0 for inactive tasks, not renormalised)."""
    if pref is None:
        k = active.sum().clamp_min(1).to(torch.float64)
        return torch.where(active, 1.0 / k, 0.0)
    return torch.where(active, pref.to(device=active.device, dtype=torch.float64), 0.0)


def _active_preference(
    G: Tensor, pref: Tensor | None, active: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Validate G; the active tasks (from G unless given) and the preference over them."""
    check_gram(G)
    if active is None:
        active = active_tasks(G.to(torch.float64))
    return active, preference(pref, active)


def upgrad_weights(
    G: Tensor,
    pref: Tensor | None = None,
    *,
    reg_eps: float = REG_EPS,
    active: Tensor | None = None,
    max_iter: int | None = None,
) -> Tensor:
    """UPGrad weights α = Σ_i v(p_i e_i) (float64 [T]): Σ α_t g_t = Σ_i p_i π_J(g_i).

    ``pref``: p [T] (default the mean over the active tasks). See :func:`dual_cone_weights`.
    """
    active, p = _active_preference(G, pref, active)
    W = dual_cone_weights(G, torch.diag(p), reg_eps=reg_eps, active=active, max_iter=max_iter)
    return W.sum(dim=0)


def dualproj_weights(
    G: Tensor,
    pref: Tensor | None = None,
    *,
    reg_eps: float = REG_EPS,
    active: Tensor | None = None,
    max_iter: int | None = None,
) -> Tensor:
    """DualProj weights α = v(p) (float64 [T]): Σ α_t g_t = π_J(Σ p_t g_t).

    ``pref``: p [T] (default the mean over the active tasks). See :func:`dual_cone_weights`.
    """
    active, p = _active_preference(G, pref, active)
    return dual_cone_weights(G, p, reg_eps=reg_eps, active=active, max_iter=max_iter)


def _check_pref(pref: PrefLike, num_tasks: int | None) -> Tensor | None:
    if pref is None:
        return None
    p = torch.as_tensor(pref, dtype=torch.float64).detach().cpu().clone()
    if p.dim() != 1 or p.numel() == 0:
        raise ValueError(f"pref_vector must be a non-empty 1-D vector; got shape {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("pref_vector must be finite and non-negative")
    if num_tasks is not None and p.numel() != num_tasks:
        raise ValueError(f"pref_vector has {p.numel()} entries for {num_tasks} tasks")
    return p


class PreferenceVector:
    """Mixin of the methods weighted by a user preference vector (UPGrad, DualProj, AlignedMTL):
    validation, one host-to-device copy per device, and the preference as initial weights."""

    pref_vector: Tensor | None

    def _init_pref(self, pref_vector: PrefLike, num_tasks: int | None) -> None:
        self.pref_vector = _check_pref(pref_vector, num_tasks)
        self._pref_on: dict[torch.device, Tensor] = {}

    def _pref(self, T: int, device: torch.device) -> Tensor | None:
        p = self.pref_vector
        if p is None:
            return None
        if p.numel() != T:
            raise ValueError(f"pref_vector has {p.numel()} entries for {T} tasks")
        if device not in self._pref_on:  # one host-to-device copy, on the first step
            self._pref_on[device] = p.to(device)
        return self._pref_on[device]

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        """The preference vector when one was given, else the base class's prior."""
        if self.pref_vector is None:
            return super().initial_weights(num_tasks, device)  # type: ignore[misc]
        return self.pref_vector.to(device=device, dtype=torch.float32)


class _DualConeMethod(PreferenceVector, Weighting):
    """Shared parameters and plumbing of :class:`UPGrad` and :class:`DualProj`."""

    gradient_based = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        pref_vector: PrefLike = None,
        reg_eps: float = REG_EPS,
        max_iter: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        if not reg_eps >= 0:
            raise ValueError(f"reg_eps must be non-negative; got {reg_eps!r}")
        if max_iter is not None and (not isinstance(max_iter, int) or max_iter < 1):
            raise ValueError(f"max_iter must be a positive int; got {max_iter!r}")
        self._init_pref(pref_vector, num_tasks)
        self.reg_eps = float(reg_eps)
        self.max_iter = max_iter

    def extra_repr(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return f"num_tasks={self.num_tasks}, pref_vector={pref}, reg_eps={self.reg_eps}"

    def _solve(self, weights_fn: Callable[..., Tensor], G: Tensor, inputs: StepInputs) -> Tensor:
        """``weights_fn`` (:func:`upgrad_weights` or :func:`dualproj_weights`) of G with this
        method's preference and options, over the tasks active in G and present this step."""
        active = active_tasks(G.to(torch.float64)) & inputs.present.to(G.device)
        return weights_fn(
            G,
            self._pref(G.shape[0], G.device),
            reg_eps=self.reg_eps,
            active=active,
            max_iter=self.max_iter,
        )


class UPGrad(_DualConeMethod):
    """UPGrad: project every task gradient onto the dual cone of all of them, then combine.

    Quinton & Rey (2024), the aggregator A_UPGrad(J) = Σ_i p_i π_J(Jᵀe_i) with π_J the projection
    onto the dual cone (their eq. 3) computed by Proposition 1 (see :mod:`mtl_fast.methods.upgrad`):

        Σ_t α_t g_t = Σ_i p_i π_J(g_i),     α = Σ_i v(p_i e_i),   v(u) = argmin_{v ≥ u} vᵀĜv,

    with Ĝ = G/tr(G) + ε I and the preference p (default: the mean, 1/T). The update conflicts
    with no task (G α ≥ 0 up to ε), and it is linear under positive scaling of the gradients:
    g_k → c g_k multiplies the k-th term p_k π_J(g_k) by c and leaves the others unchanged.

    Args:
        num_tasks: T (optional).
        pref_vector: p [T], non-negative (default: 1/T over the present tasks). Absent tasks
            get p_t = 0; the others keep their p_t (not renormalised).
        reg_eps: ε of Ĝ (default 1e-4, torchjd's ``QuadprogProjector``); 0 for the exact
            projection (raised to 10 ulps of G's dtype to stay positive definite).
        max_iter: active-set iteration budget (see :func:`dual_cone_weights`).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: α [T] with g = Σ α_t g_t (α_t ≥ p_t; 0 for absent tasks).

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, T box-constrained
    T×T QPs solved in one batch (O(T⁴) flops per active-set iteration, tiny for T ≤ 64).
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "its capture failed on an H200 (2026-12-04: torch.cholesky_solve goes through MAGMA, "
        "which allocates per call); it now uses two triangular solves, but the capture has not "
        "been re-checked on a GPU."
    )

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        return self._solve(upgrad_weights, G, inputs)


class DualProj(_DualConeMethod):
    """DualProj: project the preferred combination of the gradients onto their dual cone.

    Quinton & Rey (2024) (the projection of GEM, Lopez-Paz & Ranzato 2017, eq. 11):

        Σ_t α_t g_t = π_J(Σ_t p_t g_t),     α = v(p) = argmin_{v ≥ p} vᵀĜv,

    with Ĝ = G/tr(G) + ε I and p the preference (default: the mean, 1/T). The update conflicts
    with no task (G α ≥ 0 up to ε); when the mean gradient already conflicts with none, α = p.

    Args: as :class:`UPGrad`.

    ``weights``: α [T] with g = Σ α_t g_t (α_t ≥ p_t; 0 for absent tasks).

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, one box-constrained
    T×T QP.
    """

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        return self._solve(dualproj_weights, G, inputs)
