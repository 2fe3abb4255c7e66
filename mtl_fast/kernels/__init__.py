"""Triton kernels of mtl_fast: the package ``mtl_fast.kernels``, whose modules live in the
repository's top-level ``kernels/`` folder.

That folder has no ``__init__.py``, so that it never shadows another distribution's ``kernels``
package when Python runs from the repository root (a folder without one is at most a namespace
package, which any installed package of that name takes precedence over). In a source checkout
or an editable install this package adds the folder to its ``__path__``; a wheel carries the
modules here directly (``setup.py`` copies them).

Each op is a Triton kernel plus its launcher, tested against :mod:`mtl_fast.reference`:

* :func:`gram_rows`: G = J Jᵀ over a pointer array of the task gradients (``gram.py``);
* :func:`combine_rows`: Σ α_t g_t over the same pointer array (``combine.py``);
* :func:`imtl_g_solve`, :func:`mgda_solve`: single-program T×T solves for T ≤ 64 (``solve.py``);
* ``structured_gram.structured_gram``: G = (ΔᵀΔ)∘(WWᵀ) of a shared linear head, without the Jacobian
  (``structured_gram.py``, used by :class:`mtl_fast.MultiTaskLinear`);
* :func:`graddrop_sums`, :func:`graddrop_combine_rows`: GradDrop's sign-dropout combination
  (``graddrop.py``, used by :class:`mtl_fast.GradDrop`).

Importing this package imports Triton; :mod:`mtl_fast._backend` treats an import failure as
"Triton unavailable" and the reference serves every op. The launchers take validated inputs
(:class:`mtl_fast._validation.TaskRows`); the public, validating entry points are in
:mod:`mtl_fast.ops`.
"""

from pathlib import Path as _Path

_here = _Path(__file__).resolve().parent
_source = _here.parents[1] / "kernels"
if not (_here / "gram.py").is_file() and (_source / "gram.py").is_file():
    __path__.append(str(_source))


# The kernel modules are importable only once __path__ includes their folder.
from mtl_fast.kernels.combine import combine_rows  # noqa: E402
from mtl_fast.kernels.graddrop import graddrop_combine_rows, graddrop_sums  # noqa: E402
from mtl_fast.kernels.gram import gram_rows  # noqa: E402
from mtl_fast.kernels.solve import imtl_g_solve, mgda_solve  # noqa: E402

__all__ = [
    "combine_rows",
    "graddrop_combine_rows",
    "graddrop_sums",
    "gram_rows",
    "imtl_g_solve",
    "mgda_solve",
]
