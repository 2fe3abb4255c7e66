"""The balance policy of gradient methods: from a process's Gram matrix to the weights α.

Between the Gram matrix G [T, T] of the task gradients (formed by ``split``'s backward,
:func:`mtl_fast.backward` or a structured layer) and a method's solve
(:meth:`mtl_fast.Weighting.gram_weights`) sit the rules every gradient method shares
(docs/design.md, "Absent tasks and bad input"):

1. absent tasks (mask, non-finite loss) get zero rows and columns of G;
2. a task whose gradient is non-finite (a non-finite diagonal entry) is dropped the same way and
   reported to the non-finite monitor;
3. under ``torch.distributed`` one collective gives every process the global G = Σ_r G_r / N²,
   the task status of all processes and, when the solve needs them, the loss values averaged
   over the processes where each task is present (:func:`mtl_fast.distributed.reduce_gram`);
4. the solve runs on the global G; a task with a zero diagonal (no gradient) gets weight 0.

A scaled step (:mod:`mtl_fast.amp`, ``inputs.grad_scale`` = s) solves on G / s², the Gram matrix of
the true gradients; there a non-finite gradient is an overflow the scaler will skip, not an
error: nothing is reported and α is NaN, so the combined gradient carries the overflow.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from mtl_fast import distributed, ops
from mtl_fast._losses import StepInputs
from mtl_fast._nonfinite import NonFiniteMonitor
from mtl_fast._validation import TaskRows


def gram_of_features(rows: Sequence[TaskRows], backend: str) -> Tensor:
    """The Gram matrix of the concatenation of several feature tensors' task gradients."""
    G = ops.gram_rows(rows[0], backend=backend)
    for r in rows[1:]:
        G = G + ops.gram_rows(r, backend=backend)
    return G


def _pair(m: Tensor) -> Tensor:
    return m[:, None] & m[None, :]


def balance_gram(
    G: Tensor,
    inputs: StepInputs | None,
    solve: Callable[[Tensor, StepInputs], Tensor],
    *,
    monitor: NonFiniteMonitor,
    step: int,
    sync: bool,
    group: Any,
    needs_losses: bool,
    reduced: bool = False,
) -> Tensor:
    """α [T] (float32 on G's device) from this process's G (module docstring).

    ``inputs``: what ``loss()`` recorded (``None``: every task present, no loss values).
    ``solve``: the method's ``gram_weights``. ``sync``: whether to reduce across processes.
    ``reduced``: G is already the global Gram matrix (the exact parameter mode averaged the task
    gradients themselves); only the task status and losses are combined.
    """
    device = G.device
    T = G.shape[0]
    if inputs is None:
        inputs = StepInputs(
            losses=torch.zeros(T, device=device),
            present=torch.ones(T, dtype=torch.bool, device=device),
        )
    present = inputs.present.to(device)
    losses = inputs.losses.to(device)
    scale = inputs.grad_scale
    if scale is not None:
        s = scale.to(device=device, dtype=G.dtype)
        G = G / (s * s)  # exact: the scale is a power of two
    if sync and reduced:
        no = torch.zeros_like(present)
        _, present, _, avg = distributed.reduce_gram(
            None, present, no, losses if needs_losses else None, group
        )
        if avg is not None:
            losses = avg
    G = torch.where(_pair(present), G, 0.0)
    bad = present & ~torch.isfinite(G.diagonal())
    ok = present & ~bad
    G = torch.where(_pair(ok), G, 0.0)
    if sync and not reduced:
        G_global, ok, bad, avg = distributed.reduce_gram(
            G, ok, bad, losses if needs_losses else None, group
        )
        assert G_global is not None
        G = G_global
        if avg is not None:
            losses = avg
    if scale is None:
        monitor.report(bad, "gradient", step)
    alpha = solve(G, StepInputs(losses=losses, present=ok, grad_scale=scale))
    alpha = torch.where(G.diagonal() > 0, alpha.to(torch.float32), 0.0)
    if scale is not None:
        alpha = torch.where(bad.any(), torch.full_like(alpha, float("nan")), alpha)
    return alpha
