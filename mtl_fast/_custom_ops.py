"""The ``torch.library`` layer that makes mtl_fast traceable by ``torch.compile``.

Dynamo cannot trace a pybind function of ``mtl_fast._C``, a Triton launcher that reads tensor
addresses, nor the Python bookkeeping of a method's step (counters, snapshots, tokens, random
streams): the first two break the graph, the last is specialised on every counter value, so the
graph would be recompiled at every step. Each of these is therefore a *custom operator* in the
``mtl_fast`` namespace: opaque to the compiler (it sees only the schema and a fake
implementation that gives the output shapes), and run at run time by the same eager code as
without ``torch.compile``, so compiled and eager steps compute the same numbers. See
docs/compile_and_amp.md for what this means for a training loop.

Where the operators are defined (each next to the eager code it runs):

* :mod:`mtl_fast._compiled_step` — a method's step: ``open_split``, ``method_loss``,
  ``commit_step``;
* :mod:`mtl_fast._split` — ``split_backward`` (Gram matrix, solve, combine of ``split``);
* :mod:`mtl_fast.ops` — the public ops ``gram_rows``, ``combine_rows``, ``imtl_g_weights``,
  ``mgda_weights`` (whichever backend serves them: the native C++ passes and solvers, the Triton
  kernels or the reference);
* :mod:`mtl_fast.running_stats` — the C++ Welford accumulator: ``welford_update``,
  ``welford_moments``;
* :mod:`mtl_fast._nonfinite` — ``report_nonfinite`` (the non-finite policy of a traced step).

**Adding one more native function** (say ``mtl_fast._C.fused_update``, called from
``mymodule.py``):

1. in ``mymodule.py``, next to the eager wrapper ``fused_update(x, y)`` that calls ``_C``::

       from mtl_fast import _custom_ops

       def _fused_update_fake(x: Tensor, y: Tensor) -> Tensor:
           return x.new_empty(x.shape)          # shapes, dtypes, devices, strides only

       _FUSED = _custom_ops.define(
           "fused_update(Tensor x, Tensor y) -> Tensor", _fused_update_eager, _fused_update_fake
       )

   (``Tensor(a!) x`` in the schema when the function writes into ``x``; outputs never alias
   inputs: return new tensors);
2. at the call site: ``if _custom_ops.compiling(): return _FUSED(x, y)`` before the eager call;
3. a test in ``tests/test_compile.py``: ``torch._dynamo.explain`` of a function calling it reports
   no graph break, and the compiled result equals the eager one.

Objects that cannot cross the operator boundary (a method, a C++ accumulator) are passed as an
integer handle (:func:`register` / :func:`lookup`), a compile-time constant of the graph.

torch >= 2.4 and 2.3 are served by the same calls (``Library.define`` / ``Library.impl`` with
``register_fake``, or ``impl_abstract`` where ``register_fake`` does not exist yet).
"""

from __future__ import annotations

import functools
import itertools
import weakref
from typing import Any, Callable

import torch

#: The operator namespace: ``torch.ops.mtl_fast.<name>``.
NAMESPACE = "mtl_fast"

_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")
# The dispatcher's thread-local key sets of plain eager code (read at import). An operator's
# implementation can be entered with autograd excluded (the first run of a compiled graph does
# this); the step's eager code needs autograd, so it runs under these sets again.
_EAGER_KEYS = (
    torch._C._dispatch_tls_local_include_set(),
    torch._C._dispatch_tls_local_exclude_set(),
)
_OBJECTS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


def compiling() -> bool:
    """Whether the code runs under ``torch.compile``'s tracing (Dynamo) rather than eagerly."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    if is_compiling is not None:
        return bool(is_compiling())
    return bool(torch._dynamo.is_compiling())  # pragma: no cover - torch < 2.3


def _register_fake(qualname: str, fake: Callable[..., Any]) -> None:
    register_fake = getattr(torch.library, "register_fake", None)
    if register_fake is not None:
        register_fake(qualname, fake, lib=_LIBRARY)
    else:  # pragma: no cover - torch 2.3
        torch.library.impl_abstract(qualname, fake, lib=_LIBRARY)


def _as_eager(impl: Callable[..., Any]) -> Callable[..., Any]:
    """``impl`` run as plain eager code: not traced by Dynamo (an implementation may run while a
    compiled frame executes, e.g. a backward called after a graph break) and with the
    dispatcher's eager key sets (autograd on)."""
    force = getattr(torch._C, "_ForceDispatchKeyGuard", None)

    @functools.wraps(impl)
    def run(*args: Any) -> Any:
        if force is None:  # pragma: no cover - very old torch
            return impl(*args)
        with force(*_EAGER_KEYS):
            return impl(*args)

    return torch.compiler.disable(run)


def define(schema: str, impl: Callable[..., Any], fake: Callable[..., Any]) -> Any:
    """Define ``torch.ops.mtl_fast.<name>`` from its schema (``"name(Tensor x, int k) ->
    Tensor"``), its eager implementation (any device; always run eagerly, never traced) and its
    fake implementation (what the compiler calls on fake tensors to learn the outputs'
    metadata); returns the operator."""
    name = schema.split("(", 1)[0].strip()
    _LIBRARY.define(schema)
    _LIBRARY.impl(name, _as_eager(impl), "CompositeExplicitAutograd")
    _register_fake(f"{NAMESPACE}::{name}", fake)
    return getattr(getattr(torch.ops, NAMESPACE), name).default


def register(obj: Any) -> int:
    """A new handle for ``obj`` (held weakly), for an operator argument."""
    handle = next(_HANDLES)
    _OBJECTS[handle] = obj
    return handle


def lookup(handle: int) -> Any:
    """The object behind ``handle``.

    Raises:
        RuntimeError: the object no longer exists (a compiled graph outlived its method).
    """
    obj = _OBJECTS.get(int(handle))
    if obj is None:
        raise RuntimeError(
            f"mtl_fast: a compiled graph refers to object handle {handle}, which no longer "
            "exists; recompile (torch._dynamo.reset()) after replacing the method"
        )
    return obj
