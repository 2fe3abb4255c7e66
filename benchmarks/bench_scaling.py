"""Scaling in T: the full IMTL-G step up to T = 1024 at fixed D, side by side, and the training
step of equal weighting, IMTL-G, MGDA and the LibMTL-style steps up to T = 128."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import workloads as wl
from benchmarks.harness.runner import synced


@pytest.mark.parametrize("impl", wl.IMPLS)
def test_imtlg_step_scaling(benchmark, scaling_T, impl, tier, device) -> None:
    T, D = scaling_T, tier.scaling_D
    need = T * D * 4 + wl.estimated_extra_bytes("step_imtlg", impl, T, D, 4)
    if need > wl.memory_budget(device):
        pytest.skip(f"memory: needs ~{need / 2**30:.1f} GiB")
    inp = wl.OpInputs.make(T, D, "fp32", device)
    try:
        fn = wl.build_op("step_imtlg", impl, inp)
    except wl.Unsupported as exc:
        pytest.skip(str(exc))
    benchmark.group = f"scaling step_imtlg D={D}"
    benchmark.extra_info.update({"impl": impl, "T": T, "D": D})
    out = benchmark(synced(fn, device))
    assert torch.isfinite(out).all()


def test_train_scaling(benchmark, scaling_train_case, tier, device) -> None:
    T, name = scaling_train_case
    try:
        step = wl.make_method_step(name, T, tier, device)
    except (LookupError, TypeError, wl.Unsupported) as exc:
        pytest.skip(str(exc))
    benchmark.group = f"scaling train {name}"
    benchmark.extra_info.update({"method": name, "T": T})
    out = benchmark(synced(step.step, device))
    assert torch.isfinite(out.detach().float()).all()
