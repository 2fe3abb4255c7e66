"""Exact (de)serialisation of a method's non-parameter state for ``state_dict()``.

A method keeps its running state (step counts, running statistics, EMA values, RNG states, the
last weights) in a plain dict. :func:`pack` turns it into something ``torch.save`` stores exactly
and :func:`unpack` restores it, so a resumed run reproduces an unbroken run bit for bit:

* tensors are cloned (their dtype and values are kept exactly);
* objects with ``state_dict()``/``load_state_dict()`` (e.g. :class:`mtl_fast.RunningStats`)
  are stored through them;
* ``torch.Generator`` objects are stored as their byte state;
* NumPy arrays are stored as tensors (exact: same dtype and values), so checkpoints load with
  ``torch.load(..., weights_only=True)``;
* plain Python values (numbers, strings, None, lists, tuples, dicts of these) are copied.

:func:`snapshot` / :func:`restore` are the cheap in-memory pair behind the step transaction
(:mod:`mtl_fast._step`: every training ``loss()`` snapshots the state it may change). They rely
on the rule every method follows: **state tensors are replaced, never modified in place**
(``self._state["x"] = f(x)``, not ``x.add_(...)``; ``tests/test_step_snapshot.py`` checks it
for every registered method). A snapshot therefore keeps references to the tensors and copies
only what does change in place: plain containers, NumPy arrays, generators (their byte state)
and objects with a ``step_snapshot()`` / ``step_restore(s)`` pair (the running statistics);
any other object with ``state_dict()`` is packed as above.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor

_SD = "__state_dict__"
_GEN = "__generator_state__"


def pack(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, torch.Generator):
        return {_GEN: value.get_state(), "device": str(value.device)}
    if hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
        return {_SD: pack(value.state_dict())}
    if isinstance(value, dict):
        return {k: pack(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(pack(v) for v in value)
    return copy.deepcopy(value)


def unpack(stored: Any, current: Any) -> Any:
    """Restore ``stored`` into the shape of ``current`` (the live value it replaces).

    Stateful objects and generators are restored in place (``current`` is returned); tensors are
    moved to the device of ``current`` when it is a tensor.
    """
    if isinstance(stored, dict) and _GEN in stored:
        gen = current if isinstance(current, torch.Generator) else torch.Generator(stored["device"])
        gen.set_state(stored[_GEN])
        return gen
    if isinstance(stored, dict) and _SD in stored:
        if current is None or not hasattr(current, "load_state_dict"):
            raise ValueError("state_dict holds the state of an object this method does not have")
        current.load_state_dict(unpack(stored[_SD], None))
        return current
    if isinstance(stored, Tensor):
        device = current.device if isinstance(current, Tensor) else stored.device
        return stored.detach().clone().to(device)
    if isinstance(stored, dict):
        cur = current if isinstance(current, dict) else {}
        return {k: unpack(v, cur.get(k)) for k, v in stored.items()}
    if isinstance(stored, (list, tuple)):
        seq = current if isinstance(current, (list, tuple)) else [None] * len(stored)
        return type(stored)(unpack(v, c) for v, c in zip(stored, seq))
    return copy.deepcopy(stored)


class _Saved:
    """An object restored in place: ``obj.step_restore(state)`` or a generator's
    ``set_state``."""

    __slots__ = ("obj", "state")

    def __init__(self, obj: Any, state: Any) -> None:
        self.obj = obj
        self.state = state


class _Packed:
    """An object without a snapshot protocol, stored by :func:`pack`."""

    __slots__ = ("stored",)

    def __init__(self, stored: Any) -> None:
        self.stored = stored


_IMMUTABLE = (int, float, str, bool, bytes, type(None))


def snapshot(value: Any) -> Any:
    """What :func:`restore` needs to bring ``value`` back (module docstring: references to
    tensors, copies of what changes in place)."""
    if isinstance(value, Tensor) or isinstance(value, _IMMUTABLE):
        return value
    if type(value) is dict:
        return {k: snapshot(v) for k, v in value.items()}
    if type(value) is list:
        return [snapshot(v) for v in value]
    if type(value) is tuple:
        return tuple(snapshot(v) for v in value)
    if isinstance(value, torch.Generator):
        return _Saved(value, value.get_state())
    take = getattr(value, "step_snapshot", None)
    if callable(take) and callable(getattr(value, "step_restore", None)):
        return _Saved(value, take())
    return _Packed(pack(value))


def restore(snap: Any, current: Any) -> Any:
    """The value :func:`snapshot` saw, given the live ``current`` (objects are restored in
    place; a tensor goes back to the device ``current`` is on, as :func:`unpack` does)."""
    if isinstance(snap, _Saved):
        if isinstance(snap.obj, torch.Generator):
            snap.obj.set_state(snap.state)
        else:
            snap.obj.step_restore(snap.state)
        return snap.obj
    if isinstance(snap, _Packed):
        return unpack(snap.stored, current)
    if isinstance(snap, Tensor):
        if isinstance(current, Tensor) and current.device != snap.device:
            return snap.to(current.device)
        return snap
    if type(snap) is dict:
        cur = current if isinstance(current, dict) else {}
        return {k: restore(v, cur.get(k)) for k, v in snap.items()}
    if type(snap) in (list, tuple):
        seq = current if isinstance(current, (list, tuple)) else [None] * len(snap)
        seq = list(seq) + [None] * max(0, len(snap) - len(seq))
        return type(snap)(restore(v, c) for v, c in zip(snap, seq))
    return snap
