"""Reference passes over the task gradients: the Gram matrix and the weighted combination.

For task gradients g_1..g_T (the rows of J, D elements each):

* ``gram``:    G = J Jᵀ, G_ab = ⟨g_a, g_b⟩        (docs/design.md, "Gram space")
* ``combine``: g = Σ_t α_t g_t = αᵀ J             (Liu et al. 2021, eq. 2)

Both read J once, in chunks of columns. A chunk of the T rows is converted to the accumulation
dtype (float32, or float64 for float64 gradients) in a small reusable buffer when the rows are
separate tensors or of a lower precision, so no T×D temporary is ever made. Within a chunk one GEMM
(or GEMV) does the work; partial Gram matrices are summed in float64 across chunks, so the
rounding error does not grow with D, and the order of the reduction is fixed (deterministic).
When T is large only the upper-triangle blocks of G are computed (G is symmetric).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtl_fast._validation import (
    GradsLike,
    TaskRows,
    as_task_rows,
    check_out,
    check_weights,
    nonfinite_task_message,
)

#: The conversion buffer holds T × (D / CHUNK_FRACTION) elements: at most 1/16 of the bytes of J
#: (1/32 of the elements when 16-bit gradients are widened to fp32), so the extra memory of a step
#: stays far below the T·D·bytes the gradients themselves occupy.
CHUNK_FRACTION = 16
#: Minimum columns per chunk (keeps GEMMs efficient and the Python loop short for small D).
MIN_CHUNK = 16384
#: Up to this T the Gram matrix is one batched GEMM over blocks of columns: fp32 products summed
#: over ``fine_block(T)`` columns only, float64 across blocks (as the Triton kernel does). Measured
#: on MKL (2-core EPYC): as fast as one plain GEMM of J Jᵀ up to T = 128 and ~100× more accurate.
FINE_MAX_T = 128
#: Smallest column block of the fine Gram; it grows with T so that the fp32 partial products
#: (D / block · T² numbers) stay within 1/16 of the elements of J.
FINE_BLOCK = 1024
#: The fp32 partial products of one batched GEMM of the fine Gram hold at most this many
#: numbers (4 MiB): a bounded temporary, and measured no slower than one batched GEMM over all
#: of J (which made D / block · T² numbers: 0.19·T·D at T = 128).
FINE_GROUP_ELEMS = 1 << 20
#: Beyond FINE_MAX_T the work is compute-bound and only the upper-triangle blocks of G are
#: computed (rows of T / SYM_SPLIT, at least SYM_MIN_ROWS): measured 1.3–1.6× faster than a full
#: GEMM at T = 256–512, but slower below T ≈ 128, where MKL's single GEMM is more efficient.
SYM_SPLIT = 4
SYM_MIN_ROWS = 64


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 gradients, float32 otherwise (bf16/fp16/fp32 accumulate in fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fine_block(num_tasks: int) -> int:
    """Columns summed in fp32 by the fine Gram: FINE_BLOCK, doubled until ≥ 16·T."""
    block = FINE_BLOCK
    while block < 16 * num_tasks:
        block *= 2
    return block


def _chunk_size(numel: int, widen: int, align: int) -> int:
    """Columns per chunk: D / (CHUNK_FRACTION·widen), at least MIN_CHUNK, a multiple of ``align``
    (so only the last chunk has a partial fine block)."""
    parts = CHUNK_FRACTION * widen
    step = max(MIN_CHUNK, -(-numel // parts))
    step = -(-step // align) * align
    return min(numel, step)


def _column_chunks(
    rows: TaskRows,
    *,
    align: int = FINE_BLOCK,
    whole: bool = False,
    select: Tensor | None = None,
):
    """Yield (start, stop, X) with X the [T, stop-start] block of J in the accumulation dtype.

    X is a view of the caller's stacked tensor when it already has the accumulation dtype (the
    whole of J in one piece when ``whole``); otherwise the rows' slices are written into one
    reusable buffer (T × chunk elements). ``select`` (int64 row indices on the rows' device)
    restricts X to those rows, in that order: the other rows are never read.
    """
    acc = accumulation_dtype(rows.dtype)
    T = rows.num_tasks if select is None else select.numel()
    D = rows.numel
    stacked = rows.stacked
    direct = stacked is not None and stacked.dtype == acc and select is None
    if direct and whole:
        yield 0, D, stacked
        return
    widen = max(1, torch.finfo(acc).bits // torch.finfo(rows.dtype).bits)
    step = _chunk_size(D, widen, align)
    buf = None if direct else torch.empty((T, step), dtype=acc, device=rows.device)
    sources: Sequence[Tensor] = ()
    if stacked is None:
        sources = rows.rows if select is None else [rows.rows[i] for i in select.tolist()]
    for start in range(0, D, step):
        stop = min(start + step, D)
        if direct:
            assert stacked is not None  # direct reads need the caller's stacked tensor
            yield start, stop, stacked[:, start:stop]
            continue
        assert buf is not None
        block = buf[:, : stop - start]
        if stacked is not None:
            part = stacked[:, start:stop]
            if select is None:
                block.copy_(part)  # one widening copy
            elif part.dtype == acc:
                torch.index_select(part, 0, select, out=block)
            else:
                block.copy_(part.index_select(0, select))
        elif rows.dtype == acc:
            torch.stack([row[start:stop] for row in sources], out=block)
        else:
            for t, row in enumerate(sources):
                block[t].copy_(row[start:stop])
        yield start, stop, block


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


def _gram_rows(rows: TaskRows) -> Tensor:
    """Float64 Gram matrix of validated rows (see FINE_MAX_T and SYM_SPLIT for the two paths)."""
    T = rows.num_tasks
    G = torch.zeros((T, T), dtype=torch.float64, device=rows.device)
    if T <= FINE_MAX_T:
        block = fine_block(T)
        for _, _, X in _column_chunks(rows, align=block, whole=True):
            G += _fine_gram(X, block)
        # Exactly symmetric: (a + b) / 2 rounds the same both ways.
        return (G + G.T) * 0.5
    step = max(SYM_MIN_ROWS, -(-T // SYM_SPLIT))
    for _, _, X in _column_chunks(rows):
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
    G = _gram_rows(rows)
    if check_finite:
        raise_if_nonfinite(G)
    return G.to(accumulation_dtype(rows.dtype))


def combine(grads: GradsLike, weights: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Weighted combination g = Σ_t α_t g_t (Liu et al. 2021 eq. 2), in the gradients' dtype.

    Args:
        grads: as for :func:`gram`.
        weights: α, a floating tensor [T] on the gradients' device (read on the device: no sync).
        out: optional tensor of one gradient's shape to accumulate into (``out += g``), e.g. a
            parameter's ``.grad``; returned.

    The sum is accumulated in fp32 (fp64 for fp64 gradients) and cast once at the end. Tasks
    with weight exactly 0 are skipped (their gradient may be non-finite).
    """
    rows = as_task_rows(grads)
    weights = check_weights(weights, rows.num_tasks, rows.device)
    if out is not None:
        check_out(out, rows.shape, rows.dtype, rows.device)
    return _combine_rows(rows, weights, out)


def _combine_rows(rows: TaskRows, weights: Tensor, out: Tensor | None) -> Tensor:
    """Σ α_t g_t over validated rows (see :func:`combine`).

    Each chunk's GEMV writes straight into the result when it has the accumulation dtype;
    otherwise (16-bit gradients, or ``out=``) through a chunk-sized fp32 buffer, so no
    D-element temporary is made besides the result itself.
    """
    acc = accumulation_dtype(rows.dtype)
    w = weights.to(acc)
    if out is not None and out.is_contiguous():
        flat, accumulate = out.view(-1), True
    else:  # a non-contiguous out receives the fp32 sum at the end
        dtype = rows.dtype if out is None else acc
        flat, accumulate = torch.empty(rows.numel, dtype=dtype, device=rows.device), False
    direct = not accumulate and flat.dtype == acc
    buf: list[Tensor] = []

    def emit(start: int, stop: int, X: Tensor, w: Tensor) -> None:
        if direct:
            torch.mv(X.T, w, out=flat[start:stop])
            return
        if not buf:
            buf.append(torch.empty(stop - start, dtype=acc, device=rows.device))
        part = torch.mv(X.T, w, out=buf[0][: stop - start])
        if accumulate:
            flat[start:stop].add_(part)
        else:
            flat[start:stop].copy_(part)

    # Tasks with weight 0 are skipped, not multiplied: a non-finite gradient of an inactive
    # (absent or flagged) task must not turn the sum into NaN.
    zero = w == 0
    if rows.device.type == "cpu":
        # On the CPU the test is free: with no zero weight, a stacked J is read by one GEMV;
        # otherwise only the rows of the kept tasks are read (MGDA's weights are often sparse).
        select = (~zero).nonzero().flatten() if bool(zero.any()) else None
        if select is not None and select.numel() == 0:
            if not accumulate:
                flat.zero_()
        else:
            if select is not None:
                w = w.index_select(0, select)
            whole = select is None and direct
            for start, stop, X in _column_chunks(rows, whole=whole, select=select):
                emit(start, stop, X, w)
    else:
        # On a device, a mask (no host sync), chunk by chunk (no T×D copy).
        for start, stop, X in _column_chunks(rows):
            emit(start, stop, torch.where(zero[:, None], 0.0, X), w)
    if out is None:
        return flat.view(rows.shape)
    if not accumulate:
        out.add_(flat.view(rows.shape))
    return out
