"""Triton GradDrop kernels: the sign-dropout combination of the T task rows (Chen et al. 2020),
without stacking them. The math and the exact order of operations are those of
:mod:`mtl_fast.reference.graddrop`.

Two kernels, no host synchronisation:

1. ``_graddrop_sums_kernel`` (the batch rule only) — grid ``(column blocks of F, batch
   splits)``. Each program sums sgn(A[b, f]) g_t[b, f] over its share of the batch rows for every
   task (fp32), into its own slice of a workspace ``[splits, T, F]`` (no atomics); the launcher
   adds the splits in a fixed order and multiplies by α: S [T, F]. Rows with α_t = 0 are not read.
2. ``_graddrop_combine_kernel`` — grid over blocks of ``BLOCK_D`` elements. Per element, a first
   loop over the tasks forms Σ_t S_t and Σ_t |S_t| (S from the sums, or sgn(A) α_t g_t for the
   per-element rule), the sign purity P = ½ (1 + Σ S / (Σ|S| + ε)) with an IEEE division
   (``div_rn``), then a second loop accumulates (ℓ_t + (1 − ℓ_t) M_t) α_t g_t in fp32 with
   M_t = [P > U][S_t > 0] + [P < U][S_t < 0]. The per-element rule reads each row twice within
   the program (the second read comes from the cache). ``out=`` accumulates as the combine
   kernel does (:mod:`mtl_fast.kernels.combine`).

Launch parameters come from a heuristic (no tuned table yet, no autotuning): the combine
kernel's block sizes, and enough batch splits for the sums to give every SM a few programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mtl_fast import _solve_constants as SC
from mtl_fast._validation import TaskRows
from mtl_fast.kernels._launch import device_context, gpu_program_target
from mtl_fast.kernels._pointers import row_access
from mtl_fast.kernels.combine import _nonzero_mask, combine_config, finish_out, out_target


@triton.jit
def _row_start(
    base_ptr, table_ptr, row_stride, t, USE_TABLE: tl.constexpr, ROW_ALIGN: tl.constexpr
):
    """Pointer to the first element of row ``t`` (pointer table or stacked layout)."""
    if USE_TABLE:
        ptr = tl.load(table_ptr + t).to(base_ptr.dtype)
        if ROW_ALIGN > 1:
            ptr = tl.multiple_of(ptr, ROW_ALIGN)
    else:
        ptr = base_ptr + tl.cast(t, tl.int64) * row_stride
    return ptr


@triton.jit
def _signed(x, a):
    """sgn(a) · x for sgn ∈ {−1, 0, 1} (NaN → 0), exactly."""
    return tl.where(a > 0, x, tl.where(a < 0, -x, 0.0))


@triton.jit
def _graddrop_sums_kernel(
    base_ptr,
    table_ptr,
    w_ptr,
    a_ptr,
    part_ptr,
    T,
    B,
    F,
    row_stride,
    rows_per_split,
    BLOCK_F: tl.constexpr,
    USE_TABLE: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    HAS_SIGNS: tl.constexpr,
):
    """part[split, t, cols] = Σ_{b in split} sgn(A[b, cols]) g_t[b, cols] (fp32)."""
    pf = tl.program_id(0)
    ps = tl.program_id(1)
    cols = pf.to(tl.int64) * BLOCK_F + tl.arange(0, BLOCK_F)
    col_mask = cols < F
    b0 = ps * rows_per_split
    b1 = tl.minimum(b0 + rows_per_split, B)
    for t in range(T):
        w = tl.load(w_ptr + t).to(tl.float32)
        keep = col_mask & _nonzero_mask(w, BLOCK_F)
        row = _row_start(base_ptr, table_ptr, row_stride, t, USE_TABLE, ROW_ALIGN)
        acc = tl.zeros((BLOCK_F,), dtype=tl.float32)
        for b in range(b0, b1):
            offs = tl.cast(b, tl.int64) * F + cols
            x = tl.load(row + offs, mask=keep, other=0.0).to(tl.float32)
            if HAS_SIGNS:
                a = tl.load(a_ptr + offs, mask=col_mask, other=0.0).to(tl.float32)
                x = _signed(x, a)
            acc += x
        tl.store(part_ptr + (tl.cast(ps, tl.int64) * T + t) * F + cols, acc, mask=col_mask)


@triton.jit
def _task_term(
    base_ptr,
    table_ptr,
    w_ptr,
    s_ptr,
    row_stride,
    t,
    cols,
    f,
    a,
    F,
    mask,
    BLOCK_D: tl.constexpr,
    USE_TABLE: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    FROM_SUMS: tl.constexpr,
    HAS_SIGNS: tl.constexpr,
    NEED_ROW: tl.constexpr,
):
    """(α_t, g_t[cols] in fp32 (0 where not needed), S_t at the elements) for task ``t``."""
    w = tl.load(w_ptr + t).to(tl.float32)
    live = mask & _nonzero_mask(w, BLOCK_D)
    x = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if NEED_ROW or not FROM_SUMS:
        row = _row_start(base_ptr, table_ptr, row_stride, t, USE_TABLE, ROW_ALIGN)
        x = tl.load(row + cols, mask=live, other=0.0).to(tl.float32)
    if FROM_SUMS:
        s = tl.load(s_ptr + tl.cast(t, tl.int64) * F + f, mask=live, other=0.0)
    else:
        s = w * x
        if HAS_SIGNS:
            s = _signed(s, a)
    return w, x, s


@triton.jit
def _graddrop_combine_kernel(
    base_ptr,
    table_ptr,
    w_ptr,
    leak_ptr,
    s_ptr,
    a_ptr,
    u_ptr,
    out_ptr,
    T,
    D,
    F,
    row_stride,
    EPS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_TABLE: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    FROM_SUMS: tl.constexpr,
    HAS_SIGNS: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    OUT_F64: tl.constexpr,
):
    """out[cols] (+)= Σ_t (ℓ_t + (1 − ℓ_t) M_t) α_t g_t[cols] for block ``program_id(0)``."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = cols < D
    if FROM_SUMS:
        f = cols % F
    else:
        f = cols
    a = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_SIGNS and not FROM_SUMS:
        a = tl.load(a_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    num = tl.zeros((BLOCK_D,), dtype=tl.float32)
    den = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t in range(T):
        _w, _x, s = _task_term(
            base_ptr, table_ptr, w_ptr, s_ptr, row_stride, t, cols, f, a, F, mask,
            BLOCK_D, USE_TABLE, ROW_ALIGN, FROM_SUMS, HAS_SIGNS, False,
        )  # fmt: skip
        num += s
        den += tl.abs(s)
    P = 0.5 * (1.0 + tl.math.div_rn(num, den + EPS))
    u = tl.load(u_ptr + f, mask=mask, other=0.0)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t in range(T):
        w, x, s = _task_term(
            base_ptr, table_ptr, w_ptr, s_ptr, row_stride, t, cols, f, a, F, mask,
            BLOCK_D, USE_TABLE, ROW_ALIGN, FROM_SUMS, HAS_SIGNS, True,
        )  # fmt: skip
        lk = tl.load(leak_ptr + t).to(tl.float32)
        kept = ((P > u) & (s > 0)) | ((P < u) & (s < 0))
        m = lk + (1.0 - lk) * kept.to(tl.float32)
        acc += (w * m) * x
    if ACCUMULATE:
        prev = tl.load(out_ptr + cols, mask=mask, other=0.0)
        if OUT_F64:
            res = prev + acc.to(tl.float64)
        else:
            res = prev.to(tl.float32) + acc
    else:
        res = acc
    tl.store(out_ptr + cols, res.to(out_ptr.dtype.element_ty), mask=mask)


def _check_dtype(rows: TaskRows) -> None:
    if rows.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(
            f"the Triton GradDrop kernels take fp32, bf16 or fp16 rows; got {rows.dtype}"
        )


def _flat_activations(activations: Tensor | None, rows: TaskRows) -> Tensor:
    if activations is None:
        return torch.empty(1, dtype=torch.float32, device=rows.device)  # never read
    return activations.detach().contiguous().view(-1)


def sums_config(F: int, B: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_F, rows per split): 4096 columns per program in the interpreter (one split), else
    512 columns and as many batch splits as bring the grid to a few programs per SM."""
    if device.type != "cuda":
        return 4096, B
    block_f = 512
    blocks = triton.cdiv(F, block_f)
    splits = max(1, min(B, gpu_program_target(device) // blocks))
    return block_f, triton.cdiv(B, splits)


def graddrop_sums(
    rows: TaskRows,
    weights: Tensor,
    batch: int,
    activations: Tensor | None = None,
    *,
    block_f: int | None = None,
    rows_per_split: int | None = None,
) -> Tensor:
    """S [T, F] float32: S_t = α_t Σ_b sgn(A[b]) g_t[b] over the rows seen as [``batch``, F]."""
    _check_dtype(rows)
    T, D, device = rows.num_tasks, rows.numel, rows.device
    if batch < 1 or D % batch:
        raise ValueError(f"batch must divide the {D} elements of a task gradient; got {batch}")
    F = D // batch
    bf, rps = sums_config(F, batch, device)
    bf = block_f or bf
    rps = rows_per_split or rps
    splits = triton.cdiv(batch, rps)
    access = row_access(rows)
    w = weights.to(torch.float32).contiguous()
    part = torch.empty((splits, T, F), dtype=torch.float32, device=device)
    with device_context(device):
        _graddrop_sums_kernel[(triton.cdiv(F, bf), splits)](
            access.base,
            access.table,
            w,
            _flat_activations(activations, rows),
            part,
            T,
            batch,
            F,
            access.row_stride,
            rps,
            BLOCK_F=bf,
            USE_TABLE=access.use_table,
            ROW_ALIGN=access.row_align,
            HAS_SIGNS=activations is not None,
        )
    del access
    S = part[0] if splits == 1 else part.sum(dim=0)
    return w[:, None] * S


def graddrop_combine_rows(
    rows: TaskRows,
    weights: Tensor,
    uniform: Tensor,
    leak: Tensor,
    *,
    sums: Tensor | None = None,
    activations: Tensor | None = None,
    out: Tensor | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """Σ_t (ℓ_t + (1 − ℓ_t) M_t) α_t g_t in the rows' dtype (``out +=`` when given; returned);
    see :func:`mtl_fast.reference.graddrop.graddrop_combine_rows` for the arguments."""
    _check_dtype(rows)
    T, D, device = rows.num_tasks, rows.numel, rows.device
    cfg = combine_config(D, rows.dtype, device, num_tasks=T, block_d=block_d, num_warps=num_warps)
    access = row_access(rows)
    F = D if sums is None else sums.shape[1]
    S = torch.empty(1, dtype=torch.float32, device=device) if sums is None else sums
    target, accumulate = out_target(rows, out)
    with device_context(device):
        _graddrop_combine_kernel[(triton.cdiv(D, cfg.block_d),)](
            access.base,
            access.table,
            weights.to(torch.float32).contiguous(),
            leak.to(torch.float32).contiguous(),
            S.to(torch.float32).contiguous(),
            _flat_activations(activations if sums is None else None, rows),
            uniform.to(torch.float32).contiguous(),
            target,
            T,
            D,
            F,
            access.row_stride,
            EPS=SC.GRADDROP_EPS,
            BLOCK_D=cfg.block_d,
            USE_TABLE=access.use_table,
            ROW_ALIGN=access.row_align,
            FROM_SUMS=sums is not None,
            HAS_SIGNS=activations is not None and sums is None,
            ACCUMULATE=accumulate,
            OUT_F64=target.dtype == torch.float64,
            num_warps=cfg.num_warps,
        )
    del access
    return finish_out(rows, out, target, accumulate)
