"""torch.distributed support: every process computes the same task weights.

* Gradient methods: features of different samples are disjoint coordinates of the global
  feature vector, so the global Gram matrix is the sum of the per-process Gram matrices;
  :func:`all_reduce_sum` of the T×T matrix (T² floats) before the solve gives every process the
  weights of one process on the concatenated batch.
* Loss-based methods: statistics are updated from losses averaged across processes
  (:func:`average_present`), each task over the processes where it is present.

Synchronisation is on when ``torch.distributed`` is initialised with more than one process,
unless the method was built with ``sync=False``; ``process_group=`` selects the group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_active(sync: bool | None, group=None) -> bool:
    """Whether a method with this ``sync`` setting synchronises across processes now."""
    if sync is False:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        if sync is True:
            raise RuntimeError("sync=True but torch.distributed is not initialised")
        return False
    return dist.get_world_size(group) > 1


def all_reduce_sum(t: Tensor, group=None) -> Tensor:
    """Sum of ``t`` over the processes of ``group`` (a new tensor; ``t`` is left unchanged)."""
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def average_present(values: Tensor, present: Tensor, group=None) -> tuple[Tensor, Tensor]:
    """Per-task mean of ``values`` over the processes where the task is present.

    Returns (mean [T], present_anywhere [T] bool); absent-everywhere tasks get mean 0. One
    collective of 2·T numbers.
    """
    vals = torch.where(present, values, 0.0).to(torch.float64)
    packed = torch.stack([vals, present.to(torch.float64)])
    packed = all_reduce_sum(packed, group)
    count = packed[1]
    anywhere = count > 0
    mean = torch.where(anywhere, packed[0] / count.clamp_min(1.0), 0.0)
    return mean.to(values.dtype), anywhere
