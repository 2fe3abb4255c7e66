r"""Composition of a loss-based and a gradient-based method: ``mf.Compose(loss_method,
gradient_method)``.

The loss-based method scales the losses, the gradient method balances the feature gradients of
the scaled losses. With f the loss method's total (Σ_t w_t L_t for most, e^{s_t} L_t − s_t for
IMTL-L, ...) and c_t = ∂f/∂L_t, the task heads and the loss method's own parameters are trained
by f as usual, and the shared features receive

    Σ_t α_t (c_t g_t),        α = the gradient method's solve on the Gram matrix of the c_t g_t,

where g_t is task t's raw feature gradient. This is how several papers combine the two
families: IMTL is exactly IMTL-L ∘ IMTL-G (Liu et al. 2021 §3.3: ``Compose(IMTLL(T), IMTLG())``
gives IMTL's weights and gradients, tested), and Auto-λ (Liu et al. 2022) and IGB (Dai et al.
2023) report gains from pairing loss-side and gradient-side balancing.

``weights`` reports the effective factor on each raw loss's feature gradient, α_t c_t (IMTL's
α_t e^{s_t} for IMTL-L ∘ IMTL-G); :attr:`Compose.gradient_weights` gives α and
:attr:`Compose.loss_scales` c. A gradient method that reads loss values (MGDA's ``"loss"``
normalisation, MoCo) is given the scaled losses c_t L_t. c comes from one small autograd call
on the loss method's total (T numbers; no pass over the model).

State, checkpoints, masks and distributed synchronisation: both parts are submodules, so
``state_dict()`` holds their states and parameters (``param_groups()`` the loss part's
learnable weights); a step's update of the loss part is rolled back with the composite's step
when the step is abandoned; both parts share the composite's ``sync`` / ``process_group``, its
non-finite policy and its step counter. ``end_epoch()`` and ``observe(...)`` are passed to both
parts. The trainer integrations read the class's ``lifecycle`` (empty): for a loss part that
learns from validation metrics (AMTL, DTP) pass them ``observe=`` explicitly.

Cost: the loss part's (statistics, T numbers) plus the gradient part's (its Gram-space solve, or
its row passes for the row methods) plus one autograd call of T outputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from mtl_fast import _state
from mtl_fast._row_step import RowStep
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["Compose"]


def _has_loss_side(method: Weighting) -> bool:
    """A gradient method that shapes its own losses (IMTL, DB-MTL, GradNorm): its total would
    be bypassed inside a Compose."""
    own_scales = type(method).loss_gradient_scales is not Weighting.loss_gradient_scales
    return own_scales or any(True for _ in method.parameters())


class Compose(Weighting):
    """A loss-based method followed by a gradient-based one (see :mod:`mtl_fast.methods.compose`).

    Args:
        loss_method: a loss-based :class:`~mtl_fast.Weighting` (``EqualWeighting``, ``IMTLL``,
            ``UncertaintyWeighting``, ``CVWeighting``, ``LSB``, ...).
        gradient_method: a gradient-based one without a loss side of its own (``IMTLG``,
            ``MGDA``, ``PCGrad``, ``NashMTL``, ``MoCo``, ``GradDrop``, ...; IMTL, DB-MTL and
            GradNorm already shape their losses and are refused).
        **kwargs: see :class:`~mtl_fast.Weighting` (``sync``, ``process_group`` and the
            non-finite policy apply to both parts; ``backend`` too when given).

    With f the loss method's total and c_t = ∂f/∂L_t, the shared features receive::

        Σ_t α_t (c_t g_t),     α = the gradient method's solve on the Gram matrix of the c_t g_t

    (``Compose(IMTLL(T), IMTLG())`` is IMTL, Liu et al. 2021 §3.3).

    ``weights``: α_t c_t [T], the effective weight of each raw loss's feature gradient.

    Needs: what both parts need. Extra cost: both parts' costs plus one autograd call on the
    loss part's total (T numbers, no pass over the model). State: both parts' states and the
    loss part's parameters (submodules, in ``state_dict()``).
    """

    cuda_graph_capturable = False
    cuda_graph_note = "not yet captured on a GPU (it depends on both parts)."

    gradient_based = True

    def __init__(self, loss_method: Weighting, gradient_method: Weighting, **kwargs: Any) -> None:
        for what, m in (("loss_method", loss_method), ("gradient_method", gradient_method)):
            if not isinstance(m, Weighting):
                raise TypeError(f"{what} must be a mtl_fast.Weighting; got {type(m).__name__}")
            if isinstance(m, Compose):
                raise TypeError(f"{what} must not itself be a Compose")
        if loss_method.gradient_based:
            raise ValueError(
                f"Compose(loss_method, gradient_method): {type(loss_method).__name__} is "
                "gradient-based; the first part must be loss-based (e.g. IMTLL, "
                "UncertaintyWeighting, CVWeighting)"
            )
        if not gradient_method.gradient_based:
            raise ValueError(
                f"Compose(loss_method, gradient_method): {type(gradient_method).__name__} is "
                "loss-based; the second part must be gradient-based (e.g. IMTLG, MGDA, PCGrad)"
            )
        if _has_loss_side(gradient_method):
            raise ValueError(
                f"{type(gradient_method).__name__} shapes its own losses (IMTL is IMTL-L ∘ "
                "IMTL-G, DB-MTL and GradNorm learn or log-scale their losses): compose its "
                "gradient part with a loss method instead, e.g. Compose(IMTLL(T), IMTLG())"
            )
        counts = {m.num_tasks for m in (loss_method, gradient_method)} - {None}
        if len(counts) > 1:
            raise ValueError(f"the two parts are built for different numbers of tasks: {counts}")
        super().__init__(counts.pop() if counts else None, **kwargs)
        self.loss_method = loss_method
        self.gradient_method = gradient_method
        for part in (loss_method, gradient_method):
            part._sync = self._sync  # one set of collectives, waited for together
            part._monitor = self._monitor  # lazy non-finite reports surface through Compose
            part.nonfinite = self.nonfinite
            if "backend" in kwargs:
                part.backend = self.backend
            if self.num_tasks is not None and part.num_tasks is None:
                part.num_tasks = self.num_tasks
        self.needs_losses_in_backward = gradient_method.needs_losses_in_backward
        self.needs_gradient_rows = gradient_method.needs_gradient_rows
        self.needs_features = gradient_method.needs_features
        self.gram_only_fix = gradient_method.gram_only_fix
        self._step_scales: Tensor | None = None
        self._state["alpha"] = None

    # ------------------------------------------------------------------ reported quantities

    @property
    def gradient_weights(self) -> Tensor:
        """α [T] of the last step: the gradient part's weights on the scaled losses' gradients."""
        a = self._state["alpha"]
        if a is None:
            raise RuntimeError("Compose has no weights yet: read them after the first step")
        return a

    @property
    def loss_scales(self) -> Tensor | None:
        """c [T] = ∂f/∂L_t of the last step's loss-part total (``None`` before a step)."""
        return self._step_scales

    # ------------------------------------------------------------------ the two parts' steps

    def _sync_parts(self) -> None:
        """The parts count the composite's steps (periods, decays and schedules read them)."""
        for part in (self.loss_method, self.gradient_method):
            part._state["step"] = self._state["step"]
            part._state["micro_batch"] = self._state.get("micro_batch", 0)
            if part.num_tasks is None:
                part.num_tasks = self.num_tasks
            part.task_names = self.task_names

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        self._sync_parts()
        total = self.loss_method.total_loss(losses, present)
        c = None
        if total.requires_grad and losses.requires_grad:
            (c,) = torch.autograd.grad(total, losses, retain_graph=True, allow_unused=True)
        scales = torch.zeros_like(losses) if c is None else c
        self._step_scales = scales.detach()
        # The gradient part's own bookkeeping of the step (MoCo keeps the losses it tracks with).
        self.gradient_method.total_loss(self._step_scales * losses.detach(), present)
        self.loss_method._warn_missing_lifecycle()
        return total

    def loss_gradient_scales(self) -> Tensor | None:
        return self._step_scales

    def gram_weights(self, gram: Tensor, inputs: StepInputs) -> Tensor:
        self._sync_parts()
        c = self._step_scales
        if c is not None:
            scaled = c.to(inputs.losses.device, inputs.losses.dtype) * inputs.losses
            inputs = StepInputs(losses=scaled, present=inputs.present)
        return self.gradient_method.gram_weights(gram, inputs)

    def effective_weights(self, alpha: Tensor) -> Tensor:
        inner = self.gradient_method.effective_weights(alpha)
        self.gradient_method._set_weights(inner)
        self._state["alpha"] = inner.detach()
        c = self._step_scales
        return inner if c is None else inner * c.to(inner.device, inner.dtype)

    def prepare_rows(self, step: RowStep) -> None:
        self._sync_parts()
        self.gradient_method.prepare_rows(step)

    def combine_rows(
        self, step: RowStep, alpha: Tensor, index: int, out: Tensor | None = None
    ) -> Tensor:
        return self.gradient_method.combine_rows(step, alpha, index, out)

    # ------------------------------------------------------------------ lifecycle and state

    def end_epoch(self) -> bool:
        changed = self.loss_method.end_epoch()
        return self.gradient_method.end_epoch() or changed

    def observe(self, metrics: Sequence[float] | Tensor, *, sync: bool | None = None) -> None:
        self.loss_method.observe(metrics, sync=sync)
        self.gradient_method.observe(metrics, sync=sync)

    def _snapshot(self) -> Any:
        # loss() changes the loss part's statistics and the step counters: all are restored.
        return self._state["step"], _state.pack(self.loss_method._state)

    def _restore(self, snapshot: Any) -> None:
        step, loss_state = snapshot
        self._state["step"] = step
        self.loss_method._state = _state.unpack(loss_state, self.loss_method._state)
        self._sync_parts()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self._step_scales = None

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"
