"""The public Gram-space ops as custom operators, for code compiled with ``torch.compile``.

:func:`mtl_fast.gram`, :func:`mtl_fast.combine`, :func:`mtl_fast.imtl_g_weights` and
:func:`mtl_fast.mgda_weights` dispatch to the native C++ passes and solvers (``mtl_fast._C``,
pybind), the Triton kernels (launchers that read tensor addresses) or the reference. Under
``torch.compile`` each call is one operator of the ``mtl_fast`` namespace whose run-time
implementation is that same dispatch (:mod:`mtl_fast._custom_ops`), so a compiled call returns
exactly the eager result, raises the same errors (a NaN/Inf gradient on the CPU raises
``ValueError`` naming the task, at run time, without a host read in the traced graph) and
Dynamo never traces a pybind function. :mod:`mtl_fast.ops` calls them by name
(``torch.ops.mtl_fast.<name>``); this module, imported by the package, defines them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast import _custom_ops, ops
from mtl_fast._validation import TaskRows, as_task_rows


def _rows(tensors: list[Tensor], stacked: bool) -> TaskRows:
    return as_task_rows(tensors[0] if stacked else tensors)


def _grad_shape(tensors: list[Tensor], stacked: bool) -> torch.Size:
    return tensors[0].shape[1:] if stacked else tensors[0].shape


def _num_tasks(tensors: list[Tensor], stacked: bool) -> int:
    return tensors[0].shape[0] if stacked else len(tensors)


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- gram


def _gram_eager(tensors: list[Tensor], stacked: bool, backend: str, check_finite: bool) -> Tensor:
    return ops.gram_rows(_rows(tensors, stacked), backend=backend, check_finite=check_finite)


def _gram_fake(tensors: list[Tensor], stacked: bool, backend: str, check_finite: bool) -> Tensor:
    T = _num_tasks(tensors, stacked)
    return tensors[0].new_empty((T, T), dtype=_accumulation(tensors[0].dtype))


_custom_ops.define(
    "gram_rows(Tensor[] rows, bool stacked, str backend, bool check_finite) -> Tensor",
    _gram_eager,
    _gram_fake,
)


# --------------------------------------------------------------------------- combine


def _combine_eager(tensors: list[Tensor], stacked: bool, weights: Tensor, backend: str) -> Tensor:
    return ops.combine_rows(_rows(tensors, stacked), weights, backend=backend).contiguous()


def _combine_fake(tensors: list[Tensor], stacked: bool, weights: Tensor, backend: str) -> Tensor:
    return tensors[0].new_empty(_grad_shape(tensors, stacked))


_custom_ops.define(
    "combine_rows(Tensor[] rows, bool stacked, Tensor weights, str backend) -> Tensor",
    _combine_eager,
    _combine_fake,
)


def _combine_out_eager(
    tensors: list[Tensor], stacked: bool, weights: Tensor, out: Tensor, backend: str
) -> None:
    ops.combine_rows(_rows(tensors, stacked), weights, out=out, backend=backend)


def _combine_out_fake(
    tensors: list[Tensor], stacked: bool, weights: Tensor, out: Tensor, backend: str
) -> None:
    return None


_custom_ops.define(
    "combine_rows_out(Tensor[] rows, bool stacked, Tensor weights, Tensor(a!) out, str backend) "
    "-> ()",
    _combine_out_eager,
    _combine_out_fake,
)


# --------------------------------------------------------------------------- solves


def _weights_fake(G: Tensor) -> Tensor:
    return G.new_empty((G.shape[0],), dtype=_accumulation(G.dtype))


def _imtl_g_eager(G: Tensor, backend: str) -> Tensor:
    return ops.imtl_g_weights(G, backend=backend).contiguous()


def _imtl_g_fake(G: Tensor, backend: str) -> Tensor:
    return _weights_fake(G)


_custom_ops.define("imtl_g_weights(Tensor G, str backend) -> Tensor", _imtl_g_eager, _imtl_g_fake)


def _mgda_eager(
    G: Tensor, constrained: bool, solver: str, max_iter: int | None, tol: float | None, backend: str
) -> Tensor:
    return ops.mgda_weights(
        G, constrained=constrained, solver=solver, max_iter=max_iter, tol=tol, backend=backend
    ).contiguous()


def _mgda_fake(
    G: Tensor, constrained: bool, solver: str, max_iter: int | None, tol: float | None, backend: str
) -> Tensor:
    return _weights_fake(G)


_custom_ops.define(
    "mgda_weights(Tensor G, bool constrained, str solver, int? max_iter, float? tol, str backend) "
    "-> Tensor",
    _mgda_eager,
    _mgda_fake,
)
