"""Which implementation serves an op: the Triton kernels, the native CPU solvers or the reference.

* ``"torch"``: :mod:`mtl_fast.reference`, pure PyTorch, any device.
* ``"triton"``: :mod:`mtl_fast.kernels`; CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1``
  (how the tests run the kernels on a machine without a GPU).
* ``"auto"``: Triton for CUDA tensors when Triton imports; otherwise the reference, with the
  Gram and combine passes and the small T×T solves served by the native extension ``mtl_fast._C``
  on the CPU when it is built (the same contracts and algorithms, without PyTorch's per-op
  overhead, tested against the reference; see :mod:`mtl_fast._native_passes`).
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch

Backend = Literal["auto", "torch", "triton"]
BACKENDS = ("auto", "torch", "triton")


def triton_interpret() -> bool:
    """True when Triton kernels run in the interpreter (``TRITON_INTERPRET=1``) on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_import_error() -> str | None:
    """``None`` when Triton and the kernels import, else the reason (kept for ``mtl-fast info``)."""
    try:
        import triton  # noqa: F401

        import mtl_fast.kernels  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_available() -> bool:
    return triton_import_error() is None


@functools.cache
def native_import_error() -> str | None:
    """``None`` when the compiled extension ``mtl_fast._C`` imports, else the reason."""
    try:
        import mtl_fast._C  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def native_available() -> bool:
    return native_import_error() is None


def cuda_capturing() -> bool:
    """A CUDA-graph capture is under way on the current stream (``False`` where CUDA was never
    initialised, without initialising it)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def triton_can_run(device: torch.device) -> bool:
    """Triton can run kernels on tensors of this device (CUDA, or CPU under the interpreter)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and triton_interpret()


def resolve(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Map a requested backend to ``"torch"`` or ``"triton"`` for tensors of this device/dtype.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: ``"triton"`` requested where it cannot run (with the reason).
        TypeError: ``"triton"`` requested for float64 (the kernels take fp32/bf16/fp16).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torch":
        return "torch"
    ok_dtype = dtype is None or dtype != torch.float64
    if backend == "auto":
        use = device.type == "cuda" and ok_dtype and triton_available()
        return "triton" if use else "torch"
    # backend == "triton"
    if not triton_available():
        raise RuntimeError(
            f"backend='triton' requested but Triton is unavailable: {triton_import_error()}"
        )
    if not triton_can_run(device):
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors (got {device}); on the CPU set "
            "TRITON_INTERPRET=1 before importing triton to run the kernels in the interpreter"
        )
    if not ok_dtype:
        raise TypeError(
            "backend='triton' takes float32, bfloat16 or float16 inputs; use 'torch' for float64"
        )
    return "triton"
