"""Ops side by side: gram, the IMTL-G and MGDA solves, combine and the full steps, for mtl_fast
(auto backend), its reference (``backend="torch"``), a LibMTL-style implementation and torchjd.

Also the IMTL-G weights' error against a float64 oracle: mtl_fast is never less accurate than
the LibMTL-style fp32 formula.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import workloads as wl
from benchmarks.harness.runner import synced


def test_op(benchmark, op_case, op_inputs, device, tier) -> None:
    op, impl, T, D, dtype = op_case
    esize = wl.element_size(dtype)
    need = T * D * esize + wl.estimated_extra_bytes(op, impl, T, D, esize)
    if need > wl.memory_budget(device):
        pytest.skip(f"memory: needs ~{need / 2**30:.1f} GiB")
    inp = op_inputs(T, D, dtype)
    try:
        fn = wl.build_op(op, impl, inp)
    except wl.Unsupported as exc:
        pytest.skip(str(exc))
    benchmark.group = f"{op} T={T} D={D} {dtype}"
    benchmark.extra_info.update({"op": op, "impl": impl, "T": T, "D": D, "dtype": dtype})
    floor = wl.floor_bytes(op, T, D, esize)
    if floor is not None:
        benchmark.extra_info["floor_bytes"] = floor
    out = benchmark(synced(fn, device))
    assert torch.isfinite(out.float()).all(), f"{impl} {op} returned non-finite values"
    expected = (T, T) if op == "gram" else (T,) if op in wl.SOLVE_OPS else (D,)
    assert tuple(out.shape) == expected


def test_imtlg_precision(benchmark, precision_T, tier) -> None:
    """mtl_fast's IMTL-G weights are never less accurate than the LibMTL-style fp32 formula."""
    errors = benchmark.pedantic(
        wl.imtlg_errors, args=(precision_T, tier.precision_D, 0), rounds=1, iterations=1
    )
    benchmark.extra_info.update(errors)
    assert errors["mtl_fast"] <= errors["libmtl_style"], errors
