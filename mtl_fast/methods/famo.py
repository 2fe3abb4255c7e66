r"""FAMO (Liu, Feng, Stone & Liu, "Fast Adaptive Multitask Optimization", NeurIPS 2023).

A loss-based method with O(1) cost per task: it adapts task logits ξ from how much each task's
log-loss actually decreased over the last step, so that the tasks decrease at similar rates,
without ever forming per-task gradients.

With ℓ*_t the minimum of task t's loss (0 for most losses) and D_t = L_t − ℓ*_t + ε:

* weights: z = softmax(ξ) (ξ initialised to 0, so z = 1/T), and the update direction is

      u = Σ_t w_t ∇L_t,     w_t = z_t / (c D_t),     c = Σ_s z_s / D_s,          (Algorithm 1)

  the gradient of (1/c) Σ_t z_t log D_t with c held fixed (the published code back-propagates
  exactly that): a z-weighted sum of log-losses, renormalised so that Σ_t w_t = 1;
* logit update, after the parameters moved from θ to θ⁺ (the extra forward pass recomputes the
  losses on the same batch):

      δ_t = log D_t(θ) − log D_t(θ⁺)                  (the log-loss decrease of each task)
      d   = J_softmax(ξ)ᵀ δ,   d_t = z_t (δ_t − Σ_s z_s δ_s)
      ξ   ← ξ − η (d + γ ξ)                           (Algorithm 1: step size η, decay γ)

  A task whose log-loss decreased more than the z-weighted average gets a smaller logit.

The authors' published code takes the logit step with Adam (``torch.optim.Adam(lr=0.025,
weight_decay=γ)``, coupled L2 decay: the Adam gradient is d + γ ξ); that is the default here
(``optimizer="adam"``, implemented with device tensors, the update of ``torch.optim.Adam``
to rounding); ``optimizer="sgd"`` is the plain step of Algorithm 1.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor

from mtl_fast.methods.baselines import positive_losses, softmax_over_present, weighted_sum
from mtl_fast.weighting import LossesLike, MaskLike, Weighting

__all__ = ["FAMO", "famo_logit_gradient"]

OPTIMIZERS = ("adam", "sgd")
#: ε of D_t = L_t − ℓ*_t + ε (the published code's value).
DEFAULT_EPS = 1e-8


def famo_logit_gradient(logits: Tensor, delta: Tensor, present: Tensor) -> Tensor:
    r"""d = J_softmax(ξ)ᵀ δ over the present tasks: d_t = z_t (δ_t − Σ_s z_s δ_s), z the softmax
    of ξ over the present tasks; 0 for absent tasks (and δ of absent tasks is ignored)."""
    z = softmax_over_present(logits, present)
    delta = torch.where(present, delta, 0.0)
    return z * (delta - (z * delta).sum())


class FAMO(Weighting):
    r"""FAMO: balance the rates at which the task log-losses decrease (Liu et al. 2023).

    See :mod:`mtl_fast.methods.famo` for the equations. Two ways to obtain the loss decrease δ:

    * ``extra_pass=True`` (default, the paper's Algorithm 1 and the published code): after
      ``optimizer.step()``, recompute the losses on the SAME batch (a forward pass under
      ``torch.no_grad()``) and call :meth:`update` with them. δ then measures exactly the effect
      of the step on each task. Cost: one extra forward pass per step.
    * ``extra_pass=False``: no extra pass; at each training step the logits are first updated
      with δ = log D(previous step's losses) − log D(this step's losses), then used. These losses
      come from two DIFFERENT batches, so δ also contains the batch-to-batch variation of each
      task's loss (noise, which the small logit step size averages out over steps), and it
      measures the decrease on a fresh batch rather than on the batch the step was taken on
      (which the step fitted: the extra-pass δ is systematically larger). The timing is the
      same: the logits used at step k+1 have seen the decrease of step k in both options.

    ``loss(losses)`` returns total = Σ_t w_t L_t with the factors w_t = z_t / (c D_t) detached.
    Its gradient is exactly that of the published code's (1/c) Σ_t z_t log D_t (c detached);
    its value is the w-weighted mean of the losses (the published value is a log-domain number).
    The weighted-sum form also makes data parallelism exact: w comes from the losses averaged
    over the processes (:meth:`~mtl_fast.Weighting._synced_losses`), so every process applies
    the same factors and the averaged gradient is the FAMO gradient of the global batch.

    Args:
        num_tasks: T.
        lr: the logits' step size η (default 0.025, the published code's ``w_lr``).
        gamma: the decay γ of the logits (default 0.01, the published code's default; the paper
            also uses 0.001 on some benchmarks).
        optimizer: ``"adam"`` (default, the published code: Adam with β = (0.9, 0.999),
            eps 1e-8 and coupled weight decay γ) or ``"sgd"`` (Algorithm 1: ξ ← ξ − η(d + γξ)).
        min_losses: ℓ*_t, the known minimum of each task's loss (default 0).
        eps: ε in D_t = L_t − ℓ*_t + ε (default 1e-8, the published code's value).
        extra_pass: see above.
        adam_betas, adam_eps: Adam's (β₁, β₂) and ε.
        **kwargs: :class:`~mtl_fast.Weighting` options (``nonfinite``, ``sync``, ...).

    State (``state_dict()``): the logits ξ [T], Adam's moments and per-task step counts, the
    previous step's losses and which tasks they cover; everything float64 on the losses' device.

    Masks: an absent task has weight 0 (the softmax and c are over the present tasks); the logit
    update covers the tasks present in both losses of δ (softmax Jacobian over them); the logit,
    Adam moments and step count of every other task are untouched (Adam's bias corrections use
    per-task step counts, equal to the global count when no task is ever absent).
    D_t must be > 0 (CPU: ``ValueError``; other devices: the task is absent for the step and
    the error is raised at the next call, as for a NaN loss).

    ``weights``: the effective factors ∂total/∂L_t = z_t / (c D_t) (Σ = 1 over the present
    tasks); :attr:`task_weights` gives z = softmax(ξ), :attr:`logits` gives ξ.

    Needs: losses (and, with ``extra_pass``, one more forward pass). Extra cost: O(T) per step.
    """

    lifecycle = ("update",)

    cuda_graph_capturable = False
    cuda_graph_note = (
        "replays diverged from eager steps on an H200 (2026-12-04): its per-step state (the "
        "previous losses, the step count) is partly on the host and frozen into the graph."
    )

    def __init__(
        self,
        num_tasks: int,
        *,
        lr: float = 0.025,
        gamma: float = 0.01,
        optimizer: str = "adam",
        min_losses: Sequence[float] | Tensor | None = None,
        eps: float = DEFAULT_EPS,
        extra_pass: bool = True,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        **kwargs,
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        super().__init__(num_tasks, **kwargs)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0; got {lr!r}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0; got {gamma!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0; got {eps!r}")
        b1, b2 = (float(b) for b in adam_betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"adam_betas must be in [0, 1); got {adam_betas!r}")
        self.lr = float(lr)
        self.gamma = float(gamma)
        self.optimizer = optimizer
        self.eps = float(eps)
        self.extra_pass = bool(extra_pass)
        self.adam_betas = (b1, b2)
        self.adam_eps = float(adam_eps)
        T = num_tasks
        if min_losses is None:
            floor = torch.zeros(T, dtype=torch.float64)
        else:
            floor = torch.as_tensor(min_losses, dtype=torch.float64).detach().cpu().reshape(-1)
            if floor.shape != (T,) or not bool(torch.isfinite(floor).all()):
                raise ValueError(f"min_losses must be {T} finite numbers; got {min_losses!r}")
        self._state.update(
            {
                "min_losses": floor,
                "logits": torch.zeros(T, dtype=torch.float64),
                "exp_avg": torch.zeros(T, dtype=torch.float64),
                "exp_avg_sq": torch.zeros(T, dtype=torch.float64),
                "updates": torch.zeros(T, dtype=torch.int64),
                "prev_log": None,  # log D of the last training step's losses (awaiting δ)
                "prev_present": None,
            }
        )
        self._warned_no_update = False

    # ------------------------------------------------------------------ public API

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.full((num_tasks,), 1.0 / num_tasks, device=device)

    @property
    def logits(self) -> Tensor:
        """ξ [T] (float64)."""
        return self._state["logits"]

    @property
    def task_weights(self) -> Tensor:
        """z = softmax(ξ) [T] over all tasks (float64)."""
        return torch.softmax(self._state["logits"], dim=0)

    def update(self, losses: LossesLike, mask: MaskLike = None) -> None:
        """The logit update from the losses recomputed after ``optimizer.step()`` on the same
        batch (``extra_pass=True``; call it once per training step, under ``torch.no_grad()``
        or not: the losses are detached).

        Raises:
            RuntimeError: with ``extra_pass=False`` (the update is automatic), or when no
                training step is awaiting its update.
        """
        if not self.extra_pass:
            raise RuntimeError(
                "FAMO(extra_pass=False) updates its logits from the next step's losses: do not "
                "call update()"
            )
        if self._state["prev_log"] is None:
            raise RuntimeError(
                "FAMO.update() needs a preceding training step: call method.loss(losses) (in "
                "training mode), optimizer.step(), then update() once"
            )
        prepared = self.prepare_losses(losses, mask)
        safe, present = prepared.safe, prepared.present
        self._state_on(safe.device)
        values, present = self._synced_losses(safe, present)
        d, present = self._shifted(values, present)
        self._advance(torch.log(d), present)

    # ------------------------------------------------------------------ internals

    def _state_on(self, device: torch.device) -> None:
        """Move the tensor state to ``device`` (a one-time copy when the losses move)."""
        for key in ("min_losses", "logits", "exp_avg", "exp_avg_sq", "updates"):
            v = self._state[key]
            if v.device != device:
                self._state[key] = v.to(device)

    def _shifted(self, values: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """(D = L − ℓ* + ε [T] float64, 1 for absent tasks; present restricted to D > 0) from
        detached loss values."""
        d = values.to(torch.float64) - self._state["min_losses"] + self.eps
        present = positive_losses(self, d, present, "FAMO")
        if self._all_present() and not self._sync_active():
            return d, present
        return torch.where(present, d, 1.0), present

    def _advance(self, log_now: Tensor, present: Tensor) -> None:
        """Consume the pending previous losses: δ = log D(previous) − ``log_now`` and one logit
        step over the tasks present in both."""
        prev, prev_present = self._state["prev_log"], self._state["prev_present"]
        self._state["prev_log"] = self._state["prev_present"] = None
        both = present & prev_present.to(present.device)
        delta = prev.to(log_now.device) - log_now
        self._logit_step(delta, both)

    def _logit_step(self, delta: Tensor, present: Tensor) -> None:
        xi = self._state["logits"]
        if xi.device.type == "cpu":  # the same step in one native call
            self._native_logit_step(delta, present)
        else:
            self._torch_logit_step(delta, present)

    def _torch_logit_step(self, delta: Tensor, present: Tensor) -> None:
        """:meth:`_logit_step` in torch operations (any device)."""
        xi = self._state["logits"]
        grad = famo_logit_gradient(xi, delta, present) + self.gamma * xi
        if self.optimizer == "sgd":
            new = xi - self.lr * grad
        else:
            b1, b2 = self.adam_betas
            m = self._state["exp_avg"]
            v = self._state["exp_avg_sq"]
            n = self._state["updates"] + present.to(torch.int64)
            m_new = torch.lerp(m, grad, 1.0 - b1)
            v_new = v * b2 + (1.0 - b2) * grad * grad
            nf = n.clamp_min(1).to(torch.float64)
            bc1 = 1.0 - torch.pow(b1, nf)
            bc2_sqrt = torch.sqrt(1.0 - torch.pow(b2, nf))
            denom = v_new.sqrt() / bc2_sqrt + self.adam_eps
            new = xi - (self.lr / bc1) * m_new / denom
            self._state["exp_avg"] = torch.where(present, m_new, m)
            self._state["exp_avg_sq"] = torch.where(present, v_new, v)
            self._state["updates"] = n
        self._state["logits"] = torch.where(present, new, xi)

    def _native_logit_step(self, delta: Tensor, present: Tensor) -> None:
        """:meth:`_logit_step` for CPU state by ``mtl_fast._C.famo_logit_step``."""
        from mtl_fast import _C

        st = self._state
        b1, b2 = self.adam_betas
        xi, m, v, n = _C.famo_logit_step(
            st["logits"].numpy(),
            st["exp_avg"].numpy(),
            st["exp_avg_sq"].numpy(),
            st["updates"].numpy(),
            delta.to(torch.float64).numpy(),
            present.numpy(),
            self.lr,
            self.gamma,
            self.optimizer == "adam",
            b1,
            b2,
            self.adam_eps,
        )
        st["logits"] = torch.from_numpy(xi)
        if self.optimizer == "adam":
            st["exp_avg"], st["exp_avg_sq"] = torch.from_numpy(m), torch.from_numpy(v)
            st["updates"] = torch.from_numpy(n)

    def _factors(self, d: Tensor, avail: Tensor) -> Tensor:
        """w_t = z_t / (c D_t), z = softmax(ξ) over the present tasks, c = Σ_s z_s / D_s."""
        logits = self._state["logits"]
        if logits.device.type == "cpu":
            from mtl_fast import _C

            return torch.from_numpy(_C.famo_factors(logits.numpy(), d.numpy(), avail.numpy()))
        return self._torch_factors(d, avail)

    def _torch_factors(self, d: Tensor, avail: Tensor) -> Tensor:
        """:meth:`_factors` in torch operations (any device)."""
        logits = self._state["logits"]
        z = softmax_over_present(logits, avail)
        c = torch.where(avail, z / d, 0.0).sum()
        return torch.where(avail, z / torch.where(c > 0, c, 1.0) / d, 0.0)

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        self._state_on(losses.device)
        values, avail = self._synced_losses(losses, present)
        d, avail = self._shifted(values, avail)
        log_d = torch.log(d)
        if self._state["prev_log"] is not None:
            if self.extra_pass:
                if not self._warned_no_update:
                    warnings.warn(
                        "FAMO(extra_pass=True): update() was not called after the previous "
                        "step, so the logits were not updated; call method.update(new_losses) "
                        "after optimizer.step(), or use FAMO(extra_pass=False)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    self._warned_no_update = True
                self._state["prev_log"] = self._state["prev_present"] = None
            else:
                self._advance(log_d, avail)
        factors = self._factors(d, avail)
        self._state["prev_log"] = log_d
        self._state["prev_present"] = avail
        w = factors.to(losses.dtype)
        self._set_weights(w)
        return weighted_sum(w, losses)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, lr={self.lr}, gamma={self.gamma}, "
            f"optimizer={self.optimizer!r}, extra_pass={self.extra_pass}"
        )
