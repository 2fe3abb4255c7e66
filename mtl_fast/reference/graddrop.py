r"""Reference GradDrop combination (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask
Models with Gradient Sign Dropout", NeurIPS 2020, Algorithm 1): the shared gradient keeps, at
every coordinate, only the task gradients of one randomly chosen sign.

For T task gradients g_t (D = B·F elements each, seen as [B, F] with B the batch dimension that
is summed over, or B = 1 for a per-element rule), weights α_t (h_t = α_t g_t; GradDrop itself
uses α_t = 1 for the tasks present), the activations A the gradients are taken at (optional),
uniform draws U [F] and leak parameters ℓ [T]:

    S_t[f] = Σ_b sgn(A[b, f]) h_t[b, f]              (the batch sums; S_t = sgn(A) h_t if B = 1)
    P[f]   = ½ (1 + Σ_t S_t[f] / (Σ_t |S_t[f]| + ε))   (the positive sign purity, in [0, 1])
    M_t[f] = [P[f] > U[f]] [S_t[f] > 0] + [P[f] < U[f]] [S_t[f] < 0]
    out[b, f] = Σ_t (ℓ_t + (1 − ℓ_t) M_t[f]) h_t[b, f]

(ε = :data:`mtl_fast._solve_constants.GRADDROP_EPS`, sgn(0) = 0.) Each coordinate keeps the
positive parts with probability P, the negative ones otherwise: a coordinate where every task
agrees keeps them all, one where the signs conflict keeps the side with the larger mass more
often. Tasks with α_t = 0 are skipped (their rows are never read: a non-finite gradient of an
inactive task does not poison the result).

Everything is accumulated in float32 (float64 for float64 gradients), task by task in the order
t = 0 … T−1; P is formed with an IEEE division, so the masks of the Triton kernel and of the
native CPU implementation agree with this one exactly when they are given the same S (the
per-element rule, or the same batch sums). Mirrors: ``kernels/graddrop.py``, ``csrc/graddrop.h``
(``mtl_fast._C.graddrop_sums`` / ``graddrop_combine``), ``tests/kernels/test_graddrop.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast import _solve_constants as SC
from mtl_fast._validation import GradsLike, TaskRows, as_task_rows, check_out, check_weights
from mtl_fast.reference._chunks import accumulation_dtype

__all__ = ["graddrop", "graddrop_combine_rows", "graddrop_sums", "sign"]


def sign(a: Tensor) -> Tensor:
    """sgn(a) as −1 / 0 / +1 in ``a``'s dtype (NaN → 0)."""
    return (a > 0).to(a.dtype) - (a < 0).to(a.dtype)


def _batch_view(t: Tensor, batch: int) -> Tensor:
    return t.reshape(batch, -1)


def graddrop_sums(
    rows: TaskRows, weights: Tensor, batch: int, activations: Tensor | None = None
) -> Tensor:
    """S [T, F] (float32; float64 for float64 rows): S_t = α_t Σ_b sgn(A[b]) g_t[b] with the
    rows seen as [``batch``, F]; 0 for tasks with α_t = 0 (not read)."""
    acc = accumulation_dtype(rows.dtype)
    T, D = rows.num_tasks, rows.numel
    if batch < 1 or D % batch:
        raise ValueError(f"batch must divide the {D} elements of a task gradient; got {batch}")
    F = D // batch
    w = weights.to(acc)
    sgn = None if activations is None else _batch_view(sign(activations.to(acc)), batch)
    out = torch.zeros((T, F), dtype=acc, device=rows.device)
    for t, g in enumerate(rows.rows):
        x = _batch_view(g, batch).to(acc)
        if sgn is not None:
            x = x * sgn
        s = w[t] * x.sum(dim=0)
        out[t] = torch.where(w[t] != 0, s, 0.0)
    return out


def _purity(num: Tensor, den: Tensor) -> Tensor:
    return 0.5 * (1.0 + num / (den + SC.GRADDROP_EPS))


def _kept(P: Tensor, U: Tensor, s: Tensor) -> Tensor:
    return ((P > U) & (s > 0)) | ((P < U) & (s < 0))


def graddrop_combine_rows(
    rows: TaskRows,
    weights: Tensor,
    uniform: Tensor,
    leak: Tensor,
    *,
    sums: Tensor | None = None,
    activations: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Σ_t (ℓ_t + (1 − ℓ_t) M_t) α_t g_t in the rows' dtype (``out +=`` when given; returned).

    ``sums``: S [T, F] from :func:`graddrop_sums` (the batch rule; ``uniform`` and the masks
    are [F], shared by the B rows of the batch), or ``None``: the per-element rule, S_t =
    sgn(A) α_t g_t computed here (``uniform`` [D]). ``activations`` are read only then.
    """
    acc = accumulation_dtype(rows.dtype)
    T, D = rows.num_tasks, rows.numel
    w = weights.to(acc)
    lk = leak.to(acc)
    U = uniform.to(acc)
    F = D if sums is None else sums.shape[1]
    sgn = None
    if sums is None and activations is not None:
        sgn = sign(activations.reshape(-1).to(acc))

    def s_of(t: int) -> Tensor:
        # S_t: given (batch rule) or sgn(A) α_t g_t (per element); 0 for a skipped task, whose
        # row may be non-finite (torch.where does not propagate the unselected NaN).
        if sums is not None:
            s = sums[t].to(acc)
        else:
            s = w[t] * rows.rows[t].to(acc)
            s = s if sgn is None else sgn * s
        return torch.where(w[t] != 0, s, 0.0)

    num = torch.zeros(F, dtype=acc, device=rows.device)
    den = torch.zeros(F, dtype=acc, device=rows.device)
    for t in range(T):
        s = s_of(t)
        num = num + s
        den = den + s.abs()
    P = _purity(num, den)
    total = torch.zeros((D // F, F), dtype=acc, device=rows.device)
    for t in range(T):
        m = lk[t] + (1.0 - lk[t]) * _kept(P, U, s_of(t)).to(acc)
        term = (w[t] * m)[None, :] * _batch_view(rows.rows[t], D // F).to(acc)
        total = total + torch.where(w[t] != 0, term, 0.0)
    result = total.reshape(rows.shape)
    if out is None:
        return result.to(rows.dtype)
    return out.add_(result)  # in the wider dtype, rounded once to out's


def graddrop(
    grads: GradsLike,
    uniform: Tensor,
    *,
    weights: Tensor | None = None,
    activations: Tensor | None = None,
    batch: bool = True,
    leak: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """GradDrop's combined gradient of T task gradients (module docstring).

    Args:
        grads: a tensor [T, ...] or a sequence of T tensors of one shape.
        uniform: U, uniform draws in [0, 1): [F] with ``batch`` (F = the elements of a gradient
            past its first dimension), [D] without.
        weights: α [T] (default all 1).
        activations: A, the tensor the gradients are taken at (a gradient's shape), or ``None``
            (sgn(A) = 1).
        batch: sum over each gradient's first (batch) dimension before forming P, as the paper
            does for batch-separated activations; ``False``: the per-element rule.
        leak: ℓ [T] in [0, 1] (default 0: pure sign dropout; 1: the plain sum).
        out: accumulate into this tensor (``out += …``); returned.
    """
    rows = as_task_rows(grads)
    T = rows.num_tasks
    device = rows.device
    w = torch.ones(T, device=device) if weights is None else weights
    check_weights(w, T, device)
    lk = torch.zeros(T, device=device) if leak is None else leak
    check_weights(lk, T, device)
    if activations is not None and activations.shape != rows.shape:
        raise ValueError(
            f"activations have shape {tuple(activations.shape)}; the gradients' is "
            f"{tuple(rows.shape)}"
        )
    if out is not None:
        check_out(out, rows.shape, rows.dtype, device)
    B = rows.shape[0] if batch and len(rows.shape) > 0 else 1
    F = rows.numel // B
    want = F if batch else rows.numel
    if uniform.shape != (want,):
        raise ValueError(f"uniform must have shape ({want},); got {tuple(uniform.shape)}")
    sums = graddrop_sums(rows, w, B, activations) if batch else None
    return graddrop_combine_rows(rows, w, uniform, lk, sums=sums, activations=activations, out=out)
