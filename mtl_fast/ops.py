"""Public Gram-space ops with backend dispatch: ``gram``, ``imtl_g_weights``, ``mgda_weights``,
``combine``.

The math lives in :mod:`mtl_fast.reference` (the specification); the Triton kernels
(:mod:`mtl_fast.kernels`) and the native CPU solvers (:mod:`mtl_fast._C`) are tested against it.

Non-finite gradients:
    * CPU (the reference, ``backend="torch"``, or the native passes, ``"auto"``), and the
      reference on any device: :func:`gram` raises ``ValueError`` naming the task (this reads
      one flag from the device).
    * Triton path: no host sync. The NaN/Inf reaches the task's diagonal entry of G; the solves
      treat such a task as inactive (weight 0) and the combine kernel skips zero-weight tasks.
      The methods record the flag and report it lazily (:class:`mtl_fast.Weighting`).

Under ``torch.compile`` each op is one custom operator that runs this dispatch at run time
(:mod:`mtl_fast._compiled_ops`): the same results and errors, nothing traced into ``_C``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast import _backend, _custom_ops, _native_passes
from mtl_fast import _solve_constants as SC
from mtl_fast._validation import (
    GradsLike,
    TaskRows,
    as_task_rows,
    check_gram,
    check_out,
    check_weights,
    nonfinite_task_message,
)
from mtl_fast.reference import imtl_g_weights as _ref_imtl_g_weights
from mtl_fast.reference import mgda_weights as _ref_mgda_weights
from mtl_fast.reference._chunks import accumulation_dtype
from mtl_fast.reference.combine import combine_rows as _ref_combine_rows
from mtl_fast.reference.gram import gram_rows as _ref_gram_rows
from mtl_fast.reference.gram import raise_if_nonfinite
from mtl_fast.reference.solve import MGDA_SOLVERS

#: Largest T served by the native CPU IMTL-G solver (beyond it LAPACK's blocked Cholesky through
#: PyTorch is faster than the native unblocked one).
NATIVE_IMTL_G_MAX_T = 512
#: Largest T served by the single-program Triton solve kernels.
TRITON_SOLVE_MAX_T = 64


def _kernels():
    import mtl_fast.kernels as kernels

    return kernels


def _operator(name: str):
    """``torch.ops.mtl_fast.<name>`` (defined by :mod:`mtl_fast._compiled_ops`)."""
    return getattr(torch.ops.mtl_fast, name).default


def _operator_rows(rows: TaskRows) -> tuple[list[Tensor], bool]:
    """(tensors, stacked) carrying ``rows`` into an operator: the caller's stacked [T, ...]
    tensor when there is one, else the T rows shaped as the gradients."""
    if rows.stacked is not None:
        return [rows.stacked.view(rows.num_tasks, *rows.shape)], True
    return [r.view(rows.shape) for r in rows.rows], False


def _native(name: str):
    """The native solver ``name`` of ``mtl_fast._C``, or ``None`` when not built."""
    if not _backend.native_available():
        return None
    import mtl_fast._C as C

    return getattr(C, name, None)


def gram(grads: GradsLike, *, backend: str = "auto") -> Tensor:
    """Gram matrix G = J Jᵀ of T task gradients, float32 [T, T] on their device.

    Args:
        grads: a tensor [T, ...] or a sequence of T same-shaped tensors, fp32/bf16/fp16 (fp64 on
            the reference). The Triton path reads separate tensors through a pointer array with
            no stacking copy; the reference reads them in column chunks (no T×D temporary).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`mtl_fast._backend`).

    Accumulation is in fp32 with a deterministic float64 reduction across blocks: bitwise
    identical run to run, with an error that does not grow with D.
    """
    rows = as_task_rows(grads)
    return gram_rows(rows, backend=backend, check_finite=True)


#: Above this T, ``backend="auto"`` computes the Gram matrix of CUDA rows with the reference
#: (cuBLAS GEMMs) instead of the Triton kernel: the O(T²D) product is compute-bound there and
#: cuBLAS was faster on an H200 (full IMTL-G step at D = 10⁶, fp32: T = 512 15.9 ms vs 33.5 ms,
#: T = 1024 38.8 ms vs 123 ms; at T = 128 the kernel was faster, 3.46 ms vs 4.87 ms;
#: ``benchmarks/results/h200-2026-12-04.md``).
TRITON_GRAM_MAX_T = 256


def gram_rows(rows: TaskRows, *, backend: str = "auto", check_finite: bool = False) -> Tensor:
    """:func:`gram` on validated rows. ``check_finite`` applies on the CPU only (the device paths
    never sync); the autograd layer passes ``False`` and handles non-finite tasks itself
    (:class:`mtl_fast.Weighting`). ``backend="auto"`` on the CPU uses the native one-pass kernel
    (:mod:`mtl_fast._native_passes`: rows read in place, upper triangle only) when the extension
    is built; ``"torch"`` always runs the reference."""
    if _custom_ops.compiling():
        return _operator("gram_rows")(*_operator_rows(rows), backend, check_finite)
    use = _backend.resolve(backend, rows.device, rows.dtype)
    if use == "triton" and backend == "auto" and rows.num_tasks > TRITON_GRAM_MAX_T:
        use = "torch"
    if use == "triton":
        return _kernels().gram_rows(rows)
    if backend == "auto" and _native_passes.serves(rows):
        return _native_passes.gram_rows(rows, check_finite=check_finite)
    G = _ref_gram_rows(rows)
    if check_finite and (rows.device.type == "cpu" or backend == "torch"):
        raise_if_nonfinite(G)
    return G.to(accumulation_dtype(rows.dtype))


def _solve_backend(G: Tensor, backend: str) -> str:
    return _backend.resolve(backend, G.device, G.dtype if G.dtype == torch.float64 else None)


def _check_finite_gram(G: Tensor, backend: str) -> None:
    """A NaN/Inf Gram matrix raises on the reference path (CPU, or ``backend="torch"``), as the
    gradients do, naming the tasks whose row is non-finite; device paths stay sync-free."""
    if G.device.type == "cpu" or backend == "torch":
        bad = ~torch.isfinite(G).all(dim=1)
        if bool(bad.any()):
            raise ValueError(
                nonfinite_task_message(bad.nonzero().flatten().tolist(), "Gram matrix row")
            )


def imtl_g_weights(G: Tensor, *, backend: str = "auto") -> Tensor:
    """IMTL-G task weights from the Gram matrix (Liu et al. 2021 §3.1): G α ∝ n, Σα = 1.

    See :func:`mtl_fast.reference.imtl_g_weights` for the math and the degenerate cases.
    Returns float32 [T] (float64 for a float64 G) on G's device, without a host sync.
    A non-finite G raises ``ValueError`` on the reference path (CPU, ``backend="torch"``).
    """
    check_gram(G)
    if _custom_ops.compiling():
        return _operator("imtl_g_weights")(G, backend)
    _check_finite_gram(G, backend)
    T = G.shape[0]
    be = _solve_backend(G, backend)
    if be == "triton" and T <= TRITON_SOLVE_MAX_T:
        return _kernels().imtl_g_solve(G)
    if backend == "auto" and G.device.type == "cpu" and T <= NATIVE_IMTL_G_MAX_T:
        solve = _native("imtl_g_solve")
        if solve is not None:
            return _from_native(solve(_to_native(G), **SC.native_imtl_g_options(G.dtype)), G)
    return _ref_imtl_g_weights(G)


def mgda_weights(
    G: Tensor,
    *,
    constrained: bool = True,
    solver: str = "active_set",
    max_iter: int | None = None,
    tol: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """MGDA weights: the minimum-norm point of the convex hull of the gradients.

    min αᵀGα over the simplex (Sener & Koltun 2018). ``solver="active_set"`` (default) is exact
    (Wolfe's minimum-norm-point algorithm, warm-started by accelerated projected gradient);
    ``solver="frank_wolfe"`` is the published Frank-Wolfe loop (no iteration cap, until the step
    is below 1e-5), ``solver="frank_wolfe_capped"`` LibMTL's copy of it (at most 250 steps);
    see :func:`mtl_fast.reference.mgda_weights`.
    ``constrained=False`` gives the closed form G α ∝ 1 (Liu et al. 2021 §4).
    """
    check_gram(G)
    if solver not in MGDA_SOLVERS:
        raise ValueError(f"unknown MGDA solver {solver!r}; expected one of {MGDA_SOLVERS}")
    if _custom_ops.compiling():
        return _operator("mgda_weights")(G, constrained, solver, max_iter, tol, backend)
    _check_finite_gram(G, backend)
    T = G.shape[0]
    be = _solve_backend(G, backend)
    default_budget = max_iter is None and tol is None
    if constrained and solver == "active_set" and default_budget:
        if be == "triton" and T <= TRITON_SOLVE_MAX_T:
            return _kernels().mgda_solve(G)
        # The native Wolfe iteration updates the corral's Cholesky factor (O(k²) per step): it
        # serves every T on the CPU (exact at T = 4096 in ~0.5 s).
        if backend == "auto" and G.device.type == "cpu":
            solve = _native("mgda_solve")
            if solve is not None:
                return _from_native(solve(_to_native(G), **SC.native_mgda_options(T)), G)
    return _ref_mgda_weights(G, constrained=constrained, solver=solver, max_iter=max_iter, tol=tol)


def combine(
    grads: GradsLike, weights: Tensor, *, out: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """Σ_t α_t g_t in the gradients' dtype with fp32 accumulation (Liu et al. 2021 eq. 2).

    Args:
        grads: as for :func:`gram`.
        weights: α, floating [T] on the gradients' device (never read on the host).
        out: accumulate into this tensor (``out += Σ α_t g_t``), e.g. a ``.grad``; returned.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
    """
    rows = as_task_rows(grads)
    check_weights(weights, rows.num_tasks, rows.device)
    if out is not None:
        check_out(out, rows.shape, rows.dtype, rows.device)
    return combine_rows(rows, weights, out=out, backend=backend)


def combine_rows(
    rows: TaskRows, weights: Tensor, *, out: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """:func:`combine` on validated rows and weights."""
    if _custom_ops.compiling():
        tensors, stacked = _operator_rows(rows)
        if out is None:
            return _operator("combine_rows")(tensors, stacked, weights, backend)
        _operator("combine_rows_out")(tensors, stacked, weights, out, backend)
        return out
    if _backend.resolve(backend, rows.device, rows.dtype) == "triton":
        return _kernels().combine_rows(rows, weights, out)
    if backend == "auto" and _native_passes.serves(rows):
        return _native_passes.combine_rows(rows, weights, out)
    return _ref_combine_rows(rows, weights, out)


def _to_native(G: Tensor):
    return G.detach().to(torch.float64).contiguous().numpy()


def _from_native(alpha, G: Tensor) -> Tensor:
    return torch.from_numpy(alpha).to(torch.float64 if G.dtype == torch.float64 else torch.float32)


# ---- GradDrop (Chen et al. 2020): the sign-dropout combination -------------------------------


def _graddrop_impl(rows: TaskRows, backend: str):
    """The module serving GradDrop's two passes for these rows (same functions, same math)."""
    import importlib

    from mtl_fast import _native_graddrop

    if _backend.resolve(backend, rows.device, rows.dtype) == "triton":
        return _kernels()
    if backend == "auto" and _native_graddrop.serves(rows):
        return _native_graddrop
    return importlib.import_module("mtl_fast.reference.graddrop")


def graddrop_sums_rows(
    rows: TaskRows,
    weights: Tensor,
    batch: int,
    activations: Tensor | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """GradDrop's batch sums S [T, F] of validated rows
    (:func:`mtl_fast.reference.graddrop.graddrop_sums`)."""
    return _graddrop_impl(rows, backend).graddrop_sums(rows, weights, batch, activations)


def graddrop_combine_rows(
    rows: TaskRows,
    weights: Tensor,
    uniform: Tensor,
    leak: Tensor,
    *,
    sums: Tensor | None = None,
    activations: Tensor | None = None,
    out: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """GradDrop's combined gradient of validated rows
    (:func:`mtl_fast.reference.graddrop.graddrop_combine_rows`): Triton on CUDA, the native
    extension on the CPU, the reference otherwise."""
    return _graddrop_impl(rows, backend).graddrop_combine_rows(
        rows, weights, uniform, leak, sums=sums, activations=activations, out=out
    )
