"""Nash-MTL (Navon et al. 2022): the Nash bargaining solution α_t (Gα)_t = 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import fsolve

from mtl_fast import reference
from mtl_fast.methods.nash_mtl import NashMTL, clip_to_max_norm, nash_weights
from mtl_fast.weighting import StepInputs

T = 3


def _inputs(Tn: int, device="cpu", present=None) -> StepInputs:
    if present is None:
        present = torch.ones(Tn, dtype=torch.bool)
    return StepInputs(losses=torch.zeros(Tn, device=device), present=present.to(device))


def _problem(seed: int, Tn: int, D: int | None = None) -> torch.Tensor:
    """Explicit gradient rows J [Tn, D] (float64), independent, with norms over two decades and
    a shared component (some pairs conflict)."""
    gen = torch.Generator().manual_seed(seed)
    D = D or 2 * Tn + 4
    J = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
    J = J + 0.5 * torch.randn(Tn, 1, generator=gen, dtype=torch.float64) * J[:1]
    return J * torch.logspace(-1, 1, Tn, dtype=torch.float64)[:, None]


def nash_transcription(J: torch.Tensor) -> torch.Tensor:
    """Navon et al. eq. 2 on explicit gradient vectors: solve g_tᵀ (Σ_s α_s g_s) = 1/α_t for
    α > 0 with SciPy's hybrid root finder (in log α, started from α_t = 1/‖g_t‖)."""
    Jn = J.numpy()

    def residual(y: np.ndarray) -> np.ndarray:
        alpha = np.exp(y)
        d = alpha @ Jn  # the update Σ α_s g_s, formed from the vectors
        return alpha * (Jn @ d) - 1.0

    y0 = -np.log(np.linalg.norm(Jn, axis=1))
    y = fsolve(residual, y0, xtol=1e-13)
    assert np.abs(residual(y)).max() < 1e-10
    return torch.from_numpy(np.exp(y))


# ------------------------------------------------------------------------- definition


@pytest.mark.parametrize("seed", range(5))
def test_equals_direct_transcription(seed):
    Tn = 2 + seed
    J = _problem(seed, Tn)
    G = J @ J.T
    alpha = NashMTL(max_norm=0.0).gram_weights(G, _inputs(Tn))
    expected = nash_transcription(J)
    torch.testing.assert_close(alpha, expected, rtol=1e-8, atol=0)
    torch.testing.assert_close(alpha * (G @ alpha), torch.ones(Tn, dtype=torch.float64))
    # ‖Σ α_t g_t‖² = Σ α_t (Gα)_t = T.
    torch.testing.assert_close((alpha @ J).norm() ** 2, torch.tensor(float(Tn), dtype=G.dtype))


@pytest.mark.parametrize("Tn", [2, 5, 12, 40])
def test_solution_residual_and_fixed_budget(Tn):
    """The accelerator path (a fixed Newton budget, no host reads) reaches the same solution."""
    J = _problem(50 + Tn, Tn)
    G = J @ J.T
    cpu = nash_weights(G)
    dev = nash_weights(G, stop_early=False)
    torch.testing.assert_close(dev, cpu, rtol=1e-10, atol=0)
    torch.testing.assert_close(cpu * (G @ cpu), torch.ones(Tn, dtype=torch.float64))


def test_single_task_and_orthogonal_gradients():
    """T = 1: α = 1/‖g‖. Orthogonal gradients: α_t = 1/‖g_t‖ (each task gets a unit step)."""
    G = torch.diag(torch.tensor([4.0, 0.25, 9.0], dtype=torch.float64))
    torch.testing.assert_close(nash_weights(G), torch.tensor([0.5, 2.0, 1 / 3], dtype=G.dtype))
    torch.testing.assert_close(nash_weights(G[:1, :1]), torch.tensor([0.5], dtype=G.dtype))


# ------------------------------------------------------------------------------ torchjd


def test_agrees_with_torchjd_or_skips():
    """torchjd 0.18's NashMTL (cvxpy + ECOS, the paper's sequence of convex problems, max_norm
    disabled). It needs cvxpy, which is not a test dependency: skipped when missing (the SciPy
    transcription above is the oracle then).

    Deliberate difference: torchjd (like the paper's code) stops its convex-concave iteration
    after at most 20 problems or when ‖Gα − 1/α‖ < 1e-3, and on strongly conflicting
    gradients it can stop where some α_t (Gα)_t > 1 (not the Nash point). The comparison is on
    mildly conflicting gradients, where it converges, at its tolerance."""
    jd = pytest.importorskip("torchjd.aggregation")
    try:
        agg = jd.NashMTL(n_tasks=3, max_norm=0.0, optim_niter=50)
    except ImportError as exc:
        pytest.skip(f"torchjd NashMTL unavailable: {exc}")
    gen = torch.Generator().manual_seed(0)
    J = torch.eye(3, 8, dtype=torch.float64) + 0.1 * torch.randn(
        3, 8, generator=gen, dtype=torch.float64
    )
    J = J * torch.tensor([[0.5], [1.0], [2.0]], dtype=torch.float64)
    expected = agg(J)
    got = NashMTL(max_norm=0.0).gram_weights(J @ J.T, _inputs(3)) @ J
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-4)


# --------------------------------------------------------------------------- properties


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    task=st.integers(0, 3),
    k=st.sampled_from([1e-3, 0.1, 10.0, 1e4]),
)
def test_scale_invariance(seed, task, k):
    """Navon et al. §3.1: scaling one task's gradient (its loss) by k divides its weight by k and
    leaves the update Σ α_t g_t unchanged."""
    J = _problem(seed, 4)
    Jk = J.clone()
    Jk[task] *= k
    a = nash_weights(J @ J.T)
    ak = nash_weights(Jk @ Jk.T)
    expected = a.clone()
    expected[task] /= k
    torch.testing.assert_close(ak, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(ak @ Jk, a @ J, rtol=1e-6, atol=1e-9)


def test_permutation_equivariance():
    J = _problem(3, 6)
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    a = nash_weights(J @ J.T)
    Jp = J[perm]
    torch.testing.assert_close(nash_weights(Jp @ Jp.T), a[perm], rtol=1e-9, atol=0)


def test_max_norm():
    J = _problem(4, 4)
    G = J @ J.T
    raw = NashMTL(max_norm=0.0).gram_weights(G, _inputs(4))
    clipped = NashMTL().gram_weights(G, _inputs(4))  # default max_norm = 1
    torch.testing.assert_close(clipped, raw / 2.0)  # ‖Σ α g‖ = √T = 2 → scaled to 1
    torch.testing.assert_close((clipped @ J).norm(), torch.tensor(1.0, dtype=G.dtype))
    loose = NashMTL(max_norm=5.0).gram_weights(G, _inputs(4))
    torch.testing.assert_close(loose, raw)
    zero = clip_to_max_norm(torch.zeros(4, dtype=G.dtype), G, 1.0)
    assert torch.equal(zero, torch.zeros(4, dtype=G.dtype))


def test_pareto_stationary_and_dependent_gradients_stay_finite():
    """g_2 = −g_1: no Nash solution exists (0 is in the convex hull); the ridge keeps α finite
    and the update vanishes. Duplicated and zero gradients are finite too."""
    g = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    J = torch.cat([g, -g])
    a = nash_weights(J @ J.T)
    assert torch.isfinite(a).all() and (a > 0).all()
    assert (a @ J).norm() < 1e-6 * a.max() * g.norm()
    J = torch.cat([g, g, torch.zeros_like(g), torch.tensor([[0.0, 1.0, -1.0]], dtype=g.dtype)])
    a = nash_weights(J @ J.T)
    assert torch.isfinite(a).all() and a[2] == 0
    assert (a @ J).norm() ** 2 == pytest.approx(3.0, rel=1e-6)  # T = 3 active tasks


def test_float32_gram():
    J = _problem(6, 5)
    a32 = nash_weights((J @ J.T).float())
    a64 = nash_weights(J @ J.T)
    torch.testing.assert_close(a32, a64, rtol=1e-5, atol=0)


# ------------------------------------------------------------------- update every k steps


def _train_weights(method: NashMTL, steps: int) -> tuple[list, list]:
    model = ToyMTL(T)
    clipped, solved = [], []
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for k in range(steps):
        x, ys = toy_batch(model, seed=k)
        opt.zero_grad()
        split_step(model, method, x, ys)
        opt.step()
        clipped.append(method.weights.clone())
        solved.append(method.nash_weights.clone())
    return clipped, solved


def test_update_weights_every():
    clipped, solved = _train_weights(NashMTL(update_weights_every=3), 7)
    _, every_step = _train_weights(NashMTL(), 1)
    assert torch.equal(solved[0], every_step[0])  # the first step solves
    for k in range(7):  # steps 1, 2 reuse step 0's solution; 4, 5 reuse step 3's
        assert torch.equal(solved[k], solved[3 * (k // 3)]), k
    assert not torch.equal(solved[0], solved[3]) and not torch.equal(solved[3], solved[6])
    # The clipping is recomputed with each step's gradients even when α is reused.
    assert not torch.equal(clipped[1], clipped[2])
    for c, s in zip(clipped, solved):
        ratio = c.double() / s
        torch.testing.assert_close(ratio, ratio[0].expand(T), rtol=1e-5, atol=0)


def test_through_split_matches_gram_solution(device):
    model = ToyMTL(T, device=device)
    x, ys = toy_batch(model, device=device)
    m = NashMTL(max_norm=0.0)
    split_step(model, m, x, ys)
    _, J = feature_gradients(model, x, ys)
    expected = nash_weights(reference.gram(J).double())
    torch.testing.assert_close(m.weights.double(), expected, rtol=1e-4, atol=0)


def test_mask_and_nan():
    check_mask_and_nan(lambda **kw: NashMTL(max_norm=0.0, **kw))
    model = ToyMTL(4)
    x, ys = toy_batch(model)
    m = NashMTL(max_norm=0.0)
    split_step(model, m, x, ys, mask=[True, False, True, True])
    _, J = feature_gradients(model, x, ys)
    sub = J[[0, 2, 3]].flatten(1).double()
    assert m.weights[1] == 0
    torch.testing.assert_close(
        m.weights[[0, 2, 3]].double(), nash_weights(sub @ sub.T), rtol=1e-4, atol=0
    )


@pytest.mark.parametrize("every", [1, 2])
def test_resume_equals_unbroken(every, device):
    """Resuming in the middle of an update window (after step 3 of windows of 2) reuses the
    stored α and the counter exactly as the unbroken run."""
    check_resume(lambda: NashMTL(update_weights_every=every), T, steps=6, split_at=3, device=device)


def test_no_host_reads_on_meta_device():
    """Every operation of the accelerator path runs on meta tensors (no data): no host sync."""
    G = torch.empty(5, 5, device="meta")
    m = NashMTL(update_weights_every=2)
    for _ in range(3):
        assert m.gram_weights(G, _inputs(5, device="meta")).shape == (5,)


def test_cuda_sync_free(device):
    if device.type != "cuda":
        pytest.skip("needs CUDA")
    J = _problem(1, 5).to(device)
    G = (J @ J.T).float()
    m = NashMTL()
    m.gram_weights(G, _inputs(5, device=device))
    inputs = _inputs(5, device=device)  # built before: moving the mask to the GPU syncs
    torch.cuda.set_sync_debug_mode("error")
    try:
        m.gram_weights(G, inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_invalid_options():
    with pytest.raises(ValueError, match="max_norm"):
        NashMTL(max_norm=-1.0)
    with pytest.raises(ValueError, match="update_weights_every"):
        NashMTL(update_weights_every=0)
    with pytest.raises(ValueError, match="max_iter"):
        NashMTL(max_iter=0)
    with pytest.raises(ValueError, match="ridge"):
        NashMTL(ridge=-1.0)
    m = NashMTL(3)
    assert torch.equal(m.initial_weights(3), torch.ones(3)) and torch.equal(
        m.nash_weights, torch.ones(3)
    )
    assert "update_weights_every=1" in repr(m)
