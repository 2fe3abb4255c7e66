"""Input checks shared by the ops, the kernels' wrappers and the methods.

Every public entry point turns its gradient argument into a :class:`TaskRows`: T tensors (views,
never copies) of D elements each, with one dtype and one device. Errors name the problem and the
offending task.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

GradsLike = Union[Tensor, Sequence[Tensor]]

#: dtypes accepted for task gradients. float64 is served by the reference backend only.
GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class TaskRows:
    """T task gradients seen as rows of a virtual T×D matrix J (never materialised).

    Attributes:
        shape: the shape of one task gradient (what ``combine`` returns).
        stacked: the caller's [T, ...] tensor as [T, D] when one was given (lets the reference
            run one GEMM over it without copying), else ``None``.
        rows: T tensors of D elements each (:attr:`rows`). Each is a 1-D view of the caller's
            tensor when its memory is contiguous, otherwise a contiguous copy of that one task.
            For a stacked input they are made on first use (most reference paths never need
            them).
        num_tasks, numel, dtype, device: T, D and the rows' dtype and device (read once, at
            construction: every pass reads them).
    """

    __slots__ = ("device", "dtype", "given_rows", "num_tasks", "numel", "shape", "stacked")

    def __init__(
        self,
        shape: torch.Size,
        stacked: Tensor | None,
        given_rows: tuple[Tensor, ...] | None = None,
    ) -> None:
        self.shape = shape
        self.stacked = stacked
        self.given_rows = given_rows
        if stacked is not None:
            self.num_tasks: int = stacked.shape[0]
            self.numel: int = stacked.shape[1]
            first = stacked
        elif given_rows:
            self.num_tasks = len(given_rows)
            self.numel = given_rows[0].numel()
            first = given_rows[0]
        else:
            raise ValueError("TaskRows needs the stacked tensor or at least one row")
        self.dtype: torch.dtype = first.dtype
        self.device: torch.device = first.device

    @property
    def rows(self) -> tuple[Tensor, ...]:
        if self.given_rows is None:
            assert self.stacked is not None  # one of the two is always given
            self.given_rows = tuple(self.stacked.unbind(0))
        return self.given_rows

    def __repr__(self) -> str:
        return (
            f"TaskRows(num_tasks={self.num_tasks}, numel={self.numel}, dtype={self.dtype}, "
            f"device={self.device}, stacked={self.stacked is not None})"
        )


def _check_float(t: Tensor, what: str) -> None:
    if t.dtype not in GRAD_DTYPES:
        allowed = ", ".join(str(d).replace("torch.", "") for d in GRAD_DTYPES)
        raise TypeError(f"{what} must be a floating-point tensor ({allowed}); got {t.dtype}")


def as_task_rows(grads: GradsLike, *, name: str = "grads") -> TaskRows:
    """Validate task gradients and view them as T rows of D elements.

    Args:
        grads: a tensor of shape [T, ...] or a sequence of T tensors of one shape, dtype and device
            (exactly what autograd hands a Function's backward).
        name: the argument name used in error messages.

    Raises:
        TypeError: not a tensor / sequence of tensors, or a non-floating dtype.
        ValueError: no task, empty gradients, shapes, dtypes or devices that differ between tasks.
    """
    if isinstance(grads, Tensor):
        _check_float(grads, name)
        if grads.dim() < 1 or grads.shape[0] == 0:
            raise ValueError(
                f"{name} must have shape [T, ...] with T >= 1; got {tuple(grads.shape)}"
            )
        flat = grads.reshape(grads.shape[0], -1)
        if flat.shape[1] == 0:
            raise ValueError(f"{name} has no elements per task (shape {tuple(grads.shape)})")
        if flat.stride(1) != 1:
            flat = flat.contiguous()
        return TaskRows(shape=grads.shape[1:], stacked=flat)

    if not isinstance(grads, (list, tuple)):
        try:
            grads = list(grads)
        except TypeError:
            raise TypeError(
                f"{name} must be a Tensor [T, ...] or a sequence of T tensors; "
                f"got {type(grads).__name__}"
            ) from None
    if len(grads) == 0:
        raise ValueError(f"{name} is empty: at least one task gradient is needed")
    first = grads[0]
    for t, g in enumerate(grads):
        if not isinstance(g, Tensor):
            raise TypeError(f"{name}[{t}] must be a Tensor; got {type(g).__name__}")
        _check_float(g, f"{name}[{t}]")
        if g.shape != first.shape:
            raise ValueError(
                f"{name}[{t}] has shape {tuple(g.shape)} but {name}[0] has {tuple(first.shape)}: "
                "every task gradient must have the same shape"
            )
        if g.dtype != first.dtype:
            raise ValueError(
                f"{name}[{t}] has dtype {g.dtype} but {name}[0] has {first.dtype}: "
                "cast the task gradients to one dtype"
            )
        if g.device != first.device:
            raise ValueError(
                f"{name}[{t}] is on {g.device} but {name}[0] is on {first.device}: "
                "every task gradient must be on the same device"
            )
    if first.numel() == 0:
        raise ValueError(f"{name} has no elements per task (shape {tuple(first.shape)})")
    rows = tuple(g.reshape(-1) if g.is_contiguous() else g.contiguous().view(-1) for g in grads)
    return TaskRows(shape=first.shape, stacked=None, given_rows=rows)


def grads_as_task_rows(grads: Sequence[Tensor]) -> TaskRows:
    """:func:`as_task_rows` for the T incoming gradients of a backward whose outputs are views
    of one tensor (``split``): autograd hands them with that tensor's shape, dtype and device,
    so nothing is checked (the engine validates them); each is viewed as a row (copied only
    where it is not contiguous)."""
    rows = tuple(g.view(-1) if g.is_contiguous() else g.contiguous().view(-1) for g in grads)
    return TaskRows(shape=grads[0].shape, stacked=None, given_rows=rows)


def check_gram(G: Tensor, *, name: str = "G") -> Tensor:
    """Validate a Gram matrix argument: a square floating-point [T, T] tensor, T >= 1."""
    if not isinstance(G, Tensor):
        raise TypeError(f"{name} must be a Tensor [T, T]; got {type(G).__name__}")
    if not G.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got {G.dtype}")
    if G.dim() != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"{name} must be a square [T, T] matrix with T >= 1; got {tuple(G.shape)}")
    return G


def check_weights(weights: Tensor, num_tasks: int, device: torch.device) -> Tensor:
    """Validate task weights for :func:`combine`: a floating [T] tensor on the gradients' device."""
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a Tensor [T]; got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating-point tensor; got {weights.dtype}")
    if weights.shape != (num_tasks,):
        raise ValueError(
            f"weights must have shape ({num_tasks},) to match {num_tasks} task gradients; "
            f"got {tuple(weights.shape)}"
        )
    if weights.device != device:
        raise ValueError(f"weights are on {weights.device} but the gradients are on {device}")
    return weights


def check_out(out: Tensor, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Validate the ``out=`` accumulator of :func:`combine`."""
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a Tensor; got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {tuple(shape)}")
    if out.device != device:
        raise ValueError(f"out is on {out.device} but the gradients are on {device}")
    if not out.is_floating_point():
        raise TypeError(f"out must be a floating-point tensor; got {out.dtype}")
    del dtype  # any floating out dtype is accepted; the sum is cast to it
    return out


NONFINITE = "non-finite (NaN/Inf, or overflowing)"


def nonfinite_task_message(
    bad: Sequence[int],
    what: str = "gradient",
    problem: str = NONFINITE,
    *,
    owner: str | None = None,
    names: Sequence[str] | None = None,
) -> str:
    """The error message for bad task inputs (by default non-finite ones), naming the method
    (``owner``) and the tasks (by name when ``names`` is known, else by index)."""
    tasks = ", ".join(
        f"{t} ({names[t]!r})" if names is not None and t < len(names) else str(t) for t in bad
    )
    plural = "s" if len(bad) > 1 else ""
    hint = "; mark absent tasks with mask= instead of passing NaN" if problem == NONFINITE else ""
    prefix = f"{owner}: " if owner else ""
    return f"{prefix}{problem} {what} for task{plural} {tasks}{hint}"
