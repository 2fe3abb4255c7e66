"""The epoch hook shared by the period-based methods (LSB, DWA)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar


class EpochPeriods:
    """Mixin of the period-based methods (LSB, DWA): by default a period is an epoch, so
    :meth:`end_epoch` closes it; with ``period_steps=`` the periods close by themselves and an
    epoch's end changes nothing."""

    _state: dict[str, Any]
    _lifecycle_called: Callable[[str], None]
    lifecycle: ClassVar[tuple[str, ...]] = ("end_epoch",)

    def end_period(self) -> bool:
        raise NotImplementedError

    def _lifecycle_automatic(self) -> set[str]:
        return {"end_epoch"} if self._state["periods"].period_steps is not None else set()

    def end_epoch(self) -> bool:
        """Close the current period, unless ``period_steps`` closes periods by steps."""
        self._lifecycle_called("end_epoch")
        if self._state["periods"].period_steps is not None:
            return False
        return self.end_period()
