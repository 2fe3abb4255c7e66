"""Small pieces of loss-side math shared by several methods (no method imports another)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def weighted_sum(weights: Tensor, losses: Tensor) -> Tensor:
    """Σ_t w_t L_t in the losses' dtype (``weights`` carry no gradient): one dot product (one
    node in the graph)."""
    return torch.dot(weights.detach().to(losses.dtype), losses)


def normalize_over_present(values: Tensor, present: Tensor) -> Tensor:
    """w_t = v_t / Σ_{s present} v_s for present tasks, 0 for absent ones.

    ``values`` must be non-negative. When no task is present, or the present values sum to 0,
    the result is all zeros (never NaN).
    """
    v = torch.where(present, values, torch.zeros_like(values))
    total = v.sum()
    return torch.where(total > 0, v / torch.where(total > 0, total, 1.0), 0.0)


def _as_float_list(values: Any, what: str) -> list[float]:
    """Host numbers from a sequence / tensor / array (configuration, not the hot path)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().tolist()
    try:
        out = [float(v) for v in values]
    except TypeError:
        raise TypeError(f"{what} must be a sequence of numbers; got {values!r}") from None
    if not out:
        raise ValueError(f"{what} is empty")
    return out
