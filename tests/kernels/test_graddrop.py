"""GradDrop's sign-dropout combination (Chen et al. 2020): the reference
(:mod:`mtl_fast.reference.graddrop`, the specification) against a float64 oracle written from the
paper's Algorithm 1, the native CPU passes (``csrc/graddrop.h``) and the Triton kernels
(``kernels/graddrop.py``, in the interpreter without a GPU) against the reference.

Exactness: given the same batch sums S (or with the per-element rule, where S is formed
elementwise) the masks of the three implementations are identical, the native passes' result is
bitwise the reference's (same order, no contraction), the Triton kernel's within the fp32
rounding of T multiply-adds (it may fuse them) and one rounding to the output dtype. The batch
sums themselves are compared within the rounding of B additions.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from mtl_fast import _native_graddrop, ops
from mtl_fast import _solve_constants as SC
from mtl_fast._validation import as_task_rows

R = importlib.import_module("mtl_fast.reference.graddrop")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _problem(T, B, F, dtype=torch.float32, seed=0, grid=False):
    """Rows [T, B, F], activations [B, F], weights, leak. ``grid``: values on a coarse binary
    grid (sums exact in fp32 and float64, exact zeros possible)."""
    g = torch.Generator().manual_seed(seed)
    if grid:
        J = torch.randint(-3, 4, (T, B, F), generator=g).to(torch.float64) / 4
        A = torch.randint(-2, 3, (B, F), generator=g).to(torch.float64)
    else:
        J = torch.randn(T, B, F, generator=g, dtype=torch.float64)
        J = J * torch.exp(torch.randn(T, 1, 1, generator=g, dtype=torch.float64))
        A = torch.randn(B, F, generator=g, dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.25][:T] + [1.0] * max(0, T - 5))
    leak = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.0][:T] + [0.0] * max(0, T - 5))
    return J.to(dtype), A.to(dtype), w, leak


def oracle(J, A, U, w, leak, batch: bool):
    """Algorithm 1 in float64 NumPy, one coordinate at a time (a direct transcription)."""
    J, A, U = (np.asarray(x, dtype=np.float64) for x in (J, A, U))
    T, B, F = J.shape
    h = J * np.asarray(w, dtype=np.float64)[:, None, None]
    sgn = np.sign(A)
    if batch:
        S = (sgn[None] * h).sum(axis=1)  # [T, F]
    else:
        S = (sgn[None] * h).reshape(T, B * F)
    P = 0.5 * (1 + S.sum(0) / (np.abs(S).sum(0) + SC.GRADDROP_EPS))
    M = ((P > U)[None] & (S > 0)) | ((P < U)[None] & (S < 0))
    lk = np.asarray(leak, dtype=np.float64)[:, None]
    m = lk + (1 - lk) * M
    if batch:
        out = (m[:, None, :] * h).sum(0)
    else:
        out = (m.reshape(T, B, F) * h).sum(0)
    return out, P


def _uniform_away_from(P: np.ndarray, seed: int) -> Tensor:
    """U ~ Uniform[0, 1) moved at least 1e-3 away from P (no ties to decide by rounding)."""
    rng = np.random.default_rng(seed)
    U = rng.uniform(0, 1, P.shape)
    close = np.abs(U - P) < 1e-3
    U = np.where(close, np.clip(P + np.where(P < 0.5, 2e-3, -2e-3), 0, 0.999), U)
    return torch.from_numpy(U).to(torch.float32)


def _rows(J: Tensor, stacked: bool):
    return as_task_rows(J if stacked else [j.clone() for j in J])


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 5),
    B=st.integers(1, 4),
    F=st.integers(1, 9),
    batch=st.booleans(),
    signs=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_reference_equals_float64_transcription(T, B, F, batch, signs, seed):
    J, A, w, leak = _problem(T, B, F, torch.float32, seed, grid=True)
    A = A if signs else torch.ones_like(A)
    _, P = oracle(J, A, np.zeros(F if batch else B * F), w, leak, batch)
    U = _uniform_away_from(P, seed)
    want, _ = oracle(J, A, U.numpy(), w, leak, batch)
    got = R.graddrop(J, U, weights=w, activations=A if signs else None, batch=batch, leak=leak)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


def test_properties_of_the_rule():
    J = _problem(3, 2, 50, seed=3)[0]
    U = torch.rand(50, generator=torch.Generator().manual_seed(0))
    ones = torch.ones(3)
    # leak 1: the plain sum; tasks that agree in sign everywhere: nothing is dropped
    full = R.graddrop(J, U, leak=ones)
    torch.testing.assert_close(full, J.sum(0))
    agree = J.abs()
    torch.testing.assert_close(R.graddrop(agree, U), agree.sum(0))
    # every coordinate keeps the contributions of one sign only (leak 0, no activations, B = 1)
    G = J[:, :1]
    out = R.graddrop(G, U, batch=False)  # [1, 50]
    pos = G.clamp_min(0).sum(0)[0]
    neg = G.clamp_max(0).sum(0)[0]
    kept = out[0]
    assert all(torch.isclose(k, p) or torch.isclose(k, n) for k, p, n in zip(kept, pos, neg))
    # the positive side is kept with probability P (many draws at one conflicting coordinate)
    g = torch.tensor([[3.0], [-1.0]])
    draws = torch.rand(4000, generator=torch.Generator().manual_seed(1))
    kept_pos = sum(float(R.graddrop(g, u[None], batch=False)[0]) > 0 for u in draws)
    assert abs(kept_pos / 4000 - 0.75) < 0.03  # P = ½ (1 + 2/4)


def test_skipped_tasks_are_not_read_and_errors():
    J, A, w, leak = _problem(3, 2, 5)
    J[1] = float("nan")
    w = torch.tensor([1.0, 0.0, 1.0])
    U = torch.rand(5)
    out = R.graddrop(J, U, weights=w, activations=A, leak=leak)
    assert torch.isfinite(out).all()
    want = R.graddrop(J[[0, 2]], U, weights=w[[0, 2]], activations=A, leak=leak[[0, 2]])
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="uniform"):
        R.graddrop(J, torch.rand(3))
    with pytest.raises(ValueError, match="activations"):
        R.graddrop(J, U, activations=torch.ones(3))


# ------------------------------------------------------------------ native CPU passes


needs_native = pytest.mark.skipif(
    not _native_graddrop.available(), reason="mtl_fast._C without the GradDrop passes"
)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stacked", [False, True])
def test_native_equals_reference_exactly(dtype, stacked):
    J, A, w, leak = _problem(4, 6, 333, dtype, seed=5)
    J[2] = float("nan")
    w[2] = 0.0
    rows = _rows(J, stacked)
    S_ref = R.graddrop_sums(rows, w, 6, A)
    S_nat = _native_graddrop.graddrop_sums(rows, w, 6, A)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(S_nat, S_ref, rtol=tol, atol=tol * float(S_ref.abs().max()))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for sums, n in ((S_ref, 333), (None, 6 * 333)):
        U = torch.rand(n, dtype=acc, generator=torch.Generator().manual_seed(n))
        a = R.graddrop_combine_rows(rows, w, U, leak, sums=sums, activations=A)
        b = _native_graddrop.graddrop_combine_rows(rows, w, U, leak, sums=sums, activations=A)
        assert torch.equal(a, b)
        o1 = torch.randn(6, 333).to(dtype)
        o2 = o1.clone()
        R.graddrop_combine_rows(rows, w, U, leak, sums=sums, activations=A, out=o1)
        _native_graddrop.graddrop_combine_rows(rows, w, U, leak, sums=sums, activations=A, out=o2)
        assert torch.equal(o1, o2)


def test_ops_dispatch_cpu():
    J, A, w, leak = _problem(3, 4, 20, seed=7)
    rows = as_task_rows(J)
    U = torch.rand(20)
    S = ops.graddrop_sums_rows(rows, w, 4, A, backend="torch")
    torch.testing.assert_close(ops.graddrop_sums_rows(rows, w, 4, A), S, rtol=2e-6, atol=1e-6)
    a = ops.graddrop_combine_rows(rows, w, U, leak, sums=S, backend="torch")
    b = ops.graddrop_combine_rows(rows, w, U, leak, sums=S)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------ Triton


def _ulp(dtype: torch.dtype) -> float:
    return {torch.float32: 2.0**-22, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("per_element", [False, True])
def test_triton_matches_reference(dev, dtype, stacked, per_element):
    from mtl_fast.kernels import graddrop as K

    T, B, F = 4, 5, 1500
    J, A, w, leak = _problem(T, B, F, dtype, seed=11)
    J[3] = float("nan")
    w[3] = 0.0
    J, A, w, leak = J.to(dev), A.to(dev), w.to(dev), leak.to(dev)
    rows = _rows(J, stacked)
    S = None
    if not per_element:
        S_ref = R.graddrop_sums(rows, w, B, A)
        S = K.graddrop_sums(rows, w, B, A, rows_per_split=2)  # three splits
        scale = float(S_ref.abs().max())
        torch.testing.assert_close(S, S_ref, rtol=1e-5, atol=1e-6 * scale)
        S = S_ref  # the same S for the masks
    n = B * F if per_element else F
    U = torch.rand(n, generator=torch.Generator().manual_seed(2)).to(dev)
    want = R.graddrop_combine_rows(rows, w, U, leak, sums=S, activations=A)
    got = K.graddrop_combine_rows(rows, w, U, leak, sums=S, activations=A)
    assert got.dtype == dtype and got.shape == want.shape
    # Same masks: the difference is the rounding of T fp32 multiply-adds and of the output.
    bound = _ulp(dtype) * (J.float().abs() * w.abs()[:, None, None]).nan_to_num().sum(0) + 1e-30
    assert bool(((got.float() - want.float()).abs() <= 2 * bound).all())
    out0 = torch.randn(B, F, device=dev).to(dtype)
    acc = out0.clone()
    K.graddrop_combine_rows(rows, w, U, leak, sums=S, activations=A, out=acc)
    ref_acc = out0.clone()
    R.graddrop_combine_rows(rows, w, U, leak, sums=S, activations=A, out=ref_acc)
    bound = bound + _ulp(dtype) * out0.float().abs()
    assert bool(((acc.float() - ref_acc.float()).abs() <= 2 * bound).all())
