"""Comparison-side loss transforms: baselines of the papers that are a fixed function of the
losses rather than a weighting method of the library.

* :class:`ScaleInvariant` — "SI", total = Σ_t log L_t (the scale-invariant baseline of Navon et
  al. 2022 §6 and Liu et al. 2023's QM9 table): multiplying one loss by a constant adds a
  constant to the total, so its gradient is unchanged.

These live here, not in :mod:`mtl_fast.methods`, because they are one line of arithmetic that
the comparison needs to line up with the published tables; they are listed by
:mod:`mtl_fast.compare.registry` beside the registered methods.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast.methods.baselines import positive_losses
from mtl_fast.weighting import Weighting

__all__ = ["COMPARISON_METHODS", "ScaleInvariant"]


class ScaleInvariant(Weighting):
    r"""SI: total = Σ_t log L_t (Navon et al. 2022, the "scale-invariant" baseline).

    ∂total/∂θ = Σ_t ∇L_t / L_t, so each task's gradient is divided by its own loss: the total's
    gradient does not change when a loss is multiplied by a constant. ``weights``: the effective
    factors 1 / L_t (detached; 0 for absent tasks). Every present loss must be > 0 (the
    logarithm; :func:`mtl_fast.methods.baselines.positive_losses`). Under ``torch.distributed``
    the total is linearised around the losses averaged across processes, as for
    :class:`~mtl_fast.GLS` (whose gradient has the same direction, scaled by the geometric
    mean of the losses).
    """

    cuda_graph_capturable = False
    cuda_graph_note = "a comparison-side baseline; not checked in a CUDA graph capture"

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        present = positive_losses(self, losses, present, "SI")
        return self._linearised_total(self._log_total, losses, present)

    def _log_total(self, losses: Tensor, present: Tensor) -> Tensor:
        safe = torch.where(present, losses, torch.ones_like(losses))
        self._set_weights(torch.where(present, 1.0 / safe.detach(), torch.zeros_like(safe)))
        return torch.log(safe).sum()


#: name → class of the comparison-side baselines (the names used on the command line).
COMPARISON_METHODS: dict[str, type[Weighting]] = {"SI": ScaleInvariant}
