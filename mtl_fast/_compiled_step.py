"""A method's training step under ``torch.compile`` (docs/compile_and_amp.md).

What a method does in a step is Python bookkeeping around small tensors: counters, the step's
snapshot and commit, tokens, statistics, random streams (:mod:`mtl_fast._step`). Traced by Dynamo
it would be specialised on every counter (one recompilation per step) and broken at every host
read. Under ``torch.compile`` the step is therefore three custom operators
(:mod:`mtl_fast._custom_ops`) whose run-time implementations are the eager code itself:

* ``open_split`` (in :meth:`~mtl_fast.Weighting.split` of a gradient method): rolls back an
  abandoned step, polls lazy non-finite flags and opens the split
  (:meth:`~mtl_fast.Weighting.open_split`) and returns the split's token. Every operator of the
  step writes the method's one-element order tensor (declared in its schema; its value is never
  read), so the compiler keeps them in program order. The split's backward is
  ``split_backward`` (:mod:`mtl_fast._split`).
* ``method_loss`` (in :meth:`~mtl_fast.Weighting.loss`): runs the eager ``loss()`` on a detached
  copy of the losses and returns its value, the coefficients c_t = ∂total/∂L_t and the gradients
  of the total with respect to the method's own parameters (concatenated in one tensor: a
  mutating operator cannot return a list) (uncertainty log-variances, IMTL's
  s_t, ...). The traced total is the first-order expansion around the step's losses, exact for
  one backward:

      total = value,   ∂total/∂L_t = c_t,   ∂total/∂p = ∂value/∂p.

* ``commit_step`` runs in the backward of that total: the hooks the eager total would have carried
  (the commit of the step's update, the wait for deferred collectives), so a step abandoned
  before its backward is rolled back exactly as in eager mode.

Not traced, hence not recompiled: every counter and statistic stays in Python. What is traced is
the validation of shapes, dtypes and devices (guards) and the first-order total. Not supported
in a compiled region: double backward through the total (``create_graph=True``), ``scaler=``
(AMP: compile the model, keep ``loss`` and the scaler calls eager).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from mtl_fast import _custom_ops
from mtl_fast._losses import LossesLike, MaskLike, as_losses
from mtl_fast._split import SplitFunction

if TYPE_CHECKING:
    from mtl_fast.weighting import Weighting


# --------------------------------------------------------------------------- operators


def _open_split_eager(order: Tensor, handle: int, features: list[Tensor]) -> Tensor:
    del features  # inputs only to order the operator after the encoder's forward
    order.add_(1)
    return torch.tensor(_custom_ops.lookup(handle).open_split("split"), dtype=torch.int64)


def _open_split_fake(order: Tensor, handle: int, features: list[Tensor]) -> Tensor:
    return torch.empty((), dtype=torch.int64, device="cpu")


_OPEN_SPLIT = _custom_ops.define(
    "open_split(Tensor(a!) order, int handle, Tensor[] features) -> Tensor",
    _open_split_eager,
    _open_split_fake,
)


def _flat_dtype(params: list[Tensor], losses: Tensor) -> torch.dtype:
    """The dtype carrying every parameter's gradient exactly (their promotion)."""
    dtype = params[0].dtype if params else losses.dtype
    for p in params[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _method_loss_eager(
    order: Tensor,
    handle: int,
    losses: Tensor,
    mask: Tensor | None,
    names: list[str] | None,
    params: list[Tensor],
    grad_enabled: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    order.add_(1)  # program order: after open_split, before the step's later operators
    method = _custom_ops.lookup(handle)
    book = method._book
    with torch.set_grad_enabled(grad_enabled):
        leaf = losses.detach().clone().requires_grad_(grad_enabled)
        given: LossesLike = leaf if names is None else dict(zip(names, leaf.unbind(0)))
        own = [p for p in method.parameters() if p.requires_grad]
        hooks = book.collect_backward_hooks()
        try:
            total = method.loss(given, mask)
        finally:
            book.stop_collecting()
        coeffs: Tensor | None = None
        grads: Sequence[Tensor | None] = [None] * len(own)
        if total.requires_grad:
            coeffs, *grads = torch.autograd.grad(total, [leaf, *own], allow_unused=True)
    token = book.keep_backward_hooks(hooks) if total.requires_grad else 0
    dtype = _flat_dtype(params, losses)
    flat = [torch.zeros(p.numel()) if g is None else g.flatten() for p, g in zip(own, grads)]
    return (
        total.detach().to(losses.dtype).clone(),
        torch.zeros_like(losses) if coeffs is None else coeffs.to(losses.dtype),
        torch.cat([f.to(dtype=dtype, device=losses.device) for f in flat])
        if flat
        else losses.new_zeros(0),
        torch.tensor(token, dtype=torch.int64),
    )


def _method_loss_fake(
    order: Tensor,
    handle: int,
    losses: Tensor,
    mask: Tensor | None,
    names: list[str] | None,
    params: list[Tensor],
    grad_enabled: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    numel = sum(p.numel() for p in params)
    return (
        losses.new_empty(()),
        torch.empty_like(losses),
        losses.new_empty((numel,), dtype=_flat_dtype(params, losses)),
        torch.empty((), dtype=torch.int64, device="cpu"),
    )


_METHOD_LOSS = _custom_ops.define(
    "method_loss(Tensor(a!) order, int handle, Tensor losses, Tensor? mask, str[]? names, "
    "Tensor[] params, bool grad_enabled) -> (Tensor, Tensor, Tensor, Tensor)",
    _method_loss_eager,
    _method_loss_fake,
)


def _commit_step_eager(handle: int, token: Tensor, grad: Tensor) -> Tensor:
    method = _custom_ops.lookup(handle)
    for hook in method._book.take_backward_hooks(int(token)):
        hook(grad)
    return grad.clone()


def _commit_step_fake(handle: int, token: Tensor, grad: Tensor) -> Tensor:
    return torch.empty_like(grad)


_COMMIT_STEP = _custom_ops.define(
    "commit_step(int handle, Tensor token, Tensor grad) -> Tensor",
    _commit_step_eager,
    _commit_step_fake,
)


# --------------------------------------------------------------------------- traced step


class _FirstOrderTotal(torch.autograd.Function):
    """The compiled step's total: ``value`` forward; backward ``c_t`` to the losses and the
    given gradients to the method's parameters, after ``commit_step``."""

    @staticmethod
    def forward(
        ctx: Any,
        handle: int,
        token: Tensor,
        value: Tensor,
        coeffs: Tensor,
        losses: Tensor,
        *params_and_grads: Tensor,
    ):  # type: ignore[override]
        n = len(params_and_grads) // 2
        ctx.handle = handle
        ctx.num_params = n
        ctx.save_for_backward(token, coeffs, *params_and_grads[n:])
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        token, coeffs, *param_grads = ctx.saved_tensors
        grad = _COMMIT_STEP(ctx.handle, token, grad)
        n = ctx.num_params
        return (
            None,
            None,
            None,
            None,
            grad * coeffs,
            *(grad * g for g in param_grads),
            *([None] * n),
        )


def traced_split(method: Weighting, num_tasks: int, features: Sequence[Tensor]) -> tuple:
    """The outputs of ``split``'s Function for a gradient method in training, under
    ``torch.compile`` (module docstring)."""
    token = _OPEN_SPLIT(method._compile_order, method._compile_handle, list(features))
    return SplitFunction.apply(method, num_tasks, token, *features)


def _mask_tensor(mask: MaskLike, device: torch.device) -> Tensor | None:
    if mask is None or isinstance(mask, Tensor):
        return mask
    return torch.tensor([bool(b) for b in mask], dtype=torch.bool, device=device)


def traced_loss(method: Weighting, losses: LossesLike, mask: MaskLike) -> Tensor:
    """:meth:`~mtl_fast.Weighting.loss` under ``torch.compile`` (module docstring)."""
    _, L, names = as_losses(losses, type(method).__name__)
    params = [p for p in method.parameters() if p.requires_grad]
    grad_enabled = torch.is_grad_enabled()
    value, coeffs, flat_grads, token = _METHOD_LOSS(
        method._compile_order,
        method._compile_handle,
        L.detach(),
        _mask_tensor(mask, L.device),
        names,
        [p.detach() for p in params],
        grad_enabled,
    )
    if not grad_enabled:
        return value
    sizes = [p.numel() for p in params]
    param_grads = [g.view(p.shape).to(p.dtype) for g, p in zip(flat_grads.split(sizes), params)]
    return _FirstOrderTotal.apply(
        method._compile_handle, token, value, coeffs, L, *params, *param_grads
    )
