"""Mixed precision with a gradient scaler: the contract of ``method.loss(losses, scaler=scaler)``.

With fp16 autocast a :class:`torch.amp.GradScaler` multiplies the total by its scale s before
the backward, so every gradient the method sees is s times the true one, and an overflowing
step (Inf/NaN gradients) is normal: the scaler skips ``optimizer.step`` and shrinks s. Passing
the scaler to :meth:`mtl_fast.Weighting.loss` tells the method both things
(docs/compile_and_amp.md)::

    scaler = torch.amp.GradScaler(device)
    for x, ys in loader:
        with torch.autocast(device, dtype=torch.float16):
            zs = method.split(encoder(x))
            losses = [crit[t](heads[t](zs[t]), ys[t]) for t in range(T)]
        optimizer.zero_grad()
        method.loss(losses, scaler=scaler).backward()   # = scaler.scale(total): do not scale again
        scaler.step(optimizer)
        scaler.update()

1. ``loss`` returns ``scaler.scale(total)`` and records the step's scale s (a device tensor,
   no sync).
2. The solve sees the unscaled Gram matrix G / s² (exact: s is a power of two), so the weights
   are those of an unscaled step for every method, the scale-sensitive ones included (GradNorm,
   DB-MTL, Nash-MTL, MGDA with loss normalisation, FairGrad, ...). The combined gradient stays
   scaled, as the scaler expects; GradNorm's own gradient is written scaled too, and DB-MTL's
   gradient EMA holds unscaled gradients.
3. Non-finite feature gradients in a scaled step are an overflow, not an error: no exception,
   the combined gradient is NaN (so the scaler is certain to see the overflow and skip), and the
   reported weights are left as they were.
4. The step's update of the method (statistics, counters, periods, random streams, EMA, last
   weights) is provisional until the scaler decides: if ``scaler.step`` skipped the step (it
   found Inf/NaN in any gradient, whether the method saw it or not), the update is rolled back
   and the method is exactly as if the step had not happened; otherwise it is kept. The verdict
   is what ``scaler.update()`` consumes (the scaler's per-optimizer ``found_inf``), recorded when
   ``update()`` runs and read at the start of the next step. With gradient accumulation every
   micro-batch up to ``update()`` belongs to the same optimizer step.

``loss(..., scaler=)`` wraps the ``update`` method of that scaler instance once (the way PyTorch's
learning-rate schedulers wrap ``optimizer.step``): the wrapper records the verdict and then calls
the original. On the CPU the verdict is a host bool. On CUDA it is copied to pinned memory with
a non-blocking copy behind the scaler's own update and read through an event at the next step:
no host synchronisation of the current stream (``scaler.step`` with an ordinary optimizer has
synchronised anyway; with a fused optimizer the next step waits at most for the previous step's
``update`` to finish on the device).

A disabled scaler (``GradScaler(enabled=False)``) is the same as none.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ScalerWatch", "grad_scale", "is_scaling", "scale_total", "watch"]

#: Verdicts kept per scaler (older ones belong to steps that were settled long ago).
_KEPT_VERDICTS = 8


@dataclass
class _Verdict:
    skipped: bool | None  # known on the host (CPU scalers)
    flag: Tensor | None = None  # bool, pinned host memory, filled by a non-blocking copy
    event: torch.cuda.Event | None = None

    def read(self) -> bool:
        if self.skipped is None:
            assert self.flag is not None
            if self.event is not None and not self.event.query():
                # Recorded behind the scaler's update: waits for that update only.
                self.event.synchronize()
            self.skipped = bool(self.flag)
        return self.skipped


class ScalerWatch:
    """What mtl_fast keeps about one :class:`torch.amp.GradScaler`: how many times ``update()``
    ran and, for each run, whether the scaler skipped the optimizer step it closed."""

    def __init__(self) -> None:
        #: Number of ``update()`` calls seen since the watch began.
        self.updates = 0
        self._verdicts: dict[int, _Verdict] = {}

    def record(self, found_inf: Tensor | None) -> None:
        """Called by the wrapped ``update()`` with the sum of the scaler's ``found_inf`` flags
        (``None`` when the scaler recorded none; the original ``update()`` then raises)."""
        self.updates += 1
        if found_inf is None:
            verdict = _Verdict(skipped=False)
        elif found_inf.device.type == "cuda":
            flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            flag.copy_(found_inf > 0, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            verdict = _Verdict(skipped=None, flag=flag, event=event)
        else:
            verdict = _Verdict(skipped=bool(found_inf > 0))
        self._verdicts[self.updates] = verdict
        self._verdicts.pop(self.updates - _KEPT_VERDICTS, None)

    def skipped(self, update: int) -> bool:
        """Whether the ``update``-th ``update()`` (1-based) closed a skipped step."""
        verdict = self._verdicts.get(update)
        if verdict is None:
            raise RuntimeError(
                f"mtl_fast.amp: the verdict of GradScaler.update() number {update} is no longer "
                "kept; call method.loss(..., scaler=scaler) at every step"
            )
        return verdict.read()


_WATCHES: weakref.WeakKeyDictionary[Any, ScalerWatch] = weakref.WeakKeyDictionary()


def is_scaling(scaler: Any) -> bool:
    """Whether ``scaler`` scales the loss (a :class:`torch.amp.GradScaler` that is enabled);
    ``None`` and disabled scalers do not. Raises ``TypeError`` for anything else."""
    if scaler is None:
        return False
    if not (hasattr(scaler, "scale") and hasattr(scaler, "update") and hasattr(scaler, "step")):
        raise TypeError(
            f"scaler must be a torch.amp.GradScaler (or torch.cuda.amp.GradScaler); got "
            f"{type(scaler).__name__}"
        )
    return bool(scaler.is_enabled())


def _found_inf(scaler: Any) -> Tensor | None:
    """The sum of the scaler's per-optimizer ``found_inf`` flags (what ``update()`` reads)."""
    flags = [
        flag.reshape(()).to(torch.float32)
        for state in getattr(scaler, "_per_optimizer_states", {}).values()
        for flag in state.get("found_inf_per_device", {}).values()
    ]
    if not flags:
        return None
    device = flags[0].device
    return torch.stack([f.to(device, non_blocking=True) for f in flags]).sum()


def _watched_update(scaler: Any, original: Any, new_scale: Any = None) -> None:
    found = _found_inf(scaler)
    original(new_scale)  # raises, as it would unwrapped, when no inf checks were recorded
    w = _WATCHES.get(scaler)
    if w is not None:
        w.record(found)


def _is_watched(update: Any) -> bool:
    return isinstance(update, functools.partial) and update.func is _watched_update


def watch(scaler: Any) -> ScalerWatch:
    """The :class:`ScalerWatch` of ``scaler``, wrapping its ``update`` on first use (the instance
    attribute ``update``; the class and other scalers are untouched)."""
    w = _WATCHES.get(scaler)
    if w is None:
        w = _WATCHES[scaler] = ScalerWatch()
        if not _is_watched(scaler.__dict__.get("update")):
            scaler.update = functools.partial(_watched_update, scaler, scaler.update)
    return w


def grad_scale(scaler: Any) -> Tensor:
    """The scaler's current scale s as a new float32 tensor on its device (no sync)."""
    scale = scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else scaler._scale
    if scale is None:
        raise RuntimeError("mtl_fast.amp: the GradScaler has no scale yet (call scale() first)")
    return scale.detach().to(torch.float32).clone()


def scale_total(scaler: Any, total: Tensor) -> tuple[Tensor, Tensor]:
    """(``scaler.scale(total)``, the scale it used)."""
    scaled = scaler.scale(total)
    return scaled, grad_scale(scaler)
