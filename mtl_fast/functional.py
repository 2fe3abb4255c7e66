"""The functional form: ``mtl_fast.backward(losses, features=z | params=shared, method=...)``.

For models whose forward cannot call :meth:`~mtl_fast.Weighting.split` (a fixed architecture, a
library model), and for the exact parameter-level variant of the gradient methods.

``features=z`` (the shared features, as ``split`` would receive them):

1. the per-task feature gradients J = [∇_z L̂_1; …; ∇_z L̂_T] come from ONE batched
   ``torch.autograd.grad`` through the heads (``is_grads_batched=True``, a vmapped backward;
   a loop of T calls where vmap fails), with L̂_t = c_t L_t the method's per-task terms (c_t = 1
   for gradient methods, e^{s_t} for IMTL): exactly the gradients ``split``'s backward receives;
2. the method's weights α from the Gram matrix of J (the same code as ``split``);
3. the method's total is back-propagated once, with a hook on z that replaces the gradient
   arriving at z by Σ_t α_t J_t: the heads get their ordinary gradients and the encoder is
   traversed once.

So the result equals ``split`` + ``method.loss(...).backward()``; the heads are traversed twice
(once batched for J, once for their own gradients). z must feed only the task heads: any other
gradient reaching z is replaced too.

``params=shared_params`` ("IMTL-G (exact)", Liu et al. 2021 §5): the per-task gradients of the
shared parameters themselves, g_t = ∇_θ L̂_t, by one batched backward (a loop where vmap fails);
G = Σ_p J_p J_pᵀ (the sum of the per-parameter Gram matrices is the Gram matrix of the
concatenated parameter gradients); each shared ``p.grad`` accumulates Σ_t α_t g_t (through
:func:`mtl_fast.combine` with ``out=p.grad``); every other leaf of the graph (task heads, the
method's own parameters such as IMTL's s_t, encoder parameters not listed) gets the ordinary
gradient of the method's total, by one more backward restricted to those leaves (found by
walking the graph's AccumulateGrad nodes), which does not re-enter the shared parameters' part
of the graph. It costs T backward passes' worth of memory for the shared parameters' gradients.

Under ``torch.distributed`` (see :mod:`mtl_fast.distributed`): with ``features=`` the Gram
matrix is all-reduced (T² numbers), as in ``split``; the final backward is an ordinary one, so
DDP averages every parameter gradient as usual. With ``params=`` the per-process Gram matrices
do NOT add up to the global one (the task gradient of the global batch is the average of the
per-process gradients, G = (Σ_r J_r)(Σ_r J_r)ᵀ/N²), so the T per-task gradients of the shared
parameters are averaged across processes (T·P numbers per step, T times what DDP sends for
those parameters) and every process writes the same Σ_t α_t ḡ_t into their ``.grad``. These
``.grad`` are written directly, so a ``DistributedDataParallel`` reducer does not see them: do
not let DDP manage the shared parameters in this mode (DDP would wait for them forever); the
other leaves (task heads) get their local gradients, to be averaged by DDP on a module without
the shared parameters, or by :func:`mtl_fast.distributed.average_gradients`.
"""

from __future__ import annotations

from typing import Iterable, Sequence, Union

import torch
from torch import Tensor

from mtl_fast import distributed
from mtl_fast._validation import as_task_rows
from mtl_fast.weighting import LossesLike, MaskLike, Weighting

FeaturesLike = Union[Tensor, Sequence[Tensor]]


def backward(
    losses: LossesLike,
    *,
    method: Weighting,
    features: FeaturesLike | None = None,
    params: Iterable[Tensor] | None = None,
    mask: MaskLike = None,
    retain_graph: bool = False,
    batched: bool | None = None,
) -> Tensor:
    """Back-propagate T task losses with the method's weighting, without ``split``.

    Args:
        losses: T scalar losses (a tensor [T] or a sequence of 0-d tensors).
        method: a :class:`~mtl_fast.Weighting`. Loss-based methods (and any method in
            ``eval()`` mode or under ``torch.no_grad``) simply back-propagate ``method.loss``;
            ``features``/``params`` are then not needed.
        features: the shared features z (a tensor or a sequence of tensors, e.g. multi-scale
            features) from which every task head starts. Mutually exclusive with ``params``.
        params: the shared parameters (leaf tensors): the exact parameter-level mode. Under
            ``torch.distributed`` their T per-task gradients are averaged across processes
            (T·P numbers) and their ``.grad`` is identical on every process (module docstring).
        mask: optional bool [T], False for tasks absent from the batch (see
            :meth:`~mtl_fast.Weighting.loss`).
        retain_graph: passed to the final backward.
        batched: ``None`` (default): one vmapped backward for the T task gradients, falling back
            to a loop of T backward calls when vmap fails; ``True``: vmapped only; ``False``: the
            loop.

    Returns:
        the method's total (detached), the scalar that was back-propagated.

    Raises:
        ValueError: both or neither of ``features``/``params`` for a gradient method, features
            or parameters that do not require grad, non-leaf parameters, a ``split`` pending.
    """
    if not isinstance(method, Weighting):
        raise TypeError(f"method must be a mtl_fast.Weighting; got {type(method).__name__}")
    active = method.gradient_based and method.training and torch.is_grad_enabled()
    if not active:
        total = method.loss(losses, mask)
        total.backward(retain_graph=retain_graph)
        return total.detach()
    if (features is None) == (params is None):
        raise ValueError(
            f"{type(method).__name__} is gradient-based: pass exactly one of features= (the "
            "shared features) or params= (the shared parameters, exact mode)"
        )
    if features is not None:
        inputs = _as_tensors(features, "features")
        for k, f in enumerate(inputs):
            if not f.requires_grad:
                raise ValueError(
                    f"features[{k}] does not require grad: pass the output of the shared encoder"
                )
            if not f.is_floating_point():
                raise TypeError(f"features[{k}] must be floating point; got {f.dtype}")
    else:
        inputs = _as_tensors(params, "params")
        for k, p in enumerate(inputs):
            if not p.requires_grad:
                raise ValueError(f"params[{k}] does not require grad")
            if not p.is_leaf:
                raise ValueError(
                    f"params[{k}] is not a leaf tensor: params= takes the shared parameters "
                    "(use features= for intermediate tensors)"
                )
    method.discard_pending()  # a split of an abandoned step: this call drives the step itself
    prepared = method.prepare_losses(losses, mask)
    safe = prepared.safe
    total = method.record_loss(prepared)
    try:
        scales = method.loss_gradient_scales()
        jac = _task_gradients(safe, inputs, scales, batched)
        # Exact mode under torch.distributed: the global task gradients of shared parameters
        # are the averages of the per-process ones (module docstring): average them first.
        reduced = params is not None and method.synchronising
        if reduced:
            distributed.all_reduce_mean_many_(jac, method.process_group)
        rows = [as_task_rows(j, name="task gradients") for j in jac]
        if features is not None:
            alpha = method.balance(rows, reduced=reduced, kind="features", features=inputs)
        else:
            alpha = method.balance(rows, reduced=reduced, kind="params")
    finally:
        method.discard_pending()
    if features is not None:
        _backward_through_features(total, inputs, rows, alpha, method, retain_graph)
    else:
        _backward_exact(total, inputs, rows, alpha, method, retain_graph)
    return total.detach()


def _as_tensors(x, name: str) -> tuple[Tensor, ...]:
    if isinstance(x, Tensor):
        return (x,)
    try:
        items = tuple(x)
    except TypeError:
        raise TypeError(f"{name} must be a Tensor or a sequence of Tensors") from None
    if not items:
        raise ValueError(f"{name} is empty")
    for k, t in enumerate(items):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{k}] must be a Tensor; got {type(t).__name__}")
    return items


def _task_gradients(
    safe: Tensor, inputs: tuple[Tensor, ...], scales: Tensor | None, batched: bool | None
) -> list[Tensor]:
    """[T, *x.shape] per input: row t = ∇_x (c_t · safe_t), zeros where x is unreachable."""
    T = safe.shape[0]
    if not safe.requires_grad:  # every task absent (or constant losses): no gradient anywhere
        return [torch.zeros((T, *x.shape), dtype=x.dtype, device=x.device) for x in inputs]
    eye = torch.eye(T, dtype=safe.dtype, device=safe.device)
    seeds = eye if scales is None else eye * scales.to(safe.device, safe.dtype)[None, :]
    if batched is not False:
        try:
            grads = torch.autograd.grad(
                safe,
                inputs,
                grad_outputs=seeds,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            return [
                torch.zeros((T, *x.shape), dtype=x.dtype, device=x.device) if g is None else g
                for g, x in zip(grads, inputs)
            ]
        except RuntimeError:
            if batched:
                raise
    per_task = []
    for t in range(T):
        per_task.append(
            torch.autograd.grad(
                safe, inputs, grad_outputs=seeds[t], retain_graph=True, allow_unused=True
            )
        )
    out = []
    for k, x in enumerate(inputs):
        rows = [torch.zeros_like(x) if g[k] is None else g[k] for g in per_task]
        out.append(torch.stack(rows))
    return out


def _backward_through_features(
    total: Tensor,
    features: tuple[Tensor, ...],
    rows: list,
    alpha: Tensor,
    method: Weighting,
    retain_graph: bool,
) -> None:
    def make_hook(k: int, r):
        def hook(_grad: Tensor) -> Tensor:
            return method.combine(r, alpha, index=k)

        return hook

    handles = [f.register_hook(make_hook(k, r)) for k, (f, r) in enumerate(zip(features, rows))]
    try:
        if total.requires_grad:
            total.backward(retain_graph=retain_graph)
    finally:
        for h in handles:
            h.remove()


def _backward_exact(
    total: Tensor,
    params: tuple[Tensor, ...],
    rows: list,
    alpha: Tensor,
    method: Weighting,
    retain_graph: bool,
) -> None:
    for k, (p, r) in enumerate(zip(params, rows)):
        w = alpha.to(p.device)
        if p.grad is None:
            p.grad = method.combine(r, w, index=k).to(p.dtype)
        else:
            method.combine(r, w, index=k, out=p.grad)
    if not total.requires_grad:
        return
    shared = {id(p) for p in params}
    others = [leaf for leaf in graph_leaves(total) if id(leaf) not in shared]
    if others:
        torch.autograd.backward(total, inputs=others, retain_graph=retain_graph)


def graph_leaves(output: Tensor) -> list[Tensor]:
    """The leaf tensors requiring grad that ``output`` depends on (its AccumulateGrad nodes), in
    the order of a depth-first walk of its graph."""
    root = output.grad_fn
    if root is None:
        return [output] if output.requires_grad else []
    leaves: list[Tensor] = []
    seen: set[int] = set()
    # The Python wrappers of autograd nodes can be created on access and freed afterwards (torch
    # 2.11 does), so a freed wrapper's id may be reused by another node's: keep every visited
    # wrapper alive for the walk, so that ids stay unique.
    visited: list[object] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        visited.append(node)
        var = getattr(node, "variable", None)
        if var is not None and isinstance(var, Tensor):
            leaves.append(var)
            continue
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                stack.append(nxt)
    return leaves
