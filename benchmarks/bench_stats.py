"""One CV-Weighting step: mtl_fast with its C++ accumulator, with its torch accumulator, and a
pure-PyTorch implementation written the way published code keeps its running statistics."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import workloads as wl


def test_cv_step(benchmark, stats_case) -> None:
    T, impl = stats_case
    try:
        step = wl.make_stats_step(impl, T, "cpu")
    except wl.Unsupported as exc:
        pytest.skip(str(exc))
    for _ in range(3):  # past the equal-weight start: the timed steps use the statistics
        step()
    benchmark.group = f"cv-weighting T={T}"
    benchmark.extra_info.update({"impl": impl, "T": T})
    out = benchmark(step)
    assert torch.isfinite(out).all()
