"""Tests of the Triton Gram kernel (kernels/gram.py) and the row pointers (kernels/_pointers.py).

Checked against a float64 NumPy oracle (``J Jᵀ`` of the exact input values), against the reference
(:func:`mtl_fast.reference.gram`, the specification) and through the public API
(``mtl_fast.ops.gram(..., backend="triton")``). Without a GPU the kernels run in the Triton
interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET); with one, the same tests
also run on CUDA tensors through the ``device`` fixture.

Tolerance (vs the float64 oracle), entrywise, with ``B = |J| |J|ᵀ`` and ``u = 2⁻²⁴``:
    ``|G − J Jᵀ| ≤ 2 (n + 2) u B`` with ``n`` the config's ``fp32_span`` (columns per fp32 partial
    sum, ``FLUSH · BLOCK_D``). Every product of two fp32 (or bf16/fp16) values is exact in
    float64, and bf16/fp16 products are exact in fp32. The kernel sums at most ``n`` products in
    fp32 (error ≤ n·u·B for that chunk), adds the chunks in float64 (negligible), rounds each
    split's partial once to fp32 (≤ u·B) and the
    float64 total once to fp32 (≤ u·B). The factor 2 covers tensor-core accumulators that
    truncate instead of rounding. The bound does not depend on D — that is the point of the
    float64 reduction, checked directly by ``test_error_does_not_grow_with_d``.
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

from mtl_fast.kernels import _pointers
from mtl_fast.kernels.combine import combine_rows
from mtl_fast.kernels.gram import gram_config, gram_rows

U32 = 2.0**-24
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# --------------------------------------------------------------------------------- helpers


def _jacobian(T: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Tensor:
    """T rows of D elements: norms spread over e^±2 plus a shared component (correlated rows)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(T, 1).uniform_(-2.0, 2.0, generator=g))
    J = scale * (torch.randn(T, D, generator=g) + 0.5 * torch.randn(1, D, generator=g))
    return J.to(dtype).to(device)


def _as_f64(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).cpu().numpy()


def _check_gram(G: torch.Tensor, rows: list[torch.Tensor] | torch.Tensor, block_d: int) -> None:
    """G is float32 [T, T], exactly symmetric, within the documented bound of the oracle."""
    J = np.stack([_as_f64(r).reshape(-1) for r in rows])
    exact = J @ J.T
    bound = np.abs(J) @ np.abs(J).T
    assert G.dtype == torch.float32 and G.shape == exact.shape
    assert torch.equal(G, G.T), "G must be exactly symmetric"
    err = np.abs(_as_f64(G) - exact)
    tol = 2 * (block_d + 2) * U32 * bound + 1e-30
    assert np.all(err <= tol), f"max err/bound {np.max(err / (bound + 1e-30)):.3e}"


# ------------------------------------------------------------------- shapes, dtypes, layouts


@pytest.mark.parametrize("T", [1, 2, 3, 15, 16, 17, 33, 64, 70])
@pytest.mark.parametrize("D", [1, 7, 1000, 4097])
def test_fp32_shapes(dev: torch.device, T: int, D: int) -> None:
    J = _jacobian(T, D, torch.float32, dev, seed=T * 7 + D)
    rows = as_task_rows(list(J))
    G = gram_rows(rows)
    _check_gram(G, J, gram_config(T, D, J.dtype, dev).fp32_span)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("T", "D"), [(1, 7), (3, 4097), (16, 1000), (17, 7), (70, 1000)])
def test_half_dtypes(dev: torch.device, dtype: torch.dtype, T: int, D: int) -> None:
    J = _jacobian(T, D, dtype, dev, seed=T + D)
    G = gram_rows(as_task_rows(list(J)))
    _check_gram(G, J, gram_config(T, D, dtype, dev).fp32_span)


@pytest.mark.parametrize(
    ("T", "dtype"), [(2, torch.float32), (16, torch.bfloat16), (33, torch.float32)]
)
def test_long_rows(dev: torch.device, T: int, dtype: torch.dtype) -> None:
    """D = 10007 (prime): several D-splits, each with several full blocks, plus a partial one."""
    D = 10007
    J = _jacobian(T, D, dtype, dev, seed=T)
    cfg = gram_config(T, D, dtype, dev)
    G = gram_rows(as_task_rows(list(J)))
    _check_gram(G, J, cfg.fp32_span)


@pytest.mark.parametrize(
    ("T", "D", "block_d", "splits"),
    [
        (5, 1000, 64, 3),  # GPU-sized blocks: 16 blocks over 3 splits, partial last block
        (5, 1000, 64, 100),  # more splits requested than blocks: clamped, no empty program
        (40, 1024, 64, 4),  # T = 40: one 64-row tile with 24 masked rows, D a multiple of BLOCK_D
        (70, 333, 64, 2),  # tile pairs (0,0), (0,1), (1,1)
        (130, 50, 64, 1),  # three tiles: six pairs, a single, partial block
        (16, 4096, 256, 2),  # small-T path, GPU-sized blocks, no partial block
    ],
)
def test_forced_configs(dev: torch.device, T: int, D: int, block_d: int, splits: int) -> None:
    J = _jacobian(T, D, torch.float32, dev, seed=D)
    G = gram_rows(as_task_rows(list(J)), block_d=block_d, splits=splits)
    cfg = gram_config(T, D, J.dtype, dev, block_d=block_d, splits=splits)
    _check_gram(G, J, cfg.fp32_span)
    n_blocks = -(-D // block_d)
    assert cfg.splits <= n_blocks and (cfg.splits - 1) * cfg.blocks_per_split < n_blocks


@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_equals_list(dev: torch.device, dtype: torch.dtype) -> None:
    """The stacked fast path (base + t·stride) and the pointer table give identical bits."""
    J = _jacobian(20, 3003, dtype, dev, seed=1)
    G_list = gram_rows(as_task_rows(list(J)))
    G_stacked = gram_rows(as_task_rows(J))
    assert torch.equal(G_list, G_stacked)
    assert torch.equal(G_list, gram_rows(as_task_rows(J.reshape(20, 21, 143))))


def test_non_contiguous_inputs(dev: torch.device) -> None:
    """A transposed [T, D] view (copied by the validation) and non-contiguous separate rows."""
    base = _jacobian(1001, 9, torch.float32, dev, seed=2)  # [D, T]
    Jt = base.T  # [T, D], stride (1, T)
    G = gram_rows(as_task_rows(Jt))
    _check_gram(G, Jt, gram_config(9, 1001, Jt.dtype, dev).fp32_span)
    cols = [base[:, t] for t in range(9)]  # strided rows
    assert torch.equal(gram_rows(as_task_rows(cols)), G)
    # 2-D task gradients (e.g. a weight matrix's gradient), transposed views
    mats = [_jacobian(13, 11, torch.float32, dev, seed=t).T for t in range(4)]
    G2 = gram_rows(as_task_rows(mats))
    span = gram_config(4, 143, torch.float32, dev).fp32_span
    _check_gram(G2, [m.contiguous() for m in mats], span)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [3, 20])
def test_odd_storage_offsets(dev: torch.device, dtype: torch.dtype, T: int) -> None:
    """Rows that are views into one flat buffer at unaligned, unordered offsets."""
    D = 1029
    flat = _jacobian(1, T * (D + 3) + 50, dtype, dev, seed=T)[0]
    offsets = [1 + t * (D + 3) for t in range(T)][::-1]  # odd element offsets, reversed order
    rows = [flat[o : o + D] for o in offsets]
    access = _pointers.row_access(as_task_rows(rows))
    assert access.use_table and access.row_align < 16
    G = gram_rows(as_task_rows(rows))
    _check_gram(G, rows, gram_config(T, D, dtype, dev).fp32_span)
    # the same values, aligned and stacked: identical bits (same blocks, same order)
    assert torch.equal(G, gram_rows(as_task_rows(torch.stack(rows))))


def test_overlapping_and_repeated_rows(dev: torch.device) -> None:
    """Rows may alias: the same tensor twice and overlapping windows of one buffer."""
    flat = _jacobian(1, 600, torch.float32, dev, seed=3)[0]
    rows = [flat[0:500], flat[0:500], flat[7:507], flat[100:600]]
    G = gram_rows(as_task_rows(rows))
    _check_gram(G, rows, gram_config(4, 500, torch.float32, dev).fp32_span)
    assert G[0, 0] == G[0, 1] == G[1, 1]


# ------------------------------------------------------------------------ numerics, policy


def test_deterministic(dev: torch.device) -> None:
    J = _jacobian(70, 4097, torch.float32, dev, seed=4)
    rows = as_task_rows(list(J))
    assert torch.equal(gram_rows(rows), gram_rows(rows))


def test_error_does_not_grow_with_d(dev: torch.device) -> None:
    """2²⁰ equal entries per row: a plain fp32 running sum drifts by ~10⁵ u relative; the kernel
    (fp32 within blocks, float64 across them) stays within the D-independent bound."""
    D = 1 << 20
    J = torch.empty((2, D), dtype=torch.float32, device=dev)
    J[0] = 0.1
    J[1] = -0.3
    G = gram_rows(as_task_rows(J))
    x, y = (np.float64(np.float32(v)) for v in (0.1, -0.3))
    exact = D * np.array([[x * x, x * y], [x * y, y * y]])
    rel = np.abs(_as_f64(G) - exact) / np.abs(exact)
    bound = 2 * (gram_config(2, D, J.dtype, dev).fp32_span + 2) * U32
    assert np.all(rel <= bound), rel / U32
    naive = np.cumsum(np.full(D, np.float32(x * x), dtype=np.float32))[-1]
    assert abs(naive - exact[0, 0]) / exact[0, 0] > 10 * bound  # a running fp32 sum does drift


# the interpreter's numpy matmul warns about the NaN/Inf it is given
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("T", [3, 40])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_propagates(dev: torch.device, T: int, bad: float) -> None:
    """No check, no raise: the bad task's diagonal is non-finite, the other tasks are exact."""
    D = 700
    J = _jacobian(T, D, torch.float32, dev, seed=5)
    J[1, 345] = bad
    G = gram_rows(as_task_rows(list(J)))
    assert not torch.isfinite(G[1, 1])
    if bad != bad:  # NaN
        assert torch.isnan(G[1]).all() and torch.isnan(G[:, 1]).all()
    keep = [t for t in range(T) if t != 1]
    sub = G[keep][:, keep]
    assert torch.isfinite(sub).all()
    _check_gram(sub, J[keep], gram_config(T, D, J.dtype, dev).fp32_span)
    assert torch.equal(G.isnan(), G.isnan().T)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflow_is_inf(dev: torch.device) -> None:
    """A squared norm beyond the fp32 range becomes Inf on the diagonal (bf16 allows 1e38)."""
    J = torch.ones(2, 100, dtype=torch.bfloat16, device=dev)
    J[0, 3] = 1e30
    G = gram_rows(as_task_rows(J))
    assert torch.isinf(G[0, 0]) and G[1, 1] == 100


# ------------------------------------------------------------------------------ public API


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_api_matches_reference(dev: torch.device, dtype: torch.dtype) -> None:
    J = _jacobian(17, 2000, dtype, dev, seed=6)
    G = ops.gram(list(J), backend="triton")
    G_ref = ref.gram(list(J))
    assert G.dtype == G_ref.dtype == torch.float32 and G.device == J.device
    # Both are within 2 (K + 2) u B of the exact value: K = BLOCK_D for the kernel, K = D for
    # the reference (one fp32 GEMM over its single chunk of 2000 columns).
    B = torch.from_numpy(np.abs(_as_f64(J)) @ np.abs(_as_f64(J)).T)
    K_kernel, K_ref = gram_config(17, 2000, dtype, dev).fp32_span, 2000
    tol = 2 * (K_kernel + 2) * U32 * B + 2 * (K_ref + 2) * U32 * B
    assert torch.all((G.cpu().double() - G_ref.cpu().double()).abs() <= tol)
    assert torch.equal(ops.gram(J, backend="triton"), G)  # stacked input, same bits


def test_public_api_does_not_raise_on_nan(dev: torch.device) -> None:
    J = _jacobian(3, 50, torch.float32, dev, seed=7)
    J[2, 0] = float("nan")
    G = ops.gram(J, backend="triton")
    assert torch.isnan(G[2, 2]) and torch.isfinite(G[:2, :2]).all()
    with pytest.raises(ValueError, match="task 2"):
        ops.gram(J, backend="torch")


# ------------------------------------------------------------------------ pointer table


def test_pointer_table(dev: torch.device) -> None:
    J = _jacobian(5, 64, torch.float32, dev, seed=8)
    rows = [J[t].clone() for t in range(5)]
    access = _pointers.row_access(as_task_rows(rows))
    assert access.use_table and access.table.dtype == torch.int64
    assert access.table.device == J.device
    assert access.table.cpu().tolist() == [r.data_ptr() for r in rows]
    assert access.row_align == 16  # fresh allocations are (at least) 16-byte aligned
    stacked = _pointers.row_access(as_task_rows(J))
    assert not stacked.use_table and stacked.row_stride == 64 and stacked.base is not None
    offset = _pointers.row_access(as_task_rows([J.view(-1)[1:65], J.view(-1)[3:67]]))
    assert offset.row_align == 4  # fp32 views at odd element offsets: 4-byte aligned


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@requires_cuda
def test_pointer_table_reused_on_same_stream() -> None:
    """Same addresses, same stream: the cached device table, no new copy; another stream: a
    fresh table (the cached one's copy is not ordered before work on that stream)."""
    rows = tuple(torch.randn(10, device="cuda") for _ in range(3))
    t1, _ = _pointers.pointer_table(rows)
    t2, _ = _pointers.pointer_table(rows)
    assert t1 is t2
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        t3, _ = _pointers.pointer_table(rows)
    torch.cuda.synchronize()
    assert t3 is not t1 and torch.equal(t3.cpu(), t1.cpu())


@requires_cuda
@pytest.mark.parametrize("warm_addresses", [True, False])
def test_cuda_graph_capture(warm_addresses: bool) -> None:
    """Gram and combine captured in a CUDA graph replay correctly on new values at the same
    addresses, whether the warm-up saw those addresses (cached table reused during capture) or
    not (the pinned copy itself is captured)."""
    dev = torch.device("cuda")
    T, D = 5, 3001
    rows = [torch.randn(D, device=dev) for _ in range(T)]
    w = torch.rand(T, device=dev)
    warm_rows = rows if warm_addresses else [torch.randn(D, device=dev) for _ in range(T)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compiles the kernels (and caches the table)
        gram_rows(as_task_rows(warm_rows))
        combine_rows(as_task_rows(warm_rows), w)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        G = gram_rows(as_task_rows(rows))
        g = combine_rows(as_task_rows(rows), w)
    for r in rows:
        r.copy_(torch.randn_like(r))
    w.copy_(torch.rand_like(w))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(G, gram_rows(as_task_rows(rows)))
    assert torch.equal(g, combine_rows(as_task_rows(rows), w))


# ----------------------------------------------------------------------- property test


@settings(max_examples=12, deadline=None)
@given(
    T=st.integers(1, 40),
    D=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    offset=st.integers(0, 9),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(T: int, D: int, dtype: torch.dtype, offset: int, seed: int) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _backend.triton_can_run(device):
        pytest.skip("Triton cannot run here")
    flat = _jacobian(1, offset + T * D, dtype, device, seed=seed)[0]
    rows = [flat[offset + t * D : offset + (t + 1) * D] for t in range(T)]
    G = gram_rows(as_task_rows(rows))
    _check_gram(G, rows, gram_config(T, D, dtype, device).fp32_span)


def test_kernel_table_file_round_trip(tmp_path) -> None:
    """A table written as JSON (bare, or inside a tuning results file) installs its rows, and
    the launchers then use them on that architecture; bad rows are refused."""
    import json

    from mtl_fast.kernels import tuned

    row = {
        "t_max": 4,
        "d_max": None,
        "dtype": "fp32",
        "broadcast": True,
        "block_d": 512,
        "num_warps": 8,
        "num_stages": 3,
        "programs_per_sm": 2,
    }
    saved = dict(tuned.GRAM_TABLES)
    try:
        for doc in (
            {"capability": [7, 5], "gram": [row]},
            {"results": [], "proposed_table": {"capability": [7, 5], "gram": [row]}},
        ):
            path = tmp_path / "table.json"
            path.write_text(json.dumps(doc))
            assert tuned.load_table(str(path)) == (7, 5)
            (entry,) = tuned.GRAM_TABLES[(7, 5)]
            assert entry.block_d == 512 and entry.d_max == tuned.ANY and entry.precision == "ieee"
        path.write_text(json.dumps({"capability": [7, 5], "gram": [{**row, "dtype": "fp8"}]}))
        with pytest.raises(ValueError, match="bad table row"):
            tuned.load_table(str(path))
        path.write_text(json.dumps({"capability": [7, 5], "gram": [{**row, "warps": 4}]}))
        with pytest.raises(ValueError, match="unknown GramEntry fields"):
            tuned.load_table(str(path))
    finally:
        tuned.GRAM_TABLES.clear()
        tuned.GRAM_TABLES.update(saved)
