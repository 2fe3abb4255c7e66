"""Tests of the Triton combine kernel (kernels/combine.py): ``Σ_t α_t g_t`` over the task rows.

Checked against a float64 NumPy oracle, against the reference (:func:`mtl_fast.reference.combine`,
the specification) and through the public API (``mtl_fast.ops.combine(..., backend="triton")``).
Without a GPU the kernel runs in the Triton interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET); with one, the same tests also run on CUDA tensors (``device`` fixture).

Tolerance (vs the oracle ``s = Σ_t fp32(α_t) g_t`` in float64, elementwise), with
``S = Σ_t |fp32(α_t) g_t|``, ``u = 2⁻²⁴`` and ``ulp_out`` one unit in the last place (relative)
of the output dtype:
    ``|out − s| ≤ (T + 2) u S + ulp_out |s|``: T fp32 multiply-adds (each product and sum rounded
    once, or fused) and one final rounding to the output dtype — to nearest on a GPU, toward
    zero in the Triton 3.9 interpreter's fp32 → bf16 cast, hence a whole ulp. With ``out=``
    accumulation the previous value enters the fp32 sum (``S`` includes ``|out₀|``) before that
    final rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

pytest.importorskip("triton")

from mtl_fast import _backend, ops
from mtl_fast import reference as ref
from mtl_fast._validation import as_task_rows

if not _backend.triton_available():  # pragma: no cover - Triton installed but kernels broken
    pytest.skip(
        f"Triton kernels unavailable: {_backend.triton_import_error()}", allow_module_level=True
    )

from mtl_fast.kernels.combine import combine_rows

U32 = 2.0**-24
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# --------------------------------------------------------------------------------- helpers


def _grads(T: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(T, 1).uniform_(-2.0, 2.0, generator=g))
    return (scale * torch.randn(T, D, generator=g)).to(dtype).to(device)


def _weights(T: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(T, generator=g, dtype=torch.float64).to(dtype).to(device)


def _f64(x: Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).cpu().numpy()


def _unit_roundoff(dtype: torch.dtype) -> float:
    """One ulp relative (2u): covers the final rounding whether it is to nearest (GPU) or toward
    zero (the Triton 3.9 interpreter truncates fp32 → bf16)."""
    return {torch.float32: 2 * U32, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}.get(
        dtype, 2.0**-52
    )


def _check(
    result: Tensor,
    rows: list[Tensor] | Tensor,
    weights: Tensor,
    out0: Tensor | None = None,
) -> None:
    """``result`` (+ ``out0``) against the float64 oracle within the documented bound; tasks with
    zero weight are excluded from the oracle (their rows may hold NaN)."""
    a = _f64(weights.to(torch.float32))  # the kernel rounds α to fp32, as the reference does
    J = np.stack([_f64(r).reshape(-1) for r in rows])
    live = a != 0
    terms = a[live, None] * J[live]
    s = terms.sum(0)
    S = np.abs(terms).sum(0)
    if out0 is not None:
        s = s + _f64(out0).reshape(-1)
        S = S + np.abs(_f64(out0).reshape(-1))
    got = _f64(result).reshape(-1)
    tol = (len(a) + 2) * U32 * S + _unit_roundoff(result.dtype) * np.abs(s) + 1e-300
    err = np.abs(got - s)
    assert np.all(err <= tol), f"max err/tol {np.max(err / tol):.3g}"


# ------------------------------------------------------------------- shapes, dtypes, layouts


@pytest.mark.parametrize("T", [1, 2, 3, 17, 70])
@pytest.mark.parametrize("D", [1, 7, 4097, 10007])
def test_fp32_shapes(dev: torch.device, T: int, D: int) -> None:
    J = _grads(T, D, torch.float32, dev, seed=T + D)
    w = _weights(T, torch.float64, dev, seed=T)
    g = combine_rows(as_task_rows(list(J)), w)
    assert g.shape == (D,) and g.dtype == torch.float32 and g.device == J.device
    _check(g, J, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("wdtype", [torch.float64, torch.float32, torch.bfloat16])
def test_half_dtypes(dev: torch.device, dtype: torch.dtype, wdtype: torch.dtype) -> None:
    J = _grads(5, 4099, dtype, dev, seed=1)
    w = _weights(5, wdtype, dev, seed=2)
    g = combine_rows(as_task_rows(list(J)), w)
    assert g.dtype == dtype
    _check(g, J, w)


@pytest.mark.parametrize("block_d", [128, 1024])
def test_gpu_sized_blocks(dev: torch.device, block_d: int) -> None:
    """The block sizes used on a GPU: full unmasked blocks plus a partial last one."""
    J = _grads(4, 4097, torch.float32, dev, seed=3)
    w = _weights(4, torch.float32, dev, seed=3)
    _check(combine_rows(as_task_rows(list(J)), w, block_d=block_d), J, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_equals_list_and_deterministic(dev: torch.device, dtype: torch.dtype) -> None:
    J = _grads(9, 5000, dtype, dev, seed=4)
    w = _weights(9, torch.float64, dev, seed=4)
    a = combine_rows(as_task_rows(list(J)), w)
    assert torch.equal(a, combine_rows(as_task_rows(J), w))
    assert torch.equal(a, combine_rows(as_task_rows(list(J)), w))


def test_shape_is_kept(dev: torch.device) -> None:
    J = _grads(3, 3 * 5 * 7, torch.float32, dev, seed=5).reshape(3, 3, 5, 7)
    w = _weights(3, torch.float64, dev)
    g = combine_rows(as_task_rows(J), w)
    assert g.shape == (3, 5, 7)
    _check(g, J, w)
    g_list = combine_rows(as_task_rows(list(J)), w)
    assert g_list.shape == (3, 5, 7) and torch.equal(g, g_list)


def test_non_contiguous_inputs(dev: torch.device) -> None:
    """Transposed views (copied by the validation) and strided weights."""
    base = _grads(11, 6, torch.float32, dev, seed=6)  # [D, T]
    w_big = _weights(12, torch.float64, dev)
    w = w_big[::2]
    assert not w.is_contiguous()
    g = combine_rows(as_task_rows(base.T), w)
    _check(g, base.T, w)
    mats = [_grads(13, 11, torch.float32, dev, seed=t).T for t in range(6)]
    g2 = combine_rows(as_task_rows(mats), w)
    assert g2.shape == (11, 13)
    _check(g2, [m.contiguous() for m in mats], w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_storage_offsets(dev: torch.device, dtype: torch.dtype) -> None:
    T, D = 6, 2051
    flat = _grads(1, T * (D + 1) + 9, dtype, dev, seed=7)[0]
    rows = [flat[3 + t * (D + 1) : 3 + t * (D + 1) + D] for t in reversed(range(T))]
    w = _weights(T, torch.float64, dev, seed=7)
    g = combine_rows(as_task_rows(rows), w)
    _check(g, rows, w)
    assert torch.equal(g, combine_rows(as_task_rows(torch.stack(rows)), w))


# ------------------------------------------------------------------ zero weights, non-finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("zero", [0.0, -0.0])
def test_zero_weight_skips_non_finite_row(dev: torch.device, bad: float, zero: float) -> None:
    """A task with α = 0 is not read: its NaN/Inf gradient cannot poison the sum."""
    J = _grads(4, 3000, torch.float32, dev, seed=8)
    J[2, ::7] = bad
    w = _weights(4, torch.float64, dev, seed=8)
    w[2] = zero
    g = combine_rows(as_task_rows(list(J)), w)
    assert torch.isfinite(g).all()
    _check(g, J, w)
    # the same row with a non-zero weight does propagate
    w[2] = 0.5
    assert not torch.isfinite(combine_rows(as_task_rows(list(J)), w)[::7]).any()


def test_nan_weight_propagates(dev: torch.device) -> None:
    J = _grads(3, 100, torch.float32, dev, seed=9)
    w = torch.tensor([0.5, float("nan"), 0.0], dtype=torch.float64, device=dev)
    assert torch.isnan(combine_rows(as_task_rows(J), w)).all()


def test_all_zero_weights(dev: torch.device) -> None:
    J = torch.full((3, 77), float("nan"), device=dev)
    g = combine_rows(as_task_rows(J), torch.zeros(3, device=dev))
    assert torch.equal(g, torch.zeros(77, device=dev))


# ------------------------------------------------------------------------- out= accumulation


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_out_accumulates(dev: torch.device, out_dtype: torch.dtype) -> None:
    J = _grads(5, 4097, torch.float32, dev, seed=10)
    w = _weights(5, torch.float64, dev, seed=10)
    out = _grads(1, 4097, torch.float32, dev, seed=11)[0].to(out_dtype)
    out0 = out.clone()
    res = combine_rows(as_task_rows(list(J)), w, out)
    assert res is out and out.dtype == out_dtype
    _check(out, J, w, out0=out0)
    # the same as the reference, which adds its fp32 sum with out.add_
    expected = out0.clone()
    ref.combine(J, w, out=expected)
    tol = 8 * U32 * (out0.abs().double() + (w.abs().float().double()[:, None] * J.abs()).sum(0))
    assert torch.all(
        (out.double() - expected.double()).abs()
        <= tol + _unit_roundoff(out_dtype) * expected.abs().double()
    )


def test_out_non_contiguous(dev: torch.device) -> None:
    """A strided ``out`` gets the fp32 sum through a temporary and ``out.add_``."""
    J = _grads(3, 1001, torch.bfloat16, dev, seed=12)
    w = _weights(3, torch.float32, dev, seed=12)
    holder = _grads(1001, 2, torch.bfloat16, dev, seed=13)
    out = holder[:, 1]
    assert not out.is_contiguous()
    out0 = out.clone()
    first = holder[:, 0].clone()
    res = combine_rows(as_task_rows(list(J)), w, out)
    assert res is out
    _check(holder[:, 1], J, w, out0=out0)
    assert torch.equal(holder[:, 0], first)  # the other column is untouched


def test_out_may_be_a_row(dev: torch.device) -> None:
    """``out`` aliasing one of the gradients (e.g. accumulating into g_0's own buffer)."""
    J = _grads(3, 5000, torch.float32, dev, seed=14)
    rows = [J[t].clone() for t in range(3)]
    w = _weights(3, torch.float64, dev, seed=14)
    before = [r.clone() for r in rows]
    combine_rows(as_task_rows(rows), w, rows[0])
    _check(rows[0], before, w, out0=before[0])


def test_out_into_param_grad_shape(dev: torch.device) -> None:
    J = _grads(4, 6 * 9, torch.float16, dev, seed=15).reshape(4, 6, 9)
    w = _weights(4, torch.float64, dev)
    out = torch.zeros(6, 9, dtype=torch.float32, device=dev)
    combine_rows(as_task_rows(list(J)), w, out)
    _check(out, J, w, out0=torch.zeros_like(out))


# ------------------------------------------------------------------------------ public API


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_api_matches_reference(dev: torch.device, dtype: torch.dtype) -> None:
    J = _grads(7, 3001, dtype, dev, seed=16)
    w = _weights(7, torch.float64, dev, seed=16)
    g = ops.combine(list(J), w, backend="triton")
    g_ref = ref.combine(list(J), w)
    assert g.dtype == g_ref.dtype == dtype and g.shape == g_ref.shape
    # both within one output rounding (+ fp32 accumulation) of the exact sum
    S = (w.abs().float().double()[:, None] * J.abs().double()).sum(0)
    tol = 2 * (9 * U32 * S + _unit_roundoff(dtype) * g_ref.abs().double())
    assert torch.all((g.double() - g_ref.double()).abs() <= tol)
    out = torch.ones(3001, dtype=dtype, device=dev)
    assert ops.combine(J, w, out=out, backend="triton") is out


# ----------------------------------------------------------------------- property test


@settings(max_examples=12, deadline=None)
@given(
    T=st.integers(1, 30),
    D=st.integers(1, 5000),
    dtype=st.sampled_from(DTYPES),
    zero_mask=st.integers(0, 2**30),
    seed=st.integers(0, 2**16),
)
def test_property_random(T: int, D: int, dtype: torch.dtype, zero_mask: int, seed: int) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _backend.triton_can_run(device):
        pytest.skip("Triton cannot run here")
    J = _grads(T, D, dtype, device, seed=seed)
    w = _weights(T, torch.float64, device, seed=seed)
    for t in range(T):
        if zero_mask >> t & 1:
            w[t] = 0.0
            J[t, 0] = float("nan")
    _check(combine_rows(as_task_rows(list(J)), w), J, w)
