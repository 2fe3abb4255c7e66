"""The autograd Function behind :meth:`mtl_fast.Weighting.split`.

Forward: T views of each shared feature tensor (no copy). Backward: autograd calls it once, with
the T incoming gradients of every feature (one per task head, each head back-propagated exactly
once by the ordinary backward). It forms the Gram matrix G (summed over the feature tensors: the
Gram of their concatenation), lets the method solve for α (:meth:`mtl_fast.Weighting.balance`),
and returns Σ_t α_t g_t per feature (or the method's own row combination,
:meth:`mtl_fast.Weighting.combine_rows`). No graph is retained, nothing is read on the host.

Heads must not modify their input view in place (autograd raises a clear error if one does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtl_fast._validation import as_task_rows

if TYPE_CHECKING:
    from mtl_fast.weighting import Weighting


class SplitFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, method: Weighting, num_tasks: int, token: int, *features: Tensor):  # type: ignore[override]
        ctx.method = method
        ctx.num_tasks = num_tasks
        ctx.token = token
        ctx.num_features = len(features)
        ctx.keep_features = method.needs_features
        if method.needs_features:  # the row hooks read them (e.g. GradDrop's sgn(A))
            ctx.save_for_backward(*features)
        return tuple(f.view_as(f) for _ in range(num_tasks) for f in features)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor):  # type: ignore[override]
        method: Weighting = ctx.method
        T, K = ctx.num_tasks, ctx.num_features
        rows = [
            as_task_rows([grads[t * K + k] for t in range(T)], name="feature gradients")
            for k in range(K)
        ]
        features = ctx.saved_tensors if ctx.keep_features else None
        alpha = method.balance(rows, token=ctx.token, kind="features", features=features)
        outs = tuple(method.combine(r, alpha, index=k) for k, r in enumerate(rows))
        return (None, None, None, *outs)
