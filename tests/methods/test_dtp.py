"""DTP (Guo et al. 2018), task level, against a direct transcription; shared accuracy tracking."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtl_fast.methods.amtl import AMTL
from mtl_fast.methods.dtp import DTP


def dtp_oracle(history, gamma):
    ema = None
    for k in history:
        k = np.asarray(k, dtype=np.float64)
        ema = k if ema is None else 0.1 * k + 0.9 * ema
    if ema is None:
        return None
    k = np.clip(ema, 1e-6, 1.0)
    return -((1 - k) ** gamma) * np.log(k)


@given(
    T=st.integers(1, 6),
    evals=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
    gamma=st.sampled_from([0.0, 1.0, 2.0, 2.5]),
)
def test_matches_oracle(T, evals, seed, gamma):
    rng = np.random.default_rng(seed)
    history = [rng.uniform(0, 1, T) for _ in range(evals)]
    m = DTP(T, gamma=gamma)
    for k in history:
        m.update_accuracy(k.tolist())
    L = rng.uniform(0.1, 3, T)
    total = m.loss(torch.tensor(L, dtype=torch.float64))
    w = dtp_oracle(history, gamma)
    w = np.ones(T) if w is None else w
    np.testing.assert_allclose(m.weights.numpy(), w, rtol=1e-12)
    np.testing.assert_allclose(total.item(), np.sum(w * L), rtol=1e-12)


def test_difficult_task_weighs_more_and_perfect_task_zero():
    m = DTP(3)
    m.update_accuracy([0.2, 0.9, 1.0])
    m.loss(torch.tensor([1.0, 1.0, 1.0]))
    w = m.weights
    assert w[0] > w[1] > w[2] and w[2].item() == 0.0
    m.update_accuracy([0.0, 0.0, 0.0])  # κ̄ = 0.9·κ̄ -> stays finite even at 0
    m = DTP(1)
    m.update_accuracy([0.0])
    m.loss(torch.tensor([1.0]))
    assert torch.isfinite(m.weights).all()


def test_shares_amtl_tracker():
    accs = [[0.3, 0.6], [0.5, float("nan")], [0.7, 0.2]]
    a, d = AMTL([0.9, 0.9]), DTP(2)
    for acc in accs:
        a.update_accuracy(acc)
        d.update_accuracy(acc)
    assert torch.equal(a.accuracy, d.kpi)
    assert type(a._state["accuracy"]) is type(d._state["accuracy"])


def test_lower_is_better_and_validation():
    m = DTP(2, higher_is_better=[True, False])
    m.update_accuracy([0.7, 0.1])  # an error rate of 0.1 -> κ = 0.9
    assert m.kpi.tolist() == pytest.approx([0.7, 0.9])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update_accuracy([1.5, 0.1])
    with pytest.raises(ValueError):
        DTP(2, gamma=-1.0)


def test_mask_and_state_resume():
    m = DTP(3)
    m.update_accuracy([0.2, 0.5, 0.8])
    m.loss(torch.tensor([1.0, 2.0, 3.0]), mask=[True, False, True])
    assert m.weights[1].item() == 0.0 and m.weights[0].item() > 0
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    other = DTP(3)
    other.load_state_dict(torch.load(buf, weights_only=True))
    for acc in ([0.4, 0.4, 0.4], [0.9, 0.1, 0.5]):
        m.update_accuracy(acc)
        other.update_accuracy(acc)
        x = torch.tensor([0.5, 1.5, 2.5])
        assert torch.equal(m.loss(x), other.loss(x))
        assert torch.equal(m.weights, other.weights)
    m.eval()
    w = m.weights.clone()
    x = torch.tensor([1.0, 2.0, 3.0])
    assert m.loss(x).item() == pytest.approx((w * x).sum().item())
    assert torch.equal(m.weights, w)
