"""AMTL (Yun & Cho 2023) against an independent transcription, its properties and the tracker."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtl_fast.methods.amtl import AMTL, AccuracyTracker


def amtl_oracle_weights(acc_history, potentials, margin, gamma, lower=None):
    """EMA (momentum 0.1, first value as is), eq. 4 with m = 1 + margin, clamp, softmax."""
    p = np.asarray(potentials, dtype=np.float64)
    lower = np.zeros(len(p), bool) if lower is None else np.asarray(lower)
    p = np.where(lower, 1.0 / p, p)
    ema = None
    for acc in acc_history:
        a = np.asarray(acc, dtype=np.float64)
        a = np.where(lower, 1.0 / a, a)
        ema = a if ema is None else 0.1 * a + 0.9 * ema
    if ema is None:
        return np.full(len(p), 1.0 / len(p))
    raw = np.maximum(1.0 - ema / ((1.0 + margin) * p), 0.0) ** gamma
    e = np.exp(raw - raw.max())
    return e / e.sum()


@given(
    T=st.integers(1, 6),
    evals=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
    margin=st.sampled_from([0.0, 0.05, 0.2]),
    gamma=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
)
def test_matches_oracle(T, evals, seed, margin, gamma):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.3, 0.9, T)
    history = [rng.uniform(0.0, 1.0, T) for _ in range(evals)]
    m = AMTL(p.tolist(), margin=margin, gamma=gamma)
    for acc in history:
        m.update_accuracy(acc.tolist())
    L = rng.uniform(0.05, 4.0, T)
    total = m.loss(torch.tensor(L, dtype=torch.float64))
    w = amtl_oracle_weights(history, p, margin, gamma)
    np.testing.assert_allclose(m.weights.numpy(), w, rtol=1e-12)
    np.testing.assert_allclose(total.item(), np.prod(L**w), rtol=1e-12)
    arith = AMTL(p.tolist(), margin=margin, gamma=gamma, geometric=False)
    for acc in history:
        arith.update_accuracy(acc.tolist())
    total = arith.loss(torch.tensor(L, dtype=torch.float64))
    np.testing.assert_allclose(total.item(), np.sum(w * L), rtol=1e-12)


@given(
    a=st.floats(0.0, 0.8),
    b=st.floats(0.0, 0.8),
    gamma=st.sampled_from([1.0, 2.0]),
)
def test_lower_achievement_gets_larger_weight(a, b, gamma):
    m = AMTL([0.8, 0.8], gamma=gamma)
    m.update_accuracy([a, b])
    m.loss(torch.tensor([1.0, 1.0], dtype=torch.float64))
    w = m.weights
    if a < b:
        assert w[0] >= w[1] and (b - a < 1e-6 or w[0] > w[1])
    elif a > b:
        assert w[0] <= w[1] and (a - b < 1e-6 or w[0] < w[1])
    else:
        assert w[0] == w[1]


def test_above_potential_gives_zero_not_nan():
    m = AMTL([0.5, 0.5], margin=0.05, gamma=0.5)
    m.update_accuracy([0.9, 0.1])  # task 0 beyond (1 + margin)·p
    m.loss(torch.tensor([1.0, 1.0]))
    raw = m._state["scores"]
    assert raw[0].item() == 0.0 and torch.isfinite(m.weights).all()
    assert m.weights[1] > m.weights[0]


def test_equal_weights_before_accuracy_and_partial():
    m = AMTL([0.5, 0.6, 0.7])
    m.loss(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(m.weights, torch.full((3,), 1 / 3))
    m.update_accuracy([0.1, float("nan"), 0.2])  # task 1 not evaluated yet
    m.loss(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(m.weights, torch.full((3,), 1 / 3))
    m.update_accuracy([float("nan"), 0.3, float("nan")])
    assert m.accuracy.tolist() == [0.1, 0.3, 0.2]


def test_tracker_ema():
    tr = AccuracyTracker(2)
    tr.update(torch.tensor([0.5, float("nan")], dtype=torch.float64))
    tr.update(torch.tensor([1.0, 0.2], dtype=torch.float64))
    assert tr.value.tolist() == pytest.approx([0.1 * 1.0 + 0.9 * 0.5, 0.2])
    assert tr.ready
    with pytest.raises(ValueError):
        AccuracyTracker(2, momentum=0.0)


def test_lower_is_better_metric():
    """RMSE-like task: converted by 1/x, achievement = p/x (a larger error -> larger weight)."""
    m = AMTL([0.8, 0.5], higher_is_better=[True, False], gamma=1.0, margin=0.0)
    m.update_accuracy([0.4, 1.0])  # accuracy 0.4 of 0.8; rmse 1.0 with potential 0.5
    m.loss(torch.tensor([1.0, 1.0], dtype=torch.float64))
    want = amtl_oracle_weights([[0.4, 1.0]], [0.8, 0.5], 0.0, 1.0, lower=[False, True])
    np.testing.assert_allclose(m.weights.numpy(), want, rtol=1e-12)
    raw = m._state["scores"].tolist()
    assert raw == pytest.approx([1 - 0.4 / 0.8, 1 - 0.5 / 1.0])
    with pytest.raises(ValueError):
        m.update_accuracy([0.4, 0.0])


def test_geometric_mean_is_stable_at_many_tasks():
    T = 400
    L = torch.full((T,), 1e-3, dtype=torch.float32, requires_grad=True)
    m = AMTL([0.9] * T)
    assert torch.prod(L.detach()).item() == 0.0  # the product itself underflows
    total = m.loss(L)
    assert total.item() == pytest.approx(1e-3, rel=1e-4)
    total.backward()
    assert torch.isfinite(L.grad).all()


def test_nonpositive_loss_is_a_clear_error():
    m = AMTL([0.5, 0.5])
    with pytest.raises(ValueError, match=r"task\(s\) \[1\] have a loss <= 0"):
        m.loss(torch.tensor([1.0, 0.0]))
    AMTL([0.5, 0.5], geometric=False).loss(torch.tensor([1.0, 0.0]))  # fine for a sum


def test_mask_softmax_over_present():
    m = AMTL([0.5, 0.5, 0.5])
    m.update_accuracy([0.1, 0.2, 0.3])
    L = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    total = m.loss(L, mask=[True, False, True])
    w = m.weights
    assert w[1].item() == 0.0 and w.sum().item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(1.0 ** w[0].item() * 3.0 ** w[2].item())
    total.backward()
    assert L.grad[1].item() == 0.0


def test_state_dict_resume_is_exact():
    rng = np.random.default_rng(3)
    p = [0.6, 0.7, 0.8]
    accs = [rng.uniform(0, 1, 3).tolist() for _ in range(4)]
    losses = rng.uniform(0.1, 2, (8, 3))

    def drive(m, start, stop):
        out = []
        for s in range(start, stop):
            if s % 2 == 0:
                m.update_accuracy(accs[s // 2])
            out.append((m.loss(torch.tensor(losses[s])).detach(), m.weights.clone()))
        return out

    full = drive(AMTL(p), 0, 8)
    first = AMTL(p)
    drive(first, 0, 3)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = AMTL(p)
    second.load_state_dict(torch.load(buf, weights_only=True))
    for (ta, wa), (tb, wb) in zip(full[3:], drive(second, 3, 8)):
        assert torch.equal(ta, tb) and torch.equal(wa, wb)


def test_eval_plain_sum_and_bad_arguments():
    m = AMTL([0.5, 0.5]).eval()
    w = m.weights
    assert m.loss(torch.tensor([1.0, 2.0])).item() == pytest.approx(w[0].item() + 2 * w[1].item())
    with pytest.raises(ValueError):
        AMTL([0.5, 0.0])
    with pytest.raises(ValueError):
        AMTL([0.5, 0.5], higher_is_better=[True])
    with pytest.raises(ValueError):
        AMTL([0.5, 0.5]).update_accuracy([0.5])
    assert math.isclose(AMTL([0.5]).weights.item(), 1.0)
