"""Helpers of the methods that act on the task gradients themselves (the row hooks of
:class:`mtl_fast.Weighting`, :mod:`mtl_fast._row_step`): an EMA kept per task and written into
the step's rows (DB-MTL as published, MoCo's tracked gradients), the buffers it lives in, and
the check that the rows may be rewritten.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtl_fast import ops
from mtl_fast._row_step import refuse_gram_only
from mtl_fast._validation import TaskRows

__all__ = [
    "ema_buffers",
    "ema_rows_",
    "ema_rows_masked_",
    "refuse_gram_only",
    "squared_norms",
    "writable_rows",
]


def squared_norms(rows: Sequence[TaskRows], backend: str) -> Tensor:
    """‖g_t‖² [T] (float64) of the concatenated rows, by one Gram pass per feature tensor (the
    fused, sync-free pass: NaN/Inf in a row, or an overflowing norm, make its entry
    non-finite, as they make the base class drop the task)."""
    T = rows[0].num_tasks
    out = torch.zeros(T, dtype=torch.float64, device=rows[0].device)
    for r in rows:
        out = out + ops.gram_rows(r, backend=backend).diagonal().to(torch.float64)
    return out


def writable_rows(rows: TaskRows, who: str) -> tuple[Tensor, ...]:
    """The T rows of one feature tensor, checked not to share memory (they are rewritten in
    place, so two tasks handed the same buffer would overwrite each other)."""
    views = rows.rows
    if rows.stacked is None and len({g.data_ptr() for g in views}) < len(views):
        raise RuntimeError(
            f"{who} rewrites the task gradients in place but received task gradients that share "
            "memory (two heads returned the same gradient tensor)"
        )
    return views


def ema_rows_(
    buf: Tensor,
    rows: Sequence[Tensor],
    keep: Tensor,
    update: Tensor,
    scale: Tensor | None = None,
    grad_scale: Tensor | None = None,
) -> None:
    """Per task t with ``update[t]``: buf[t] ← keep_t buf[t] + (1 − keep_t) c_t g_t / s, then the
    row g_t ← s buf[t] (in the row's dtype); other tasks keep both. ``keep`` [T] (the EMA factor
    β_k), ``scale`` c [T] (default 1), ``grad_scale`` s: the gradient scaler's factor of a scaled
    step (:mod:`mtl_fast.amp`; default 1), so that the buffer holds unscaled gradients and the
    rows stay scaled. No host synchronisation on accelerators (the choices are ``torch.where``
    on device booleans); on the CPU, where reading them is free, the update is done in place
    (three passes over a row: scale, add, copy back)."""
    if buf.device.type == "cpu" and (grad_scale is None or grad_scale.device.type == "cpu"):
        keeps = keep.tolist()
        scales = None if scale is None else scale.tolist()
        s = 1.0 if grad_scale is None else float(grad_scale)
        for t, (g, up) in enumerate(zip(rows, update.tolist())):
            if not up:
                continue
            c = 1.0 if scales is None else scales[t]
            buf[t].mul_(keeps[t]).add_(g, alpha=(1.0 - keeps[t]) * c / s)
            g.copy_(buf[t] if s == 1.0 else buf[t] * s)
        return
    ema_rows_masked_(buf, rows, keep, update, scale, grad_scale)


def ema_rows_masked_(
    buf: Tensor,
    rows: Sequence[Tensor],
    keep: Tensor,
    update: Tensor,
    scale: Tensor | None = None,
    grad_scale: Tensor | None = None,
) -> None:
    """:func:`ema_rows_` without reading ``keep``, ``update``, ``scale`` or ``grad_scale`` on the
    host (the accelerator path; also runs on the CPU)."""
    s = None if grad_scale is None else grad_scale.to(device=buf.device, dtype=buf.dtype)
    for t, g in enumerate(rows):
        bt = keep[t].to(buf.dtype)
        x = g.to(buf.dtype)
        if scale is not None:
            x = scale[t].to(buf.dtype) * x
        if s is not None:
            x = x / s
        new = bt * buf[t] + (1.0 - bt) * x
        buf[t] = torch.where(update[t], new, buf[t])
        row = buf[t] if s is None else buf[t] * s
        g.copy_(torch.where(update[t], row.to(g.dtype), g))


def ema_buffers(
    current: list[Tensor] | None, rows: Sequence[TaskRows], who: str, fix: str
) -> list[Tensor]:
    """The EMA buffers, one [T, D_k] tensor per feature tensor: zeros at the first step
    (float32; float64 for float64 rows), else ``current`` on the rows' device. Raises
    ``ValueError`` naming ``fix`` when the gradients' shapes changed (the EMA is indexed by
    coordinate, e.g. by sample position at the feature level)."""
    shapes = [(r.num_tasks, r.numel) for r in rows]
    if current is None:
        return [
            torch.zeros(
                shape,
                dtype=torch.float64 if r.dtype == torch.float64 else torch.float32,
                device=r.device,
            )
            for shape, r in zip(shapes, rows)
        ]
    have = [tuple(b.shape) for b in current]
    if have != shapes:
        raise ValueError(
            f"{who} keeps an EMA of the task gradients of shapes {have} but this step's are "
            f"{shapes}: {fix}"
        )
    return [b.to(r.device) for b, r in zip(current, rows)]
