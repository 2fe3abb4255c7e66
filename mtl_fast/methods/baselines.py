r"""Baseline loss weightings and the small formulas every loss-based method shares.

Shared functional core (used by CV-Weighting, LSB, AMTL, DTP, DWA, RLW, GLS, static weights):

* :func:`weighted_sum` — Σ_t w_t L_t, the total of every weighted-sum method;
* :func:`normalize_over_present` — w_t / Σ_{s present} w_s (absent tasks: 0);
* :func:`softmax_over_present` — exp(z_t) / Σ_{s present} exp(z_s) (absent tasks: 0);
* :func:`weighted_geometric_mean` — Π_t L_t^{w_t} = exp(Σ_t w_t log L_t) (Yun & Cho 2023 eq. 5;
  GLS);
* :func:`positive_losses` — the positivity requirement of the geometric means.

Masks: an absent task (``mask`` False or a non-finite loss, see :meth:`mtl_fast.Weighting.loss`)
gets weight 0 for the step. Methods whose weights are normalised (Σ = 1, softmax, Σ = T) are
renormalised over the present tasks, so the present weights keep the method's normalisation.

Classes: :class:`EqualWeighting`, :class:`StaticWeighting`, :class:`GLS`, :class:`DWA`,
:class:`RLW`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtl_fast.methods._periods import EpochPeriods
from mtl_fast.methods._shared import _as_float_list, normalize_over_present, weighted_sum
from mtl_fast.methods._statistics import PeriodAverages
from mtl_fast.weighting import Weighting

__all__ = [
    "DWA",
    "GLS",
    "RLW",
    "EqualWeighting",
    "StaticWeighting",
    "dwa_weights",
    "normalize_over_present",
    "positive_losses",
    "softmax_over_present",
    "weighted_geometric_mean",
    "weighted_sum",
]


# --------------------------------------------------------------------------- functional core


def softmax_over_present(logits: Tensor, present: Tensor | None) -> Tensor:
    """Softmax over the present tasks (absent tasks: 0; all zeros when none is present);
    ``present=None``: every task."""
    if present is None:
        return torch.softmax(logits, dim=0)
    z = torch.where(present, logits, torch.full_like(logits, -torch.inf))
    w = torch.softmax(z, dim=0)
    return torch.where(present, w, 0.0)  # no task present: softmax of all -inf is NaN


def positive_losses(method: Weighting, losses: Tensor, present: Tensor, who: str) -> Tensor:
    """``present`` restricted to losses > 0: the geometric means take log L_t.

    CPU: a present loss ≤ 0 raises ``ValueError`` naming the tasks. Other devices (no host
    sync): the task is treated as absent for the step (weight 0) and the method's non-finite
    monitor raises the error at the next call, as for a NaN loss.
    """
    if losses.device.type == "cpu" and method._all_present():
        if float(losses.detach().min()) > 0:  # one reduction (NaN: the exact check below)
            return present
    bad = present & ~(losses.detach() > 0)
    if losses.device.type == "cpu":
        if bool(bad.any()):
            idx = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"{who} takes the logarithm of the task losses, so every present loss must be "
                f"> 0; task(s) {idx} have a loss <= 0 (shift such a loss to be positive, mark "
                "the task absent with mask=, or use a weighted sum)"
            )
        return present
    method._report_invalid(bad, f"loss ({who} takes its logarithm)", problem="non-positive")
    return present & ~bad


def weighted_geometric_mean(
    losses: Tensor, weights: Tensor, present: Tensor | None = None
) -> Tensor:
    """Π_{t present} L_t^{w_t}, computed as exp(Σ_t w_t log L_t) (Yun & Cho 2023 eq. 5).

    In log space so that it neither underflows nor overflows at many tasks. Absent tasks
    contribute nothing (their loss is replaced by 1 before the log, so they get no gradient).
    Present losses must be > 0 (see :func:`positive_losses`). With no task present: 1·0 = 0.
    ``present=None``: every task (no mask ops).
    """
    if present is None:
        return torch.exp(torch.dot(weights.detach().to(losses.dtype), torch.log(losses)))
    safe = torch.where(present, losses, torch.ones_like(losses))
    w = torch.where(present, weights.detach(), 0.0).to(losses.dtype)
    return torch.where(present.any(), torch.exp((w * torch.log(safe)).sum()), 0.0)


def dwa_weights(rate: Tensor, present: Tensor | None, temperature: float) -> Tensor:
    """Liu, Johns & Davison 2019 eq. 7: w_k = |P| softmax_k(r_k / temp) over the present tasks
    (absent: 0); ``present=None``: every task (|P| = T)."""
    if present is None:
        return torch.softmax(rate / temperature, dim=0) * rate.shape[0]
    return softmax_over_present(rate / temperature, present) * present.sum()


# --------------------------------------------------------------------------- methods


class EqualWeighting(Weighting):
    """Uniform scaling: total = Σ_t L_t (every weight 1), the baseline of every paper.

    ``weights``: 1 for present tasks, 0 for absent ones. Needs: losses. Extra cost: none.
    """

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        self._set_weights(present.to(losses.dtype))
        return losses.sum()


class StaticWeighting(Weighting):
    """Hand-tuned static weights: total = Σ_t w_t L_t.

    Args:
        weights: the T weights (non-negative). T is their number.
        normalize: divide by their sum so that Σ_t w_t = 1, as Groenendijk et al. 2021 does for its
            hand-tuned baselines (§3.1, §3.2). Then, when tasks are absent, the weights are
            renormalised over the present tasks (they still sum to 1). Without ``normalize``
            absent tasks simply get 0 and the others keep their weights.
        **kwargs: :class:`mtl_fast.Weighting` options (``nonfinite``, ``sync``, ...).

    ``weights``: the factors in front of L_t this step. Needs: losses. Extra cost: none.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "not yet checked on a GPU: tests/test_cuda_graph_step.py checks every registered method; "
        "this one was added to it after the H200 run of 2026-12-04."
    )

    def __init__(self, weights: Sequence[float] | Tensor, *, normalize: bool = False, **kwargs):
        w = _as_float_list(weights, "weights")
        if any(not (x >= 0 and x < float("inf")) for x in w) or sum(w) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0; got {w}")
        super().__init__(len(w), **kwargs)
        self.normalize = bool(normalize)
        self._given = torch.tensor(w, dtype=torch.float64)
        self._state["static"] = self._given.clone()
        self._cached_weights: tuple[Tensor, Tensor] | None = None

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        w = self._given / self._given.sum() if self.normalize else self._given
        return w.to(device=device, dtype=torch.float32)

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        static = self._state["static"]
        if static.device != losses.device:  # moved once, then kept on the losses' device
            static = self._state["static"] = static.to(losses.device, non_blocking=True)
        if self._all_present() and not self._sync_active():
            w = self._all_present_weights(static, losses.dtype)
        else:
            if self.normalize:  # renormalised over the tasks present on any process
                w = normalize_over_present(static, self._synced_present(losses, present))
            else:
                w = torch.where(present, static, 0.0)
            w = w.to(losses.dtype)
        self._set_weights(w)
        return weighted_sum(w, losses)

    def _all_present_weights(self, static: Tensor, dtype: torch.dtype) -> Tensor:
        """The weights with every task present in ``dtype``, computed once (the same static
        tensor gives the cached weights)."""
        cached = self._cached_weights
        if cached is None or cached[0] is not static or cached[1].dtype != dtype:
            w = normalize_over_present(static, torch.ones_like(static, dtype=torch.bool))
            cached = self._cached_weights = (static, (w if self.normalize else static).to(dtype))
        return cached[1]

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, normalize={self.normalize}"


class GLS(Weighting):
    r"""Geometric Loss Strategy (Chennupati et al. 2019): total = (Π_t L_t)^{1/T}.

    Computed in log space, exp((1/T) Σ_t log L_t) (:func:`weighted_geometric_mean`), which stays
    finite at many tasks where the product itself under/overflows (Liu et al. 2021 §4 reports the
    product unstable at T = 40). Absent tasks are left out: the mean is over the present tasks,
    T → |P|. Every present loss must be > 0 (CPU: ``ValueError``; accelerators: weight 0 and a
    deferred error, see :func:`positive_losses`).

    ``weights``: the effective factors ∂total/∂L_t = total / (|P|·L_t) — GLS weighs each loss by
    its reciprocal (Liu et al. 2021, §4 and appendix C.5) — detached; 0 for absent tasks. Under
    ``torch.distributed`` the geometric mean is that of the losses averaged across processes,
    linearised so that DDP's averaged gradient is exact (:mod:`mtl_fast.distributed`).

    Needs: losses (> 0). Extra cost: none.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "not yet checked on a GPU: tests/test_cuda_graph_step.py checks every registered method; "
        "this one was added to it after the H200 run of 2026-12-04."
    )

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        present = positive_losses(self, losses, present, "GLS")
        # Not linear in the losses: under torch.distributed, the geometric mean of the losses
        # averaged across processes, linearised (Weighting._linearised_total).
        return self._linearised_total(self._geometric_total, losses, present)

    def _geometric_total(self, losses: Tensor, present: Tensor) -> Tensor:
        if self._all_present() and not self._sync_active():
            exponents = torch.full_like(losses.detach(), 1.0 / losses.shape[0])
            total = weighted_geometric_mean(losses, exponents)
            self._set_weights(exponents * total.detach() / losses.detach())
            return total
        exponents = normalize_over_present(torch.ones_like(losses), present)
        total = weighted_geometric_mean(losses, exponents, present)
        safe = torch.where(present, losses.detach(), 1.0)
        self._set_weights(exponents * total.detach() / safe)
        return total


class RLW(Weighting):
    r"""Random Loss Weighting (Lin et al. 2022): λ = softmax(ε), ε ~ N(0, I_T), drawn each step.

    total = Σ_t λ_t L_t. The softmax is taken over the present tasks (absent tasks: 0; the
    present weights sum to 1). The draw always has T numbers, whatever the mask, so the random
    stream does not depend on which tasks are present.

    Args:
        num_tasks: T.
        seed: seed of the method's own ``torch.Generator`` (kept in ``state_dict``, so a resumed
            run draws the same weights). ``None``: drawn from torch's global generator at
            construction (so ``torch.manual_seed`` makes runs reproducible).
        **kwargs: :class:`mtl_fast.Weighting` options.

    The generator lives on the losses' device (created at the first step), so drawing needs no
    host transfer. Under ``torch.distributed`` every process uses process 0's seed (one
    collective at the first step), so all draw the same weights, and the softmax is over the
    tasks present on any process. ``weights``: λ (0 for absent tasks). Needs: losses. Extra
    cost: one T-sample.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "not yet checked on a GPU: tests/test_cuda_graph_step.py checks every registered method; "
        "this one was added to it after the H200 run of 2026-12-04."
    )

    def __init__(self, num_tasks: int, *, seed: int | None = None, **kwargs) -> None:
        super().__init__(num_tasks, **kwargs)
        self._init_generator(seed)

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        T = losses.shape[0]
        gen = self._generator(losses.device)
        eps = torch.randn(T, generator=gen, device=gen.device, dtype=torch.float64)
        if self._all_present() and not self._sync_active():
            lam = softmax_over_present(eps.to(losses.device), None).to(losses.dtype)
            self._set_weights(lam)
            return weighted_sum(lam, losses)
        avail = self._synced_present(losses, present)
        lam = softmax_over_present(eps.to(losses.device), avail).to(losses.dtype)
        self._set_weights(lam)
        return weighted_sum(lam, losses)


class DWA(EpochPeriods, Weighting):
    r"""Dynamic Weight Average (Liu, Johns & Davison 2019, eq. 7).

    With L̄_k(e) the average loss of task k over period e (an epoch by default)::

        r_k(e−1) = L̄_k(e−1) / L̄_k(e−2)
        w_k(e)   = T · exp(r_k(e−1)/temp) / Σ_i exp(r_i(e−1)/temp)

    and w_k = 1 for the first two periods. Period averages are kept by
    :class:`mtl_fast.methods.lsb.PeriodAverages` (the same machinery as LSB): call
    :meth:`end_period` after each epoch, or pass ``period_steps``.

    Masks: the softmax is over the present tasks and multiplied by |P| (the present weights sum
    to |P|; absent tasks 0); a task absent for a whole period carries its previous average
    forward; r_k = 1 while task k has fewer than two period averages (or a non-positive one).

    Args:
        num_tasks: T.
        temperature: temp (default 2, as in the paper).
        period_steps: end a period automatically every ``period_steps`` training steps.
        accumulator: ``"auto"`` or ``"torch"``, see :class:`mtl_fast.methods.cv.LossStatistics`.
        **kwargs: :class:`mtl_fast.Weighting` options.

    ``weights``: w_k. Needs: losses. Extra cost: a running mean of T losses.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "not yet checked on a GPU: tests/test_cuda_graph_step.py checks every registered method; "
        "this one was added to it after the H200 run of 2026-12-04."
    )

    def __init__(
        self,
        num_tasks: int,
        *,
        temperature: float = 2.0,
        period_steps: int | None = None,
        accumulator: str = "auto",
        **kwargs,
    ) -> None:

        super().__init__(num_tasks, **kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature!r}")
        self.temperature = float(temperature)
        self._cached_weights: tuple[tuple, Tensor | None] | None = None
        self._state["periods"] = PeriodAverages(
            num_tasks, period_steps=period_steps, accumulator=accumulator
        )

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def period(self) -> int:
        """The current period (1-based)."""
        self._wait_pending()
        return self._state["periods"].period

    def end_period(self) -> bool:
        """Close the current period (call after each epoch, on every process under
        ``torch.distributed``). Returns False, doing nothing, when the period had no training
        step."""
        self._wait_pending()
        return self._state["periods"].end_period()

    def _observe(self, values: Tensor, avail: Tensor) -> None:
        """Add one step's losses (averaged across processes under ``torch.distributed``) to the
        period averages; close the period when ``period_steps`` is reached."""
        periods = self._state["periods"]
        if periods.observe(values, avail, completes_step=self._completes_step()):
            periods.end_period()

    def _period_weights(self, periods: PeriodAverages, dtype: torch.dtype) -> Tensor | None:
        """w (every task present) of the current period, computed once per period (the same
        history tensors give the cached weights); ``None`` in the first two periods."""
        key = (periods.period > 2, *periods.history, *periods.valid, dtype)
        cached = self._cached_weights
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            w = None
            if periods.period > 2:
                rate = periods.rate(periods.stats.device)
                w = dwa_weights(rate, None, self.temperature).to(dtype)
            cached = self._cached_weights = (key, w)
        return cached[1]

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        periods = self._state["periods"]
        if self._all_present() and not self._sync_active() and losses.device.type == "cpu":
            w = self._period_weights(periods, losses.dtype)  # taken before the update
            self._synced_losses_later(losses, present, self._observe)
            if w is None:
                w = torch.ones_like(losses.detach())
            self._set_weights(w)
            return weighted_sum(w, losses)
        rate = periods.rate(losses.device) if periods.period > 2 else None  # taken first
        # The period averages are read only when the period closes: their update is deferred
        # under torch.distributed (applied at the next step, end_period(), state_dict()).
        avail = self._synced_losses_later(losses, present, self._observe)
        if rate is None:
            w = avail.to(losses.dtype)
        else:
            w = dwa_weights(rate, avail, self.temperature).to(losses.dtype)
        self._set_weights(w)
        return weighted_sum(w, losses)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, temperature={self.temperature}"
