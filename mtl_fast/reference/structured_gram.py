"""Reference structured Gram matrix of a multi-task linear head: the Gram matrix of the T feature
gradients g_a = Δ_a W_a without forming them (docs/design.md, "Gram space"),

    G_ab = ⟨g_a, g_b⟩ = Σ_{i,j} (Δ_aᵀ Δ_b)_{ij} (W_a W_bᵀ)_{ij}      (k = 1: G = (ΔᵀΔ) ∘ (W Wᵀ)),

with Δ_a = ``delta[:, a·k : a·k+k]`` the gradient of task a's loss with respect to its k logits
and W_a = ``weight[a·k : a·k+k]`` its rows of the head (:class:`mtl_fast.MultiTaskLinear`).
Mirrors: ``kernels/structured_gram.py`` (the Triton kernel),
``tests/kernels/test_structured_gram.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast.reference._chunks import accumulation_dtype

#: Elements of each temporary block (P and Q) of the reference structured Gram: 2^20 (4 MiB in
#: fp32). Bounds the extra memory of the reference at large T to G plus about three blocks.
BLOCK_ELEMS = 1 << 20
#: Samples per chunk of the reference; partial Gram matrices of chunks are summed in float64.
SAMPLE_CHUNK = 16384
#: From this T on the reference uses at least :data:`MIN_BLOCKS` row blocks, so that only
#: the upper-triangle blocks of P and Q are multiplied (5/8 of the work with 4 blocks).
SPLIT_MIN_TASKS = 256
#: The least number of row blocks from :data:`SPLIT_MIN_TASKS` tasks on.
MIN_BLOCKS = 4


def check_structured(delta: Tensor, weight: Tensor, num_tasks: int) -> int:
    """Validate Δ [N, T·k] and W [T·k, C]; return k."""
    if not isinstance(delta, Tensor) or not isinstance(weight, Tensor):
        raise TypeError("delta and weight must be Tensors")
    if delta.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"delta must be [N, T·k] and weight [T·k, C]; got {tuple(delta.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if not (delta.is_floating_point() and weight.is_floating_point()):
        raise TypeError(
            f"delta and weight must be floating point; got {delta.dtype}, {weight.dtype}"
        )
    if delta.device != weight.device:
        raise ValueError(f"delta is on {delta.device} but weight is on {weight.device}")
    rows = weight.shape[0]
    if (
        not isinstance(num_tasks, int)
        or num_tasks < 1
        or rows % num_tasks
        or delta.shape[1] != rows
    ):
        raise ValueError(
            f"weight has {rows} rows and delta {delta.shape[1]} columns: both must be T·k for "
            f"T = {num_tasks!r}"
        )
    return rows // num_tasks


def structured_gram(delta: Tensor, weight: Tensor, num_tasks: int) -> Tensor:
    """Gram matrix of the feature gradients of a multi-task linear head (pure PyTorch).

    G_ab = Σ_{i,j} (Δ_aᵀ Δ_b)_{ij} (W_a W_bᵀ)_{ij}, with Δ_a = ``delta[:, a·k : a·k+k]`` and
    W_a = ``weight[a·k : a·k+k]`` — equal to ⟨g_a, g_b⟩ for g_a = Δ_a W_a without forming g.

    Computed in row blocks of tasks over the upper triangle only (G is symmetric): block
    [i, j) forms P = Δ[:, ik:jk]ᵀ Δ[:, ik:] and Q = W[ik:jk] W[ik:]ᵀ (at most
    :data:`BLOCK_ELEMS` elements each; at least :data:`MIN_BLOCKS` blocks from
    T = :data:`SPLIT_MIN_TASKS` on), multiplies them element-wise in place and sums the
    k×k sub-blocks into rows i..j of G; the block's transpose fills the lower triangle and the
    diagonal block is mirrored from its upper triangle, so G is exactly symmetric. Accumulation
    is in fp32 (float64 for float64 inputs) within a chunk of :data:`SAMPLE_CHUNK` samples
    and in float64 across chunks, in a fixed order. Extra memory: G and two blocks.

    Args:
        delta: Δ [N, T·k], any floating dtype and strides.
        weight: W [T·k, C], any floating dtype, on Δ's device.
        num_tasks: T.

    Returns:
        G [T, T], float32 (float64 for float64 inputs), on Δ's device. No host synchronisation;
        a NaN/Inf in task a's Δ columns or W rows stays in row/column a.
    """
    k = check_structured(delta, weight, num_tasks)
    T, N = num_tasks, delta.shape[0]
    acc = accumulation_dtype(torch.promote_types(delta.dtype, weight.dtype))
    A = delta.to(acc)
    Wf = weight.to(acc)
    G = torch.empty((T, T), dtype=acc, device=delta.device)
    tb = max(1, min(T, BLOCK_ELEMS // (T * k * k)))
    if T >= SPLIT_MIN_TASKS:  # upper-triangle blocks only: ~5/8 of the full products
        tb = min(tb, -(-T // MIN_BLOCKS))
    chunks = range(0, max(N, 1), SAMPLE_CHUNK)
    for i in range(0, T, tb):
        j = min(i + tb, T)
        Q = Wf[i * k : j * k] @ Wf[i * k :].T  # [(j-i)k, (T-i)k]
        blk: Tensor | None = None
        for n0 in chunks:
            Ab = A[n0 : n0 + SAMPLE_CHUNK]
            P = Ab[:, i * k : j * k].T @ Ab[:, i * k :]
            P.mul_(Q)
            part = P if k == 1 else P.view(j - i, k, T - i, k).sum(dim=(1, 3))
            if len(chunks) > 1:  # float64 across chunks: the error does not grow with N
                part = part.to(torch.float64)
            blk = part if blk is None else blk + part
        assert blk is not None
        blk = blk.to(acc)
        diag = blk[:, : j - i]
        G[i:j, i:j] = torch.triu(diag) + torch.triu(diag, diagonal=1).T
        G[i:j, j:] = blk[:, j - i :]
        G[j:, i:j] = blk[:, j - i :].T
    return G
