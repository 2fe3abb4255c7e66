"""Triton combine kernel: ``g = Σ_t α_t g_t`` over the T task rows, without stacking them.

Grid: one program per ``BLOCK_D`` columns. Each program loops over the tasks, reading the row
address (pointer table, or ``base + t · row_stride`` for a stacked input, see
:mod:`mtl_fast.kernels._pointers`) and the weight ``α_t`` from device memory — the weights are
never read on the host, so there is no synchronisation — and accumulates ``α_t · g_t`` in fp32
(``α_t`` is rounded to fp32 first, as the reference does). The sum is cast once to the output
dtype. Full column blocks are loaded without a column mask (vector loads); only the last,
partial block is masked.

A task whose weight is exactly zero is skipped: its row is not even read (the load is masked
off), so a NaN/Inf gradient with weight 0 — a task the solve declared inactive because its Gram
diagonal was not finite — does not poison the sum (``0 · NaN`` would be NaN). A NaN weight is not
zero and propagates.

``out=`` accumulates: ``out += Σ_t α_t g_t``, with ``out`` of any floating dtype. The addition is
done in fp32 (float64 when ``out`` is float64) and rounded once to ``out``'s dtype, like
``out.add_(fp32_sum)``. A non-contiguous ``out`` gets the fp32 sum through a temporary and
``out.add_``. Each program writes only its own columns, after reading every row there, so
``out`` may be one of the rows itself (exactly that tensor, not a shifted overlap of one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from mtl_fast._validation import TaskRows
from mtl_fast.kernels._launch import device_context
from mtl_fast.kernels._pointers import row_access
from mtl_fast.kernels.tuned import combine_entry


@triton.jit
def _nonzero_mask(w, BLOCK_D: tl.constexpr):
    """[BLOCK_D] mask, all ``w != 0`` (±0 → False, NaN → True) for the fp32 scalar ``w``.

    Computed on the bits and splatted as an integer before the comparison: the result is uniform
    along the block, which the compiler sees (vector loads stay possible), and it avoids splatting
    a scalar float comparison, which the Triton 3.9 interpreter mistypes.
    """
    magnitude = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return (magnitude + tl.zeros((BLOCK_D,), dtype=tl.int32)) != 0


@triton.jit
def _combine_block(
    base_ptr,
    table_ptr,
    w_ptr,
    out_ptr,
    T,
    D,
    row_stride,
    cols,
    MASK_COLS: tl.constexpr,
    USE_TABLE: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    OUT_F64: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Σ_t α_t g_t[cols] for one block of columns, written (or added) to ``out[cols]``."""
    col_mask = cols < D  # only applied when MASK_COLS (the last, partial block)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t in range(T):
        w = tl.load(w_ptr + t).to(tl.float32)
        if USE_TABLE:
            ptrs = tl.load(table_ptr + t).to(base_ptr.dtype) + cols
            if ROW_ALIGN > 1:
                # Byte alignment of the block's first element (row start + a multiple of
                # BLOCK_D elements); hinted on the pointer block, which every Triton 3.x accepts.
                ptrs = tl.multiple_of(ptrs, ROW_ALIGN)
        else:
            ptrs = base_ptr + tl.cast(t, tl.int64) * row_stride + cols
        # Zero-weight rows are masked off: not read, and contribute exactly 0.
        nonzero = _nonzero_mask(w, BLOCK_D)
        if MASK_COLS:
            x = tl.load(ptrs, mask=col_mask & nonzero, other=0.0)
        else:
            x = tl.load(ptrs, mask=nonzero, other=0.0)
        acc += w * x.to(tl.float32)
    if ACCUMULATE:
        if MASK_COLS:
            prev = tl.load(out_ptr + cols, mask=col_mask, other=0.0)
        else:
            prev = tl.load(out_ptr + cols)
        if OUT_F64:
            res = prev + acc.to(tl.float64)
        else:
            res = prev.to(tl.float32) + acc
    else:
        res = acc
    if MASK_COLS:
        tl.store(out_ptr + cols, res.to(out_ptr.dtype.element_ty), mask=col_mask)
    else:
        tl.store(out_ptr + cols, res.to(out_ptr.dtype.element_ty))


@triton.jit
def _combine_kernel(
    base_ptr,
    table_ptr,
    w_ptr,
    out_ptr,
    T,
    D,
    row_stride,
    BLOCK_D: tl.constexpr,
    USE_TABLE: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    OUT_F64: tl.constexpr,
):
    """``out[cols] (+)= Σ_t α_t g_t[cols]`` for the block of columns ``program_id(0)``."""
    start = tl.program_id(0).to(tl.int64) * BLOCK_D
    cols = start + tl.arange(0, BLOCK_D)
    if start + BLOCK_D <= D:
        _combine_block(
            base_ptr,
            table_ptr,
            w_ptr,
            out_ptr,
            T,
            D,
            row_stride,
            cols,
            False,
            USE_TABLE,
            ROW_ALIGN,
            ACCUMULATE,
            OUT_F64,
            BLOCK_D,
        )
    else:
        _combine_block(
            base_ptr,
            table_ptr,
            w_ptr,
            out_ptr,
            T,
            D,
            row_stride,
            cols,
            True,
            USE_TABLE,
            ROW_ALIGN,
            ACCUMULATE,
            OUT_F64,
            BLOCK_D,
        )


@dataclass(frozen=True)
class CombineConfig:
    """Launch parameters of the combine kernel (see :func:`combine_config`)."""

    block_d: int
    num_warps: int


def combine_config(
    numel: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    num_tasks: int = 1,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> CombineConfig:
    """Launch parameters: the measured row of :mod:`mtl_fast.kernels.tuned` for this
    architecture when there is one, else 1024 columns per program for fp32 rows, 2048 for 16-bit
    ones (4 KiB read per task per program, 4 warps); 4096 in the interpreter (fewer, larger numpy
    steps). The keyword arguments override both. No autotuning (see
    :mod:`mtl_fast.kernels.gram` for why)."""
    entry = combine_entry(num_tasks, numel, dtype, device)
    if entry is not None:
        block_d = block_d if block_d is not None else entry.block_d
        num_warps = num_warps if num_warps is not None else entry.num_warps
    if block_d is None:
        if device.type != "cuda":
            block_d = 4096
        else:
            block_d = 2048 if torch.finfo(dtype).bits == 16 else 1024
    return CombineConfig(block_d=block_d, num_warps=num_warps if num_warps is not None else 4)


def combine_rows(
    rows: TaskRows,
    weights: Tensor,
    out: Tensor | None = None,
    *,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """``Σ_t α_t g_t`` of validated fp32/bf16/fp16 rows (see the module docstring).

    Args:
        rows: the task gradients.
        weights: α, floating [T] on the rows' device (any floating dtype; rounded to fp32).
        out: optional tensor of ``rows.shape`` to accumulate into; returned.
        block_d, num_warps: override :func:`combine_config` (tests, benchmarks).

    Returns:
        A new tensor of ``rows.shape`` in the rows' dtype, or ``out``.
    """
    if rows.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(
            f"the Triton combine kernel takes fp32, bf16 or fp16 rows; got {rows.dtype}"
        )
    T, D, device = rows.num_tasks, rows.numel, rows.device
    cfg = combine_config(D, rows.dtype, device, num_tasks=T, block_d=block_d, num_warps=num_warps)
    access = row_access(rows)
    weights = weights if weights.is_contiguous() else weights.contiguous()
    target, accumulate = out_target(rows, out)
    with device_context(device):
        _combine_kernel[(triton.cdiv(D, cfg.block_d),)](
            access.base,
            access.table,
            weights,
            target,
            T,
            D,
            access.row_stride,
            BLOCK_D=cfg.block_d,
            USE_TABLE=access.use_table,
            ROW_ALIGN=access.row_align,
            ACCUMULATE=accumulate,
            OUT_F64=target.dtype == torch.float64,
            num_warps=cfg.num_warps,
        )
    del access
    return finish_out(rows, out, target, accumulate)


def out_target(rows: TaskRows, out: Tensor | None) -> tuple[Tensor, bool]:
    """Where a combining kernel writes: (a flat tensor, whether the kernel adds to it). A new
    tensor in the rows' dtype without ``out``; ``out`` itself when contiguous (accumulated in
    the kernel); else an fp32 temporary added to ``out`` by :func:`finish_out`."""
    D, device = rows.numel, rows.device
    if out is None:
        return torch.empty(D, dtype=rows.dtype, device=device), False
    if out.is_contiguous():
        return out.view(-1), True
    return torch.empty(D, dtype=torch.float32, device=device), False


def finish_out(rows: TaskRows, out: Tensor | None, target: Tensor, accumulate: bool) -> Tensor:
    """The result of a combining kernel that wrote ``target`` (see :func:`out_target`)."""
    if out is None:
        return target.view(rows.shape)
    if not accumulate:
        out.add_(target.view(rows.shape))
    return out
