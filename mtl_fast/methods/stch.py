r"""STCH (Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML
2024), as a loss-based multi-task weighting.

The Tchebycheff scalarisation max_t λ_t (f_t − z*_t) (z* the ideal point, λ the preferences)
reaches every Pareto solution but is not smooth; STCH replaces the max by its log-sum-exp
smoothing with parameter μ > 0 (the paper's eq. for g^STCH_μ):

    g_μ(f | λ) = μ log Σ_t exp(λ_t (f_t − z*_t) / μ),

    max_t λ_t(f_t − z*_t) ≤ g_μ ≤ max_t λ_t(f_t − z*_t) + μ log T,

a smooth upper bound that tends to the Tchebycheff max as μ → 0 and whose gradient is a convex
combination of the objectives' gradients with the softmax weights
s_t = softmax_t(λ_t (f_t − z*_t)/μ): the currently worst (normalised) task dominates, smoothly.

Multi-task learning, as in the authors' published MTL code (built on LibMTL):

* objectives: normalised log-losses f_t = log(L_t / r_t + ε), ε = 1e-20, where r_t is task t's
  mean loss over the last warm-up epoch (the code calls r the "nadir vector"); the ideal point
  in this space is z* = 0, i.e. in terms of the raw log-losses log L_t the ideal point is
  log r_t: every task is measured by how far its loss is below (or above) its level at the end
  of warm-up, which makes the scalarisation invariant to each task's loss scale;
* warm-up: epochs 0 … W−1 train on Σ_t log(L_t + ε) (equal weighting of log-losses, the
  "loss-scale balancing" of DB-MTL); epoch W trains the same way and accumulates each task's
  mean loss, r_t; from epoch W + 1 on (W = ``warmup_epochs``, default 4, the code's
  ``STCH_warmup_epoch``):

      total = T μ log Σ_t exp(λ_t f_t / μ)        (λ_t = 1, μ = 1 by default).

  This is T² times the paper's g_μ' with λ' = λ/T (on the simplex when Σ_t λ_t = T, e.g.
  λ = 1) and μ' = μ/T, so the effective factors on the log-losses, ∂total/∂f_t = T λ_t s_t,
  sum to T at λ = 1, like the warm-up's equal weighting (and tend to it as μ → ∞).

``weights`` are the effective factors on the raw losses, ∂total/∂L_t = T λ_t s_t / (L_t + ε r_t)
(warm-up: 1 / (L_t + ε)).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtl_fast.methods.baselines import positive_losses
from mtl_fast.weighting import Weighting

__all__ = ["STCH"]

#: ε in the log-losses (the published code's value).
DEFAULT_EPS = 1e-20


def _vector(values, num_tasks: int, what: str, *, positive: bool) -> Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).detach().cpu().reshape(-1)
    ok = v.shape == (num_tasks,) and bool(torch.isfinite(v).all())
    if ok and positive:
        ok = bool((v > 0).all())
    if not ok:
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"{what} must be {num_tasks} {kind} numbers; got {values!r}")
    return v


class STCH(Weighting):
    r"""Smooth Tchebycheff scalarisation of the (normalised log-) losses (Lin et al. 2024).

    See :mod:`mtl_fast.methods.stch` for the equations. Epochs: call :meth:`end_epoch` after
    each epoch, or pass ``epoch_steps``.

    Args:
        num_tasks: T.
        mu: the smoothing μ > 0 (default 1, the published code's default).
        warmup_epochs: W, epochs of equal weighting before the estimation epoch (default 4,
            the published code's ``STCH_warmup_epoch``). With ``reference`` given there is no
            estimation epoch and STCH starts at epoch W.
        epoch_steps: end an epoch automatically every ``epoch_steps`` training steps.
        preference: λ [T] > 0 (default all 1).
        reference: r [T] > 0, the loss levels to normalise by; default: estimated (the mean
            loss of each task over the estimation epoch).
        ideal: z* [T] in the space of the objectives f (default 0, as in the published code).
        log_transform: ``True`` (default, the published code): f_t = log(L_t/r_t + ε) and
            warm-up on Σ log(L_t + ε). ``False``: the paper's plain form on normalised losses,
            f_t = L_t / r_t, warm-up on Σ L_t (then z* is typically 0, the ideal point of
            non-negative losses).
        eps: ε of the logs (default 1e-20).
        **kwargs: :class:`~mtl_fast.Weighting` options (``nonfinite``, ``sync``, ...).

    Masks: the sum (and the factor T, which becomes |P|) runs over the present tasks; absent
    tasks get weight 0 and are left out of the reference estimate. A task absent during the
    whole estimation epoch gets the mean of its warm-up losses as reference, or 1 if it was
    never present. The logs need L_t/r_t + ε > 0 (CPU: ``ValueError``; other devices: the task
    is absent for the step and the error is raised at the next call).

    Differences from the published code: its total subtracts the detached maximum of the
    log-losses inside the log-sum-exp (a constant shift T·max of the value, same gradient);
    here ``torch.logsumexp`` gives the same stability and the exact value of the formula.

    Needs: losses. Extra cost: none (a T-vector log-sum-exp; a running mean during the
    estimation epoch).

    Under ``torch.distributed`` the reference and the total use the losses averaged across
    processes; the total is linearised around them so that DDP's averaged gradient is that of
    one process on the whole batch (:mod:`mtl_fast.distributed`). Call :meth:`end_epoch` on
    every process.
    """

    lifecycle = ("end_epoch",)

    def __init__(
        self,
        num_tasks: int,
        *,
        mu: float = 1.0,
        warmup_epochs: int = 4,
        epoch_steps: int | None = None,
        preference: Sequence[float] | Tensor | None = None,
        reference: Sequence[float] | Tensor | None = None,
        ideal: Sequence[float] | Tensor | None = None,
        log_transform: bool = True,
        eps: float = DEFAULT_EPS,
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        super().__init__(num_tasks, **kwargs)
        if not mu > 0:
            raise ValueError(f"mu must be > 0; got {mu!r}")
        if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0; got {warmup_epochs!r}")
        if epoch_steps is not None and (not isinstance(epoch_steps, int) or epoch_steps < 1):
            raise ValueError(f"epoch_steps must be a positive int; got {epoch_steps!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0; got {eps!r}")
        T = num_tasks
        self.mu = float(mu)
        self.warmup_epochs = warmup_epochs
        self.epoch_steps = epoch_steps
        self.log_transform = bool(log_transform)
        self.eps = float(eps)
        lam = torch.ones(T, dtype=torch.float64)
        if preference is not None:
            lam = _vector(preference, T, "preference", positive=True)
        z = torch.zeros(T, dtype=torch.float64)
        if ideal is not None:
            z = _vector(ideal, T, "ideal", positive=False)
        self._estimate = reference is None
        self._cached_vectors: tuple | None = None
        self._state.update(
            {
                "epoch": 0,
                "epoch_step": 0,  # training steps in the current epoch
                "preference": lam,
                "ideal": z,
                "reference": None
                if reference is None
                else _vector(reference, T, "reference", positive=True),
                # loss sums / counts: [0] the estimation epoch, [1] every warm-up epoch
                "sums": torch.zeros(2, T, dtype=torch.float64),
                "counts": torch.zeros(2, T, dtype=torch.int64),
            }
        )

    # ------------------------------------------------------------------ public API

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def epoch(self) -> int:
        """The current epoch (0-based)."""
        return int(self._state["epoch"])

    @property
    def warming_up(self) -> bool:
        """True while the method trains on the equally weighted (log-)losses."""
        return self.epoch < self._stch_epoch

    @property
    def reference(self) -> Tensor | None:
        """r [T] (float64): the loss levels the objectives are normalised by (``None`` until
        estimated)."""
        return self._state["reference"]

    def _lifecycle_automatic(self) -> set[str]:
        return {"end_epoch"} if self.epoch_steps is not None else set()

    def end_epoch(self) -> bool:
        """Close the current epoch (call after each epoch). Returns False, doing nothing, when
        the epoch had no training step. Closing the estimation epoch sets :attr:`reference`."""
        self._lifecycle_called("end_epoch")
        if self._state["epoch_step"] == 0:
            return False
        if self._estimate and self._state["epoch"] == self.warmup_epochs:
            sums, counts = self._state["sums"], self._state["counts"]
            mean = sums / counts.clamp_min(1).to(torch.float64)
            ref = torch.where(counts[0] > 0, mean[0], torch.where(counts[1] > 0, mean[1], 1.0))
            # a non-positive mean (e.g. all-zero losses) cannot normalise a log: fall back to 1
            self._state["reference"] = torch.where(ref > 0, ref, 1.0)
        self._state["epoch"] += 1
        self._state["epoch_step"] = 0
        return True

    # ------------------------------------------------------------------ internals

    @property
    def _stch_epoch(self) -> int:
        return self.warmup_epochs + (1 if self._estimate else 0)

    def _on(self, key: str, device: torch.device) -> Tensor:
        v = self._state[key]
        if v.device != device:
            v = self._state[key] = v.to(device)
        return v

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        # The losses averaged across processes under torch.distributed (as given otherwise):
        # for the reference estimate and, as the totals are not linear in the losses, for the
        # linearised total (Weighting._linearised_total) that makes DDP's averaged gradient the
        # gradient of the total at the global losses, with the same weights on every process.
        synced = self._synced_losses(losses, present)
        if self.warming_up:
            if self._estimate:
                self._accumulate(*synced)
            total = self._linearised_total(self._warmup_total, losses, present, synced)
        else:
            total = self._linearised_total(self._stch_total, losses, present, synced)
        self._state["epoch_step"] += int(self._completes_step())
        if self.epoch_steps is not None and self._state["epoch_step"] >= self.epoch_steps:
            self.end_epoch()
        return total

    def _accumulate(self, values: Tensor, avail: Tensor) -> None:
        """Add one warm-up step's losses to the reference estimate."""
        x = values.to(torch.float64)
        sums, counts = self._on("sums", x.device), self._on("counts", x.device)
        estimating = self._state["epoch"] == self.warmup_epochs
        rows = (
            torch.stack([avail, avail])
            if estimating
            else torch.stack([torch.zeros_like(avail), avail])
        )
        self._state["sums"] = sums + torch.where(rows, x, 0.0)
        self._state["counts"] = counts + rows.to(torch.int64)

    def _warmup_total(self, losses: Tensor, present: Tensor) -> Tensor:
        if not self.log_transform:
            self._set_weights(present.to(losses.dtype))
            return losses.sum()
        shifted = losses + self.eps
        present = positive_losses(self, shifted, present, "STCH")
        if self._unmasked():  # every task present: no mask ops
            self._set_weights(1.0 / shifted.detach())
            return torch.log(shifted).sum()
        safe = torch.where(present, shifted, torch.ones_like(shifted))
        self._set_weights(torch.where(present, 1.0 / safe.detach(), 0.0))
        return torch.where(present, torch.log(safe), 0.0).sum()

    def _unmasked(self) -> bool:
        """Every task is present and the totals are those of this process (no mask ops)."""
        return self._all_present() and not self._sync_active()

    def _vectors(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """(r, λ, z*) on ``device`` in ``dtype``, converted once per epoch (the same state
        tensors give the cached ones)."""
        return self._cached(device, dtype)[2]

    def _trivial(self, device: torch.device, dtype: torch.dtype) -> tuple[bool, bool]:
        """(λ is all 1 and μ = 1, z* is all 0) in ``dtype``: then λ (f − z*)/μ is f exactly
        (x·1, x − 0 and x/1 are exact, and so are their gradients), so the ops are skipped."""
        return self._cached(device, dtype)[3]

    def _cached(self, device: torch.device, dtype: torch.dtype) -> tuple:
        vs = tuple(self._on(k, device) for k in ("reference", "preference", "ideal"))
        cached = self._cached_vectors
        if cached is None or cached[1] != dtype or any(a is not b for a, b in zip(cached[0], vs)):
            converted = tuple(v.to(dtype) for v in vs)
            trivial = (
                self.mu == 1.0 and bool((converted[1] == 1).all()),
                bool((converted[2] == 0).all()),
            )
            cached = self._cached_vectors = (vs, dtype, converted, trivial)
        return cached

    def _stch_total(self, losses: Tensor, present: Tensor) -> Tensor:
        dtype = losses.dtype
        ref, lam, ideal = self._vectors(losses.device, dtype)
        if self.log_transform:
            inner = losses / ref + self.eps
            present = positive_losses(self, inner, present, "STCH")
        unmasked = self._unmasked()
        if self.log_transform:
            f = torch.log(
                inner if unmasked else torch.where(present, inner, torch.ones_like(inner))
            )
            shifted = losses.detach() + self.eps * ref
            dfdl = (shifted if unmasked else torch.where(present, shifted, 1.0)).reciprocal()
        else:
            f = losses / ref
            dfdl = ref.reciprocal()
        unit_lam, zero_ideal = self._trivial(losses.device, dtype)
        if unit_lam and zero_ideal:
            a = f  # λ (f − z*)/μ with λ = 1, z* = 0, μ = 1: the same bits (see _trivial)
        else:
            a = lam * (f - ideal) / self.mu
        size: float | Tensor = float(losses.shape[0])
        if not unmasked:
            a = torch.where(present, a, 0.0)
            # absent tasks: -inf in the log-sum-exp (all 0 when none is present, then |P| = 0)
            a = a + torch.where(present | ~present.any(), 0.0, -torch.inf).to(dtype)
            size = present.sum().to(dtype)
        total = size * self.mu * torch.logsumexp(a, dim=0)
        soft = torch.softmax(a.detach(), dim=0)
        weights = (soft * size if unit_lam else size * lam * soft) * dfdl
        self._set_weights(weights if unmasked else torch.where(present, weights, 0.0))
        return total

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, mu={self.mu}, warmup_epochs={self.warmup_epochs}, "
            f"log_transform={self.log_transform}"
        )
