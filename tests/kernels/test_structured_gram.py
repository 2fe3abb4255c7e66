"""Tests of the structured Gram kernel (kernels/structured_gram.py).

G_ab = Σ_{i,j} (Δ_aᵀΔ_b)_{ij} (W_a W_bᵀ)_{ij} for Δ [N, T·k], W [T·k, C]: the Gram matrix of the
feature gradients g_t = Δ_t W_t of a multi-task linear head. Checked against a float64 oracle
(the explicit Gram of the g_t, built from the exact input values) and against the reference
:func:`mtl_fast.reference.structured_gram` (the specification). Without a GPU
the kernel runs in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET), so the cases
are small; with one the same tests also run on CUDA through the ``device`` fixture.

Tolerance (vs the float64 oracle), entrywise: with P = |Δ|ᵀ|Δ|, Q = |W||W|ᵀ (per k×k block) and
B = Σ_{ij} P∘Q ≥ |G|, each block product is an fp32 sum of at most BLOCK_N (BLOCK_C) exact
products, the blocks are added in float64, P∘Q is formed in float64 and G is rounded once to fp32
(and once more per split when the samples are split): |G − G*| ≤ 2 (BLOCK_N + BLOCK_C + 3) u B.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

pytest.importorskip("triton")

from mtl_fast import _backend
from mtl_fast.multitask_linear import structured_gram
from mtl_fast.reference import structured_gram as structured_gram_reference

if not _backend.triton_available():  # pragma: no cover - Triton installed but kernels broken
    pytest.skip(
        f"Triton kernels unavailable: {_backend.triton_import_error()}", allow_module_level=True
    )

from mtl_fast.kernels.structured_gram import structured_gram as kernel_gram
from mtl_fast.kernels.structured_gram import structured_gram_config

U32 = 2.0**-24
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(N: int, T: int, k: int, C: int, dtype, device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Δ [N, T·k] with task scales over e^±2 and W [T·k, C] with a shared direction."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(T * k).uniform_(-2.0, 2.0, generator=g))
    delta = torch.randn(N, T * k, generator=g) * scale
    weight = torch.randn(T * k, C, generator=g) + 0.5 * torch.randn(1, C, generator=g)
    return delta.to(device=device, dtype=dtype), weight.to(device=device, dtype=dtype)


def _oracle(delta: Tensor, weight: Tensor, T: int) -> tuple[Tensor, Tensor]:
    """(G*, B): the float64 Gram of the explicit g_t = Δ_t W_t, and the bound from |Δ|, |W|."""

    def gram(d: Tensor, w: Tensor) -> Tensor:
        N, k = d.shape[0], w.shape[0] // T
        g = torch.einsum("ntk,tkc->tnc", d.view(N, T, k), w.view(T, k, -1)).reshape(T, -1)
        return g @ g.T

    d, w = delta.double().cpu(), weight.double().cpu()
    k = w.shape[0] // T
    P = (d.abs().T @ d.abs()).view(T, k, T, k)
    Q = (w.abs() @ w.abs().T).view(T, k, T, k)
    return gram(d, w), (P * Q).sum(dim=(1, 3))


def _check(G: Tensor, delta: Tensor, weight: Tensor, T: int, cfg_blocks: int) -> None:
    exact, bound = _oracle(delta, weight, T)
    assert G.dtype == torch.float32 and G.shape == (T, T)
    assert torch.equal(G, G.T), "not exactly symmetric"
    err = (G.double().cpu() - exact).abs()
    tol = 2 * (cfg_blocks + 3) * U32 * bound + 1e-30
    assert bool((err <= tol).all()), f"max err/tol {(err / tol).max().item():.3g}"


@pytest.mark.parametrize(
    ("N", "T", "k", "C"),
    [(1, 1, 1, 1), (7, 3, 1, 5), (33, 5, 3, 17), (70, 40, 1, 90), (20, 35, 2, 40)],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_oracle(dev, N, T, k, C, dtype):
    """Single tile, several tiles (T = 35, 40 > BLOCK_T = 32), k > 1, ragged N and C."""
    delta, weight = _inputs(N, T, k, C, dtype, dev)
    cfg = structured_gram_config(T, N, C, dtype, dev)
    G = kernel_gram(delta, weight, T)
    _check(G, delta, weight, T, cfg.block_n + cfg.block_c)
    ref = structured_gram_reference(delta, weight, T)
    torch.testing.assert_close(G, ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())


@pytest.mark.parametrize("splits", [2, 3])
def test_sample_splits(dev, splits):
    """Several sample splits (workspace + float64 reduction) give the same G up to rounding."""
    N, T, k, C = 50, 20, 2, 24
    delta, weight = _inputs(N, T, k, C, torch.float32, dev, seed=3)
    G1 = kernel_gram(delta, weight, T, block_n=16, splits=1)
    Gs = kernel_gram(delta, weight, T, block_n=16, splits=splits)
    assert structured_gram_config(T, N, C, delta.dtype, dev, block_n=16, splits=splits).splits > 1
    _check(Gs, delta, weight, T, 16 + 512)
    torch.testing.assert_close(Gs, G1, rtol=1e-6, atol=1e-6 * G1.abs().max().item())


def test_blocks_and_tiles_overrides(dev):
    """BLOCK_T = 16 with several tiles and small column/sample blocks."""
    N, T, k, C = 40, 37, 1, 50
    delta, weight = _inputs(N, T, k, C, torch.float32, dev, seed=4)
    G = kernel_gram(delta, weight, T, block_t=16, block_n=16, block_c=16)
    _check(G, delta, weight, T, 32)


def test_strided_inputs(dev):
    """Any strides: a transposed Δ, an expanded Δ (stride 0, the gradient of a sum), a sliced W."""
    N, T, k, C = 12, 6, 2, 10
    delta, weight = _inputs(N, T, k, C, torch.float32, dev, seed=5)
    dT = delta.T.contiguous().T  # column-major
    assert dT.stride() != delta.stride()
    ref = kernel_gram(delta.contiguous(), weight, T)
    assert torch.equal(kernel_gram(dT, weight, T), ref)
    wide = torch.zeros(T * k, 2 * C, device=dev)
    wide[:, ::2] = weight
    assert torch.equal(kernel_gram(delta, wide[:, ::2], T), ref)
    ones = torch.ones((), device=dev).expand(N, T * k)
    assert ones.stride() == (0, 0)
    G = kernel_gram(ones, weight, T)
    torch.testing.assert_close(G, structured_gram_reference(ones.contiguous(), weight, T))


def test_deterministic(dev):
    delta, weight = _inputs(64, 40, 1, 64, torch.float32, dev, seed=6)
    assert torch.equal(kernel_gram(delta, weight, 40), kernel_gram(delta, weight, 40))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nonfinite_stays_in_its_row(dev):
    """A NaN in task a's Δ (or an Inf in its W row) reaches only row/column a of G."""
    N, T, k, C = 9, 5, 2, 7
    delta, weight = _inputs(N, T, k, C, torch.float32, dev, seed=7)
    delta[3, 2 * k + 1] = float("nan")
    weight[4 * k] = float("inf")
    G = kernel_gram(delta, weight, T)
    bad = torch.zeros(T, dtype=torch.bool, device=dev)
    bad[2] = bad[4] = True
    assert not bool(torch.isfinite(G.diagonal()[bad]).any())
    ok = ~bad
    assert bool(torch.isfinite(G[ok][:, ok]).all())


def test_dispatch_through_structured_gram(dev):
    """``structured_gram(backend="triton")`` serves the kernel; W is cast to Δ's dtype."""
    delta, weight = _inputs(10, 4, 3, 8, torch.bfloat16, dev, seed=8)
    G = structured_gram(delta, weight.float(), 4, backend="triton")
    assert torch.equal(G, kernel_gram(delta, weight, 4))


def test_errors(dev):
    delta, weight = _inputs(4, 3, 1, 5, torch.float32, dev)
    with pytest.raises(TypeError, match="one dtype"):
        kernel_gram(delta, weight.to(torch.float16), 3)
    with pytest.raises(TypeError, match="one dtype"):
        kernel_gram(delta.double(), weight.double(), 3)
    with pytest.raises(ValueError, match="T·k"):
        kernel_gram(delta, weight, 2)
    with pytest.raises(ValueError, match=r"\[N, T·k\]"):
        kernel_gram(delta[0], weight, 3)
