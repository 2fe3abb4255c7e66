r"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

With s_t = log σ_t² learnable (the numerically stable parametrisation the paper recommends),
the negative log-likelihood of T tasks gives::

    regression (Gaussian):        ½·e^{−s_t}·L_t + ½·s_t       (1/(2σ²)·L + log σ)
    classification (softmax):       e^{−s_t}·L_t + ½·s_t       (1/σ²·L + log σ)

Functional core: :func:`uncertainty_factors` (c_t·e^{−s_t}), :func:`uncertainty_total` (the sum
above over the present tasks) and :func:`optimal_log_variance` (the minimiser in s_t,
s* = log(2·c_t·L_t): log L for regression, log 2L for classification).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn

from mtl_fast.weighting import Weighting

__all__ = [
    "TASK_TYPES",
    "UncertaintyWeighting",
    "optimal_log_variance",
    "uncertainty_factors",
    "uncertainty_total",
]

#: c_t, the factor of e^{−s_t}·L_t for each task type.
TASK_TYPES = {"regression": 0.5, "classification": 1.0}

TaskTypesLike = Union[str, Sequence[str]]


def uncertainty_factors(log_vars: Tensor, coefficients: Tensor) -> Tensor:
    """c_t·e^{−s_t}: the factor in front of L_t (c = ½ regression, 1 classification)."""
    return coefficients * torch.exp(-log_vars)


def uncertainty_total(
    losses: Tensor,
    log_vars: Tensor,
    coefficients: Tensor,
    present: Tensor | None = None,
    factors: Tensor | None = None,
) -> Tensor:
    """Σ_{t present} (c_t e^{−s_t} L_t + ½ s_t). Absent tasks contribute nothing (no gradient
    to their s_t). ``present=None``: every task (one dot product, no mask ops). ``factors``:
    :func:`uncertainty_factors` of ``log_vars`` when the caller has them (differentiable)."""
    if factors is None:
        factors = uncertainty_factors(log_vars, coefficients)
    if present is None:
        # dot + ½·sum as one add (α = ½): the same bits as dot + 0.5·sum, one node less
        if factors.dtype != losses.dtype:
            factors = factors.to(losses.dtype)
        return torch.add(torch.dot(factors, losses), log_vars.sum(), alpha=0.5)
    terms = factors * losses + 0.5 * log_vars
    return torch.where(present, terms, torch.zeros_like(terms)).sum()


def optimal_log_variance(loss: Tensor | float, task_type: str = "regression") -> Tensor:
    """argmin_s (c e^{−s} L + ½ s) = log(2cL): log L (regression), log 2L (classification)."""
    return torch.log(2.0 * TASK_TYPES[task_type] * torch.as_tensor(loss, dtype=torch.float64))


class UncertaintyWeighting(Weighting):
    r"""Homoscedastic-uncertainty weighting (Kendall et al. 2018): learnable s_t = log σ_t².

    total = Σ_t (c_t e^{−s_t} L_t + ½ s_t) with c_t = ½ for regression tasks (Gaussian
    likelihood) and 1 for classification tasks (softmax likelihood with temperature σ², the
    paper's approximation). s is an ``nn.Parameter`` [T] initialised to 0 (σ² = 1): put the
    method's parameters in the optimizer, and move the method to the losses' device
    (``method.to(device)``).

    Args:
        num_tasks: T.
        task_types: ``"regression"`` (default) or ``"classification"``, for all tasks or one per
            task.
        **kwargs: :class:`mtl_fast.Weighting` options.

    Masks: an absent task's whole term (including ½ s_t) is left out, so its s_t gets no
    gradient that step. ``eval()``: plain sum.

    ``weights``: c_t e^{−s_t}, the factors in front of L_t (detached; 0 for absent tasks).
    Needs: losses. Extra cost: T parameters.
    """

    def __init__(self, num_tasks: int, task_types: TaskTypesLike = "regression", **kwargs):
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        types = [task_types] * num_tasks if isinstance(task_types, str) else list(task_types)
        if len(types) != num_tasks:
            raise ValueError(f"task_types has {len(types)} entries; expected {num_tasks}")
        for t in types:
            if t not in TASK_TYPES:
                raise ValueError(f"task type must be one of {sorted(TASK_TYPES)}; got {t!r}")
        super().__init__(num_tasks, **kwargs)
        self.task_types = types
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))
        self.coefficients: Tensor
        self.register_buffer(
            "coefficients", torch.tensor([TASK_TYPES[t] for t in types]), persistent=False
        )

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return uncertainty_factors(self.log_vars.detach(), self.coefficients).to(device)

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        if self._all_present():
            factors = uncertainty_factors(self.log_vars, self.coefficients)
            w = factors.detach()
            self._set_weights(w if w.dtype == losses.dtype else w.to(losses.dtype))
            return uncertainty_total(losses, self.log_vars, self.coefficients, factors=factors)
        w = uncertainty_factors(self.log_vars.detach(), self.coefficients)
        self._set_weights(torch.where(present, w, 0.0).to(losses.dtype))
        return uncertainty_total(losses, self.log_vars, self.coefficients, present)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, task_types={self.task_types}"
