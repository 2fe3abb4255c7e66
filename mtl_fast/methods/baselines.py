"""Baseline loss weightings."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast.weighting import Weighting


class EqualWeighting(Weighting):
    """Uniform scaling: total = Σ_t L_t (every weight 1), the baseline of every paper."""

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    def _total(self, losses: Tensor, present: Tensor) -> Tensor:
        self._set_weights(present.to(losses.dtype))
        return losses.sum()
