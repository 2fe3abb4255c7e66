"""Tests of the native CPU passes (csrc/cpu_passes*.cpp through mtl_fast/_native_passes.py).

Every instruction set this CPU and build offer (``mtl_fast._C.cpu_isas()``: AVX-512, AVX2 and
the portable path on an AVX-512 machine) is forced in turn with ``set_cpu_isa``, and each is
checked against a float64 oracle (``J Jᵀ`` of the exact input values) and the reference
(:mod:`mtl_fast.reference.gram`, :mod:`mtl_fast.reference.combine`) for fp32, fp64, bf16 and
fp16 rows.

Gram tolerance, entrywise, with ``B = |J| |J|ᵀ``: ``|G − J Jᵀ| ≤ 2 (n + 2) u B``, ``n = 1024``
the most columns summed in one fp32 lane of a block (``gram_plan`` in csrc/cpu_passes.h), ``u``
the unit roundoff of the accumulation (2⁻²⁴; 2⁻⁵³ for fp64 rows). Products of fp32/bf16/fp16
values are exact in float64 and the cross-block reduction is float64, so the bound does not grow
with D. Combine: fp32 accumulation of T terms, ``|c − Σ α_t g_t| ≤ (T + 1) u Σ|α_t||g_t|`` plus
one rounding to the output dtype.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from mtl_fast import _native_passes, ops
from mtl_fast import reference as ref
from mtl_fast._validation import as_task_rows

if not _native_passes.available():
    pytest.skip("mtl_fast._C is not built with the CPU passes", allow_module_level=True)

import mtl_fast._C as C

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ISAS = C.cpu_isas()
BLOCK = 1024


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Force one instruction set for the test, then return to the best one."""
    C.set_cpu_isa(request.param)
    try:
        yield request.param
    finally:
        C.set_cpu_isa(None)


def _unit(dtype: torch.dtype) -> float:
    return 2.0**-53 if dtype == torch.float64 else 2.0**-24


def _jacobian(T: int, D: int, dtype: torch.dtype, seed: int = 0) -> Tensor:
    """T rows of D elements: norms spread over e^±2 plus a shared component (correlated rows)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(T, 1, dtype=torch.float64).uniform_(-2.0, 2.0, generator=g))
    J = scale * (
        torch.randn(T, D, generator=g, dtype=torch.float64)
        + 0.5 * torch.randn(1, D, generator=g, dtype=torch.float64)
    )
    return J.to(dtype)


def _check_gram(G: Tensor, rows: list[Tensor] | Tensor, dtype: torch.dtype) -> None:
    J = np.stack([r.reshape(-1).to(torch.float64).numpy() for r in rows])
    exact = J @ J.T
    bound = 2 * (BLOCK + 2) * _unit(dtype) * (np.abs(J) @ np.abs(J).T)
    got = G.to(torch.float64).numpy()
    # The result is rounded once to float32 for non-fp64 rows.
    if dtype != torch.float64:
        bound = bound + 2.0**-24 * np.abs(exact)
    assert np.all(np.abs(got - exact) <= bound + 1e-300), np.max(
        np.abs(got - exact) / (bound + 1e-300)
    )
    assert np.array_equal(got, got.T)


def _native_gram(grads, check_finite: bool = True) -> Tensor:
    rows = as_task_rows(grads)
    assert _native_passes.serves(rows)
    return _native_passes.gram_rows(rows, check_finite=check_finite)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,D", [(1, 1), (2, 15), (3, 1001), (5, 4099), (9, 70001), (17, 3)])
def test_gram_oracle_and_reference(isa: str, dtype: torch.dtype, T: int, D: int) -> None:
    """Odd D (partial vectors, blocks and chunks), T around the tile sides; stacked and separate."""
    J = _jacobian(T, D, dtype, seed=T * 7 + D)
    G_stacked = _native_gram(J)
    G_rows = _native_gram(list(J.unbind(0)))
    assert G_stacked.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(G_stacked, G_rows)
    _check_gram(G_stacked, J, dtype)
    G_ref = ref.gram(J)
    tol = 4 * (BLOCK + 2) * _unit(dtype) * float((J.double().abs() @ J.double().abs().T).max())
    torch.testing.assert_close(G_stacked.double(), G_ref.double(), rtol=0, atol=tol + 1e-30)


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 256),
    D=st.integers(1, 3000),
    dtype=st.sampled_from(DTYPES),
    isa_name=st.sampled_from(ISAS),
    seed=st.integers(0, 2**16),
)
def test_gram_any_shape(T: int, D: int, dtype: torch.dtype, isa_name: str, seed: int) -> None:
    """T ∈ 1..256 (every remainder of the register tiles), any D, any instruction set."""
    D = max(1, D // max(1, T // 16))  # bound the work of the large-T examples
    C.set_cpu_isa(isa_name)
    try:
        J = _jacobian(T, D, dtype, seed=seed)
        _check_gram(_native_gram(list(J.unbind(0))), J, dtype)
    finally:
        C.set_cpu_isa(None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_read_in_place_at_any_offset(isa: str, dtype: torch.dtype) -> None:
    """Rows at odd element offsets of one buffer (unaligned addresses), a stacked tensor whose
    rows are further apart than D, and a non-contiguous task (copied by ``as_task_rows``)."""
    T, D = 6, 2053
    buf = _jacobian(1, T * (D + 3) + 5, dtype, seed=3).reshape(-1)
    rows = [buf[1 + t * (D + 3) : 1 + t * (D + 3) + D] for t in range(T)]
    _check_gram(_native_gram(rows), rows, dtype)
    wide = _jacobian(T, D + 37, dtype, seed=4)
    narrow = wide[:, 5 : 5 + D]
    assert narrow.stride(0) == D + 37
    _check_gram(_native_gram(narrow), narrow, dtype)
    mat = _jacobian(1, 2 * 41 * 17, dtype, seed=5).reshape(2 * 41, 17)
    strided = [mat[::2].T] + [
        _jacobian(1, 41 * 17, dtype, seed=6 + t).reshape(17, 41) for t in range(3)
    ]
    assert not strided[0].is_contiguous()
    _check_gram(_native_gram(strided), strided, dtype)


def test_deterministic_across_threads(isa: str) -> None:
    """The partition of the columns does not depend on the thread count: bitwise equal."""
    J = _jacobian(7, 300_001, torch.float32, seed=8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _native_gram(J)
        torch.set_num_threads(max(2, threads))
        many = _native_gram(J)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_error_does_not_grow_with_d(isa: str) -> None:
    """Summing 2²² equal products in one fp32 accumulator would lose ~all digits beyond 2²⁴
    terms; the per-block float64 reduction keeps the relative error at the block level."""
    D = 1 << 22
    x = torch.full((2, D), 0.1, dtype=torch.float32)
    G = _native_gram(x).double()
    exact = D * float(np.float32(0.1)) ** 2
    assert abs(float(G[0, 1]) - exact) <= 2 * (BLOCK + 2) * 2.0**-24 * exact


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_rows_are_reported(isa: str, dtype: torch.dtype) -> None:
    J = _jacobian(5, 999, dtype, seed=9)
    J[1, 17] = float("nan")
    J[3, 998] = float("inf")  # in the partial vector at the end
    with pytest.raises(ValueError, match="tasks 1, 3"):
        _native_gram(J)
    with pytest.raises(ValueError, match="tasks 1, 3"):
        ops.gram(J)
    G = _native_gram(J, check_finite=False)
    assert torch.isfinite(G.diagonal()).tolist() == [True, False, True, False, True]


def _check_combine(
    c: Tensor, J: Tensor, w: Tensor, dtype: torch.dtype, prior: Tensor | None
) -> None:
    keep = w != 0
    Jd, wd = J[keep].double(), w[keep].double()
    exact = (
        wd @ Jd.reshape(Jd.shape[0], -1)
        if keep.any()
        else torch.zeros(J[0].numel(), dtype=torch.float64)
    )
    if prior is not None:
        exact = exact + prior.double().reshape(-1)
    T = int(keep.sum())
    acc = (T + 2) * _unit(dtype) * (wd.abs() @ Jd.abs().reshape(T, -1) if T else 0.0)
    out_u = {
        torch.float32: 2.0**-24,
        torch.float64: 2.0**-53,
        torch.bfloat16: 2.0**-8,
        torch.float16: 2.0**-11,
    }[c.dtype]
    bound = acc + out_u * exact.abs() + 1e-30
    if c.dtype == torch.float16:
        bound = bound + 2.0**-24  # fp16 subnormal spacing
    assert torch.all((c.double().reshape(-1) - exact).abs() <= bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "T,D", [(1, 1), (3, 2047), (4, 2049), (7, 100_003), (9, 4111), (17, 2048), (26, 33)]
)
def test_combine_oracle_and_reference(isa: str, dtype: torch.dtype, T: int, D: int) -> None:
    """T around the eight rows summed per pass (one, two and four passes per chunk), zero
    weights inside and across the groups, D around the chunk and vector sizes."""
    J = _jacobian(T, D, dtype, seed=T + D)
    w = torch.linspace(-1.0, 2.0, T)
    if T > 2:
        w[1] = 0.0
        J[1, D // 2] = float("nan")  # skipped with its zero weight
    if T > 9:
        w[8:10] = 0.0  # a whole pass boundary of zero weights
        J[9, 0] = float("inf")
    rows = as_task_rows(list(J.unbind(0)))
    c = _native_passes.combine_rows(rows, w, None)
    assert c.dtype == dtype and c.shape == (D,)
    _check_combine(c, J, w, dtype, None)
    torch.testing.assert_close(
        c, ref.combine(J, w), atol=1e-5, rtol=1e-2 if dtype != torch.float32 else 1e-5
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_combine_accumulates_into_out(isa: str, dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    """``out +=`` in place for a contiguous out of any gradient dtype; through a temporary
    otherwise (here a transposed out)."""
    T, shape = 3, (37, 53)
    J = _jacobian(T, 37 * 53, dtype, seed=11).reshape(T, *shape)
    w = torch.tensor([0.5, -1.5, 0.25])
    prior = _jacobian(1, 37 * 53, out_dtype, seed=12).reshape(shape)
    out = prior.clone()
    got = _native_passes.combine_rows(as_task_rows(J), w, out)
    assert got is out
    _check_combine(out, J, w, dtype, prior)
    out_t = prior.T.contiguous().T  # same values, non-contiguous
    assert not out_t.is_contiguous()
    _native_passes.combine_rows(as_task_rows(J), w, out_t)
    torch.testing.assert_close(out_t, out, rtol=2.0**-7, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 40),
    D=st.integers(1, 5000),
    dtype=st.sampled_from(DTYPES),
    out_dtype=st.sampled_from(DTYPES),
    isa_name=st.sampled_from(ISAS),
    zeros=st.integers(0, 2**40 - 1),
    accumulate=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_combine_any_shape(
    T: int,
    D: int,
    dtype: torch.dtype,
    out_dtype: torch.dtype,
    isa_name: str,
    zeros: int,
    accumulate: bool,
    seed: int,
) -> None:
    """Any T (every grouping of the kept rows into passes of eight), any D, any zero-weight
    pattern, a fresh or an accumulated output of any dtype, any instruction set: the float64
    oracle's bound."""
    C.set_cpu_isa(isa_name)
    try:
        J = _jacobian(T, D, dtype, seed=seed)
        w = torch.linspace(-1.5, 1.0, T) + 0.01
        w[[t for t in range(T) if zeros >> t & 1]] = 0.0
        prior = _jacobian(1, D, out_dtype, seed=seed + 1).reshape(D) if accumulate else None
        out = None if prior is None else prior.clone()
        got = _native_passes.combine_rows(as_task_rows(J), w, out)
        if prior is None:
            assert got.dtype == dtype
        _check_combine(got, J, w, dtype, prior)
    finally:
        C.set_cpu_isa(None)


def test_combine_large_output_streams(isa: str) -> None:
    """A fresh fp32 output of at least 8 MiB is written with streaming stores; accumulated into
    a given (here misaligned) output it is read and written as usual: the same values."""
    T, D = 3, (1 << 21) + 5
    J = _jacobian(T, D, torch.float32, seed=21)
    w = torch.tensor([0.5, -1.0, 0.25])
    c = _native_passes.combine_rows(as_task_rows(J), w, None)
    _check_combine(c, J, w, torch.float32, None)
    buf = torch.full((D + 1,), float("nan"))
    out = buf[1:]  # 4 bytes past an aligned address
    out.zero_()
    _native_passes.combine_rows(as_task_rows(J), w, out)
    assert torch.equal(out, c)


def test_combine_all_weights_zero(isa: str) -> None:
    J = torch.full((3, 100), float("nan"))
    c = _native_passes.combine_rows(as_task_rows(J), torch.zeros(3), None)
    assert torch.equal(c, torch.zeros(100))
    out = torch.ones(100)
    _native_passes.combine_rows(as_task_rows(J), torch.zeros(3), out)
    assert torch.equal(out, torch.ones(100))


def test_ops_route_to_the_native_passes() -> None:
    """``backend="auto"`` on the CPU is the native path; ``"torch"`` the reference."""
    J = _jacobian(4, 5000, torch.float32, seed=13)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rows = as_task_rows(J)
    assert torch.equal(ops.gram_rows(rows), _native_passes.gram_rows(rows, check_finite=False))
    assert torch.equal(ops.combine_rows(rows, w), _native_passes.combine_rows(rows, w, None))
    assert torch.equal(ops.gram_rows(rows, backend="torch"), ref.gram(J))


def test_forced_portable_path_via_environment() -> None:
    """``MTL_FAST_CPU_ISA=portable`` forces the portable kernels at import, whatever the CPU; an
    unknown name is a clear error."""
    code = (
        "import torch, mtl_fast._C as C\n"
        "print(C.cpu_isa())\n"
        "from mtl_fast import ops\n"
        "J = torch.randn(3, 1000)\n"
        "G = ops.gram(J)\n"
        "print(bool(torch.allclose(G, J @ J.T, rtol=1e-5, atol=1e-4)))\n"
    )
    env = {**os.environ, "MTL_FAST_CPU_ISA": "portable"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["portable", "True"]
    with pytest.raises(ValueError, match=r"not available.*portable"):
        C.set_cpu_isa("sse9")
    assert "portable" in ISAS and ISAS[-1] == "portable"


def test_scalar_conversions_match_torch(isa: str) -> None:
    """The kernels' bf16/fp16 rounding (combine outputs) equals torch's, incl. subnormals,
    overflow and NaN: one row with weight 1 is a rounding of fp32 values."""
    vals = torch.cat(
        [
            torch.randn(4000) * torch.logspace(-30, 30, 4000),
            torch.tensor(
                [0.0, -0.0, 65519.0, 65520.0, 1e-8, 6e-8, 3e-8, float("inf"), -float("inf")]
            ),
            torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11]),
        ]
    )
    for out_dtype in (torch.bfloat16, torch.float16):
        out = torch.zeros(vals.numel(), dtype=out_dtype)
        _native_passes.combine_rows(as_task_rows(vals[None]), torch.ones(1), out)
        assert torch.equal(out, vals.to(out_dtype))
    nan_out = torch.zeros(1, dtype=torch.float16)
    _native_passes.combine_rows(
        as_task_rows(torch.tensor([[float("nan")]])), torch.ones(1), nan_out
    )
    assert torch.isnan(nan_out).all()
