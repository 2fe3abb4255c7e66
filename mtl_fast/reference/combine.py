"""Reference weighted combination of the task gradients: g = Σ_t α_t g_t = αᵀ J (Liu et al.
2021, eq. 2), in the gradients' dtype.

J is read once, in chunks of columns (:mod:`mtl_fast.reference._chunks`: no T×D temporary), one
GEMV per chunk accumulated in fp32 (fp64 for fp64 gradients). Mirrors: ``kernels/combine.py``
(the Triton kernel), ``tests/kernels/test_combine.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._validation import GradsLike, TaskRows, as_task_rows, check_out, check_weights
from mtl_fast.reference._chunks import accumulation_dtype, column_chunks


def combine(grads: GradsLike, weights: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Weighted combination g = Σ_t α_t g_t (Liu et al. 2021 eq. 2), in the gradients' dtype.

    Args:
        grads: as for :func:`mtl_fast.reference.gram`.
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
    return combine_rows(rows, weights, out)


def combine_rows(rows: TaskRows, weights: Tensor, out: Tensor | None) -> Tensor:
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
            for start, stop, X in column_chunks(rows, whole=whole, select=select):
                emit(start, stop, X, w)
    else:
        # On a device, a mask (no host sync), chunk by chunk (no T×D copy).
        for start, stop, X in column_chunks(rows):
            emit(start, stop, torch.where(zero[:, None], 0.0, X), w)
    if out is None:
        return flat.view(rows.shape)
    if not accumulate:
        out.add_(flat.view(rows.shape))
    return out
