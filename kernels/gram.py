"""Triton Gram kernel: G = J Jᵀ over the T task rows, without stacking them.

``G[a, b] = ⟨g_a, g_b⟩`` for T rows of D elements (fp32, bf16 or fp16), returned as an exactly
symmetric float32 [T, T] tensor on the rows' device. Two launches, no host synchronisation:

1. ``_gram_partial_kernel`` — grid ``(tile pairs, D-splits)``.

   The tasks are cut into tiles of ``BLOCK_T`` rows; only the upper-triangle tile pairs
   ``(i, j), i ≤ j`` are computed (``n(n+1)/2`` pairs for ``n = ⌈T / BLOCK_T⌉``), enumerated
   column by column: ``pair = j(j+1)/2 + i``. When one tile covers every task (``T ≤ BLOCK_T``:
   T ≤ 64 with the default table; on the small-T broadcast path ``BLOCK_T`` is T rounded up to
   a power of two, on the ``tl.dot`` path at least 16, the smallest ``tl.dot`` tile) the pair
   axis has a single program, which loads each ``[BLOCK_T, BLOCK_D]`` slab once and multiplies
   it by its own transpose; rows beyond T are masked, so they cost no memory traffic. The
   columns are cut into blocks of ``BLOCK_D``; D-split ``s`` owns ``blocks_per_split``
   consecutive blocks. Full blocks are loaded without a column mask (vector loads), the last,
   partial block with one.

   The products of each block are summed in fp32 (``tl.dot`` with fp32 accumulation and
   ``input_precision="ieee"`` for fp32 rows, so they are not rounded to TF32, unless a measured
   table row asks for ``"tf32x3"``; on the small-T *broadcast* path elementwise products, kept
   per column). Every ``FLUSH`` blocks (``FP32_SPAN = 2048`` columns) the fp32 partial is added
   into a float64 accumulator, so the fp32 rounding is confined to sums of at most 2048
   products and the error does not grow with D, while the loop itself has no reduction and no
   float64 arithmetic (which would make it latency-bound). Each program writes its partial
   tile, rounded once to fp32, into its own slice of a workspace ``[splits, T, T]`` (no
   atomics). Only entries ``(a, b)`` with ``a ≤ b`` are read afterwards, and every one of them
   is written by exactly one program per split.

2. ``_gram_reduce_kernel`` — grid over blocks of entries of G. ``G[a, b] = G[b, a] =
   Σ_s W[s, min(a, b), max(a, b)]``, summed in float64 over chunks of splits in a fixed order
   and rounded to fp32. Both triangles come from the same sum, so G is exactly symmetric, and
   the result is bitwise identical from run to run (fixed grid, fixed reduction order, no
   atomics). (The first version looped over the splits one dependent load at a time: with the
   528 splits that fill an H200, ~140 µs whatever the size of J.)

Non-finite inputs are not checked (that would need a host sync): a NaN/Inf in ``g_t`` propagates
into ``G[t, t]`` (and usually row/column t); the solves treat such a task as inactive.
Squared norms beyond the fp32 range overflow to Inf in the same way.

The path, block sizes, warps, stages and the number of D-splits come from :func:`gram_config`:
the measured per-architecture table of :mod:`mtl_fast.kernels.tuned` when it has a row for the
call, else a heuristic; never from autotuning at run time, which benchmarks by launching the
kernel many times and synchronising, which must not happen during CUDA-graph capture (and is very
slow in the interpreter). ``benchmarks/tune_kernels.py`` measures the candidates and proposes the
table rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from mtl_fast._backend import triton_interpret
from mtl_fast._validation import TaskRows
from mtl_fast.kernels._launch import TilePairs, device_context, gpu_program_target
from mtl_fast.kernels._pointers import row_access
from mtl_fast.kernels.tuned import gram_entry


@triton.jit
def upper_tile(pair):
    """The tile ``(ti, tj)``, 0 ≤ ti ≤ tj, of upper-triangle program ``pair`` (row-major over
    tj): pair = tj (tj + 1) / 2 + ti. The float estimate of tj is corrected by one step either
    way, so it is exact for any realistic number of tiles."""
    tj = ((tl.sqrt((8 * pair + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    tj = tl.where((tj + 1) * (tj + 2) // 2 <= pair, tj + 1, tj)
    tj = tl.where(tj * (tj + 1) // 2 > pair, tj - 1, tj)
    return pair - tj * (tj + 1) // 2, tj


@triton.jit
def _row_pointers(
    base_ptr,
    table_ptr,
    row_stride,
    rows,
    T,
    USE_TABLE: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """Pointers to the first element of each row in ``rows`` ([BLOCK_T] indices; rows ≥ T get a
    null pointer in table mode and are never dereferenced: every load masks them)."""
    if USE_TABLE:
        address = tl.load(table_ptr + rows, mask=rows < T, other=0)
        ptrs = address.to(base_ptr.dtype)
        if ROW_ALIGN > 1:
            # Byte alignment of every row start; hinted on the pointers themselves (a hint on
            # the integer addresses does not survive the int-to-pointer cast).
            ptrs = tl.multiple_of(ptrs, ROW_ALIGN)
    else:
        ptrs = base_ptr + rows.to(tl.int64) * row_stride
    return ptrs


@triton.jit
def _load_slab(ptrs, row_mask, cols, D, MASK_COLS: tl.constexpr, UPCAST: tl.constexpr):
    """The [BLOCK_T, BLOCK_D] slab ``rows × cols``; masked rows (and columns ≥ D) read as 0."""
    if MASK_COLS:
        mask = row_mask[:, None] & (cols < D)[None, :]
    else:
        mask = row_mask[:, None]
    x = tl.load(ptrs[:, None] + cols[None, :], mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _zero_partial(BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BROADCAST: tl.constexpr):
    """The fp32 partial sum of a chunk of blocks: [BLOCK_T, BLOCK_T, BLOCK_D] elementwise
    products on the broadcast path (reduced over the columns only when flushed), else the
    [BLOCK_T, BLOCK_T] ``tl.dot`` accumulator."""
    if BROADCAST:
        part = tl.zeros((BLOCK_T, BLOCK_T, BLOCK_D), dtype=tl.float32)
    else:
        part = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)
    return part


@triton.jit
def _accumulate(part, xi, xj, PRECISION: tl.constexpr, BROADCAST: tl.constexpr):
    """``part + xi xjᵀ`` for two [BLOCK_T, BLOCK_D] slabs, in fp32.

    ``BROADCAST``: elementwise products kept per column (fp32 FMAs on ``BLOCK_T² × BLOCK_D``
    values, no ``tl.dot`` and no reduction inside the loop), the small-T path, where ``BLOCK_T``
    is T rounded up to a power of two instead of the 16 rows ``tl.dot`` needs: at T = 2 a padded
    dot does 64× the arithmetic, which makes a pass over J compute-bound on fp32. Otherwise
    ``tl.dot`` accumulating into ``part``.
    """
    if BROADCAST:
        part = part + xi.to(tl.float32)[:, None, :] * xj.to(tl.float32)[None, :, :]
    else:
        part = tl.dot(xi, tl.trans(xj), part, input_precision=PRECISION)
    return part


@triton.jit
def _flush(acc, part, BROADCAST: tl.constexpr):
    """``acc + Σ part`` in float64 (the chunk's fp32 sum, reduced over the columns first on the
    broadcast path)."""
    if BROADCAST:
        acc = acc + tl.sum(part, axis=2).to(tl.float64)
    else:
        acc = acc + part.to(tl.float64)
    return acc


@triton.jit
def _gram_partial_kernel(
    base_ptr,
    table_ptr,
    ws_ptr,
    T,
    D,
    row_stride,
    blocks_per_split,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    USE_TABLE: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BROADCAST: tl.constexpr,
    FLUSH: tl.constexpr,
):
    """Partial Gram tile ``(i, j)`` of D-split ``program_id(1)`` into ``ws[split]``."""
    pair = tl.program_id(0)
    split = tl.program_id(1)
    if SINGLE_TILE:
        ti = 0
        tj = 0
    else:
        ti, tj = upper_tile(pair)
    rows_i = ti * BLOCK_T + tl.arange(0, BLOCK_T)
    rows_j = tj * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_i = rows_i < T
    mask_j = rows_j < T
    ptrs_i = _row_pointers(base_ptr, table_ptr, row_stride, rows_i, T, USE_TABLE, ROW_ALIGN)
    if not SINGLE_TILE:
        ptrs_j = _row_pointers(base_ptr, table_ptr, row_stride, rows_j, T, USE_TABLE, ROW_ALIGN)

    acc = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float64)
    part = _zero_partial(BLOCK_T, BLOCK_D, BROADCAST)
    first = split.to(tl.int64) * blocks_per_split
    n_full = D // BLOCK_D
    last = tl.minimum(first + blocks_per_split, n_full)
    for blk in range(first, last):
        cols = blk * BLOCK_D + tl.arange(0, BLOCK_D)
        xi = _load_slab(ptrs_i, mask_i, cols, D, False, UPCAST)
        if SINGLE_TILE:
            xj = xi
        else:
            xj = _load_slab(ptrs_j, mask_j, cols, D, False, UPCAST)
        part = _accumulate(part, xi, xj, PRECISION, BROADCAST)
        if (blk - first) % FLUSH == FLUSH - 1:
            # fp32 sums span at most FLUSH · BLOCK_D columns; float64 beyond.
            acc = _flush(acc, part, BROADCAST)
            part = _zero_partial(BLOCK_T, BLOCK_D, BROADCAST)
    # The partial last block, owned by the split whose range contains it.
    if (D % BLOCK_D != 0) & (n_full >= first) & (n_full < first + blocks_per_split):
        cols = n_full * BLOCK_D + tl.arange(0, BLOCK_D)
        xi = _load_slab(ptrs_i, mask_i, cols, D, True, UPCAST)
        if SINGLE_TILE:
            xj = xi
        else:
            xj = _load_slab(ptrs_j, mask_j, cols, D, True, UPCAST)
        acc = _flush(
            acc,
            _accumulate(_zero_partial(BLOCK_T, BLOCK_D, BROADCAST), xi, xj, PRECISION, BROADCAST),
            BROADCAST,
        )
    acc = _flush(acc, part, BROADCAST)

    offs = split.to(tl.int64) * T * T + rows_i.to(tl.int64)[:, None] * T + rows_j[None, :]
    tl.store(ws_ptr + offs, acc.to(tl.float32), mask=mask_i[:, None] & mask_j[None, :])


@triton.jit
def _gram_reduce_kernel(ws_ptr, g_ptr, T, splits, BLOCK_E: tl.constexpr, BLOCK_S: tl.constexpr):
    """``G[a, b] = Σ_s ws[s, min(a, b), max(a, b)]`` in float64 for the ``BLOCK_E`` entries of
    row-major G owned by program ``program_id(0)``. The splits are read ``BLOCK_S`` at a time (one
    [BLOCK_S, BLOCK_E] load, summed over the splits) so that hundreds of splits cost a few
    dependent loads, not one each; the chunks are added in the fixed order s = 0, BLOCK_S, …"""
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    num = tl.cast(T, tl.int64) * T
    emask = e < num
    a = e // T
    b = e % T
    src = tl.minimum(a, b).to(tl.int64) * T + tl.maximum(a, b)
    acc = tl.zeros((BLOCK_E,), dtype=tl.float64)
    for s0 in range(0, splits, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < splits)[:, None] & emask[None, :]
        x = tl.load(ws_ptr + s.to(tl.int64)[:, None] * num + src[None, :], mask=mask, other=0.0)
        acc += tl.sum(x.to(tl.float64), axis=0)
    tl.store(g_ptr + e, acc.to(tl.float32), mask=emask)


#: Elements of one [BLOCK_S, BLOCK_E] load of the reduce kernel.
REDUCE_TILE = 4096


def launch_gram_reduce(workspace: Tensor, G: Tensor, T: int, splits: int) -> None:
    """Sum the ``[splits, T, T]`` upper-triangle partials of ``workspace`` into both triangles
    of the float32 [T, T] ``G`` (one launch of :func:`_gram_reduce_kernel`)."""
    block_e = min(1024, triton.next_power_of_2(T * T))
    block_s = max(1, min(triton.next_power_of_2(splits), REDUCE_TILE // block_e))
    grid = (triton.cdiv(T * T, block_e),)
    _gram_reduce_kernel[grid](
        workspace, G, T, splits, BLOCK_E=block_e, BLOCK_S=block_s, num_warps=4
    )


#: Largest T served by the broadcast path (no ``tl.dot``) when no measured table row applies.
BROADCAST_MAX_T = 8
#: Columns over which a partial sum stays in fp32 before it is added into the float64 total
#: (the kernel flushes every ``FP32_SPAN // BLOCK_D`` blocks, at least every block).
FP32_SPAN = 2048


@dataclass(frozen=True)
class GramConfig(TilePairs):
    """Launch parameters of the Gram kernel (see :func:`gram_config`)."""

    block_t: int
    t_tiles: int
    block_d: int
    splits: int
    blocks_per_split: int
    num_warps: int
    num_stages: int
    broadcast: bool = False
    precision: str = "ieee"

    @property
    def flush_blocks(self) -> int:
        """Column blocks summed in fp32 before each float64 flush."""
        return max(1, FP32_SPAN // self.block_d)

    @property
    def fp32_span(self) -> int:
        """Columns per fp32 partial sum: the ``n`` of the error bound ``2 (n + 2) u |J||J|ᵀ``."""
        return self.flush_blocks * self.block_d


def gram_config(
    num_tasks: int,
    numel: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    block_d: int | None = None,
    splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    broadcast: bool | None = None,
    programs_per_sm: int | None = None,
    precision: str | None = None,
) -> GramConfig:
    """Launch parameters for T = ``num_tasks`` rows of D = ``numel`` elements.

    On a GPU whose architecture has a measured table (:mod:`mtl_fast.kernels.tuned`) the matching
    row gives the path, ``BLOCK_D``, warps, stages and the split target; otherwise this heuristic:

    * path: broadcast (elementwise products, ``BLOCK_T`` = T rounded up to a power of two) for
      T ≤ :data:`BROADCAST_MAX_T`, else ``tl.dot`` tiles;
    * ``BLOCK_T`` of the dot path: 16 for T ≤ 16 (one tile), 32 for T ≤ 32 (one tile), else 64;
    * ``BLOCK_D`` (GPU): 256 / 128 / 64 columns for ``BLOCK_T`` 16 / 32 / 64, twice that for 16-bit
      inputs, so a pipeline stage holds ~16–32 KiB per slab; on the broadcast path 16384 / BLOCK_T²
      (32 to 2048) with 8 warps, about 64 fp32 partial sums per thread. In the interpreter
      1024 / 1024 / 512 (fewer, larger numpy steps);
    * D-splits: enough programs to fill the GPU (``4 × SMs`` over all tile pairs), while keeping
      ≥ 4 column blocks per program (at most 65535 splits: the grid's second axis); in the
      interpreter about 4 programs in all.

    The keyword arguments override both (tests, benchmarks, ``benchmarks/tune_kernels.py``).
    """
    T, D = num_tasks, numel
    interpret = device.type != "cuda"
    entry = None if interpret else gram_entry(T, D, dtype, device)
    if broadcast is None:
        broadcast = entry.broadcast if entry is not None else T <= BROADCAST_MAX_T
    if broadcast and T > 16:
        raise ValueError(f"the broadcast Gram path serves T ≤ 16 (got T={T})")
    if broadcast:
        block_t = max(2, triton.next_power_of_2(T))
    else:
        block_t = 16 if T <= 16 else 32 if T <= 32 else 64
    tiles = triton.cdiv(T, block_t)
    pairs = tiles * (tiles + 1) // 2
    if entry is not None:
        block_d = block_d if block_d is not None else entry.block_d
        num_warps = num_warps if num_warps is not None else entry.num_warps
        num_stages = num_stages if num_stages is not None else entry.num_stages
        if programs_per_sm is None:
            programs_per_sm = entry.programs_per_sm
        if precision is None and not broadcast:
            precision = entry.precision
    if block_d is None:
        if interpret:
            block_d = 512 if block_t == 64 else 1024
        elif broadcast:
            # ~64 fp32 partial sums per thread at 8 warps: 2048 / 1024 / 256 / 64 columns for
            # BLOCK_T 2 / 4 / 8 / 16 (wide loads at small T, no register spills at T = 8–16).
            block_d = max(32, min(2048, 16384 // (block_t * block_t)))
        else:
            block_d = {16: 256, 32: 128, 64: 64}[block_t]
            if torch.finfo(dtype).bits == 16:
                block_d *= 2
    n_blocks = triton.cdiv(D, block_d)
    if splits is None:
        if interpret:
            target, min_blocks = 4, 1
        else:
            target, min_blocks = gpu_program_target(device, programs_per_sm), 4
        splits = min(triton.cdiv(target, pairs), n_blocks // min_blocks)
    splits = max(1, min(splits, n_blocks, 65535))
    blocks_per_split = triton.cdiv(n_blocks, splits)
    splits = triton.cdiv(n_blocks, blocks_per_split)  # no empty program
    return GramConfig(
        block_t=block_t,
        t_tiles=tiles,
        block_d=block_d,
        splits=splits,
        blocks_per_split=blocks_per_split,
        num_warps=num_warps if num_warps is not None else (8 if broadcast and not interpret else 4),
        num_stages=num_stages if num_stages is not None else 3,
        broadcast=broadcast,
        # TF32 products only ever replace fp32 ones (16-bit products are exact in fp32 anyway).
        precision=precision if precision is not None and dtype == torch.float32 else "ieee",
    )


def gram_rows(
    rows: TaskRows,
    *,
    block_d: int | None = None,
    splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    broadcast: bool | None = None,
    programs_per_sm: int | None = None,
    precision: str | None = None,
) -> Tensor:
    """G = J Jᵀ of validated fp32/bf16/fp16 rows: float32 [T, T] on their device.

    Exactly symmetric, bitwise deterministic, fp32 accumulation within ``BLOCK_D`` columns and
    float64 beyond (see the module docstring). No host synchronisation; NaN/Inf propagate.
    The keyword arguments override :func:`gram_config` (tests, benchmarks).
    """
    if rows.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"the Triton Gram kernel takes fp32, bf16 or fp16 rows; got {rows.dtype}")
    T, D, device = rows.num_tasks, rows.numel, rows.device
    cfg = gram_config(
        T,
        D,
        rows.dtype,
        device,
        block_d=block_d,
        splits=splits,
        num_warps=num_warps,
        num_stages=num_stages,
        broadcast=broadcast,
        programs_per_sm=programs_per_sm,
        precision=precision,
    )
    access = row_access(rows)
    # The interpreter's tl.dot cannot multiply bf16 (stored as uint16): widen first there. The
    # products are exact in fp32 either way, so the result is the same.
    upcast = rows.dtype == torch.bfloat16 and triton_interpret()
    workspace = torch.empty((cfg.splits, T, T), dtype=torch.float32, device=device)
    G = torch.empty((T, T), dtype=torch.float32, device=device)
    with device_context(device):
        _gram_partial_kernel[(cfg.num_pairs, cfg.splits)](
            access.base,
            access.table,
            workspace,
            T,
            D,
            access.row_stride,
            cfg.blocks_per_split,
            BLOCK_T=cfg.block_t,
            BLOCK_D=cfg.block_d,
            SINGLE_TILE=cfg.single_tile,
            USE_TABLE=access.use_table,
            ROW_ALIGN=access.row_align,
            UPCAST=upcast,
            BROADCAST=cfg.broadcast,
            FLUSH=cfg.flush_blocks,
            PRECISION=cfg.precision,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        launch_gram_reduce(workspace, G, T, cfg.splits)
    del access  # the rows (and the pinned table buffer) are no longer needed once enqueued
    return G
