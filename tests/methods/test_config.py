"""ConFIG (Liu et al. 2025): the Gram-space weights against a direct transcription with the
pseudo-inverse of the unit gradients, the conflict-free property (equal positive cosines),
degenerate inputs, masks and state."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_fast.methods.config import ConFIG, config_weights

T = 3


def paper_config(J: torch.Tensor) -> torch.Tensor:
    """The paper's eq. 2 on explicit gradients: U = unit gradients (columns), g_u = y/‖y‖ with
    y = pinv(Uᵀ) 1, g_c = (Σ_t g_tᵀ g_u) g_u."""
    U = (J / J.norm(dim=1, keepdim=True)).T
    y = torch.linalg.pinv(U.T) @ torch.ones(J.shape[0], dtype=J.dtype)
    gu = y / y.norm()
    return (J @ gu).sum() * gu


def _grads(Tn, D, seed, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
    return J * torch.exp(spread * torch.randn(Tn, 1, generator=gen, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(Tn=st.integers(1, 7), seed=st.integers(0, 10_000), spread=st.floats(0.0, 2.0))
def test_equals_paper_transcription(Tn, seed, spread):
    J = _grads(Tn, Tn + 4, seed, spread)
    a = config_weights(J @ J.T)
    want = paper_config(J)
    torch.testing.assert_close(J.T @ a, want, rtol=1e-7, atol=1e-9 * want.norm().item())


@pytest.mark.parametrize("seed", range(5))
def test_conflict_free(seed):
    """Linearly independent gradients: g_c has the same positive cosine with every g_t."""
    J = _grads(5, 12, seed, 1.5)
    gc = J.T @ config_weights(J @ J.T)
    cos = (J @ gc) / (J.norm(dim=1) * gc.norm())
    assert bool((cos > 0).all())
    torch.testing.assert_close(cos, cos[0].expand(5), rtol=1e-9, atol=0)


def test_more_tasks_than_dimensions_and_duplicates():
    """T > D and duplicated gradients: the least-norm y of the pseudo-inverse, finite."""
    J = _grads(6, 3, 1)
    torch.testing.assert_close(J.T @ config_weights(J @ J.T), paper_config(J), rtol=1e-6, atol=1e-8)
    Jd = torch.cat([J[:3], J[:1]])
    torch.testing.assert_close(
        Jd.T @ config_weights(Jd @ Jd.T), paper_config(Jd), rtol=1e-6, atol=1e-8
    )


def test_invariances_and_degenerate():
    J = _grads(4, 9, 2)
    G = J @ J.T
    a = config_weights(G)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(config_weights(G[perm][:, perm]), a[perm], rtol=1e-9, atol=0)
    # a common scale c of the gradients scales g_c by c (α unchanged)
    torch.testing.assert_close(config_weights(9.0 * G), a, rtol=1e-9, atol=0)
    J0 = J.clone()
    J0[1] = 0
    a0 = config_weights(J0 @ J0.T)
    keep = torch.tensor([0, 2, 3])
    assert a0[1] == 0
    torch.testing.assert_close(a0[keep], config_weights(J[keep] @ J[keep].T), rtol=1e-9, atol=0)
    assert config_weights(torch.zeros(2, 2)).tolist() == [0.0, 0.0]


def test_method_through_split():
    model = ToyMTL(T)
    m = ConFIG(T)
    x, ys = toy_batch(model)
    split_step(model, m, x, ys)
    got = [p.grad.clone() for p in model.encoder.parameters()]
    z, J = feature_gradients(model, x, ys)
    Jf = J.flatten(1).double()
    model.zero_grad(set_to_none=True)
    z.backward(paper_config(Jf).reshape(z.shape).float())
    for a, p in zip(got, model.encoder.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_masks_and_resume():
    check_mask_and_nan(lambda **kw: ConFIG(T, **kw))
    check_resume(lambda: ConFIG(T), T, steps=4, split_at=2, weights_only=True)
