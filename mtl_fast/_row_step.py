"""What a gradient method that acts on the task gradient rows themselves is told about a step.

Most gradient methods map the Gram matrix G of the task gradients to weights α and never see
the gradients (docs/design.md, "Subclass contract"). A method that sets
``needs_gradient_rows = True`` also gets the rows, through two hooks of
:class:`mtl_fast.Weighting` that receive a :class:`RowStep`:

* :meth:`~mtl_fast.Weighting.prepare_rows` before G is formed: it may rewrite the rows in place
  (an EMA of the gradients: DB-MTL as published, MoCo's tracked gradients) or read them into
  per-coordinate statistics (ExcessMTL); the base class then forms G of the rows as they are;
* :meth:`~mtl_fast.Weighting.combine_rows` after the solve, once per feature tensor, instead of
  the plain Σ_t α_t g_t (GradDrop's per-coordinate sign dropout).

The rows are the step's own gradient buffers (the gradients autograd hands ``split``'s backward,
or the per-task gradients :func:`mtl_fast.backward` formed), read by nothing after the combine,
so rewriting them in place costs no copy. Callers that form only G
(:class:`mtl_fast.MultiTaskLinear`) cannot serve these methods and get :func:`refuse_gram_only`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from mtl_fast import distributed
from mtl_fast._validation import TaskRows

if TYPE_CHECKING:
    from mtl_fast.weighting import Weighting

RowKind = Literal["features", "params"]


@dataclass(frozen=True)
class RowStep:
    """One balanced step as a row method sees it.

    Attributes:
        kind: ``"features"``: the rows are gradients of the shared features (``split``,
            ``mf.backward(features=)``), whose first dimension is the batch; ``"params"``: of
            the shared parameters (``mf.backward(params=)``), no batch dimension.
        rows: one :class:`TaskRows` per feature tensor (or parameter).
        features: the forward tensors the rows are gradients of, when the method asked for them
            (``needs_features = True``) and the caller has them; ``None`` entries otherwise.
        present: bool [T], the tasks present in this step (as ``loss()`` recorded them, on this
            process).
        losses: [T] the loss values ``loss()`` recorded (0 for absent tasks).
        partial: the rows are this process's block of the global gradient (data-parallel
            ``split`` or ``features=``): a statistic summed over coordinates must be summed
            over the processes (:meth:`mean_over_processes_`); ``False`` on one process and in
            the exact parameter mode, whose rows are already the global ones.
        group: the process group of the method.
    """

    kind: RowKind
    rows: tuple[TaskRows, ...]
    features: tuple[Tensor | None, ...]
    present: Tensor
    losses: Tensor
    partial: bool
    group: Any = None

    @property
    def processes(self) -> int:
        """N, the processes the rows are spread over (1 unless :attr:`partial`)."""
        return distributed.world_size(self.group) if self.partial else 1

    def mean_over_processes_(self, x: Tensor) -> Tensor:
        """``x`` averaged in place over the processes when :attr:`partial` (one all-reduce),
        else ``x``. With per-process rows g_r (each the gradient of this process's mean loss),
        the global gradient's block is g_r / N: a sum over the batch of the global gradient is
        the mean over the processes of the per-process sums."""
        if self.partial:
            distributed.all_reduce_mean_(x, self.group)
        return x

    def batch_size(self, index: int) -> int:
        """The batch dimension of feature tensor ``index`` (1 for parameter rows or 0-d
        features): the leading dimension of one task gradient."""
        shape = self.rows[index].shape
        return shape[0] if self.kind == "features" and len(shape) > 0 else 1


def make_row_step(
    rows: tuple[TaskRows, ...],
    *,
    kind: RowKind,
    features: tuple[Tensor | None, ...] | None,
    present: Tensor | None,
    losses: Tensor | None,
    partial: bool,
    group: Any,
) -> RowStep:
    """A :class:`RowStep`, with every task present and zero losses when ``loss()`` recorded
    nothing."""
    T = rows[0].num_tasks
    device = rows[0].device
    if present is None:
        present = torch.ones(T, dtype=torch.bool, device=device)
    if losses is None:
        losses = torch.zeros(T, device=device)
    feats = tuple(features) if features is not None else (None,) * len(rows)
    return RowStep(kind, rows, feats, present.to(device), losses.to(device), partial, group)


def refuse_gram_only(method: Weighting) -> None:
    """Raise because ``method`` was handed a Gram matrix without its rows (the pending step is
    discarded first, so the method stays usable). ``method.gram_only_fix`` completes the
    message when the method has a variant that works from G alone."""
    method.discard_pending()
    name = type(method).__name__
    fix = getattr(method, "gram_only_fix", "")
    raise RuntimeError(
        f"{name} acts on the task gradients themselves, so it needs their rows (split or "
        "mtl_fast.backward); this caller formed only their Gram matrix (e.g. MultiTaskLinear)"
        + (f": {fix}" if fix else "")
    )
