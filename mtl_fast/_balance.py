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

On one process with CPU rows, :func:`native_balance` does steps 1, 2 and 4 and the combine in
one native call (:func:`mtl_fast._native_passes.balance_rows`) when the method's solve is a native
one (:meth:`mtl_fast.Weighting.native_solve`), and steps 1 and 2 when it is not.

A scaled step (:mod:`mtl_fast.amp`, ``inputs.grad_scale`` = s) solves on G / s², the Gram matrix of
the true gradients; there a non-finite gradient is an overflow the scaler will skip, not an
error: nothing is reported and α is NaN, so the combined gradient carries the overflow.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from mtl_fast import _native_passes, distributed, ops
from mtl_fast import _solve_constants as SC
from mtl_fast._losses import StepInputs
from mtl_fast._nonfinite import NonFiniteMonitor
from mtl_fast._validation import TaskRows, nonfinite_task_message


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


def native_serves(rows: Sequence[TaskRows]) -> bool:
    """:func:`native_balance` can run this step: one feature tensor's CPU rows the native passes
    read."""
    return len(rows) == 1 and _native_passes.serves(rows[0])


def native_solver_options(solver: str, num_tasks: int, dtype: torch.dtype) -> dict[str, Any]:
    """The keywords of the native ``solver`` for T tasks and rows of ``dtype``
    (:mod:`mtl_fast._solve_constants`, read at each call)."""
    if solver == "imtl_g":
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        return SC.native_imtl_g_options(acc)
    return SC.native_mgda_options(num_tasks)


def native_balance(
    rows: TaskRows,
    inputs: StepInputs | None,
    solver: str | None,
    *,
    monitor: NonFiniteMonitor,
    step: int,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Rules 1, 2 and 4 of the module docstring for one process's CPU rows, in one native call:
    the masked G, α float32 [T] (weight 0 where G_tt = 0) and Σ α_t g_t, as (G, α, Σ); with
    ``solver=None`` (the method's solve is Python) the masked G only, as (G, None, None).

    Raises:
        ValueError: a present task's gradient is non-finite (through ``monitor``, naming it), or
            the masked G holds NaN/Inf (the native solve's check, as :func:`ops.imtl_g_weights`).
    """
    T = rows.num_tasks
    present = None if inputs is None else inputs.present
    options = {} if solver is None else native_solver_options(solver, T, rows.dtype)
    got = _native_passes.balance_rows(rows, present, solver, options, combine=True)
    if isinstance(got, _native_passes.BadStep):
        if got.tasks:
            bad = torch.zeros(T, dtype=torch.bool)
            bad[got.tasks] = True
            monitor.report(bad, "gradient", step)  # raises on the CPU
            raise ValueError(nonfinite_task_message(got.tasks))
        raise ValueError(nonfinite_task_message(got.gram_rows, "Gram matrix row"))
    return got
