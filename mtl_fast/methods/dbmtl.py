r"""DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning", 2023).

Dual balancing, with k the step and ε = 1e-8:

* loss-scale balancing: every task is trained on its log-loss, ℓ_t = log(L_t + ε); the task
  heads get ∇ log(L_t + ε) = ∇L_t / (L_t + ε);
* gradient-magnitude balancing of the shared parameters: with g_t = ∇_θ log(L_t + ε),

      ĝ_t ← β_k ĝ_t + (1 − β_k) g_t,       β_k = β / k^σ,   ĝ_t = 0 before the first step
      u   = Σ_t (max_s ‖ĝ_s‖ / ‖ĝ_t‖) ĝ_t  = max_s ‖ĝ_s‖ · Σ_t ĝ_t / ‖ĝ_t‖

  (defaults of the authors' code: β = 0.9, σ = 0, so β_k = β): every task contributes its
  (smoothed) direction with the magnitude of the largest (smoothed) task gradient.

Two variants (``ema=``):

* ``"gradient"`` (default): the published algorithm. The method keeps ĝ, one EMA row per task
  of the gradients it balances: T×D extra memory for D shared elements (the shared features'
  size with ``split`` or :func:`mtl_fast.backward` ``features=``, the shared parameters' with
  ``params=``, where it is exactly the authors' T×P buffer), kept in float32 (float64 for
  float64 gradients). In ``split``'s backward the EMA is updated from the T incoming rows and
  written into them, so the Gram matrix and the combine the base class performs act on ĝ:
  cost one read of the T rows and one read and write of ĝ and of the rows (3 T·D
  element-reads, 2 T·D writes) on top of the Gram and combine passes. At the feature level the
  feature shape must be constant from step to step (ĝ is indexed by sample position, e.g.
  ``drop_last=True``); a changed shape raises ``ValueError``.
* ``"norm"`` (memory-light): T numbers of state, an EMA of each task's gradient NORM with the
  same recursion and zero start,

      n̂_t ← β_k n̂_t + (1 − β_k) ‖g_t‖,     ‖g_t‖ = √G_tt,
      u' = (max_s n̂_s) Σ_t g_t / ‖g_t‖,      i.e.  α_t = max_s n̂_s / ‖g_t‖,

  all in Gram space (no T×D buffer, no extra pass).

How ``"norm"`` relates to the published update (each statement is checked in
tests/methods/test_dbmtl.py):

* β = 0 (no smoothing): ĝ = g, n̂ = ‖g‖, and u' = u exactly.
* Each task's gradient keeps its direction over time (g_t^{(k)} = c_t^{(k)} d_t with c > 0):
  ĝ_t = n̂_t d_t, so ‖ĝ_t‖ = n̂_t and ĝ_t/‖ĝ_t‖ = g_t/‖g_t‖ = d_t: u' = u exactly, at every
  step (including the zero-start bias of the first steps, which both share).
* In general they differ in two ways: (1) DIRECTIONS: u' combines the current unit gradients,
  u the unit EMA gradients (the published update also smooths the direction, like per-task
  momentum); (2) MAGNITUDE: max_s n̂_s ≥ max_s ‖ĝ_s‖ (the EMA of the norms bounds the norm of
  the EMA, triangle inequality). Measured (tests/methods/test_dbmtl.py,
  ``test_norm_variant_deviation``: T = 4, D = 256, β = 0.9, step 50, each task's gradient a
  fixed direction (norms 0.1 to 10) plus isotropic noise of norm ``noise`` × the signal's,
  mean of 5 seeds): relative difference ‖u' − u‖/‖u‖ and cosine(u', u) are 0.29 and 0.96 at
  noise = 0.3, 0.94 and 0.74 at noise = 1, 2.36 and 0.47 at noise = 3 (0 and 1 without
  noise). ``"norm"`` keeps exactly the paper's balancing property (every
  task contributes a term of the same norm, max_s n̂_s) but not its smoothing of directions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._row_step import RowStep
from mtl_fast.methods._rows import ema_buffers, ema_rows_, squared_norms, writable_rows
from mtl_fast.methods.baselines import positive_losses
from mtl_fast.reference import active_tasks
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["DBMTL", "EMA_VARIANTS", "dbmtl_gradient_weights", "dbmtl_weights"]

#: ε of log(L_t + ε) (the authors' code).
DEFAULT_EPS = 1e-8
#: ``ema=``: the published EMA of the T gradients, or the memory-light EMA of their norms.
EMA_VARIANTS = ("gradient", "norm")


def dbmtl_gradient_weights(G: Tensor) -> Tensor:
    r"""α_t = max_s ‖ĝ_s‖ / ‖ĝ_t‖ from the Gram matrix G [T, T] of the EMA gradients ĝ, so that
    Σ_t α_t ĝ_t = u (the published update). Inactive tasks (zero or non-finite row) get 0 and
    are left out of the max. Returns float64."""
    G64 = G.to(torch.float64)
    active = active_tasks(G64)
    norms = torch.where(active, torch.nan_to_num(G64.diagonal()).clamp_min(0.0).sqrt(), 0.0)
    return torch.where(active, norms.max() / torch.where(active, norms, 1.0), 0.0)


def _ema_factors(counts: Tensor, beta: float, sigma: float) -> Tensor:
    """β_k = β / k^σ per task, k its update count (float64 [T])."""
    k = counts.clamp_min(1).to(torch.float64)
    return beta / torch.pow(k, sigma) if sigma != 0.0 else torch.full_like(k, beta)


def dbmtl_weights(
    G: Tensor, ema_norms: Tensor, counts: Tensor, beta: float, sigma: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    r"""One DB-MTL gradient-balancing step in Gram space.

    Args:
        G: the Gram matrix [T, T] of the (log-loss) task gradients.
        ema_norms: n̂ [T] before this step (0 at the start).
        counts: [T] int64, how many times each task's n̂ has been updated.
        beta, sigma: β_k = β / k^σ with k the task's update count after this step.

    Returns:
        (α [T] float64 with u' = Σ_t α_t g_t, the updated n̂, the updated counts).

    Only active tasks (finite, non-zero gradient) update n̂ and their count and take part in
    the max; inactive tasks get α = 0 and keep their state.
    """
    G64 = G.to(torch.float64)
    active = active_tasks(G64)
    norms = torch.where(active, torch.nan_to_num(G64.diagonal()).clamp_min(0.0).sqrt(), 0.0)
    counts = counts.to(G.device) + active.to(torch.int64)
    b = _ema_factors(counts, beta, sigma)
    ema = ema_norms.to(device=G.device, dtype=torch.float64)
    ema = torch.where(active, b * ema + (1.0 - b) * norms, ema)
    top = torch.where(active, ema, 0.0).max()
    alpha = torch.where(active, top / torch.where(active, norms, 1.0), 0.0)
    return alpha, ema, counts


class DBMTL(Weighting):
    r"""DB-MTL: log-loss scale balancing plus max-norm gradient-magnitude balancing.

    See :mod:`mtl_fast.methods.dbmtl` for the equations, the two variants and how they relate.

    * ``loss(losses)`` returns Σ_t log(L_t + ε) over the present tasks: each head is trained on
      its log-loss, and ``split``'s backward receives g_t = ∇_z log(L_t + ε).
    * In ``split``'s backward, ``ema="gradient"`` (default, the published algorithm):
      ĝ_t ← β_k ĝ_t + (1 − β_k) g_t and the shared gradient is Σ_t (max_s ‖ĝ_s‖/‖ĝ_t‖) ĝ_t;
      ``ema="norm"``: n̂_t ← β_k n̂_t + (1 − β_k)‖g_t‖ and the shared gradient is
      Σ_t (max_s n̂_s / ‖g_t‖) g_t.

    Args:
        num_tasks: T.
        beta: β of the EMA (default 0.9, the authors' code).
        sigma: σ in β_k = β / k^σ (default 0: a constant β, the authors' code).
        eps: ε in log(L_t + ε) (default 1e-8).
        ema: ``"gradient"`` (default: T×D state, the published update) or ``"norm"``
            (T numbers of state; measured deviation in :mod:`mtl_fast.methods.dbmtl`).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    Masks: an absent task has weight 0, its EMA (ĝ_t or n̂_t) and its update count are
    untouched (β_k uses per-task counts, equal to the global step when no task is ever absent)
    and it is left out of the max. With ``ema="gradient"`` a present task whose gradient is zero
    this step still updates ĝ_t (with zeros, as the published code does) and contributes ĝ_t;
    with ``ema="norm"`` a zero-gradient task is inactive. L_t + ε must be > 0 (CPU:
    ``ValueError``; other devices: the task is absent for the step and the error is raised at
    the next call).

    ``weights``: the effective factor of each raw loss's feature gradient,
    α_t / (L_t + ε); :attr:`gradient_weights` gives α_t (on ĝ_t for ``"gradient"``, on g_t for
    ``"norm"``); :attr:`ema_norms` gives n̂ (``"norm"``), :attr:`ema_gradients` ĝ
    (``"gradient"``, one [T, D_k] tensor per feature tensor).

    Needs: losses and feature gradients. Extra cost: one Gram pass, one combine pass; state T
    numbers (``"norm"``) or T×D (``"gradient"``, plus one pass updating it, see the module).

    Under ``torch.distributed`` the log-losses are those of the losses averaged across
    processes, linearised (c_t = 1/(L̄_t + ε) on every process), so DDP's averaged gradient is
    that of one process on the whole batch (:mod:`mtl_fast.distributed`). With
    ``ema="gradient"`` each process keeps the EMA of its own block of the feature gradients
    (the Gram matrices of the blocks add up, as for the current gradients) and updates it for
    the tasks present on any process.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "replays diverged from eager steps on an H200 (2026-12-04): part of its per-step state "
        "lives on the host and is frozen into the graph."
    )

    gradient_based = True

    def __init__(
        self,
        num_tasks: int,
        *,
        beta: float = 0.9,
        sigma: float = 0.0,
        eps: float = DEFAULT_EPS,
        ema: str = "gradient",
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        super().__init__(num_tasks, **kwargs)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1); got {beta!r}")
        if not sigma >= 0.0:
            raise ValueError(f"sigma must be >= 0; got {sigma!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0; got {eps!r}")
        if ema not in EMA_VARIANTS:
            raise ValueError(f"ema must be one of {EMA_VARIANTS}; got {ema!r}")
        self.beta = float(beta)
        self.sigma = float(sigma)
        self.eps = float(eps)
        self.ema = ema
        #: ema="gradient" keeps an EMA of the rows themselves (Weighting.prepare_rows).
        self.needs_gradient_rows = ema == "gradient"
        self.gram_only_fix = "use DBMTL(..., ema='norm')"
        self._state["ema_norms"] = torch.zeros(num_tasks, dtype=torch.float64)
        self._state["ema_grads"] = None
        self._state["counts"] = torch.zeros(num_tasks, dtype=torch.int64)
        self._state["alpha"] = None
        self._step_scales: Tensor | None = None
        self._step_present: Tensor | None = None

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def ema_norms(self) -> Tensor:
        """n̂ [T] (float64): the EMA of each task's log-loss gradient norm (``ema="norm"``)."""
        return self._state["ema_norms"]

    @property
    def ema_gradients(self) -> list[Tensor] | None:
        """ĝ (``ema="gradient"``): one [T, D_k] tensor per feature tensor, ``None`` before the
        first step."""
        return self._state["ema_grads"]

    @property
    def gradient_weights(self) -> Tensor:
        """α [T] of the last step (on the log-loss gradients), detached."""
        a = self._state["alpha"]
        if a is None:
            return self.initial_weights(self.num_tasks)  # type: ignore[arg-type]
        return a

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        # Log-losses are not linear in the losses: under torch.distributed, those of the losses
        # averaged across processes, linearised (Weighting._linearised_total), so the heads and
        # the Gram matrix see c_t = 1/(L̄_t + ε) on every process.
        return self._linearised_total(self._log_total, losses, present)

    def _log_total(self, losses: Tensor, present: Tensor) -> Tensor:
        shifted = losses + self.eps
        present = positive_losses(self, shifted, present, "DBMTL")
        safe = torch.where(present, shifted, torch.ones_like(shifted))
        self._step_scales = torch.where(present, 1.0 / safe.detach(), 0.0)
        # The tasks present (on any process under torch.distributed): they update ĝ.
        self._step_present = present.detach()
        return torch.where(present, torch.log(safe), 0.0).sum()

    def loss_gradient_scales(self) -> Tensor | None:
        return self._step_scales

    def prepare_rows(self, step: RowStep) -> None:
        """ĝ_t ← β_k ĝ_t + (1 − β_k) g_t for the present tasks with a finite row, then write ĝ_t
        into the step's rows (the base class forms the Gram matrix of the rows and combines
        them, so both act on ĝ). In a scaled step (mtl_fast.amp) the rows are s·g: ĝ keeps the
        unscaled g, the rows get s·ĝ."""
        if self.ema != "gradient":
            return
        rows = list(step.rows)
        T = rows[0].num_tasks
        device = rows[0].device
        present = self._step_present
        self._step_present = None
        if present is None:
            present = torch.ones(T, dtype=torch.bool, device=device)
        present = present.to(device)
        # One fused Gram pass tells which rows are finite (NaN/Inf make ‖g_t‖² non-finite).
        update = present & torch.isfinite(squared_norms(rows, self.backend))
        counts = self._state["counts"].to(device) + update.to(torch.int64)
        b = _ema_factors(counts, self.beta, self.sigma)
        bufs = ema_buffers(
            self._state["ema_grads"],
            rows,
            "DBMTL(ema='gradient')",
            "keep the shared features' shape constant (e.g. drop_last=True), pass params= to "
            "mtl_fast.backward, or use ema='norm'",
        )
        for r, buf in zip(rows, bufs):
            ema_rows_(
                buf,
                writable_rows(r, "DBMTL(ema='gradient')"),
                b,
                update,
                grad_scale=self._step_grad_scale(),
            )
        self._state["counts"] = counts
        self._state["ema_grads"] = bufs

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        if self.ema == "gradient":
            return dbmtl_gradient_weights(G)
        alpha, ema, counts = dbmtl_weights(
            G, self._state["ema_norms"], self._state["counts"], self.beta, self.sigma
        )
        self._state["ema_norms"] = ema
        self._state["counts"] = counts
        return alpha

    def effective_weights(self, alpha: Tensor) -> Tensor:
        self._state["alpha"] = alpha.detach()
        c = self._step_scales
        self._step_scales = None
        return alpha if c is None else alpha * c.to(alpha.device, alpha.dtype)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, beta={self.beta}, sigma={self.sigma}, ema={self.ema!r}"
