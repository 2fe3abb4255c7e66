"""Launch helpers shared by the Gram kernels: the device context, how many programs fill a GPU,
and the upper-triangle tile-pair grid."""

from __future__ import annotations

import contextlib
import functools

import torch

#: Programs per streaming multiprocessor that a split-over-the-reduction grid aims for.
PROGRAMS_PER_SM = 4


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def gpu_program_target(device: torch.device, programs_per_sm: int | None = None) -> int:
    """``programs_per_sm`` (default :data:`PROGRAMS_PER_SM`) × the number of SMs of this CUDA
    device (the current one when unindexed)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    per_sm = programs_per_sm if programs_per_sm is not None else PROGRAMS_PER_SM
    return per_sm * _multiprocessors(index)


def device_context(device: torch.device):
    """Launch on the tensors' device (Triton launches on the *current* CUDA device)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


class TilePairs:
    """Mixin for launch configurations whose grid's first axis enumerates the upper-triangle
    pairs (i ≤ j) of ``t_tiles`` task tiles."""

    t_tiles: int

    @property
    def num_pairs(self) -> int:
        """Upper-triangle tile pairs: the size of the grid's first axis."""
        return self.t_tiles * (self.t_tiles + 1) // 2

    @property
    def single_tile(self) -> bool:
        """One tile covers every task: each program loads its data once, no pair decoding."""
        return self.t_tiles == 1
