"""Shared configuration of the pytest-benchmark suites.

The sizes come from a tier of :mod:`benchmarks.harness.workloads` (``--bench-tier`` or
``$MTL_FAST_BENCH_TIER``, default ``smoke``); the callables timed here are the ones
``mtl-fast bench`` times, built by the same functions.

    pytest benchmarks --benchmark-disable -q            # CI: every case once, smoke sizes
    pytest benchmarks --bench-tier quick                # timed by pytest-benchmark
    pytest benchmarks/bench_ops.py --bench-tier full --bench-device cuda
"""

from __future__ import annotations

import os
from typing import Callable

import pytest
import torch

from benchmarks.harness import TIER_ENV
from benchmarks.harness import workloads as wl
from benchmarks.harness.runner import synced

__all__ = ["synced"]  # re-exported: suites may `from conftest import synced`


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mtl_fast benchmarks")
    group.addoption(
        "--bench-tier",
        choices=sorted(wl.TIERS),
        default=os.environ.get(TIER_ENV) or "smoke",
        help="size tier (default: $MTL_FAST_BENCH_TIER, else smoke)",
    )
    group.addoption(
        "--bench-device",
        default=None,
        help="cpu or cuda (default: cuda when available)",
    )


def _tier(config: pytest.Config) -> wl.Tier:
    return wl.get_tier(config.getoption("--bench-tier"))


def _device(config: pytest.Config) -> torch.device:
    name = config.getoption("--bench-device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


@pytest.fixture(scope="session")
def tier(pytestconfig: pytest.Config) -> wl.Tier:
    """The selected size tier."""
    return _tier(pytestconfig)


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The device the benchmarks run on."""
    return _device(pytestconfig)


@pytest.fixture(scope="session")
def op_inputs(device: torch.device) -> Callable[[int, int, str], wl.OpInputs]:
    """``op_inputs(T, D, dtype)``: the (cached) inputs of one ops configuration; the cache keeps
    the latest configuration only, so large tiers do not hold every J at once."""
    cache: dict[tuple, wl.OpInputs] = {}

    def get(T: int, D: int, dtype: str) -> wl.OpInputs:
        key = (T, D, dtype)
        if key not in cache:
            cache.clear()
            cache[key] = wl.OpInputs.make(T, D, dtype, device)
        return cache[key]

    return get


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise the suites over the selected tier's cases."""
    tier = _tier(metafunc.config)
    device = _device(metafunc.config)
    names = metafunc.fixturenames
    if "op_case" in names:
        Ds = tier.ops_D + (tier.gpu_extra_D if device.type == "cuda" else ())
        cases = [
            (op, impl, T, D, dtype)
            for dtype in tier.ops_dtypes
            for T in tier.ops_T
            for D in Ds
            for op in wl.D_OPS
            for impl in wl.IMPLS
        ]
        cases += [
            (op, impl, T, min(tier.ops_D), "fp32")
            for T in tier.ops_T
            for op in wl.SOLVE_OPS
            for impl in wl.IMPLS
        ]
        metafunc.parametrize(
            "op_case", cases, ids=[f"{o}-{i}-T{T}-D{D}-{d}" for o, i, T, D, d in cases]
        )
    if "precision_T" in names:
        metafunc.parametrize("precision_T", tier.precision_T, ids=lambda T: f"T{T}")
    if "train_case" in names:
        methods = tier.train_methods or wl.METHOD_NAMES + tuple(wl.LIBMTL_METHODS)
        cases = [(T, m) for T in tier.train_T for m in methods]
        metafunc.parametrize("train_case", cases, ids=[f"T{T}-{m}" for T, m in cases])
    if "stats_case" in names:
        cases = [(T, impl) for T in tier.stats_T for impl in wl.STATS_IMPLS]
        metafunc.parametrize(
            "stats_case", cases, ids=[f"T{T}-{i.replace(' ', '_')}" for T, i in cases]
        )
    if "scaling_T" in names:
        metafunc.parametrize("scaling_T", tier.scaling_T, ids=lambda T: f"T{T}")
    if "scaling_train_case" in names:
        cases = [(T, m) for T in tier.scaling_train_T for m in wl.SCALING_METHODS]
        metafunc.parametrize("scaling_train_case", cases, ids=[f"T{T}-{m}" for T, m in cases])
