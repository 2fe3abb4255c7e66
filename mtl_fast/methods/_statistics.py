"""Running loss statistics shared by the loss-based methods: per-task running moments where the
losses are (:class:`LossStatistics`, CV-Weighting, LSB) and per-period averages (LSB, DWA)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from mtl_fast.running_stats import RunningStats, TorchRunningStats

ACCUMULATORS = ("auto", "torch")


class LossStatistics:
    """K running statistics kept where the losses are.

    Losses on the CPU are accumulated by the C++ :class:`mtl_fast.RunningStats`
    (``mtl_fast._C``); losses on another device (CUDA) by the device-resident
    :class:`mtl_fast.TorchRunningStats` (torch ops only, no host synchronisation). Both follow
    the same rules and give the same numbers (float64). The first update on a new device moves
    the state there (a one-time copy); ``accumulator="torch"`` uses the torch accumulator on
    every device (e.g. to compare both on the CPU).

    Args:
        num_streams: K.
        decay, decay_variance: as in :class:`mtl_fast.RunningStats` (``None``: Welford's plain
            running mean, eq. 7–8 of Groenendijk et al. 2021).
        accumulator: ``"auto"`` or ``"torch"``.

    :meth:`state_dict` / :meth:`load_state_dict` use the accumulators' common format, so a state
    saved on one device loads on another.
    """

    def __init__(
        self,
        num_streams: int,
        *,
        decay: float | None = None,
        decay_variance: bool = True,
        accumulator: str = "auto",
    ) -> None:
        if accumulator not in ACCUMULATORS:
            raise ValueError(f"accumulator must be one of {ACCUMULATORS}; got {accumulator!r}")
        self.num_streams = int(num_streams)
        self.kind = accumulator
        self._config: dict[str, Any] = {"decay": decay, "decay_variance": decay_variance}
        self.accumulator: RunningStats | TorchRunningStats = self._make(torch.device("cpu"))

    def _make(self, device: torch.device) -> RunningStats | TorchRunningStats:
        if device.type == "cpu" and self.kind == "auto":
            return RunningStats(self.num_streams, **self._config)
        return TorchRunningStats(self.num_streams, device=device, **self._config)

    def _on(self, device: torch.device) -> RunningStats | TorchRunningStats:
        """The accumulator for ``device``, moving the state there when it is elsewhere."""
        acc = self.accumulator
        if isinstance(acc, RunningStats):
            if device.type == "cpu" and self.kind == "auto":
                return acc
        elif acc.device == device and (device.type != "cpu" or self.kind == "torch"):
            return acc
        new = self._make(device)
        new.load_state_dict(acc.state_dict())
        self.accumulator = new
        return new

    def native(self, device: torch.device) -> Any:
        """The C++ accumulator (``mtl_fast._C.Welford``) when it serves statistics of values on
        ``device`` (CPU, ``accumulator="auto"``), else ``None``; the state moves as in
        :meth:`update`."""
        acc = self._on(device)
        return acc._impl if isinstance(acc, RunningStats) else None

    def update(self, values: Tensor, mask: Tensor) -> None:
        """Add ``values`` [K] to the streams selected by ``mask`` (bool [K], same device)."""
        self._on(values.device).update(values.detach().to(torch.float64), mask)

    def snapshot(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, population variance, count) as tensors on ``device`` (float64, int64)."""
        acc = self._on(device)
        if isinstance(acc, RunningStats):
            return (
                torch.from_numpy(acc.mean),
                torch.from_numpy(acc.var),
                torch.from_numpy(acc.count),
            )
        return acc.mean, acc.var, acc.count

    @property
    def device(self) -> torch.device:
        """Where the statistics are (the CPU for the C++ accumulator)."""
        acc = self.accumulator
        return torch.device("cpu") if isinstance(acc, RunningStats) else acc.device

    def reset(self) -> None:
        """Forget every observation."""
        self.accumulator.reset()

    def state_dict(self) -> dict[str, Any]:
        """The accumulator's state (exact; loads with ``torch.load(weights_only=True)``)."""
        return self.accumulator.state_dict()

    def step_snapshot(self) -> Any:
        """The accumulator and its state, for :meth:`step_restore` (the rollback of an abandoned
        step, :mod:`mtl_fast._state`)."""
        return self.accumulator, self.accumulator.step_snapshot()

    def step_restore(self, snap: Any) -> None:
        """Return to a :meth:`step_snapshot`."""
        acc, state = snap
        acc.step_restore(state)
        self.accumulator = acc

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.accumulator.load_state_dict(state)


class PeriodAverages:
    """Per-task average loss over training periods (epochs), for LSB and DWA.

    :meth:`observe` adds one step's losses to the current period (per task, only where present);
    :meth:`end_period` closes it: its averages L_k^t become the newest history entry and a new
    period starts. A task absent during a whole period carries its previous average forward
    (L_k^t = L_k^{t−1}). An average is *valid* when the task has been observed and its average
    is > 0.

    Args:
        num_tasks: T.
        period_steps: when set, :meth:`observe` reports a full period after that many steps.
        accumulator: see :class:`mtl_fast.methods.cv.LossStatistics`.

    Attributes:
        period: the current period, 1-based.
        steps: training steps seen in the current period.
    """

    def __init__(
        self, num_tasks: int, *, period_steps: int | None = None, accumulator: str = "auto"
    ) -> None:
        if period_steps is not None and (not isinstance(period_steps, int) or period_steps < 1):
            raise ValueError(f"period_steps must be None or a positive int; got {period_steps!r}")
        self.num_tasks = int(num_tasks)
        self.period_steps = period_steps
        self.period = 1
        self.steps = 0
        self.stats = LossStatistics(num_tasks, accumulator=accumulator)
        #: averages of the last two closed periods, newest first (float64 [T] or None)
        self.history: list[Tensor | None] = [None, None]
        #: validity of those averages (bool [T] or None)
        self.valid: list[Tensor | None] = [None, None]

    def observe(self, values: Tensor, present: Tensor, *, completes_step: bool = True) -> bool:
        """Add one step's losses; True when ``period_steps`` steps are in the period (time to
        close). ``completes_step``: False for a micro-batch that does not end an optimizer step
        (gradient accumulation): its losses count, the step does not."""
        self.stats.update(values, present)
        if not completes_step:
            return False
        self.steps += 1
        return self.period_steps is not None and self.steps >= self.period_steps

    def closing_averages(self) -> tuple[Tensor, Tensor]:
        """(L_k^t, valid) of the current period, carried over where a task was not observed."""
        device = self.stats.device
        mean, _, count = self.stats.snapshot(device)
        seen = count > 0
        prev, prev_valid = self.history[0], self.valid[0]
        if prev is None or prev_valid is None:
            return mean, seen & (mean > 0)
        prev, prev_valid = prev.to(device), prev_valid.to(device)
        return torch.where(seen, mean, prev), torch.where(seen, mean > 0, prev_valid)

    def close(self, averages: Tensor, valid: Tensor) -> None:
        """Push the closed period's averages into the history and start the next period."""
        self.history = [averages, self.history[0]]
        self.valid = [valid, self.valid[0]]
        self.stats.reset()
        self.steps = 0
        self.period += 1

    def end_period(self) -> bool:
        """Close the current period; no-op (False) when it had no step."""
        if self.steps == 0:
            return False
        self.close(*self.closing_averages())
        return True

    def rate(self, device: torch.device) -> Tensor:
        """L_k^{t−1} / L_k^{t−2} (the DWA ratio); 1 where either average is not valid."""
        h0, h1, v0, v1 = (*self.history, *self.valid)
        if h0 is None or h1 is None or v0 is None or v1 is None:
            return torch.ones(self.num_tasks, dtype=torch.float64, device=device)
        h0, h1 = h0.to(device), h1.to(device)
        ok = v0.to(device) & v1.to(device)
        return torch.where(ok, h0 / torch.where(ok, h1, 1.0), 1.0)

    def step_snapshot(self) -> Any:
        """The period, its step count, the statistics and the history, for
        :meth:`step_restore`."""
        return (
            self.period,
            self.steps,
            self.stats.step_snapshot(),
            list(self.history),
            list(self.valid),
        )

    def step_restore(self, snap: Any) -> None:
        """Return to a :meth:`step_snapshot`."""
        self.period, self.steps, stats, history, valid = snap
        self.stats.step_restore(stats)
        self.history, self.valid = list(history), list(valid)

    def state_dict(self) -> dict[str, Any]:
        """The period count, the running means of the current period and the history."""
        return {
            "period": self.period,
            "steps": self.steps,
            "stats": self.stats.state_dict(),
            "history": list(self.history),
            "valid": list(self.valid),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.stats.load_state_dict(state["stats"])
        self.period = int(state["period"])
        self.steps = int(state["steps"])
        self.history = list(state["history"])
        self.valid = list(state["valid"])
