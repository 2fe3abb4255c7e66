"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
CVPR 2023), in Gram space.

The gradient matrix J = [g_1; …; g_T] is replaced by an aligned one, J̃ = Bᵀ J, whose rows are
orthogonal with equal norms — the condition number of the aligned system is 1 — and which is the
closest such matrix to J (an orthogonal Procrustes problem, their eq. 8–10). From the
eigen-decomposition of the Gram matrix (their Algorithm 1):

    G = J Jᵀ = V Λ Vᵀ,     λ_1 ≥ … ≥ λ_R > tol,     tol = λ_1 · T · eps,                (1)
    B = σ_R V_R Λ_R^{-1/2} V_Rᵀ,     σ_R = sqrt(λ_R),                                     (2)
    update = J̃ᵀ w = Jᵀ B w,     i.e.  α = B w,                                           (3)

with w the task preference (default the mean, w_t = 1/T). Eigenvalues below tol (rank
deficiency, rounding noise) are dropped: V_R, Λ_R keep the R retained ones, and σ_R is the
smallest retained singular value of J, so the aligned rows have norm σ_R: BᵀGB = σ_R² Π_R,
Π_R the projector onto the retained eigenvectors. eps is the machine epsilon of G's dtype (the
original code used float32's, torchjd uses the Gram matrix's dtype: the two agree for a float32
Gram matrix, which is what ``split`` produces from float32 gradients).

``scale_mode`` (the original code's and torchjd's options) replaces σ_R² in (2) by λ_R
(``"min"``, the paper's), the median of the retained eigenvalues (``"median"``, the lower
median as ``torch.median``) or their mean (``"rmse"``).

Scale behaviour: scaling every gradient by k leaves B unchanged (σ_R and Λ_R^{1/2} scale
together), so the update scales by k; scaling one gradient changes the alignment.

Eigen-decomposition: ``torch.linalg.eigh`` on the CPU; on other devices a sync-free Jacobi
eigensolver (:func:`mtl_fast.methods._eigh.jacobi_eigh`), because ``eigh`` reads its error flag
on the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._validation import check_gram
from mtl_fast.methods._eigh import EIGENSOLVERS, sym_eigh
from mtl_fast.methods.upgrad import PreferenceVector, PrefLike, preference
from mtl_fast.reference import active_tasks
from mtl_fast.weighting import StepInputs, Weighting

#: The values of ``AlignedMTL(scale_mode=)``.
SCALE_MODES = ("min", "median", "rmse")


def balance_transformation(
    G: Tensor,
    *,
    active: Tensor | None = None,
    scale_mode: str = "min",
    rank_eps: float | None = None,
    eigensolver: str = "auto",
    sweeps: int | None = None,
) -> Tensor:
    """B [T, T] (float64) of eq. (2) of :mod:`mtl_fast.methods.aligned_mtl`.

    Args:
        G: [T, T] Gram matrix.
        active: bool [T], the tasks to include (default: finite, non-zero diagonal). Inactive
            tasks have zero rows and columns in B and do not count in T of (1).
        scale_mode: ``"min"`` (paper), ``"median"`` or ``"rmse"``.
        rank_eps: eps of (1) (default: machine epsilon of G's dtype).
        eigensolver: ``"auto"`` (``eigh`` on the CPU, Jacobi elsewhere), ``"eigh"``,
            ``"jacobi"``.
        sweeps: Jacobi sweeps (default :func:`mtl_fast.methods._eigh.default_sweeps`).

    With no eigenvalue above tol (every task inactive) B is the identity, as in torchjd.
    """
    check_gram(G)
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}; got {scale_mode!r}")
    T = G.shape[0]
    G64 = G.to(torch.float64)
    if active is None:
        active = active_tasks(G64)
    eps = torch.finfo(G.dtype).eps if rank_eps is None else float(rank_eps)
    pair = active[:, None] & active[None, :]
    M = torch.where(pair, torch.nan_to_num(G64), 0.0)
    M = (M + M.T) / 2  # a Gram matrix accumulated in fp32 may be asymmetric by rounding
    lam, V = sym_eigh(M, eigensolver, sweeps)  # ascending
    k = active.sum().to(torch.float64)
    tol = lam[-1] * k * eps
    keep = lam > tol
    rank = keep.sum()
    safe = torch.where(keep, lam, 1.0)
    inv_sqrt = torch.where(keep, torch.rsqrt(safe), 0.0)
    if scale_mode == "min":
        scale = torch.where(keep, lam, torch.inf).min()
    elif scale_mode == "rmse":
        scale = torch.where(keep, lam, 0.0).sum() / rank.clamp_min(1)
    else:  # lower median of the retained (the last `rank` in ascending order)
        idx = (T - rank + (rank - 1).clamp_min(0) // 2).clamp(0, T - 1)
        scale = lam.gather(0, idx.view(1))[0]
    scale = torch.where(rank > 0, scale, 1.0).clamp_min(0.0)
    B = scale.sqrt() * (V * inv_sqrt) @ V.T
    eye = torch.eye(T, dtype=torch.float64, device=G.device)
    return torch.where(rank > 0, B, eye)


def aligned_mtl_weights(
    G: Tensor,
    pref: Tensor | None = None,
    *,
    active: Tensor | None = None,
    scale_mode: str = "min",
    rank_eps: float | None = None,
    eigensolver: str = "auto",
    sweeps: int | None = None,
) -> Tensor:
    """Aligned-MTL weights α = B w (float64 [T], 0 for inactive tasks), eq. (3).

    ``pref``: w [T] (default the mean over the active tasks). See
    :func:`balance_transformation` for the other arguments.
    """
    check_gram(G)
    if active is None:
        active = active_tasks(G.to(torch.float64))
    B = balance_transformation(
        G,
        active=active,
        scale_mode=scale_mode,
        rank_eps=rank_eps,
        eigensolver=eigensolver,
        sweeps=sweeps,
    )
    w = preference(pref, active)
    return torch.where(active, B @ w, 0.0)


class AlignedMTL(PreferenceVector, Weighting):
    """Aligned-MTL: align the task gradients to an orthogonal, equal-norm system, then combine.

    Senushkin et al. (2023), Algorithm 1 (see :mod:`mtl_fast.methods.aligned_mtl`):

        G = V Λ Vᵀ,   B = sqrt(λ_R) V_R Λ_R^{-1/2} V_Rᵀ,   α = B w,

    keeping the eigenvalues above λ_max · T · eps (λ_R the smallest kept). The aligned
    gradients J̃ = BᵀJ are orthogonal with norm sqrt(λ_R) each; the update is Σ_t w_t g̃_t.

    Args:
        num_tasks: T (optional).
        pref_vector: w [T] (default: 1/T over the present tasks, as torchjd; LibMTL sums, i.e.
            w = 1, a factor T larger). Absent tasks get w_t = 0.
        scale_mode: ``"min"`` (default, the paper), ``"median"`` or ``"rmse"`` (mean eigenvalue).
        rank_eps: eps of the rank threshold (default: machine epsilon of G's dtype).
        eigensolver: ``"auto"`` (default: ``torch.linalg.eigh`` on the CPU, the sync-free Jacobi
            solver on other devices), ``"eigh"`` or ``"jacobi"``.
        jacobi_sweeps: sweeps of the Jacobi solver (default: by T, see
            :func:`mtl_fast.methods._eigh.default_sweeps`).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: α [T] with g = Σ α_t g_t (0 for absent tasks).

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, a T×T symmetric
    eigen-decomposition (on GPUs: Jacobi sweeps, about 15·T·sweeps small kernels).
    """

    gradient_based = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        pref_vector: PrefLike = None,
        scale_mode: str = "min",
        rank_eps: float | None = None,
        eigensolver: str = "auto",
        jacobi_sweeps: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {SCALE_MODES}; got {scale_mode!r}")
        if eigensolver not in EIGENSOLVERS:
            raise ValueError(f"eigensolver must be one of {EIGENSOLVERS}; got {eigensolver!r}")
        if rank_eps is not None and not rank_eps >= 0:
            raise ValueError(f"rank_eps must be non-negative; got {rank_eps!r}")
        if jacobi_sweeps is not None and (not isinstance(jacobi_sweeps, int) or jacobi_sweeps < 1):
            raise ValueError(f"jacobi_sweeps must be a positive int; got {jacobi_sweeps!r}")
        self._init_pref(pref_vector, num_tasks)
        self.scale_mode = scale_mode
        self.rank_eps = rank_eps
        self.eigensolver = eigensolver
        self.jacobi_sweeps = jacobi_sweeps

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        active = active_tasks(G.to(torch.float64)) & inputs.present.to(G.device)
        return aligned_mtl_weights(
            G,
            self._pref(G.shape[0], G.device),
            active=active,
            scale_mode=self.scale_mode,
            rank_eps=self.rank_eps,
            eigensolver=self.eigensolver,
            sweeps=self.jacobi_sweeps,
        )

    def extra_repr(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return (
            f"num_tasks={self.num_tasks}, pref_vector={pref}, scale_mode={self.scale_mode!r}, "
            f"eigensolver={self.eigensolver!r}"
        )
