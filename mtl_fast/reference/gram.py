"""Reference Gram matrix of the task gradients: G = J Jᵀ, G_ab = ⟨g_a, g_b⟩ (docs/design.md,
"Gram space"), for task gradients g_1..g_T (the rows of J, D elements each).

J is read once, in chunks of columns (:mod:`mtl_fast.reference._chunks`: no T×D temporary).
Within a chunk one GEMM does the work; partial Gram matrices are summed in float64 across chunks,
so the rounding error does not grow with D, and the order of the reduction is fixed
(deterministic). When T is large only the upper-triangle blocks of G are computed (G is
symmetric). Mirrors: ``kernels/gram.py`` (the Triton kernel), ``tests/kernels/test_gram.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._validation import GradsLike, TaskRows, as_task_rows, nonfinite_task_message
from mtl_fast.reference._chunks import CHUNK_ALIGN, accumulation_dtype, column_chunks

#: Up to this T the Gram matrix is one batched GEMM over blocks of columns: fp32 products summed
#: over ``fine_block(T)`` columns only, float64 across blocks (as the Triton kernel does). Measured
#: on MKL (2-core EPYC): as fast as one plain GEMM of J Jᵀ up to T = 128 and ~100× more accurate.
FINE_MAX_T = 128
#: Smallest column block of the fine Gram; it grows with T so that the fp32 partial products
#: (D / block · T² numbers) stay within 1/16 of the elements of J. Column chunks are aligned to it.
FINE_BLOCK = CHUNK_ALIGN
#: The fp32 partial products of one batched GEMM of the fine Gram hold at most this many
#: numbers (4 MiB): a bounded temporary, and measured no slower than one batched GEMM over all
#: of J (which made D / block · T² numbers: 0.19·T·D at T = 128).
FINE_GROUP_ELEMS = 1 << 20
#: Beyond FINE_MAX_T the work is compute-bound and only the upper-triangle blocks of G are
#: computed (rows of T / SYM_SPLIT, at least SYM_MIN_ROWS): measured 1.3–1.6× faster than a full
#: GEMM at T = 256–512, but slower below T ≈ 128, where MKL's single GEMM is more efficient.
SYM_SPLIT = 4
#: The least number of rows of a block of the upper-triangle product.
SYM_MIN_ROWS = 64


def fine_block(num_tasks: int) -> int:
    """Columns summed in fp32 by the fine Gram: FINE_BLOCK, doubled until ≥ 16·T."""
    block = FINE_BLOCK
    while block < 16 * num_tasks:
        block *= 2
    return block


def _fine_gram(X: Tensor, block: int) -> Tensor:
    """X Xᵀ in float64 from fp32 partial products over ``block`` columns (batched GEMMs over
    groups of blocks whose partial products hold at most FINE_GROUP_ELEMS numbers)."""
    T, n = X.shape
    nb = n // block
    G = torch.zeros((T, T), dtype=torch.float64, device=X.device)
    group = max(1, FINE_GROUP_ELEMS // (T * T))
    for b0 in range(0, nb, group):
        b1 = min(nb, b0 + group)
        blocks = X[:, b0 * block : b1 * block].reshape(T, b1 - b0, block).transpose(0, 1)
        G += torch.bmm(blocks, blocks.transpose(1, 2)).sum(0, dtype=torch.float64)
    if n > nb * block:
        rest = X[:, nb * block :]
        G += (rest @ rest.T).to(torch.float64)
    return G


def gram_rows(rows: TaskRows) -> Tensor:
    """Float64 Gram matrix of validated rows (see FINE_MAX_T and SYM_SPLIT for the two paths)."""
    T = rows.num_tasks
    G = torch.zeros((T, T), dtype=torch.float64, device=rows.device)
    if T <= FINE_MAX_T:
        block = fine_block(T)
        for _, _, X in column_chunks(rows, align=block, whole=True):
            G += _fine_gram(X, block)
        # Exactly symmetric: (a + b) / 2 rounds the same both ways.
        return (G + G.T) * 0.5
    step = max(SYM_MIN_ROWS, -(-T // SYM_SPLIT))
    for _, _, X in column_chunks(rows, align=FINE_BLOCK):
        for i in range(0, T, step):
            j = min(i + step, T)
            G[i:j, i:] += (X[i:j] @ X[i:].T).to(torch.float64)
    # Mirror the upper triangle: G is exactly symmetric whatever the GEMM's rounding.
    return torch.triu(G) + torch.triu(G, diagonal=1).T


def raise_if_nonfinite(G: Tensor, what: str = "gradient") -> None:
    """Raise ``ValueError`` naming the tasks whose Gram diagonal is NaN/Inf (syncs on CUDA).

    ``G_tt = ‖g_t‖²`` is NaN or Inf exactly when g_t holds a NaN/Inf (or its squared norm
    overflows), so checking the T diagonal entries is enough.
    """
    bad = ~torch.isfinite(G.diagonal())
    if bool(bad.any()):
        raise ValueError(nonfinite_task_message(bad.nonzero().flatten().tolist(), what))


def gram(grads: GradsLike, *, check_finite: bool = True) -> Tensor:
    """Gram matrix G = J Jᵀ of the task gradients (docs/design.md, "Gram space").

    Args:
        grads: a tensor [T, ...] or a sequence of T same-shaped tensors (fp32, bf16, fp16, fp64).
            Separate tensors are read in place; a non-contiguous one is copied (that task only).
        check_finite: raise ``ValueError`` naming the task when a gradient holds NaN/Inf.

    Returns:
        [T, T] float32 (float64 for float64 gradients) on the gradients' device; accumulated in
        fp32 within blocks of columns and in float64 across blocks, exactly symmetric.
    """
    rows = as_task_rows(grads)
    G = gram_rows(rows)
    if check_finite:
        raise_if_nonfinite(G)
    return G.to(accumulation_dtype(rows.dtype))
