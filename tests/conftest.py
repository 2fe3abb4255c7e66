"""Shared test configuration.

Without a GPU, Triton kernels run in the interpreter: ``TRITON_INTERPRET=1`` must be set before
Triton is imported, so it is set here, before any test module imports mtl_fast.kernels.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Devices the suite runs on: the CPU always, CUDA when present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


def triton_ok() -> bool:
    from mtl_fast._backend import triton_available

    return triton_available()


requires_triton = pytest.mark.skipif(
    "not __import__('mtl_fast._backend', fromlist=['x']).triton_available()",
    reason="Triton is not importable here",
)
