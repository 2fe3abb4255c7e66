"""Methods that act on the task gradients themselves, not only on their Gram matrix.

Most gradient methods map the Gram matrix G to weights α (docs/design.md). A few need the T
gradient rows: an EMA of the gradients (DB-MTL as published, MoCo's tracked gradients), a
per-coordinate rule (GradDrop) or per-coordinate statistics (ExcessMTL). They override
:meth:`mtl_fast.Weighting.balance`, which receives the rows, and may rewrite the rows in place
before the base class forms G from them and combines them: the rows are the step's own gradient
buffers (the gradients autograd hands ``split``'s backward, or the per-task gradients of
:func:`mtl_fast.backward`), read by nothing after the combine. Such a method sets
``needs_gradient_rows = True``; callers that form only G (:class:`mtl_fast.MultiTaskLinear`)
cannot serve it, and :func:`refuse_gram_only` says so.
"""

from __future__ import annotations

from torch import Tensor

from mtl_fast._validation import TaskRows
from mtl_fast.weighting import Weighting


def refuse_gram_only(method: Weighting, fix: str = "") -> None:
    """Raise because ``method`` was handed a Gram matrix without its rows (the pending step is
    discarded first, so the method stays usable)."""
    method.discard_pending()
    name = type(method).__name__
    raise RuntimeError(
        f"{name} acts on the task gradients themselves, so it needs their rows (split or "
        "mtl_fast.backward); this caller formed only their Gram matrix (e.g. MultiTaskLinear)"
        + (f": {fix}" if fix else "")
    )


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
