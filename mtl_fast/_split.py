"""The autograd Function behind :meth:`mtl_fast.Weighting.split`.

Forward: T views of each shared feature tensor (no copy). Backward: autograd calls it once, with
the T incoming gradients of every feature (one per task head, each head back-propagated exactly
once by the ordinary backward). It forms the Gram matrix G (summed over the feature tensors: the
Gram of their concatenation), lets the method solve for α (:meth:`mtl_fast.Weighting.balance`),
and returns Σ_t α_t g_t per feature (or the method's own row combination,
:meth:`mtl_fast.Weighting.combine_rows`). No graph is retained, nothing is read on the host.

Under ``torch.compile`` the split's token is a tensor (the step's bookkeeping runs in the
``open_split`` operator, :mod:`mtl_fast._compiled_step`) and the backward is the custom operator
``mtl_fast::split_backward``, which runs :func:`balanced_gradients` at run time: the compiler
never traces the method's solve, and the compiled backward computes what the eager one does.

Heads must not modify their input view in place (autograd raises a clear error if one does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from mtl_fast import _custom_ops
from mtl_fast._validation import as_task_rows

if TYPE_CHECKING:
    from mtl_fast.weighting import Weighting


def balanced_gradients(
    method: Weighting,
    num_tasks: int,
    grads: Sequence[Tensor],
    token: int | None,
    features: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """Σ_t α_t g_t (or the method's row combination) for each of the K feature tensors, from
    the T·K incoming gradients (task-major: ``grads[t * K + k]``) of the split with ``token``;
    ``features``: the forward tensors, for methods with ``needs_features``."""
    T = num_tasks
    K = len(grads) // T
    rows = [
        as_task_rows([grads[t * K + k] for t in range(T)], name="feature gradients")
        for k in range(K)
    ]
    alpha = method.balance(rows, token=token, kind="features", features=features)
    return [method.combine(r, alpha, index=k) for k, r in enumerate(rows)]


def _split_backward_eager(
    handle: int, token: Tensor, num_tasks: int, grads: list[Tensor], features: list[Tensor]
):
    method = _custom_ops.lookup(handle)
    if method.needs_gradient_rows:
        # Row methods rewrite the rows in place; an operator must not mutate its inputs.
        grads = [g.clone() for g in grads]
    outs = balanced_gradients(method, num_tasks, grads, int(token), features or None)
    return [o.contiguous() for o in outs]


def _split_backward_fake(
    handle: int, token: Tensor, num_tasks: int, grads: list[Tensor], features: list[Tensor]
):
    K = len(grads) // num_tasks
    return [torch.empty(g.shape, dtype=g.dtype, device=g.device) for g in grads[:K]]


_SPLIT_BACKWARD = _custom_ops.define(
    "split_backward(int handle, Tensor token, int num_tasks, Tensor[] grads, Tensor[] features)"
    " -> Tensor[]",
    _split_backward_eager,
    _split_backward_fake,
)


def _zeros(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


class SplitFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, method: Weighting, num_tasks: int, token: Any, *features: Tensor):  # type: ignore[override]
        ctx.num_tasks = num_tasks
        ctx.num_features = len(features)
        ctx.keep_features = method.needs_features
        ctx.traced = isinstance(token, Tensor)
        saved = [token] if ctx.traced else []
        if method.needs_features:  # the row hooks read them (e.g. GradDrop's sgn(A))
            saved += list(features)
        ctx.save_for_backward(*saved)
        if ctx.traced:
            ctx.handle = method._compile_handle
            ctx.shapes = [(f.shape, f.dtype, f.device) for f in features]
        else:
            ctx.method = method
            ctx.token = token
        return tuple(f.view_as(f) for _ in range(num_tasks) for f in features)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor):  # type: ignore[override]
        T, K = ctx.num_tasks, ctx.num_features
        saved = ctx.saved_tensors
        if not ctx.traced:
            features = saved if ctx.keep_features else None
            outs = balanced_gradients(ctx.method, T, grads, ctx.token, features)
            return (None, None, None, *outs)
        token, features = saved[0], list(saved[1:])
        filled = [_zeros(*ctx.shapes[i % K]) if g is None else g for i, g in enumerate(grads)]
        outs = _SPLIT_BACKWARD(ctx.handle, token, T, filled, features)
        return (None, None, None, *outs)
