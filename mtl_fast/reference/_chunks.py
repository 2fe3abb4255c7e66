"""Reading the task gradients J in column chunks, in the accumulation dtype (shared by the
reference Gram matrix, :mod:`mtl_fast.reference.gram`, and combination,
:mod:`mtl_fast.reference.combine`).

A chunk of the T rows is converted to the accumulation dtype (float32, or float64 for float64
gradients) in a small reusable buffer when the rows are separate tensors or of a lower precision,
so no T×D temporary is ever made; otherwise it is a view of the caller's stacked tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Sequence

import torch
from torch import Tensor

from mtl_fast._validation import TaskRows

#: The conversion buffer holds T × (D / CHUNK_FRACTION) elements: at most 1/16 of the bytes of J
#: (1/32 of the elements when 16-bit gradients are widened to fp32), so the extra memory of a step
#: stays far below the T·D·bytes the gradients themselves occupy.
CHUNK_FRACTION = 16
#: Minimum columns per chunk (keeps GEMMs efficient and the Python loop short for small D).
MIN_CHUNK = 16384
#: Columns per chunk are a multiple of this (the Gram's smallest fine block,
#: :data:`mtl_fast.reference.gram.FINE_BLOCK`), so only the last chunk has a partial block.
CHUNK_ALIGN = 1024


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 gradients, float32 otherwise (bf16/fp16/fp32 accumulate in fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_size(numel: int, widen: int, align: int) -> int:
    """Columns per chunk: D / (CHUNK_FRACTION·widen), at least MIN_CHUNK, a multiple of ``align``
    (so only the last chunk has a partial fine block)."""
    parts = CHUNK_FRACTION * widen
    step = max(MIN_CHUNK, -(-numel // parts))
    step = -(-step // align) * align
    return min(numel, step)


def column_chunks(
    rows: TaskRows,
    *,
    align: int = CHUNK_ALIGN,
    whole: bool = False,
    select: Tensor | None = None,
) -> Iterator[tuple[int, int, Tensor]]:
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
        assert stacked is not None  # direct reads need the caller's stacked tensor
        yield 0, D, stacked
        return
    widen = max(1, torch.finfo(acc).bits // torch.finfo(rows.dtype).bits)
    step = chunk_size(D, widen, align)
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
