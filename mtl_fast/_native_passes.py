"""The native CPU passes of ``mtl_fast._C`` (``csrc/cpu_passes.h``) on :class:`TaskRows`.

* :func:`gram_rows`: G = J Jᵀ with the reference's accumulation contract (fp32 products summed
  within blocks of columns, float64 across blocks; float64 throughout for float64 rows), only
  the upper triangle computed, the T rows read in place through their addresses (no slicing,
  stacking or widening copy), the non-finite check folded into the diagonal.
* :func:`combine_rows`: Σ_t α_t g_t (Liu et al. 2021, eq. 2) over column chunks kept in cache,
  up to eight rows per pass, zero-weight tasks skipped, ``out=`` accumulated in place.
* :func:`balance_rows`: a gradient method's step on one process in one call (``csrc/cpu_step.cpp``):
  G, the absent-task mask, the non-finite check, the native solve and the combine (or only the
  masked G, for the methods whose solve is Python).
* :func:`solve_gram`: the native IMTL-G / MGDA solve of a Gram matrix read in place.

Each function is the one call site of its ``mtl_fast._C`` entry point.

The instruction set (AVX-512, AVX2 or portable) is chosen at run time by the extension;
:func:`mtl_fast._C.set_cpu_isa` or ``$MTL_FAST_CPU_ISA`` force one (the tests force the portable
path). Threads: ``torch.get_num_threads()`` for passes over at least :data:`PARALLEL_MIN_ELEMS`
elements, one below (a parallel region costs a few µs). The extension is linked against the
OpenMP runtime by its soname, which PyTorch's wheels also load (``libgomp.so.1``), so both share
one thread pool: no second set of spinning workers competes with PyTorch's for the cores.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mtl_fast import _backend
from mtl_fast._validation import TaskRows, nonfinite_task_message

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}


@functools.cache
def _ext() -> Any:
    """The extension module ``mtl_fast._C``, imported at first use (it may be absent)."""
    import mtl_fast._C as C

    return C


@functools.cache
def available() -> bool:
    """The extension is built and has the CPU passes (an older build may lack them)."""
    if not _backend.native_available():
        return False
    C = _ext()
    return all(hasattr(C, f) for f in ("gram_rows", "combine_rows", "balance_rows", "solve_gram"))


def serves(rows: TaskRows) -> bool:
    """The native passes can read these rows: CPU tensors of a supported dtype."""
    return rows.device.type == "cpu" and rows.dtype in _DTYPE_NAMES and available()


#: Elements (T·D) from which a pass runs on ``torch.get_num_threads()`` threads (1 MiB of
#: fp32 rows, ~25 µs of one core's reading).
PARALLEL_MIN_ELEMS = 1 << 18


def _threads(rows: TaskRows) -> int:
    return torch.get_num_threads() if rows.num_tasks * rows.numel >= PARALLEL_MIN_ELEMS else 1


def _addresses(rows: TaskRows) -> list[int]:
    """The address of each row's first element (rows are contiguous: see ``as_task_rows``)."""
    stacked = rows.stacked
    if stacked is not None:
        base, step = stacked.data_ptr(), stacked.stride(0) * stacked.element_size()
        return [base + t * step for t in range(stacked.shape[0])]
    return [r.data_ptr() for r in rows.rows]


def _output(rows: TaskRows, out: Tensor | None, acc: torch.dtype) -> tuple[Tensor, bool]:
    """(target, direct): where a combining pass writes. A new tensor in the rows' dtype without
    ``out``; ``out`` itself when the pass can add to it in place (contiguous, of a gradient dtype:
    ``direct``); otherwise a temporary in ``acc`` that :func:`_result` adds to ``out``."""
    direct = out is not None and out.is_contiguous() and out.dtype in _DTYPE_NAMES
    if out is None or direct:
        target = torch.empty(rows.shape, dtype=rows.dtype) if out is None else out
    else:
        target = torch.empty(rows.shape, dtype=acc)
    return target, direct


def _result(out: Tensor | None, target: Tensor, direct: bool) -> Tensor:
    """The value of a combining pass that wrote to :func:`_output`'s ``target``."""
    if out is None or direct:
        return target
    return out.add_(target)


def gram_rows(rows: TaskRows, *, check_finite: bool) -> Tensor:
    """The Gram matrix of CPU rows: float32 [T, T] (float64 for float64 rows).

    Raises:
        ValueError: ``check_finite`` and a row holds NaN/Inf (its squared norm is non-finite),
            naming the tasks.
    """
    C = _ext()
    T = rows.num_tasks
    dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    G = torch.empty((T, T), dtype=dtype)
    bad = C.gram_rows(
        _addresses(rows),
        rows.numel,
        _DTYPE_NAMES[rows.dtype],
        G.data_ptr(),
        _DTYPE_NAMES[dtype],
        _threads(rows),
    )
    if check_finite and bad:
        raise ValueError(nonfinite_task_message(bad))
    return G


def combine_rows(rows: TaskRows, weights: Tensor, out: Tensor | None) -> Tensor:
    """Σ_t α_t g_t of CPU rows in their dtype (``out += …`` when given; returned).

    Weights are read as float32, or float64 for float64 rows (as the reference rounds them);
    an ``out`` that is not contiguous or not of a gradient dtype receives the sum through one
    temporary.
    """
    C = _ext()
    w = weights.detach()
    w_dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    if w.dtype != w_dtype or not w.is_contiguous():
        w = w.to(w_dtype).contiguous()
    target, direct = _output(rows, out, w_dtype)
    C.combine_rows(
        _addresses(rows),
        rows.numel,
        _DTYPE_NAMES[rows.dtype],
        w.data_ptr(),
        _DTYPE_NAMES[w_dtype],
        target.data_ptr(),
        _DTYPE_NAMES[target.dtype],
        direct,
        _threads(rows),
    )
    return _result(out, target, direct)


#: The native solves (``solver=`` of :func:`balance_rows` and :func:`solve_gram`).
SOLVERS = ("imtl_g", "mgda")


class BadStep(NamedTuple):
    """Why :func:`balance_rows` stopped: the present tasks with a non-finite gradient (diagonal
    entry of G), or the rows of the masked G holding NaN/Inf (for the solve); one is empty."""

    tasks: list[int]
    gram_rows: list[int]


def balance_rows(
    rows: TaskRows,
    present: Tensor | None,
    solver: str | None,
    options: dict[str, float | int],
    *,
    combine: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None] | BadStep:
    """One balanced step on CPU rows (``csrc/cpu_step.cpp``).

    ``present``: bool [T] CPU tensor (``None``: every task). ``solver``: ``"imtl_g"`` / ``"mgda"``
    (with ``options``, the keywords of :mod:`mtl_fast._solve_constants`), or ``None``: only the
    masked Gram matrix. Returns (G masked [T, T] in the accumulation dtype (the method's
    diagnostics read it); α float32 [T] or ``None``; Σ α_t g_t in the rows' dtype or ``None``), or
    :class:`BadStep` (nothing computed beyond the check).
    """
    C = _ext()
    T = rows.num_tasks
    dtype = rows.dtype
    G = torch.empty((T, T), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    alpha = torch.empty(T) if solver is not None else None
    out = torch.empty(rows.shape, dtype=dtype) if combine and solver is not None else None
    mask = 0
    if present is not None:
        present = present if present.is_contiguous() else present.contiguous()
        mask = present.data_ptr()
    name = _DTYPE_NAMES[dtype]
    bad_tasks, bad_rows = C.balance_rows(
        _addresses(rows),
        rows.numel,
        name,
        mask,
        G.data_ptr(),
        solver or "none",
        0 if alpha is None else alpha.data_ptr(),
        0 if out is None else out.data_ptr(),
        name,
        _threads(rows),
        **options,
    )
    if bad_tasks or bad_rows:
        return BadStep(bad_tasks, bad_rows)
    return G, alpha, out


def solve_gram(G: Tensor, solver: str, options: dict[str, float | int]) -> Tensor:
    """The native ``solver`` weights of a CPU Gram matrix (float32/float64, read in place),
    float64 [T] for a float64 G, else float32.

    Raises:
        ValueError: G holds NaN/Inf, naming its rows.
    """
    C = _ext()
    if G.dtype not in (torch.float32, torch.float64):
        G = G.to(torch.float32)
    if not G.is_contiguous():
        G = G.contiguous()
    alpha = torch.empty(G.shape[0], dtype=G.dtype)
    name = _DTYPE_NAMES[G.dtype]
    bad = C.solve_gram(G.data_ptr(), G.shape[0], name, solver, alpha.data_ptr(), name, **options)
    if bad:
        raise ValueError(nonfinite_task_message(bad, "Gram matrix row"))
    return alpha
