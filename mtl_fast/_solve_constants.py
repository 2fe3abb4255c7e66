"""The constants of the Gram-space weight solves (IMTL-G, MGDA): one source for all three
implementations.

* the reference (:mod:`mtl_fast.reference.solve`) reads them from this module at call time;
* the Triton kernels (``kernels/solve.py``) pass them to the kernels as compile-time constants at
  each launch;
* the native CPU solvers (``csrc/solvers.h``, :mod:`mtl_fast._C`) hold no values of their own:
  every tolerance, iteration count and floor is a required keyword argument, filled from
  :func:`native_imtl_g_options` / :func:`native_mgda_options` by :mod:`mtl_fast.ops`.

``tests/test_solve_constants.py`` changes constants here and checks that the three
implementations follow. The numerics behind each value are in docs/design.md ("Numerics").
"""

from __future__ import annotations

import torch

# ---- the filtered pseudo-inverse (IMTL-G, unconstrained MGDA) --------------------------------

#: Shift ε of the filtered pseudo-inverse relative to sqrt(T) for a unit-diagonal T×T matrix, by
#: the precision of the Gram matrix it came from. Rounding noise in a Gram matrix accumulated in
#: fp32 is ~1e-7 per entry of C (eigenvalue noise ~1e-7·sqrt(T)); ε sits two orders of magnitude
#: above it, so directions at the noise level are cut and genuine ones (λ ≫ ε) are kept. The
#: dtype of G must reflect its precision: a Gram matrix accumulated in fp32 and then cast to
#: float64 should be passed as float32.
PINV_REL_EPS = {torch.float32: 1e-5, torch.float64: 1e-10}
#: Multiplier of ε when the first Cholesky factorisation fails (an indefinite, very noisy matrix).
PINV_FALLBACK_FACTOR = 100.0
#: Iterated-Tikhonov steps k: relative bias (ε/λ)^k on an eigenvalue λ ≫ ε.
PINV_STEPS = 3
#: Applications p of the range projection I − (ε(A+εI)⁻¹)^k: near-null directions (λ ≪ ε) are
#: suppressed like (λ/ε)^p.
PINV_PROJECTIONS = 4
#: Weights α are normalised by Σα unless |Σα| ≤ SUM_REL_TOL·Σ|α| (degenerate geometry), then by
#: Σ|α|.
SUM_REL_TOL = 1e-12

# ---- MGDA: Wolfe's minimum-norm-point algorithm, warm-started by APG -------------------------

#: Accelerated-projected-gradient iterations that warm-start Wolfe's algorithm in MGDA.
MGDA_APG_ITERS = 100
#: Power iterations estimating λ_max(G) for the APG step, and the safety factor on 2·λ_max.
MGDA_POWER_ITERS = 20
MGDA_LIPSCHITZ_SAFETY = 2.5
#: Warm-start entries below this fraction of the largest one are left out of the first corral.
MGDA_SUPPORT_REL = 1e-9
#: A corral coefficient at or below this is dropped in a minor cycle.
MGDA_DROP_TOL = 1e-15
#: Ridge (relative to the largest diagonal) of the affine minimiser's KKT system.
MGDA_RIDGE = 1e-14
#: Stopping tolerance of Wolfe's algorithm: Frank-Wolfe gap relative to the largest G_tt.
MGDA_TOL = 1e-14
#: Wolfe iterations after the warm start off the CPU for T > 64 (a fixed budget: no host sync).
MGDA_DEVICE_BUDGET = 16
#: The original code's Frank-Wolfe solver (``solver="frank_wolfe"``): iterations and stopping
#: tolerance on the L1 change of the weights (Sener & Koltun 2018's published settings).
MGDA_FW_ITERS = 250
MGDA_FW_TOL = 1e-5

# ---- shared ---------------------------------------------------------------------------------

#: Smallest divisor of a norm, a sum or a step ratio in the MGDA iterations (a float64 number far
#: below any meaningful value: it only turns 0/0 into a finite no-op).
DIVISION_FLOOR = 1e-300


def mgda_budget(num_tasks: int) -> int:
    """Iteration cap of Wolfe's algorithm (each task enters and leaves the corral a few times
    at most in practice); the loop exits earlier on convergence."""
    return 5 * num_tasks + 20


def pinv_rel_eps(dtype: torch.dtype) -> float:
    """The relative shift of the filtered pseudo-inverse for a Gram matrix of this dtype
    (fp16/bf16 Gram matrices do not occur: Gram matrices are accumulated in fp32 at least)."""
    return PINV_REL_EPS[torch.float64 if dtype == torch.float64 else torch.float32]


def native_imtl_g_options(dtype: torch.dtype) -> dict[str, float | int]:
    """The keyword arguments of ``mtl_fast._C.imtl_g_solve`` for a Gram matrix of ``dtype``
    (all required there: the native solver has no values of its own)."""
    return {
        "rel_eps": pinv_rel_eps(dtype),
        "fallback_factor": PINV_FALLBACK_FACTOR,
        "steps": PINV_STEPS,
        "projections": PINV_PROJECTIONS,
        "sum_rel_tol": SUM_REL_TOL,
    }


def native_mgda_options(num_tasks: int) -> dict[str, float | int]:
    """The keyword arguments of ``mtl_fast._C.mgda_solve`` for T = ``num_tasks`` (the active-set
    solver with the CPU's budget, :func:`mgda_budget`)."""
    return {
        "apg_iters": MGDA_APG_ITERS,
        "power_iters": MGDA_POWER_ITERS,
        "lipschitz_safety": MGDA_LIPSCHITZ_SAFETY,
        "support_rel": MGDA_SUPPORT_REL,
        "drop_tol": MGDA_DROP_TOL,
        "ridge": MGDA_RIDGE,
        "tol": MGDA_TOL,
        "division_floor": DIVISION_FLOOR,
        "max_iter": mgda_budget(num_tasks),
    }


# ---- GradDrop's sign purity (Chen et al. 2020) ------------------------------------------------

#: ε of the sign purity P = ½ (1 + Σ_t S_t / (Σ_t |S_t| + ε)): only turns 0/0 (no gradient at a
#: coordinate) into P = ½. The reference, the Triton kernel and mtl_fast._C read it from here.
GRADDROP_EPS = 1e-7
