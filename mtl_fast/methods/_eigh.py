"""A symmetric eigensolver for small T×T matrices that never synchronises with the host.

``torch.linalg.eigh`` checks LAPACK/cuSOLVER's error code on the host: on a CUDA device every
call waits for the GPU (a host synchronisation in the training step). :func:`jacobi_eigh`
computes the same decomposition with a fixed sequence of tensor operations (no data-dependent
control flow, no error check), so it runs asynchronously and can be captured in a CUDA graph.

Algorithm: the parallel cyclic Jacobi method (Brent & Luk 1985). One *rotation* on the pair
(p, q) replaces A by Rᵀ A R, R the identity except R_pp = R_qq = c, R_pq = s, R_qp = −s, with

    d = a_qq − a_pp,   t = 2 a_pq sgn(d) / (|d| + sqrt(d² + 4 a_pq²)),
    c = 1 / sqrt(1 + t²),   s = t c                          (Golub & Van Loan, Alg. 8.5.1)

(t is the smaller root of t² + (d / a_pq) t − 1 = 0, so |θ| ≤ π/4), which zeroes a_pq. A
*sweep* visits every pair once; the round-robin ("circle") ordering splits the T(T−1)/2 pairs
into T−1 rounds of T/2 disjoint pairs, and the rotations of one round commute, so each round is
one T×T orthogonal matrix applied with two matrix products. The off-diagonal mass converges to 0
quadratically once it is small; :data:`JACOBI_SWEEPS` fixed sweeps reach float64 rounding for
the T of multi-task learning (the test suite checks this against ``torch.linalg.eigh``). An odd T
is padded with one decoupled zero row and column, which no rotation touches (its a_pq are 0).

Jacobi is also accurate in the sense that matters for a Gram matrix: eigenvalues are obtained
with an absolute error of a few ulps of ‖A‖, like ``eigh``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

#: Sweeps of :func:`jacobi_eigh` at most 16×16 (sweeps grow ~log T: see :func:`default_sweeps`).
JACOBI_SWEEPS = 8

EIGENSOLVERS = ("auto", "eigh", "jacobi")


def default_sweeps(n: int) -> int:
    """Sweeps used by :func:`jacobi_eigh` for an n×n matrix: 8 up to n = 16, one more per
    doubling (quadratic convergence needs ~log n sweeps to reach the asymptotic regime)."""
    extra = max(0, (max(n, 1) - 1).bit_length() - 4)
    return JACOBI_SWEEPS + extra


@functools.lru_cache(maxsize=64)
def _round_robin(n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(p, q) index lists of the n−1 rounds of the circle method, n even, flattened round by
    round (n/2 disjoint pairs per round, every pair exactly once over the rounds)."""
    others = list(range(1, n))
    ps: list[int] = []
    qs: list[int] = []
    for _ in range(n - 1):
        players = [0, *others]
        for i in range(n // 2):
            a, b = players[i], players[n - 1 - i]
            ps.append(min(a, b))
            qs.append(max(a, b))
        others = others[-1:] + others[:-1]
    return tuple(ps), tuple(qs)


def jacobi_eigh(A: Tensor, sweeps: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of a symmetric matrix A [n, n] by parallel cyclic Jacobi sweeps.

    Args:
        A: symmetric [n, n] (only the symmetric part is used: (A + Aᵀ)/2).
        sweeps: number of sweeps (default :func:`default_sweeps`).

    Returns:
        (eigenvalues [n] in ascending order, eigenvectors [n, n] as columns), in A's dtype, like
        ``torch.linalg.eigh``. Eigenvectors are determined up to sign (and up to a rotation
        within a repeated eigenvalue's eigenspace).
    """
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"jacobi_eigh expects a square matrix; got shape {tuple(A.shape)}")
    n = A.shape[0]
    if sweeps is None:
        sweeps = default_sweeps(n)
    dtype, device = A.dtype, A.device
    A = (A + A.T) / 2
    m = n + (n % 2)
    if m != n:  # pad to an even size with a decoupled zero row/column
        A = torch.nn.functional.pad(A, (0, 1, 0, 1))
    V = torch.eye(m, dtype=dtype, device=device)
    if m < 2:
        return A.diagonal()[:n].clone(), V[:n, :n]
    ps, qs = _round_robin(m)
    half = m // 2
    p_all = torch.tensor(ps, device=device).view(m - 1, half)
    q_all = torch.tensor(qs, device=device).view(m - 1, half)
    # Per round: flat positions of (a_pp, a_qq, a_pq) and of R's non-zeros (p,p), (q,q), (p,q),
    # (q,p), whose values are cos of θ, θ, θ − π/2, θ + π/2 = (c, c, s, −s).
    diag_pos = torch.stack([p_all * m + p_all, q_all * m + q_all, p_all * m + q_all], 1)
    r_pos = torch.cat([diag_pos, q_all[:, None] * m + p_all[:, None]], 1).view(m - 1, 4 * half)
    shift = torch.tensor([0.0, 0.0, -math.pi / 2, math.pi / 2], dtype=dtype, device=device)
    shift = shift[:, None].expand(4, half)
    for _ in range(sweeps):
        for r in range(m - 1):
            a = A.reshape(-1)[diag_pos[r]]  # [3, half]: a_pp, a_qq, a_pq
            # θ = ½ atan2(2 a_pq, a_qq − a_pp) zeroes a_pq and leaves a_pp ≤ a_qq.
            # Pairs with a_pq = 0 exactly (the padding, absent tasks) are left untouched.
            theta = torch.where(a[2] == 0, 0.0, torch.atan2(2 * a[2], a[1] - a[0]))
            vals = torch.cos(torch.addcmul(shift, theta[None], torch.tensor(0.5, dtype=dtype)))
            R = torch.zeros(m * m, dtype=dtype, device=device)
            R = R.index_put_((r_pos[r],), vals.reshape(-1)).view(m, m)
            A = R.T @ (A @ R)
            V = V @ R
    evals = A.diagonal()[:n]
    order = torch.argsort(evals)
    return evals[order], V[:n, :n][:, order]


def sym_eigh(A: Tensor, method: str = "auto", sweeps: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of a small symmetric matrix without a host synchronisation.

    ``method="auto"`` uses ``torch.linalg.eigh`` on the CPU (where its error check reads a host
    value: free) and :func:`jacobi_eigh` on any other device; ``"eigh"`` / ``"jacobi"`` force
    one. Returns (ascending eigenvalues, eigenvectors as columns).
    """
    if method not in EIGENSOLVERS:
        raise ValueError(f"eigensolver must be one of {EIGENSOLVERS}; got {method!r}")
    if method == "eigh" or (method == "auto" and A.device.type == "cpu"):
        return torch.linalg.eigh(A)
    return jacobi_eigh(A, sweeps)
