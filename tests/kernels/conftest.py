"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import pytest
import torch

from mtl_fast import _backend


@pytest.fixture
def dev(device: torch.device) -> torch.device:
    """The conftest ``device``, skipped where Triton cannot run (CPU without the interpreter)."""
    if not _backend.triton_can_run(device):
        pytest.skip(f"Triton kernels cannot run on {device} here (no TRITON_INTERPRET)")
    return device
