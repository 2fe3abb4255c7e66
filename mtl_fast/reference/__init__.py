"""The pure-PyTorch reference of mtl_fast: the specification the kernels are tested against.

Readable, one function per paper equation, any device, float64 solves, no host synchronisation
in the solves (the only exception is :func:`gram`'s optional non-finite check, which raises).

One module per op, mirrored by the Triton kernel of the same name in ``kernels/`` and its tests
in ``tests/kernels/`` (docs/design.md, "Layout"):

* ``gram.py``: G = J Jᵀ (:func:`gram`);
* ``combine.py``: Σ_t α_t g_t (:func:`combine`);
* ``solve.py``: the weight solves G → α (:func:`imtl_g_weights`, :func:`mgda_weights`, ...),
  with their constants in :mod:`mtl_fast._solve_constants`;
* ``structured_gram.py``: the Gram matrix of a multi-task linear head's feature gradients
  (:func:`structured_gram`);
* ``graddrop.py``: GradDrop's sign-dropout combination of the task gradients (:func:`graddrop`).

The package exports the functions under the modules' names (``mtl_fast.reference.gram`` is the
function); reach a module's other contents with ``from mtl_fast.reference.gram import ...`` or
``importlib.import_module("mtl_fast.reference.gram")``.
"""

from mtl_fast.reference.combine import combine
from mtl_fast.reference.graddrop import graddrop
from mtl_fast.reference.gram import gram
from mtl_fast.reference.solve import (
    active_tasks,
    imtl_g_weights,
    mgda_unconstrained_weights,
    mgda_weights,
    project_simplex,
    psd_pinv_solve,
    unit_gram,
)
from mtl_fast.reference.structured_gram import structured_gram

__all__ = [
    "active_tasks",
    "combine",
    "graddrop",
    "gram",
    "imtl_g_weights",
    "mgda_unconstrained_weights",
    "mgda_weights",
    "project_simplex",
    "psd_pinv_solve",
    "structured_gram",
    "unit_gram",
]
