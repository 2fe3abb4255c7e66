"""GradDrop's native CPU passes (``csrc/graddrop.h``, :mod:`mtl_fast._C`) on :class:`TaskRows`:
the batch sums S and the sign-dropout combination of :mod:`mtl_fast.reference.graddrop`, with
the rows read in place through their addresses. Threads as for the other native passes
(:mod:`mtl_fast._native_passes`): ``torch.get_num_threads()`` from
:data:`~mtl_fast._native_passes.PARALLEL_MIN_ELEMS` elements, one below.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from mtl_fast import _backend, _native_passes
from mtl_fast import _solve_constants as SC
from mtl_fast._native_passes import _DTYPE_NAMES, _addresses, _output, _result, _threads
from mtl_fast._validation import TaskRows
from mtl_fast.reference._chunks import accumulation_dtype


@functools.cache
def available() -> bool:
    """The extension is built and has the GradDrop passes (an older build may lack them)."""
    if not _backend.native_available():
        return False
    import mtl_fast._C as C

    return hasattr(C, "graddrop_sums") and hasattr(C, "graddrop_combine")


def serves(rows: TaskRows) -> bool:
    """The native passes can read these rows: CPU tensors of a supported dtype."""
    return _native_passes.serves(rows) and available()


def _array(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.detach().to(dtype).contiguous()


def _signs(activations: Tensor | None) -> tuple[Tensor | None, int]:
    """sgn(A) as int8 (−1 / 0 / +1, NaN → 0) and its address (0 without activations): one pass
    over A, which the native passes then read at a byte per element."""
    if activations is None:
        return None, 0
    a = activations.detach()
    s = ((a > 0).to(torch.int8) - (a < 0).to(torch.int8)).contiguous()
    return s, s.data_ptr()


def graddrop_sums(
    rows: TaskRows, weights: Tensor, batch: int, activations: Tensor | None = None
) -> Tensor:
    """S [T, F] (float32; float64 for float64 rows), see
    :func:`mtl_fast.reference.graddrop.graddrop_sums`."""
    import mtl_fast._C as C

    acc = accumulation_dtype(rows.dtype)
    if batch < 1 or rows.numel % batch:
        raise ValueError(f"batch must divide the {rows.numel} elements of a task gradient")
    w = _array(weights, acc)
    S = torch.empty((rows.num_tasks, rows.numel // batch), dtype=acc)
    keep, signs = _signs(activations)
    C.graddrop_sums(
        _addresses(rows),
        rows.numel,
        _DTYPE_NAMES[rows.dtype],
        w.data_ptr(),
        batch,
        signs,
        S.data_ptr(),
        _threads(rows),
    )
    del keep
    return S


def graddrop_combine_rows(
    rows: TaskRows,
    weights: Tensor,
    uniform: Tensor,
    leak: Tensor,
    *,
    sums: Tensor | None = None,
    activations: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Σ_t (ℓ_t + (1 − ℓ_t) M_t) α_t g_t in the rows' dtype (``out +=`` when given; returned);
    see :func:`mtl_fast.reference.graddrop.graddrop_combine_rows`."""
    import mtl_fast._C as C

    acc = accumulation_dtype(rows.dtype)
    w, lk, U = _array(weights, acc), _array(leak, acc), _array(uniform, acc)
    S = None if sums is None else _array(sums, acc)
    keep, signs = _signs(activations if sums is None else None)
    target, direct = _output(rows, out, acc)
    C.graddrop_combine(
        _addresses(rows),
        rows.numel,
        _DTYPE_NAMES[rows.dtype],
        w.data_ptr(),
        lk.data_ptr(),
        0 if S is None else S.data_ptr(),
        rows.numel if S is None else S.shape[1],
        signs,
        U.data_ptr(),
        target.data_ptr(),
        _DTYPE_NAMES[target.dtype],
        direct,
        SC.GRADDROP_EPS,
        _threads(rows),
    )
    del keep
    return _result(out, target, direct)
