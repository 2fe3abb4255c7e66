"""The pure-PyTorch reference of mtl_fast: the specification the kernels are tested against.

Readable, one function per paper equation, any device, float64 solves, no host synchronisation
in the solves (the only exception is :func:`gram`'s optional non-finite check, which raises).
"""

from mtl_fast.reference.passes import combine, gram
from mtl_fast.reference.solves import (
    active_tasks,
    imtl_g_weights,
    mgda_unconstrained_weights,
    mgda_weights,
    project_simplex,
    psd_pinv_solve,
    unit_gram,
)

__all__ = [
    "active_tasks",
    "combine",
    "gram",
    "imtl_g_weights",
    "mgda_unconstrained_weights",
    "mgda_weights",
    "project_simplex",
    "psd_pinv_solve",
    "unit_gram",
]
