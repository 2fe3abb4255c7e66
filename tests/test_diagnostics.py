"""Gram diagnostics against the same quantities computed from explicit gradients."""

from __future__ import annotations

import math

import _toy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtl_fast as mf
from mtl_fast.diagnostics import gram_diagnostics


@settings(max_examples=40, deadline=None)
@given(Tn=st.integers(1, 8), seed=st.integers(0, 10_000), zero=st.booleans())
def test_matches_explicit_gradients(Tn, seed, zero):
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(Tn, 11, generator=gen, dtype=torch.float64)
    J = J * torch.exp(torch.randn(Tn, 1, generator=gen, dtype=torch.float64))
    if zero and Tn > 1:
        J[0] = 0
    alpha = torch.randn(Tn, generator=gen, dtype=torch.float64)
    d = gram_diagnostics(J @ J.T, alpha)
    norms = J.norm(dim=1)
    torch.testing.assert_close(d.norms, norms, rtol=1e-12, atol=1e-12)
    live = [t for t in range(Tn) if norms[t] > 0]
    pairs = [(s, t) for i, s in enumerate(live) for t in live[i + 1 :]]
    cos = {(s, t): float(J[s] @ J[t] / (norms[s] * norms[t])) for s, t in pairs}
    for (s, t), c in cos.items():
        assert d.cosines[s, t].item() == pytest.approx(c, abs=1e-12)
    want_rate = sum(c < 0 for c in cos.values()) / len(pairs) if pairs else 0.0
    assert d.conflict_rate.item() == pytest.approx(want_rate)
    ln = [float(norms[t]) for t in live]
    assert d.norm_spread.item() == pytest.approx(max(ln) / min(ln) if len(ln) > 1 else 1.0)
    terms = [abs(float(alpha[t])) * float(norms[t]) for t in range(Tn)]
    tot = sum(terms)
    want_h = -sum(x / tot * math.log(x / tot) for x in terms if x > 0) if tot > 0 else 0.0
    assert d.weight_entropy.item() == pytest.approx(want_h, abs=1e-12)


def test_extremes():
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    d = gram_diagnostics(J @ J.T, torch.tensor([1.0, 1.0, 0.5]))
    assert d.conflict_rate.item() == pytest.approx(1 / 3)
    assert d.norm_spread.item() == pytest.approx(2.0)
    assert d.weight_entropy.item() == pytest.approx(math.log(3))  # equal term norms
    d = gram_diagnostics(torch.zeros(2, 2), torch.zeros(2))
    assert d.conflict_rate.item() == 0 and d.norm_spread.item() == 1 and d.weight_entropy == 0
    with pytest.raises(ValueError, match="alpha"):
        gram_diagnostics(torch.eye(2), torch.ones(3))


# ------------------------------------------------------------------ method.diagnostics


def test_gradient_method_diagnostics_are_those_of_its_step():
    model = _toy.ToyMTL(3)
    x, ys = _toy.toy_batch(model)
    m = mf.IMTLG()
    assert m.diagnostics is None and m.last_gram is None
    _toy.split_step(model, m, x, ys)
    _, J = _toy.feature_gradients(model, x, ys)
    Jf = J.flatten(1).double()
    want = gram_diagnostics(Jf @ Jf.T, m.weights)
    d = m.diagnostics
    assert d is not None and d is m.diagnostics  # computed once per step
    torch.testing.assert_close(d.norms, want.norms, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d.cosines, want.cosines, rtol=1e-5, atol=1e-6)
    assert d.conflict_rate.item() == pytest.approx(want.conflict_rate.item())
    assert d.weight_entropy.item() == pytest.approx(want.weight_entropy.item(), rel=1e-5)
    assert d.cosines.dtype == torch.float64
    # evaluation changes nothing
    with torch.no_grad():
        m.loss(model.losses(x, ys))
    assert m.diagnostics is d


def test_loss_methods_opt_in_with_one_gram_pass():
    model = _toy.ToyMTL(3)
    x, ys = _toy.toy_batch(model)
    plain = mf.StaticWeighting([1.0, 2.0, 0.5])
    _toy.split_step(model, plain, x, ys)
    ref = [p.grad.clone() for p in model.parameters()]
    assert plain.diagnostics is None
    model.zero_grad(set_to_none=True)
    watched = mf.StaticWeighting([1.0, 2.0, 0.5], diagnostics=True)
    _toy.split_step(model, watched, x, ys)
    for a, p in zip(ref, model.parameters()):  # the same training step
        torch.testing.assert_close(p.grad, a, rtol=1e-6, atol=1e-7)
    _, J = _toy.feature_gradients(model, x, ys)
    Jw = (torch.tensor([1.0, 2.0, 0.5])[:, None, None] * J).flatten(1).double()
    want = gram_diagnostics(Jw @ Jw.T, torch.ones(3))
    torch.testing.assert_close(watched.diagnostics.norms, want.norms, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(watched.diagnostics.cosines, want.cosines, rtol=1e-5, atol=1e-6)
