r"""Dynamic Task Prioritization, DTP (Guo, Haque, Huang, Yeung & Fei-Fei, ECCV 2018), task level.

Functional core: :func:`dtp_weights`, the task-level focal weight
w_t = FL(κ̄_t; γ) = −(1 − κ̄_t)^γ log κ̄_t, where κ̄_t is the moving average of task t's key
performance indicator (KPI, e.g. accuracy in [0, 1]). The KPIs are smoothed by the accuracy
tracker shared with AMTL (:class:`mtl_fast.methods.amtl.AccuracyTracker`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtl_fast.methods._shared import weighted_sum
from mtl_fast.methods.amtl import (
    AccuracyTracker,
    DirectionLike,
    _accuracy_vector,
    _average_accuracies,
    directions,
)
from mtl_fast.weighting import Weighting

__all__ = ["DTP", "dtp_weights"]

#: κ is clamped to [KPI_FLOOR, 1] before log κ (κ = 0 would give an infinite weight).
KPI_FLOOR = 1e-6


def dtp_weights(kpi: Tensor, gamma: float) -> Tensor:
    """w_t = −(1 − κ_t)^γ log κ_t with κ clamped to [1e-6, 1] (a perfect task gets 0)."""
    k = kpi.clamp(KPI_FLOOR, 1.0)
    return -torch.pow(1.0 - k, gamma) * torch.log(k)


class DTP(Weighting):
    r"""Dynamic Task Prioritization (Guo et al. 2018), task-level prioritisation.

    total = Σ_t w_t L_t with w_t = −(1 − κ̄_t)^γ log κ̄_t (:func:`dtp_weights`), κ̄_t the moving
    average of task t's KPI: KPIs arrive through :meth:`update_accuracy` after each evaluation
    and are smoothed exactly as AMTL's accuracies (:class:`~mtl_fast.methods.amtl.AccuracyTracker`,
    new = 0.1·κ + 0.9·old, initialised to the first value). Difficult tasks (low KPI) get large
    weights. Only the task-level weighting is implemented (the paper's example-level focal loss
    belongs to the task losses themselves).

    KPIs must lie in [0, 1] (``ValueError`` otherwise). For a KPI where lower is better (an
    error rate), pass ``higher_is_better=False`` for that task: κ = 1 − value. κ is clamped to
    [1e-6, 1] before the logarithm. Before every task has a KPI, all weights are 1 (plain sum).

    Args:
        num_tasks: T.
        gamma: γ, the focusing parameter (default 2, the focal loss's usual value; the paper
            leaves it per task).
        higher_is_better: one bool or one per task.
        momentum: of the KPI moving average (default 0.1, shared with AMTL).
        **kwargs: :class:`mtl_fast.Weighting` options.

    Masks: absent tasks get 0; the weights are not normalised, so the others keep theirs.

    ``weights``: w_t. Needs: losses and per-task KPIs from evaluation. Extra cost: none per step.
    """

    lifecycle = ("observe",)

    cuda_graph_capturable = False
    cuda_graph_note = (
        "not yet checked on a GPU: tests/test_cuda_graph_step.py checks every registered method; "
        "this one was added to it after the H200 run of 2026-12-04."
    )

    def __init__(
        self,
        num_tasks: int,
        gamma: float = 2.0,
        *,
        higher_is_better: DirectionLike = True,
        momentum: float = 0.1,
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0; got {gamma!r}")
        super().__init__(num_tasks, **kwargs)
        self.gamma = float(gamma)
        self.higher_is_better = directions(higher_is_better, num_tasks)
        self._higher = torch.tensor(self.higher_is_better)
        self._state["accuracy"] = AccuracyTracker(num_tasks, momentum)
        self._state["kpi_weights"] = torch.ones(num_tasks, dtype=torch.float64)

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def kpi(self) -> Tensor:
        """The smoothed KPIs κ̄_t (higher is better; CPU float64)."""
        return self._state["accuracy"].value.clone()

    def observe(self, metrics: Sequence[float] | Tensor, *, sync: bool | None = None) -> None:
        """:meth:`update_accuracy` (the base class's lifecycle hook)."""
        self._lifecycle_called("observe")
        self.update_accuracy(metrics, sync=sync)

    def update_accuracy(self, kpi: Sequence[float] | Tensor, *, sync: bool | None = None) -> None:
        """Feed the KPIs of an evaluation, one per task in [0, 1] (NaN: not evaluated).

        Under ``torch.distributed`` the KPIs are averaged across the processes (each task over
        those that evaluated it): call it on every process, as
        :meth:`mtl_fast.AMTL.update_accuracy` (same ``sync`` option).
        """
        self._lifecycle_called("observe")
        values = _accuracy_vector(kpi, self.num_tasks or 0)
        values = _average_accuracies(self, values, sync)
        given = ~torch.isnan(values)
        if bool((given & ~((values >= 0) & (values <= 1))).any()):
            raise ValueError(f"DTP's KPIs must lie in [0, 1]; got {values.tolist()}")
        tracker: AccuracyTracker = self._state["accuracy"]
        tracker.update(torch.where(self._higher, values, 1.0 - values))
        if tracker.ready:
            self._state["kpi_weights"] = dtp_weights(tracker.value, self.gamma)

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        w = self._state["kpi_weights"]
        if w.device != losses.device:  # moved once per KPI update
            w = self._state["kpi_weights"] = w.to(losses.device, non_blocking=True)
        w = torch.where(present, w, 0.0).to(losses.dtype)
        self._set_weights(w)
        return weighted_sum(w, losses)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, gamma={self.gamma}"
