"""Training step of every method (and of the LibMTL-style IMTL / MGDA steps) on the benchmark's
conv encoder with T heads; ``mtl-fast bench`` reports each relative to equal weighting."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import workloads as wl
from benchmarks.harness.runner import synced


def test_train_step(benchmark, train_case, tier, device) -> None:
    T, name = train_case
    try:
        step = wl.make_method_step(name, T, tier, device)
    except (LookupError, TypeError, wl.Unsupported) as exc:
        pytest.skip(str(exc))
    benchmark.group = f"train T={T}"
    benchmark.extra_info.update({"method": name, "family": step.family, "T": T})
    out = benchmark(synced(step.step, device))
    assert torch.isfinite(out.detach().float()).all()
