"""A step's inputs: the T task losses and the mask, validated once, with the non-finite policy.

:func:`prepare_losses` turns what a training loop passes to :meth:`mtl_fast.Weighting.loss`
(a tensor [T], a sequence of T scalar tensors, or a dict ``{task name: loss}``) and an optional
mask into the differentiable losses with absent tasks set to 0 and the bool [T] of present
tasks. It reads nothing on the host for losses on an accelerator (docs/design.md, "No host
synchronisation"); on the CPU the mask is also known as a host list, so absent losses can stay
out of the graph altogether.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from mtl_fast._nonfinite import NonFiniteMonitor

LossesLike = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]
MaskLike = Union[Tensor, Sequence[bool], None]

NONFINITE_POLICIES = ("raise", "absent")


@dataclass
class StepInputs:
    """What :meth:`mtl_fast.Weighting.loss` hands to the solve that runs in ``split``'s
    backward: the detached losses [T] (absent tasks: 0) and the bool [T] of present tasks."""

    losses: Tensor
    present: Tensor
    #: The gradient scaler's scale s of a scaled step (mtl_fast.amp), else None.
    grad_scale: Tensor | None = None


@dataclass
class PreparedLosses:
    """Validated losses of one step (:func:`prepare_losses`)."""

    safe: Tensor  # differentiable [T], absent tasks set to 0
    present: Tensor  # bool [T] on the losses' device
    names: list[str] | None  # task names when the losses came as a dict


def as_losses(
    losses: LossesLike, owner: str
) -> tuple[list[Tensor] | None, Tensor, list[str] | None]:
    """(the T scalar losses when given as a sequence or dict, else None; the losses as a [T]
    tensor; the task names when given as a dict, else None). ``owner`` names the method in
    messages."""
    names: list[str] | None = None
    if isinstance(losses, Mapping):
        names = [str(k) for k in losses.keys()]
        losses = list(losses.values())
        label = [f"losses[{n!r}]" for n in names]
    if isinstance(losses, Tensor):
        if losses.dim() != 1 or losses.numel() == 0:
            raise ValueError(
                f"{owner}: losses must be a 1-D tensor [T] of scalar task losses; got shape "
                f"{tuple(losses.shape)} (reduce each task's loss to a scalar first)"
            )
        items, L = None, losses
    else:
        try:
            items = list(losses)
        except TypeError:
            raise TypeError(
                f"{owner}: losses must be a Tensor [T], a sequence of scalar tensors or a dict "
                f"{{task name: scalar tensor}}; got {type(losses).__name__}"
            ) from None
        if not items:
            raise ValueError(f"{owner}: losses is empty")
        if names is None:
            label = [f"losses[{t}]" for t in range(len(items))]
        for t, x in enumerate(items):
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"{owner}: {label[t]} must be a Tensor; got {type(x).__name__} (pass a "
                    "tensor [T], a list of scalar tensors or a dict {task name: loss})"
                )
            if x.numel() != 1:
                raise ValueError(
                    f"{owner}: {label[t]} must be a scalar; got shape {tuple(x.shape)} "
                    "(reduce each task's loss to a scalar first)"
                )
        devices = {x.device for x in items}
        if len(devices) > 1:
            raise ValueError(f"{owner}: losses are on several devices: {sorted(map(str, devices))}")
        L = torch.stack([x.reshape(()) for x in items])
    if not L.is_floating_point():
        raise TypeError(f"{owner}: losses must be floating point; got {L.dtype}")
    return items, L, names


def present_mask(
    L: Tensor,
    mask: MaskLike,
    *,
    nonfinite: str,
    monitor: NonFiniteMonitor,
    step: int,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, list[bool] | None]:
    """(present bool [T] on L's device, the same as a host list when known without a sync).

    Without a mask a non-finite loss is reported to ``monitor`` (``nonfinite="raise"``) or marks
    its task absent (``"absent"``); with a mask it marks its task absent."""
    T = L.shape[0]
    finite = torch.isfinite(L.detach())
    if mask is None:
        if nonfinite == "raise":
            monitor.report(~finite, "loss", step, names=None if names is None else list(names))
        host = finite.tolist() if L.device.type == "cpu" else None
        return finite, host
    if isinstance(mask, Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor; got {mask.dtype}")
        if mask.shape != (T,):
            raise ValueError(f"mask must have shape ({T},); got {tuple(mask.shape)}")
        host = mask.tolist() if mask.device.type == "cpu" else None
        m = mask.to(L.device, non_blocking=True)
    else:
        host = list(mask)
        if len(host) != T or not all(isinstance(b, (bool, int, np.bool_)) for b in host):
            raise ValueError(f"mask must be {T} booleans; got {mask!r}")
        host = [bool(b) for b in host]
        m = torch.tensor(host, dtype=torch.bool).to(L.device, non_blocking=True)
    present = m & finite
    if host is not None and L.device.type == "cpu":
        host = present.tolist()
    elif host is not None:
        host = None  # a NaN on the device may still remove a task: stay on the device path
    return present, host


def prepare_losses(
    losses: LossesLike,
    mask: MaskLike,
    *,
    owner: str,
    nonfinite: str,
    monitor: NonFiniteMonitor,
    step: int,
) -> PreparedLosses:
    """Validate the losses and the mask and apply the non-finite policy (module docstring)."""
    items, L, names = as_losses(losses, owner)
    present, host = present_mask(
        L.detach(), mask, nonfinite=nonfinite, monitor=monitor, step=step, names=names
    )
    zero = torch.zeros((), dtype=L.dtype, device=L.device)
    if host is not None and items is not None and not all(host):
        # Absent losses never enter the graph: their heads get no gradient at all.
        safe = torch.stack([x.reshape(()) if p else zero for x, p in zip(items, host)])
    else:
        safe = torch.where(present, L, zero)
    return PreparedLosses(safe, present, names)
