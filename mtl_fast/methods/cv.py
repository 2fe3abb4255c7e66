r"""CV-Weighting (Groenendijk et al. 2021): weights from the coefficient of variation.

Functional core (one function per formula; the class below is a thin stateful wrapper):

* :func:`loss_ratios` — eq. 3, l_i(t) = L_i(t) / μ_{L_i}(t−1);
* :func:`cv_weights` — eq. 4–5, α_i = c_i / Σ_j c_j with c_i = σ_{l_i} / μ_{l_i} (default, the
  authors' published code) or c_i = σ_{l_i} / l_i(t) (the paper's text);
* the running mean / variance (eq. 7–8, Welford) are those of :mod:`mtl_fast.running_stats`,
  held by :class:`LossStatistics` on the losses' device.

:class:`LossStatistics` is also the accumulator of the period-based methods (LSB, DWA).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast.methods._shared import normalize_over_present, weighted_sum
from mtl_fast.methods._statistics import LossStatistics
from mtl_fast.weighting import Weighting

__all__ = ["CVWeighting", "LossStatistics", "cv_weights", "loss_ratios"]

#: ``accumulator=`` choices: ``"auto"`` (C++ on the CPU, torch elsewhere) or ``"torch"``.
#: ``denominator=`` choices of :class:`CVWeighting`.
DENOMINATORS = ("mean", "current")
#: ε in σ = sqrt(var + ε) (the published code's value).
VARIANCE_EPS = 1e-8
#: floor of the denominators of c_i (a ratio of exactly 0 would otherwise give Inf/Inf = NaN).
DENOMINATOR_FLOOR = 1e-12


# --------------------------------------------------------------------------- functional core


def loss_ratios(losses: Tensor, loss_mean: Tensor, loss_count: Tensor) -> Tensor:
    """Eq. 3: l_i(t) = L_i(t) / μ_{L_i}(t−1), μ the running mean of the earlier raw losses.

    A task's first observation (count 0) has ratio L/L = 1, as in the published code. A zero
    running mean (only zero losses so far) also gives 1 instead of a division by zero.
    """
    ok = (loss_count > 0) & (loss_mean > 0)
    return torch.where(ok, losses / torch.where(ok, loss_mean, 1.0), 1.0)


def cv_weights(
    ratio_var: Tensor,
    ratio_mean: Tensor,
    ratio_count: Tensor,
    current_ratio: Tensor,
    present: Tensor,
    *,
    denominator: str = "mean",
) -> Tensor:
    r"""α (eq. 5) from the statistics of the loss ratios of the earlier steps.

    c_i = σ_{l_i} / μ_{l_i} (``denominator="mean"``, the published code) or
    c_i = σ_{l_i} / l_i(t) (``"current"``, eq. 4 of the paper), σ = sqrt(var + 1e-8) with the
    population variance (eq. 8); α_i = c_i / Σ_{j present} c_j (eq. 5, renormalised over the
    present tasks; absent tasks 0). Until every present task has at least two ratios in its
    statistics, the weights are equal, 1/|P| (the published code's first two steps).
    Denominators are floored at 1e-12.
    """
    std = torch.sqrt(ratio_var + VARIANCE_EPS)
    denom = ratio_mean if denominator == "mean" else current_ratio
    c = std / denom.clamp_min(DENOMINATOR_FLOOR)
    ready = ((ratio_count >= 2) | ~present).all()
    alpha = normalize_over_present(c, present)
    equal = normalize_over_present(torch.ones_like(c), present)
    return torch.where(ready, alpha, equal)


def _native_step(stats, losses: Tensor, present: Tensor, *, current: bool) -> Tensor:
    """:func:`loss_ratios`, :func:`cv_weights` and the update of both statistics in one call of
    ``mtl_fast._C.cv_step`` on the C++ accumulator ``stats`` (CPU losses); α float64 [T]."""
    from mtl_fast import _C

    alpha = _C.cv_step(
        stats,
        losses.to(torch.float64).numpy(),
        present.numpy(),
        current,
        VARIANCE_EPS,
        DENOMINATOR_FLOOR,
    )
    return torch.from_numpy(alpha)


# --------------------------------------------------------------------------- method


class CVWeighting(Weighting):
    r"""CV-Weighting (Groenendijk et al. 2021): α_i ∝ the coefficient of variation of task i's
    loss ratio.

    Each training step t (1-based), with L_i(t) the task losses (detached):

    1. loss ratio l_i(t) = L_i(t) / μ_{L_i}(t−1) (eq. 3), μ_L the running mean of the raw losses
       of the earlier steps; at a task's first step the ratio is L/L = 1;
    2. weights from the statistics of the ratios of the earlier steps (computed BEFORE they are
       updated), by :func:`cv_weights`: c_i = σ_{l_i}/μ_{l_i}, α_i = c_i / Σ_j c_j (eq. 5),
       σ = sqrt(M₂/n + 1e-8) the population standard deviation (eq. 8); equal weights 1/T at
       the first two steps;
    3. the statistics of l and L are updated with the current values (eq. 7–8: mean factor
       1 − 1/n, Welford's M₂).

    total = Σ_i α_i L_i; the weights carry no gradient.

    Defaults follow the authors' published code. The paper's eq. 4–5 divide σ by the current
    ratio l_i(t) instead of the running mean of the ratios: ``denominator="current"``.

    Args:
        num_tasks: T.
        mean_decay: ``None`` (default): plain running means, factor 1 − 1/n (eq. 7). A number d
            in [0, 1]: fixed factor, μ ← d·μ + (1 − d)·x after the first observation (the
            published code's ``mean_decay`` option), M₂ still Welford's around that mean and
            var = M₂/n (:class:`mtl_fast.RunningStats` with ``decay_variance=False``).
        denominator: ``"mean"`` (default, published code) or ``"current"`` (paper eq. 4–5).
        accumulator: ``"auto"`` (default): the C++ :class:`mtl_fast.RunningStats`
            (``mtl_fast._C``) for CPU losses, the device-resident
            :class:`mtl_fast.TorchRunningStats` (no host sync) for losses on another device;
            ``"torch"``: the torch accumulator everywhere. Both give the same weights.
        **kwargs: :class:`mtl_fast.Weighting` options (``nonfinite``, ``sync``, ...).

    Masks: an absent task gets weight 0 and its statistics are untouched (each task keeps its
    own count); α is renormalised over the present tasks (Σ α = 1 over them). The weights stay
    equal until every present task has two ratios in its statistics. ``eval()``: plain sum, no
    update. Losses are assumed ≥ 0 (ratio scale, §2); a zero running mean gives ratio 1 and the
    denominators of c_i are floored at 1e-12 (the published code would produce NaN there).

    ``weights``: α (Σ = 1 over the present tasks). Needs: losses. Extra cost: one running
    mean/variance update of 2T streams per step.

    Under ``torch.distributed`` the statistics are updated from the losses averaged across
    processes (each task over the processes where it is present), so they are identical
    everywhere. With ``denominator="mean"`` the weights of a step need only the earlier
    statistics: the step's collective runs asynchronously and its update is applied when the
    backward ends (or at the next use of the statistics) (:mod:`mtl_fast.distributed`).
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "its statistics advance on the host every step (the step count, and with the default "
        "accumulator a host-side update), so replays repeated the captured step and diverged from "
        "eager steps on an H200 (2026-12-04)."
    )

    def __init__(
        self,
        num_tasks: int,
        *,
        mean_decay: float | None = None,
        denominator: str = "mean",
        accumulator: str = "auto",
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        if denominator not in DENOMINATORS:
            raise ValueError(f"denominator must be one of {DENOMINATORS}; got {denominator!r}")
        super().__init__(num_tasks, **kwargs)
        self.mean_decay = mean_decay
        self.denominator = denominator
        # Streams 0..T-1: the loss ratios l; streams T..2T-1: the raw losses L.
        self._state["stats"] = LossStatistics(
            2 * num_tasks, decay=mean_decay, decay_variance=False, accumulator=accumulator
        )

    @property
    def statistics(self) -> LossStatistics:
        """The running statistics: streams [0, T) the loss ratios, [T, 2T) the raw losses."""
        self._wait_pending()
        return self._state["stats"]

    def _update_statistics(self, values: Tensor, avail: Tensor) -> Tensor:
        """Steps 1 and 3: the loss ratios of ``values`` (the losses, averaged across processes
        under ``torch.distributed``) against the earlier raw-loss mean, then the update of both
        statistics with them. Returns the ratios (float64 [T])."""
        T = values.shape[0]
        x = values.to(torch.float64)
        stats: LossStatistics = self._state["stats"]
        mean, _, count = stats.snapshot(x.device)
        ratio = loss_ratios(x, mean[T:], count[T:])
        stats.update(torch.cat([ratio, x]), torch.cat([avail, avail]))
        return ratio

    def _deferred_update(self, values: Tensor, avail: Tensor) -> None:
        self._update_statistics(values, avail)

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        T = losses.shape[0]
        stats: LossStatistics = self._state["stats"]
        native = None if self._sync_active() else stats.native(losses.device)
        if native is not None:  # CPU losses, one process: steps 1-3 in one native call
            alpha = _native_step(
                native, losses.detach(), present, current=self.denominator == "current"
            ).to(losses.dtype)
            self._set_weights(alpha)
            return torch.dot(alpha, losses)
        mean, var, count = stats.snapshot(losses.device)  # the earlier steps' statistics
        if self.denominator == "current":
            # c_i needs this step's ratio: the averaged losses are needed now.
            values, avail = self._synced_losses(losses, present)
            ratio = self._update_statistics(values, avail)
        else:
            # The weights need only the earlier statistics: the update of this step's losses
            # (averaged across processes) is deferred to the next use of the statistics.
            avail = self._synced_losses_later(losses, present, self._deferred_update)
            ratio = mean[:T]  # unused by denominator="mean"
        alpha = cv_weights(
            var[:T], mean[:T], count[:T], ratio, avail, denominator=self.denominator
        ).to(losses.dtype)
        self._set_weights(alpha)
        return weighted_sum(alpha, losses)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, mean_decay={self.mean_decay}, "
            f"denominator={self.denominator!r}"
        )
