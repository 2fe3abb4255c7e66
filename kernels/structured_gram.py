"""Triton kernel for the Gram matrix of a multi-task linear head, without the T×D Jacobian.

For a linear head ``logits = z Wᵀ + b`` on shared features z ∈ R^{N×C}, with ``k`` outputs per
task (task ``t`` owns the rows ``t·k … t·k+k−1`` of W ∈ R^{Tk×C} and the same columns of the
logits), the gradient of task t's loss with respect to z is

    g_t = Δ_t W_t ∈ R^{N×C},   Δ_t = ∂L_t/∂(task t's logits) ∈ R^{N×k},  W_t ∈ R^{k×C},

so the Gram matrix of the T feature gradients never needs the gradients themselves:

    G_ab = ⟨g_a, g_b⟩ = Σ_n Σ_{i,j} Δ[n, ak+i] Δ[n, bk+j] ⟨W[ak+i], W[bk+j]⟩
         = Σ_{i,j} (Δ_aᵀ Δ_b)_{ij} (W_a W_bᵀ)_{ij},

i.e. ``G = Σ_{i,j} P^{(ij)} ∘ Q^{(ij)}`` with ``P^{(ij)}_ab = Σ_n Δ[n, ak+i] Δ[n, bk+j]`` and
``Q^{(ij)}_ab = ⟨W[ak+i], W[bk+j]⟩`` (k = 1: ``G = (ΔᵀΔ) ∘ (W Wᵀ)``). The cost is
O(T²k²(N + C)) instead of O(T²NC), and no tensor larger than T×T is written.

Launches (no host synchronisation, no atomics, bitwise deterministic):

1. ``_structured_gram_kernel`` — grid ``(tile pairs, sample splits)``.

   The tasks are cut into tiles of ``BLOCK_T`` (16 or 32); only the upper-triangle tile pairs
   ``(ti, tj), ti ≤ tj`` are computed, enumerated as ``pair = tj(tj+1)/2 + ti``. For each of the
   k² output pairs ``(i, j)`` (unrolled: k is a compile-time constant, one specialisation per
   ``outputs_per_task``) a program accumulates

   * ``Q^{(ij)}`` tile: ``Σ_c W[rows_i, c] W[rows_j, c]`` over blocks of ``BLOCK_C`` columns,
   * ``P^{(ij)}`` tile: ``Σ_n Δ[n, rows_i] Δ[n, rows_j]`` over blocks of ``BLOCK_N`` samples of
     its split,

   each block product by ``tl.dot`` with fp32 accumulation (``input_precision="ieee"``: fp32
   inputs are not rounded to TF32; products of bf16/fp16 values are exact in fp32), added into
   float64 tile accumulators so the rounding does not grow with N or C; then
   ``acc += P^{(ij)} ∘ Q^{(ij)}`` (float64). The tile is made exactly symmetric on the diagonal
   tiles (the upper triangle is mirrored), rounded to fp32 and stored at ``(tile_i, tile_j)``
   (upper tiles only).

   Since G is linear in P, the samples may be split across programs: split ``s`` owns samples
   ``[s·rows_per_split, (s+1)·rows_per_split)`` and recomputes the (cheap, sample-independent)
   Q tile. Each split writes its upper tiles to a workspace ``[splits, T, T]``.

2. The Gram reduce kernel (:func:`mtl_fast.kernels.gram._gram_reduce_kernel`, shared) —
   ``G[a, b] = Σ_s ws[s, min(a, b), max(a, b)]`` summed in float64 in the fixed order
   s = 0, 1, … and rounded once to fp32: exactly symmetric, deterministic.

Strides are passed explicitly, so Δ may be any strided view (e.g. the expanded gradient of a
``.sum()``). Non-finite values are not checked (a host sync): a NaN/Inf in Δ's columns of task a
(or in W_a) reaches ``G[a, a]`` and row/column a only; the solves treat such a task as inactive.

Block sizes, warps and splits come from :func:`structured_gram_config` (a heuristic table, never
autotuning: autotuning synchronises, which is forbidden during CUDA-graph capture).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from mtl_fast._backend import triton_interpret
from mtl_fast.kernels._launch import TilePairs, device_context, gpu_program_target
from mtl_fast.kernels.gram import launch_gram_reduce, upper_tile

#: dtypes the kernel reads (Δ and W must share one).
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _structured_gram_kernel(
    d_ptr,
    w_ptr,
    out_ptr,
    T,
    N,
    C,
    stride_dn,
    stride_dr,
    stride_wr,
    stride_wc,
    rows_per_split,
    K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    SAME_ROWS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Tile ``(ti, tj)`` of ``Σ_{ij} P^{(ij)} ∘ Q^{(ij)}`` over split ``program_id(1)``'s samples,
    written to ``out[split]`` at ``(ti, tj)`` and ``(tj, ti)``."""
    pair = tl.program_id(0)
    split = tl.program_id(1)
    if SINGLE_TILE:
        ti = 0
        tj = 0
    else:
        ti, tj = upper_tile(pair)
    tasks_i = ti * BLOCK_T + tl.arange(0, BLOCK_T)
    tasks_j = tj * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_i = tasks_i < T
    mask_j = tasks_j < T
    n_lo = split.to(tl.int64) * rows_per_split
    n_hi = tl.minimum(n_lo + rows_per_split, N)

    acc = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float64)
    for i in tl.static_range(K):
        rows_i = tasks_i.to(tl.int64) * K + i
        for j in tl.static_range(K):
            rows_j = tasks_j.to(tl.int64) * K + j
            # Q^{(ij)} tile: ⟨W[rows_i], W[rows_j]⟩ over the C columns.
            q = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float64)
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + tl.arange(0, BLOCK_C)
                cmask = cols < C
                wi = tl.load(
                    w_ptr + rows_i[:, None] * stride_wr + cols[None, :] * stride_wc,
                    mask=mask_i[:, None] & cmask[None, :],
                    other=0.0,
                )
                if UPCAST:
                    wi = wi.to(tl.float32)
                if SAME_ROWS:
                    wj = wi
                else:
                    wj = tl.load(
                        w_ptr + rows_j[:, None] * stride_wr + cols[None, :] * stride_wc,
                        mask=mask_j[:, None] & cmask[None, :],
                        other=0.0,
                    )
                    if UPCAST:
                        wj = wj.to(tl.float32)
                q += tl.dot(wi, tl.trans(wj), input_precision=PRECISION).to(tl.float64)
            # P^{(ij)} tile: Σ_n Δ[n, rows_i] Δ[n, rows_j] over this split's samples.
            p = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float64)
            for n0 in range(n_lo, n_hi, BLOCK_N):
                samples = n0 + tl.arange(0, BLOCK_N)
                nmask = samples < n_hi
                di = tl.load(
                    d_ptr + samples[:, None] * stride_dn + rows_i[None, :] * stride_dr,
                    mask=nmask[:, None] & mask_i[None, :],
                    other=0.0,
                )
                if UPCAST:
                    di = di.to(tl.float32)
                if SAME_ROWS:
                    dj = di
                else:
                    dj = tl.load(
                        d_ptr + samples[:, None] * stride_dn + rows_j[None, :] * stride_dr,
                        mask=nmask[:, None] & mask_j[None, :],
                        other=0.0,
                    )
                    if UPCAST:
                        dj = dj.to(tl.float32)
                p += tl.dot(tl.trans(di), dj, input_precision=PRECISION).to(tl.float64)
            acc += p * q
    # Exact symmetry: on a diagonal tile keep the upper triangle and mirror it (a no-op on the
    # off-diagonal tiles, where every task of tile i precedes every task of tile j).
    acc = tl.where(tasks_i[:, None] <= tasks_j[None, :], acc, tl.trans(acc))
    res = acc.to(tl.float32)
    base = out_ptr + split.to(tl.int64) * T * T
    both = mask_i[:, None] & mask_j[None, :]
    ii = tasks_i.to(tl.int64)
    jj = tasks_j.to(tl.int64)
    # Upper tiles only (i ≤ j): the Gram reduce kernel reads ws[s, min(a, b), max(a, b)].
    tl.store(base + ii[:, None] * T + jj[None, :], res, mask=both)


@dataclass(frozen=True)
class StructuredGramConfig(TilePairs):
    """Launch parameters of the structured Gram kernel (see :func:`structured_gram_config`)."""

    block_t: int
    t_tiles: int
    block_n: int
    block_c: int
    splits: int
    rows_per_split: int
    num_warps: int
    num_stages: int


def structured_gram_config(
    num_tasks: int,
    num_samples: int,
    in_features: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    block_t: int | None = None,
    block_n: int | None = None,
    block_c: int | None = None,
    splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> StructuredGramConfig:
    """Heuristic launch parameters for T tasks, N samples and C input features.

    * ``BLOCK_T``: 16 for T ≤ 16, else 32 (three float64 32×32 tiles — P, Q and the result —
      are 24 doubles per thread with 4 warps; 64×64 tiles would spill).
    * ``BLOCK_N``, ``BLOCK_C`` (GPU): 64 for fp32, 128 for 16-bit inputs; in the interpreter
      256 / 512 (fewer, larger numpy steps).
    * sample splits (GPU): enough programs to fill the GPU (``4 × SMs`` over all tile pairs),
      while every split keeps at least ``max(C, 4·BLOCK_N)`` samples, so recomputing the Q tile
      per split costs at most as much as the split's own P work; in the interpreter 1.

    The keyword arguments override the table (tests and benchmarks).
    """
    T, N, C = num_tasks, num_samples, in_features
    interpret = device.type != "cuda"
    if block_t is None:
        block_t = 16 if T <= 16 else 32
    tiles = triton.cdiv(T, block_t)
    pairs = tiles * (tiles + 1) // 2
    wide = 2 if torch.finfo(dtype).bits == 16 else 1
    if block_n is None:
        block_n = 256 if interpret else 64 * wide
    if block_c is None:
        block_c = 512 if interpret else 64 * wide
    if splits is None:
        if interpret:
            splits = 1
        else:
            target = gpu_program_target(device)
            splits = min(triton.cdiv(target, pairs), N // max(C, 4 * block_n))
    splits = max(1, min(splits, triton.cdiv(max(N, 1), block_n)))
    rows_per_split = triton.cdiv(triton.cdiv(max(N, 1), splits), block_n) * block_n
    splits = triton.cdiv(max(N, 1), rows_per_split)  # no empty split
    return StructuredGramConfig(
        block_t=block_t,
        t_tiles=tiles,
        block_n=block_n,
        block_c=block_c,
        splits=splits,
        rows_per_split=rows_per_split,
        num_warps=num_warps if num_warps is not None else 4,
        num_stages=num_stages if num_stages is not None else 2,
    )


def structured_gram(
    delta: Tensor,
    weight: Tensor,
    num_tasks: int,
    *,
    block_t: int | None = None,
    block_n: int | None = None,
    block_c: int | None = None,
    splits: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> Tensor:
    """G_ab = Σ_{i,j} (Δ_aᵀΔ_b)_{ij} (W_a W_bᵀ)_{ij}: float32 [T, T] on the inputs' device.

    Args:
        delta: Δ [N, T·k], the gradient of the head's output (task t: columns t·k … t·k+k−1),
            any strides.
        weight: W [T·k, C], the head's weight (task t: rows t·k … t·k+k−1), any strides, same
            dtype (fp32, bf16 or fp16) and device as ``delta``.
        num_tasks: T (k = ``weight.shape[0] // T``).
        block_t, block_n, block_c, splits, num_warps, num_stages: override
            :func:`structured_gram_config` (tests, benchmarks).

    Exactly symmetric, bitwise deterministic, fp32 products accumulated in float64 across blocks
    (see the module docstring). No host synchronisation; NaN/Inf propagate to the task's row.
    """
    if delta.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"delta must be [N, T·k] and weight [T·k, C]; got {tuple(delta.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if delta.dtype not in KERNEL_DTYPES or weight.dtype != delta.dtype:
        raise TypeError(
            "the structured Gram kernel takes delta and weight of one dtype among fp32, bf16, "
            f"fp16; got {delta.dtype} and {weight.dtype}"
        )
    if delta.device != weight.device:
        raise ValueError(f"delta is on {delta.device} but weight is on {weight.device}")
    T = num_tasks
    rows, C = weight.shape
    N = delta.shape[0]
    if T < 1 or rows % T != 0 or delta.shape[1] != rows:
        raise ValueError(
            f"weight has {rows} rows and delta {delta.shape[1]} columns: both must be T·k "
            f"for T = {T}"
        )
    K = rows // T
    device = delta.device
    cfg = structured_gram_config(
        T,
        N,
        C,
        delta.dtype,
        device,
        block_t=block_t,
        block_n=block_n,
        block_c=block_c,
        splits=splits,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    # The interpreter's tl.dot cannot multiply bf16 (stored as uint16): widen first there. The
    # products are exact in fp32 either way, so the result is the same.
    upcast = delta.dtype == torch.bfloat16 and triton_interpret()
    G = torch.empty((T, T), dtype=torch.float32, device=device)
    ws = torch.empty((cfg.splits, T, T), dtype=torch.float32, device=device)
    with device_context(device):
        _structured_gram_kernel[(cfg.num_pairs, cfg.splits)](
            delta,
            weight,
            ws,
            T,
            N,
            C,
            delta.stride(0),
            delta.stride(1),
            weight.stride(0),
            weight.stride(1),
            cfg.rows_per_split,
            K=K,
            BLOCK_T=cfg.block_t,
            BLOCK_N=cfg.block_n,
            BLOCK_C=cfg.block_c,
            SINGLE_TILE=cfg.single_tile,
            SAME_ROWS=cfg.single_tile and K == 1,
            UPCAST=upcast,
            PRECISION="ieee",
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        launch_gram_reduce(ws, G, T, cfg.splits)
    return G
