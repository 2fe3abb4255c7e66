r"""Loss Scale Balancing, LSB (Lee, Lee & Kim, ICCV 2021), and per-period averages.

Functional core (one function per equation; :class:`LSB` is a thin stateful wrapper):

* :func:`lsb_overall_loss` — eq. 3 / 11, L^t = α^t Σ_k d_k^t w_k^t L_k^t;
* :func:`lsb_weights` — eq. 4 / 7, w_k^t = π_k L^{t−1} / L_k^{t−1};
* :func:`lsb_difficulty` — eq. 9, d_k^t = ((L_k^{t−1}/L_k^{t−2}) / (L^{t−1}/L^{t−2}))^β;
* :func:`lsb_alpha` — eq. 12, α^t = 1 / Σ_k π_k d_k^t;
* :func:`linear_beta` — the default β schedule (the paper gives none).

:class:`PeriodAverages` keeps the per-task average loss of the current period (in a
:class:`mtl_fast.methods.cv.LossStatistics` accumulator) and of the two previous periods; DWA
uses it too.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from mtl_fast.methods._periods import EpochPeriods
from mtl_fast.methods._shared import _as_float_list, weighted_sum
from mtl_fast.methods._statistics import PeriodAverages
from mtl_fast.weighting import Weighting

__all__ = [
    "LSB",
    "PeriodAverages",
    "linear_beta",
    "lsb_alpha",
    "lsb_difficulty",
    "lsb_overall_loss",
    "lsb_weights",
]

BetaLike = Union[float, Callable[[int], float], None]


# --------------------------------------------------------------------------- functional core


def lsb_overall_loss(
    task_means: Tensor, valid: Tensor, weights: Tensor, difficulty: Tensor, alpha: Tensor
) -> Tensor:
    """Eq. 11 (eq. 3 when α = d = 1): L^t = α^t Σ_k d_k^t w_k^t L_k^t over the valid tasks."""
    terms = torch.where(valid, difficulty * weights * task_means, 0.0)
    return alpha * terms.sum()


def lsb_weights(priorities: Tensor, overall: Tensor, task_means: Tensor, valid: Tensor) -> Tensor:
    """Eq. 7: w_k^t = π_k L^{t−1} / L_k^{t−1}.

    A task without a valid previous average (never observed, or a non-positive average) keeps
    w_k = π_k (eq. 4), as does every task when L^{t−1} ≤ 0.
    """
    ok = valid & (overall > 0)
    return torch.where(ok, priorities * overall / torch.where(ok, task_means, 1.0), priorities)


def lsb_difficulty(
    task_means: Tensor,
    prev_task_means: Tensor,
    valid: Tensor,
    overall: Tensor,
    prev_overall: Tensor,
    beta: float,
) -> Tensor:
    """Eq. 9: d_k^t = ((L_k^{t−1} / L_k^{t−2}) / (L^{t−1} / L^{t−2}))^β.

    ``valid`` marks the tasks with valid averages in both periods; the others, and every task
    when an overall loss is not positive, get d_k = 1.
    """
    ok = valid & (overall > 0) & (prev_overall > 0)
    one = torch.ones_like(task_means)
    task_rate = torch.where(ok, task_means, one) / torch.where(ok, prev_task_means, one)
    overall_rate = torch.where(ok, overall, one) / torch.where(ok, prev_overall, one)
    return torch.where(ok, torch.pow(task_rate / overall_rate, beta), 1.0)


def lsb_alpha(priorities: Tensor, difficulty: Tensor) -> Tensor:
    """Eq. 12: α^t = 1 / Σ_k π_k d_k^t."""
    return 1.0 / (priorities * difficulty).sum()


def linear_beta(period: int, expected_periods: int) -> float:
    """Default β schedule: β_t = min(1, max(0, (t − 3) / E)).

    β is 0 in period 3 (the first with difficulty factors) and grows linearly by 1/E per period
    to reach 1 after E periods, then stays at 1 (Table 6 of Lee et al. 2021: large β hurts).
    """
    return min(1.0, max(0.0, (period - 3) / expected_periods))


# --------------------------------------------------------------------------- period averages


# --------------------------------------------------------------------------- method


class LSB(EpochPeriods, Weighting):
    r"""Loss Scale Balancing (Lee et al. 2021): balance the loss scales w_k L_k period by period.

    A period is an epoch by default: call :meth:`end_period` after each epoch, or pass
    ``period_steps`` to close a period every that many training steps. L_k^t is the average loss
    of task k over period t (:class:`PeriodAverages`), L^t the average overall loss (eq. 3 / 11).

    * period 1: w_k = π_k (eq. 4), total = Σ_k w_k ℓ_k (eq. 2);
    * period t ≥ 2: w_k^t = π_k L^{t−1} / L_k^{t−1} (eq. 7), so every loss scale w_k L_k is
      π_k L^{t−1} and the overall loss of period t−1 is unchanged by the update (Prop. 1);
    * period t ≥ 3: difficulty d_k^t (eq. 9), α^t = 1 / Σ_k π_k d_k^t (eq. 12) and
      total = α^t Σ_k d_k^t w_k^t ℓ_k (eq. 10), again leaving L^{t−1} unchanged (Prop. 2).

    β: the paper initialises it to 0 and increases it every period without giving a schedule.
    Default :func:`linear_beta`, β_t = min(1, (t − 3)/E) with E = ``expected_periods``; pass a
    number for a constant β or a callable ``period -> β`` for another schedule. Eq. 9 is
    implemented as printed (task rate over overall rate, to the power β).

    Args:
        num_tasks: T.
        priorities: π_k (positive; normalised to Σ π_k = 1). Default 1/T (eq. 4).
        beta: ``None`` (linear schedule), a float, or a callable of the period t (≥ 3).
        expected_periods: E of the default schedule (default 100).
        period_steps: close a period automatically every ``period_steps`` training steps.
        accumulator: ``"auto"``/``"torch"``, see :class:`mtl_fast.methods.cv.LossStatistics`.
        **kwargs: :class:`mtl_fast.Weighting` options (``nonfinite``, ``sync``, ...).

    Masks: an absent task gets factor 0 for the step (the others are not renormalised: LSB's
    weights are not normalised) and is left out of the period average. A task absent for a
    whole period carries its previous average forward; a task never observed (or with a
    non-positive average) keeps w_k = π_k and d_k = 1 and is left out of L^t.

    ``weights``: the factor in front of ℓ_k this step, α^t d_k^t w_k^t (π_k in period 1).
    Needs: losses. Extra cost: a running mean of T losses per step, O(T) per period.
    """

    def __init__(
        self,
        num_tasks: int,
        priorities: Sequence[float] | Tensor | None = None,
        *,
        beta: BetaLike = None,
        expected_periods: int = 100,
        period_steps: int | None = None,
        accumulator: str = "auto",
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        if priorities is None:
            pi = [1.0 / num_tasks] * num_tasks
        else:
            pi = _as_float_list(priorities, "priorities")
            if len(pi) != num_tasks:
                raise ValueError(f"priorities has {len(pi)} entries; expected {num_tasks}")
            if any(not (p > 0 and p < float("inf")) for p in pi):
                raise ValueError(f"priorities must be finite and > 0; got {pi}")
            s = sum(pi)
            pi = [p / s for p in pi]
        if not isinstance(expected_periods, int) or expected_periods < 1:
            raise ValueError(f"expected_periods must be a positive int; got {expected_periods!r}")
        if beta is not None and not callable(beta):
            beta = float(beta)
        super().__init__(num_tasks, **kwargs)
        self.beta = beta
        self.expected_periods = expected_periods
        self._priorities = torch.tensor(pi, dtype=torch.float64)
        self._pi_device = self._priorities
        self._cached_factors: tuple[tuple, Tensor] | None = None
        self._state["periods"] = PeriodAverages(
            num_tasks, period_steps=period_steps, accumulator=accumulator
        )
        # w^t, d^t, α^t of the current period and L^{t-1}, L^{t-2} (None until needed).
        self._state["w"] = None
        self._state["d"] = None
        self._state["alpha"] = None
        self._state["overall"] = [None, None]

    # ------------------------------------------------------------------ public

    @property
    def priorities(self) -> Tensor:
        """π (float64, Σ = 1)."""
        return self._priorities.clone()

    @property
    def period(self) -> int:
        """The current period t (1-based)."""
        self._wait_pending()
        return self._state["periods"].period

    def beta_at(self, period: int) -> float:
        """β used for the difficulty factors of ``period`` (t ≥ 3)."""
        if self.beta is None:
            return linear_beta(period, self.expected_periods)
        if callable(self.beta):
            return float(self.beta(period))
        return float(self.beta)

    @property
    def difficulty(self) -> Tensor:
        """d^t of the current period (1 before period 3)."""
        self._wait_pending()
        return self._factors(self._device())[1]

    @property
    def alpha(self) -> Tensor:
        """α^t of the current period (1 before period 3)."""
        self._wait_pending()
        return self._factors(self._device())[2]

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return self._priorities.to(device=device, dtype=torch.float32)

    def end_period(self) -> bool:
        """Close the current period and compute the next period's w, d and α (eq. 7, 9, 12).

        Call after each epoch. Returns False, doing nothing, when the period had no training
        step. Runs on the statistics' device with torch ops only (no host sync). Under
        ``torch.distributed`` call it on every process (the statistics are identical there).
        """
        self._wait_pending()
        return self._end_period()

    def _end_period(self) -> bool:
        periods: PeriodAverages = self._state["periods"]
        if periods.steps == 0:
            return False
        device = periods.stats.device
        means, valid = periods.closing_averages()
        w, d, alpha = self._factors(device)
        overall = lsb_overall_loss(means, valid, w, d, alpha)  # L^t (eq. 3 / 11)
        prev_means, prev_valid = periods.history[0], periods.valid[0]
        periods.close(means, valid)
        new_period = periods.period
        pi = self._priorities_on(device)
        new_w = lsb_weights(pi, overall, means, valid)  # eq. 7
        prev_overall = self._state["overall"][0]
        if new_period >= 3 and prev_means is not None and prev_valid is not None:
            assert prev_overall is not None
            new_d = lsb_difficulty(
                means,
                prev_means.to(device),
                valid & prev_valid.to(device),
                overall,
                prev_overall.to(device),
                self.beta_at(new_period),
            )  # eq. 9
        else:
            new_d = torch.ones_like(new_w)
        self._state["w"] = new_w
        self._state["d"] = new_d
        self._state["alpha"] = lsb_alpha(pi, new_d)  # eq. 12
        self._state["overall"] = [overall, prev_overall]
        return True

    # ------------------------------------------------------------------ internals

    def _device(self) -> torch.device:
        w = self._state["w"]
        return w.device if w is not None else torch.device("cpu")

    def _priorities_on(self, device: torch.device) -> Tensor:
        """π on ``device``, copied there once (no per-period host transfer)."""
        if self._pi_device.device != device:
            self._pi_device = self._priorities.to(device, non_blocking=True)
        return self._pi_device

    def _factors(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(w^t, d^t, α^t) on ``device`` (moved there once)."""
        w, d, alpha = self._state["w"], self._state["d"], self._state["alpha"]
        if w is None or d is None or alpha is None:
            w = self._priorities_on(device).clone()
            d = torch.ones_like(w)
            alpha = torch.ones((), dtype=torch.float64, device=device)
        elif w.device != device:
            w, d, alpha = (x.to(device, non_blocking=True) for x in (w, d, alpha))
        self._state["w"], self._state["d"], self._state["alpha"] = w, d, alpha
        return w, d, alpha

    def _observe(self, values: Tensor, avail: Tensor) -> None:
        """Add one step's losses (averaged across processes under ``torch.distributed``) to the
        period averages; close the period when ``period_steps`` is reached."""
        if self._state["periods"].observe(values, avail, completes_step=self._completes_step()):
            self._end_period()

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        w, d, alpha = self._factors(losses.device)  # this period's factors, taken first
        # The period averages are read only when the period closes: their update is deferred
        # under torch.distributed (applied at the next step, end_period(), state_dict()).
        avail = self._synced_losses_later(losses, present, self._observe)
        if self._all_present() and not self._sync_active():
            factors = self._period_factors(w, d, alpha, losses.dtype)
        else:
            factors = torch.where(avail, alpha * d * w, 0.0).to(losses.dtype)
        self._set_weights(factors)
        return weighted_sum(factors, losses)

    def _period_factors(self, w: Tensor, d: Tensor, alpha: Tensor, dtype: torch.dtype) -> Tensor:
        """α^t d^t w^t in ``dtype`` (every task present), computed once per period: the same
        tensors give the cached product."""
        key = (w, d, alpha, dtype)
        cached = self._cached_factors
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            cached = self._cached_factors = (key, (alpha * d * w).to(dtype))
        return cached[1]

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, period={self.period}"
