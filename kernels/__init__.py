"""Triton kernels of mtl_fast, installed as ``mtl_fast.kernels``.

Each op is a Triton kernel plus its launcher, tested against :mod:`mtl_fast.reference`:

* :func:`gram_rows`: G = J Jᵀ over a pointer array of the task gradients (``gram.py``);
* :func:`combine_rows`: Σ α_t g_t over the same pointer array (``combine.py``);
* :func:`imtl_g_solve`, :func:`mgda_solve`: single-program T×T solves for T ≤ 64 (``solve.py``);
* ``structured_gram.structured_gram``: G = (ΔᵀΔ)∘(WWᵀ) of a shared linear head, without the Jacobian
  (``structured_gram.py``, used by :class:`mtl_fast.MultiTaskLinear`).

Importing this package imports Triton; :mod:`mtl_fast._backend` treats an import failure as
"Triton unavailable" and the reference serves every op. The launchers take validated inputs
(:class:`mtl_fast._validation.TaskRows`); the public, validating entry points are in
:mod:`mtl_fast.ops`.
"""

from mtl_fast.kernels.combine import combine_rows
from mtl_fast.kernels.gram import gram_rows
from mtl_fast.kernels.solve import imtl_g_solve, mgda_solve

__all__ = ["combine_rows", "gram_rows", "imtl_g_solve", "mgda_solve"]
