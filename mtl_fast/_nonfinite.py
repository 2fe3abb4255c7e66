"""Non-finite task inputs without host synchronisation.

Policy (documented in the README, "Degenerate and bad input"):

* CPU tensors: a NaN/Inf loss or gradient raises ``ValueError`` naming the task at once (reading
  a flag on the CPU costs nothing).
* Other devices: raising at once would need a device→host sync in the hot path. The offending
  task is treated as absent for this step (weight 0, excluded from the solve), and a per-task
  flag is copied to pinned host memory with a non-blocking copy. The next call into the method
  polls the copy (an event query, which never blocks) and raises the same ``ValueError`` then,
  one step late. :meth:`NonFiniteMonitor.check_now` forces the check (it synchronises).
* Inside a CUDA-graph capture nothing is recorded (no events can be polled); the offending task
  still gets weight 0.
* Under ``torch.compile`` (a traced :meth:`NonFiniteMonitor.report`) the report is the custom
  operator ``report_nonfinite`` (:mod:`mtl_fast._custom_ops`), which applies this same policy at
  run time: no host read in the traced graph, the same ``ValueError`` at once on the CPU, the same
  deferred flag elsewhere. (A method's step under ``torch.compile`` runs its eager code inside
  operators of :mod:`mtl_fast._compiled_step`, where the policy applies as it is.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtl_fast import _custom_ops
from mtl_fast._backend import cuda_capturing
from mtl_fast._validation import NONFINITE, nonfinite_task_message


@dataclass
class _PendingFlag:
    host: Tensor  # bool [T] in pinned memory, filled by a non-blocking copy
    event: torch.cuda.Event | None
    what: str
    step: int
    problem: str


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class NonFiniteMonitor:
    """Records per-task non-finite flags and raises ``ValueError`` (at once on the CPU, lazily
    on accelerators)."""

    def __init__(self, owner: str = "") -> None:
        self._pending: list[_PendingFlag] = []
        #: Named in every message: the method, and the tasks by name once they are known.
        self.owner = owner
        self.task_names: list[str] | None = None
        self._handle = _custom_ops.register(self)
        self._order = torch.zeros(1, dtype=torch.int64)

    def __setstate__(self, state: dict) -> None:
        """Unpickling / ``copy.deepcopy``: the copy gets its own operator handle."""
        self.__dict__.update(state)
        self._handle = _custom_ops.register(self)

    def report(
        self,
        bad: Tensor,
        what: str,
        step: int,
        *,
        problem: str = NONFINITE,
        names: list[str] | None = None,
    ) -> None:
        """Flag tasks whose ``what`` ("loss" or "gradient") has ``problem`` (by default: is
        non-finite); ``bad`` is bool [T]; ``names``: the tasks' names for this step."""
        if _custom_ops.compiling():
            _REPORT(self._order, self._handle, bad, what, step, problem, names)
            return
        if names is not None:
            self.task_names = list(names)
        if bad.device.type == "cpu":
            if bool(bad.any()):
                idx = bad.nonzero().flatten().tolist()
                raise ValueError(self._message(idx, what, problem))
            return
        if _capturing(bad.device):
            return
        host = torch.empty(bad.shape, dtype=torch.bool, pin_memory=bad.device.type == "cuda")
        host.copy_(bad, non_blocking=True)
        event = None
        if bad.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._pending.append(_PendingFlag(host, event, what, step, problem))

    def poll(self) -> None:
        """Raise for a recorded flag whose copy has landed; never blocks. Does nothing while a
        CUDA graph is being captured (querying an event is not permitted then); the flags are
        polled by the next call outside the capture."""
        if self._pending and cuda_capturing():
            return
        still = []
        for flag in self._pending:
            if flag.event is not None and not flag.event.query():
                still.append(flag)
                continue
            self._raise_if_set(flag, still)
        self._pending = still

    def check_now(self) -> None:
        """Wait for every recorded flag and raise if one is set (synchronises)."""
        pending, self._pending = self._pending, []
        for flag in pending:
            if flag.event is not None:
                flag.event.synchronize()
            self._raise_if_set(flag, [])

    def clear(self) -> None:
        self._pending = []

    def _message(self, idx: list[int], what: str, problem: str) -> str:
        return nonfinite_task_message(
            idx, what, problem, owner=self.owner or None, names=self.task_names
        )

    def _raise_if_set(self, flag: _PendingFlag, still: list[_PendingFlag]) -> None:
        if bool(flag.host.any()):
            self._pending = still
            idx = flag.host.nonzero().flatten().tolist()
            raise ValueError(
                self._message(idx, flag.what, flag.problem)
                + f" (detected on the device at step {flag.step}; that task got weight 0)"
            )


def _report_eager(
    order: Tensor,
    handle: int,
    bad: Tensor,
    what: str,
    step: int,
    problem: str,
    names: list[str] | None,
) -> None:
    order.add_(1)
    _custom_ops.lookup(handle).report(bad, what, step, problem=problem, names=names)


def _report_fake(*args: Any) -> None:
    return None


_REPORT = _custom_ops.define(
    "report_nonfinite(Tensor(a!) order, int handle, Tensor bad, str what, int step, str problem, "
    "str[]? names) -> ()",
    _report_eager,
    _report_fake,
)
