r"""Achievement-based multi-task loss, AMTL (Yun & Cho, 2023), and the accuracy tracker.

Functional core (one function per formula; the classes are thin stateful wrappers):

* :func:`ema_update` — the smoothed accuracy, new = m·acc + (1 − m)·old (m = 0.1);
* :func:`achievement_weights` — eq. 4, w_t = (1 − Acc̄_t / ((1 + margin)·p_t))^γ, clamped at 0;
* :func:`reciprocal_if_lower` — how a lower-is-better metric becomes an accuracy (1/x);
* the weighted geometric mean of eq. 5 is
  :func:`mtl_fast.methods.baselines.weighted_geometric_mean`.

:class:`AccuracyTracker` (the EMA of per-task accuracies fed after each evaluation) is shared
with DTP (:mod:`mtl_fast.methods.dtp`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import torch
from torch import Tensor

from mtl_fast import distributed
from mtl_fast.methods.baselines import (
    _as_float_list,
    positive_losses,
    softmax_over_present,
    weighted_geometric_mean,
    weighted_sum,
)
from mtl_fast.weighting import Weighting

__all__ = [
    "AMTL",
    "AccuracyTracker",
    "achievement_weights",
    "directions",
    "ema_update",
    "reciprocal_if_lower",
]

DirectionLike = Union[bool, Sequence[bool]]


# --------------------------------------------------------------------------- functional core


def ema_update(old: Tensor, new: Tensor, momentum: float, seen: Tensor) -> Tensor:
    """new_ema = momentum·new + (1 − momentum)·old; the first value (``seen`` False) is taken
    as it is."""
    return torch.where(seen, momentum * new + (1.0 - momentum) * old, new)


def achievement_weights(
    accuracy: Tensor, potentials: Tensor, margin: float, gamma: float
) -> Tensor:
    r"""Eq. 4: w_t = (1 − Acc̄_t / (m·p_t))^γ with m = 1 + margin (the published code's margin).

    The base is clamped at 0, so a task whose smoothed accuracy exceeds (1 + margin)·p_t gets
    weight 0 instead of NaN (or a growing weight for even γ).
    """
    base = (1.0 - accuracy / ((1.0 + margin) * potentials)).clamp_min(0.0)
    return torch.pow(base, gamma)


def reciprocal_if_lower(values: Tensor, higher_is_better: Tensor) -> Tensor:
    """A metric where lower is better (error, RMSE) as an accuracy: its reciprocal 1/x.

    This is the convention of Yun & Cho 2023's multi-task accuracy (eq. 8: M^{S_t} with S_t = −1),
    under which the achievement Acc/p of a lower-is-better metric x with potential q is q/x.
    """
    return torch.where(higher_is_better, values, 1.0 / values)


def directions(higher_is_better: DirectionLike, num_tasks: int) -> list[bool]:
    """``higher_is_better`` (one bool or one per task) as T bools."""
    if isinstance(higher_is_better, bool):
        return [higher_is_better] * num_tasks
    out = [bool(h) for h in higher_is_better]
    if len(out) != num_tasks:
        raise ValueError(f"higher_is_better has {len(out)} entries; expected {num_tasks}")
    return out


# --------------------------------------------------------------------------- tracker


class AccuracyTracker:
    """Per-task accuracies smoothed by an exponential moving average (AMTL, DTP).

    ``update(acc)`` after each evaluation: per task, ema ← momentum·acc + (1 − momentum)·ema,
    initialised to the first value. A NaN entry means "not evaluated": that task is untouched.
    Values live on the CPU in float64 (they arrive from the host, a few times per epoch).

    Args:
        num_tasks: T.
        momentum: weight of the new value (default 0.1, the AMTL code's).
    """

    def __init__(self, num_tasks: int, momentum: float = 0.1) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1]; got {momentum!r}")
        self.num_tasks = int(num_tasks)
        self.momentum = float(momentum)
        self.value = torch.zeros(num_tasks, dtype=torch.float64)
        self.seen = torch.zeros(num_tasks, dtype=torch.bool)

    @property
    def ready(self) -> bool:
        """Whether every task has received a value."""
        return bool(self.seen.all())

    def update(self, values: Tensor) -> None:
        """Fold ``values`` (float64 [T] on the CPU; NaN = not evaluated) into the averages."""
        given = ~torch.isnan(values)
        new = ema_update(self.value, values, self.momentum, self.seen)
        self.value = torch.where(given, new, self.value)
        self.seen = self.seen | given

    def state_dict(self) -> dict[str, Any]:
        """The averaged accuracies and which tasks have been evaluated."""
        return {"value": self.value.clone(), "seen": self.seen.clone()}

    def step_snapshot(self) -> Any:
        """References to the averages (replaced by :meth:`update`, never modified in place)."""
        return self.value, self.seen

    def step_restore(self, snap: Any) -> None:
        """Return to a :meth:`step_snapshot`."""
        self.value, self.seen = snap

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.value = torch.as_tensor(state["value"], dtype=torch.float64).cpu().clone()
        self.seen = torch.as_tensor(state["seen"], dtype=torch.bool).cpu().clone()


def _average_accuracies(method: Weighting, values: Tensor, sync: bool | None) -> Tensor:
    """Under ``torch.distributed`` (``sync`` None: the method's setting; True/False force it):
    each task's value averaged over the processes that evaluated it (non-NaN), NaN where no
    process did. One collective of 2T numbers: every process of the group must call."""
    active = method._sync_active() if sync is None else bool(sync)
    if not active:
        return values
    given = ~torch.isnan(values)
    mean, anywhere = distributed.average_present(
        torch.where(given, values, 0.0), given, method.process_group
    )
    return torch.where(anywhere, mean, float("nan"))


def _accuracy_vector(acc: Any, num_tasks: int) -> Tensor:
    """Host float64 [T] from a sequence / tensor / array (NaN allowed: task not evaluated)."""
    values = _as_float_list(acc, "accuracies")
    if len(values) != num_tasks:
        raise ValueError(f"got {len(values)} accuracies; expected {num_tasks}")
    t = torch.tensor(values, dtype=torch.float64)
    if bool(torch.isinf(t).any()):
        raise ValueError(f"accuracies must be finite (NaN: not evaluated); got {values}")
    return t


# --------------------------------------------------------------------------- method


class AMTL(Weighting):
    r"""Achievement-based multi-task loss (Yun & Cho 2023).

    * Achievement: the smoothed accuracy Acc̄_t over the task potential p_t (the single-task
      accuracy, given). Accuracies arrive through :meth:`update_accuracy` after each
      evaluation and are smoothed by :class:`AccuracyTracker` (momentum 0.1, initialised to the
      first value).
    * Weights (eq. 4, :func:`achievement_weights`): w_t = (1 − Acc̄_t / ((1 + margin)·p_t))^γ,
      clamped so a task above (1 + margin)·p_t gets 0, then normalised by a softmax over the
      tasks (§3); detached. Before every task has an accuracy, the weights are equal.
    * Loss (eq. 5): the weighted geometric mean Π_t L_t^{w_t}, computed as exp(Σ_t w_t log L_t)
      (finite at many tasks); every present loss must be > 0 (CPU: ``ValueError``; other
      devices: the task gets weight 0 and the error is raised at the next call, without a host
      sync). ``geometric=False``: the weighted sum Σ_t w_t L_t.

    Metrics where lower is better (``higher_is_better=False`` for that task): values and
    potential are converted to accuracies by their reciprocal (:func:`reciprocal_if_lower`,
    the paper's eq. 8 convention), so the achievement is p/x; the EMA runs on the converted
    values. Such values must be > 0.

    Args:
        potentials: p_t, one per task (> 0); T is their number.
        margin: m − 1 in eq. 4 (default 0.05: m = 1.05, the published code's convention).
        gamma: γ, the focusing exponent (default 2).
        higher_is_better: one bool or one per task (default True).
        momentum: of the accuracy EMA (default 0.1).
        geometric: eq. 5 (default) or a weighted sum.
        **kwargs: :class:`mtl_fast.Weighting` options.

    Masks: the softmax is over the present tasks (their weights sum to 1; absent tasks 0 and
    left out of the product).

    Under ``torch.distributed``: accuracies are averaged in :meth:`update_accuracy` (call it on
    every process), the softmax is over the tasks present on any process, and the geometric mean
    is that of the averaged losses, linearised so that DDP's averaged gradient is exact
    (:mod:`mtl_fast.distributed`).

    ``weights``: w_t after the softmax (the exponents of eq. 5). Needs: losses and per-task
    accuracies from evaluation. Extra cost: none per step (weights change only with
    :meth:`update_accuracy`).
    """

    lifecycle = ("observe",)

    def __init__(
        self,
        potentials: Sequence[float] | Tensor,
        margin: float = 0.05,
        gamma: float = 2.0,
        *,
        higher_is_better: DirectionLike = True,
        momentum: float = 0.1,
        geometric: bool = True,
        **kwargs,
    ) -> None:
        p = _as_float_list(potentials, "potentials")
        if any(not (x > 0 and x < float("inf")) for x in p):
            raise ValueError(f"potentials must be finite and > 0; got {p}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0; got {margin!r}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0; got {gamma!r}")
        T = len(p)
        super().__init__(T, **kwargs)
        self.margin = float(margin)
        self.gamma = float(gamma)
        self.geometric = bool(geometric)
        self.higher_is_better = directions(higher_is_better, T)
        self._higher = torch.tensor(self.higher_is_better)
        self._potentials = reciprocal_if_lower(torch.tensor(p, dtype=torch.float64), self._higher)
        self._state["accuracy"] = AccuracyTracker(T, momentum)
        # eq. 4 values before the softmax (0 = equal weights until every task has an accuracy)
        self._state["scores"] = torch.zeros(T, dtype=torch.float64)
        self._cached_weights: tuple[Tensor, Tensor] | None = None

    @property
    def accuracy(self) -> Tensor:
        """The smoothed accuracies Acc̄_t (converted to higher-is-better; CPU float64)."""
        return self._state["accuracy"].value.clone()

    def observe(self, metrics: Sequence[float] | Tensor, *, sync: bool | None = None) -> None:
        """:meth:`update_accuracy` (the base class's lifecycle hook)."""
        self._lifecycle_called("observe")
        self.update_accuracy(metrics, sync=sync)

    def update_accuracy(self, acc: Sequence[float] | Tensor, *, sync: bool | None = None) -> None:
        """Feed the accuracies of an evaluation, one per task (NaN: task not evaluated).

        Lower-is-better tasks take their raw metric (e.g. RMSE, > 0); it is converted here.

        Under ``torch.distributed`` (when the method synchronises, or ``sync=True``) the values
        are averaged across the processes, each task over those that evaluated it (non-NaN):
        call it on EVERY process of the group, each with the accuracies of its own shard of the
        evaluation (an average of per-shard accuracies: the global accuracy when the shards are
        equal), or each with the same global values (averaging is then the identity). The
        raw metrics are averaged, before the conversion. ``sync=False``: take the values as
        given (then passing the same values on every process is the caller's responsibility).
        """
        self._lifecycle_called("observe")
        values = _accuracy_vector(acc, self.num_tasks or 0)
        values = _average_accuracies(self, values, sync)
        low = ~self._higher & ~torch.isnan(values)
        if bool((low & ~(values > 0)).any()):
            raise ValueError(
                f"lower-is-better metrics must be > 0 (AMTL takes their reciprocal); got {values}"
            )
        tracker: AccuracyTracker = self._state["accuracy"]
        tracker.update(reciprocal_if_lower(values, self._higher))
        if tracker.ready:
            self._state["scores"] = achievement_weights(
                tracker.value, self._potentials, self.margin, self.gamma
            )

    def _scores(self, device: torch.device) -> Tensor:
        s = self._state["scores"]
        if s.device != device:  # moved once per accuracy update
            s = self._state["scores"] = s.to(device, non_blocking=True)
        return s

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        if self.geometric:
            present = positive_losses(self, losses, present, "AMTL's geometric mean")
            # Not linear in the losses: under torch.distributed, the geometric mean of the
            # losses averaged across processes, linearised (Weighting._linearised_total).
            return self._linearised_total(self._geometric_total, losses, present)
        # softmax over the tasks present on any process (identical weights everywhere)
        if self._all_present() and not self._sync_active():
            w = self._all_present_weights(losses)
            self._set_weights(w)
            return weighted_sum(w, losses)
        avail = self._synced_present(losses, present)
        w = softmax_over_present(self._scores(losses.device), avail).to(losses.dtype)
        self._set_weights(w)
        return weighted_sum(w, losses)

    def _geometric_total(self, losses: Tensor, present: Tensor) -> Tensor:
        if self._all_present() and not self._sync_active():
            w = self._all_present_weights(losses)
            self._set_weights(w)
            return weighted_geometric_mean(losses, w)
        w = softmax_over_present(self._scores(losses.device), present).to(losses.dtype)
        self._set_weights(w)
        return weighted_geometric_mean(losses, w, present)

    def _all_present_weights(self, losses: Tensor) -> Tensor:
        """The softmax of the scores over every task in the losses' dtype, computed once per
        accuracy update (the same scores tensor gives the cached weights)."""
        scores = self._scores(losses.device)
        cached = self._cached_weights
        if cached is None or cached[0] is not scores or cached[1].dtype != losses.dtype:
            w = torch.softmax(scores, dim=0).to(losses.dtype)
            cached = self._cached_weights = (scores, w)
        return cached[1]

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, margin={self.margin}, gamma={self.gamma}, "
            f"geometric={self.geometric}"
        )
