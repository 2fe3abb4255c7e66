"""Triton kernels of mtl_fast, installed as ``mtl_fast.kernels``.

Each op is a Triton kernel plus its launcher, tested against :mod:`mtl_fast.reference`:

* :func:`gram`: G = J Jᵀ over a pointer array of the task gradients (``gram.py``);
* :func:`combine`: Σ α_t g_t over the same pointer array (``combine.py``);
* :func:`imtl_g_weights`, :func:`mgda_weights`: single-program T×T solves for T ≤ 64
  (``solve.py``).

Importing this package imports Triton; :mod:`mtl_fast._backend` treats an import failure as
"Triton unavailable" and the reference serves every op. The launchers take validated inputs
(:class:`mtl_fast._validation.TaskRows`); the public, validating entry points are in
:mod:`mtl_fast.ops`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton  # noqa: F401  (fail early: no Triton, no kernels)

if TYPE_CHECKING:
    from torch import Tensor

    from mtl_fast._validation import TaskRows


def gram(rows: TaskRows) -> Tensor:
    """G = J Jᵀ, float32 [T, T]; see :mod:`mtl_fast.kernels.gram`."""
    from mtl_fast.kernels.gram import gram_rows

    return gram_rows(rows)


def combine(rows: TaskRows, weights: Tensor, out: Tensor | None = None) -> Tensor:
    """Σ α_t g_t in the rows' dtype; see :mod:`mtl_fast.kernels.combine`."""
    from mtl_fast.kernels.combine import combine_rows

    return combine_rows(rows, weights, out)


def imtl_g_weights(G: Tensor) -> Tensor:
    """IMTL-G weights, one program, T ≤ 64; see :mod:`mtl_fast.kernels.solve`."""
    from mtl_fast.kernels.solve import imtl_g_solve

    return imtl_g_solve(G)


def mgda_weights(G: Tensor) -> Tensor:
    """MGDA (min-norm) weights, one program, T ≤ 64; see :mod:`mtl_fast.kernels.solve`."""
    from mtl_fast.kernels.solve import mgda_solve

    return mgda_solve(G)
