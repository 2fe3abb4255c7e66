"""LSB (Lee et al. 2021) against an independent transcription; Propositions 1 and 2; periods,
masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtl_fast.methods.lsb import LSB, linear_beta


def lsb_oracle(periods, pi, beta_of):
    """Eq. 3, 4, 7, 9, 10, 11, 12 in plain NumPy. ``periods``: list of [steps, T] arrays.

    Returns the factor vector α d w and the total of every step."""
    pi = np.asarray(pi, dtype=np.float64)
    T = len(pi)
    w, d, a = pi.copy(), np.ones(T), 1.0
    task_avgs, overall = [], []
    out = []
    for t, steps in enumerate(periods, start=1):
        for L in steps:
            out.append((a * d * w, float(np.sum(a * d * w * L))))
        Lk = np.mean(steps, axis=0)  # L_k^t
        task_avgs.append(Lk)
        overall.append(a * np.sum(d * w * Lk))  # eq. 11 (eq. 3 while a = d = 1)
        w = pi * overall[-1] / Lk  # eq. 7
        if t + 1 >= 3:
            rate = (task_avgs[-1] / task_avgs[-2]) / (overall[-1] / overall[-2])
            d = rate ** beta_of(t + 1)  # eq. 9
        else:
            d = np.ones(T)
        a = 1.0 / np.sum(pi * d)  # eq. 12
    return out


def run_periods(m, periods, masks=None):
    out = []
    for p, steps in enumerate(periods):
        for s, L in enumerate(steps):
            mask = None if masks is None else [bool(b) for b in masks[p][s]]
            total = m.loss(torch.tensor(L, dtype=torch.float64, requires_grad=True), mask)
            total.backward()  # a step counts once its total is back-propagated
            out.append((m.weights.clone(), total.detach().clone()))
        m.end_period()
    return out


def random_periods(rng, T, num_periods, max_steps):
    return [
        rng.uniform(0.05, 5.0, size=(int(rng.integers(1, max_steps + 1)), T))
        for _ in range(num_periods)
    ]


@given(
    T=st.integers(1, 5),
    num_periods=st.integers(1, 7),
    seed=st.integers(0, 2**31 - 1),
    beta=st.sampled_from([None, 0.0, 0.7, 1.0, 2.0]),
    use_pi=st.booleans(),
)
def test_matches_oracle(T, num_periods, seed, beta, use_pi):
    rng = np.random.default_rng(seed)
    periods = random_periods(rng, T, num_periods, 4)
    pi = rng.uniform(0.1, 1.0, T) if use_pi else np.ones(T)
    pi = pi / pi.sum()
    E = 3
    m = LSB(T, priorities=pi.tolist() if use_pi else None, beta=beta, expected_periods=E)

    def beta_of(t):
        return min(1.0, max(0.0, (t - 3) / E)) if beta is None else beta

    for (w, total), (f, tot) in zip(run_periods(m, periods), lsb_oracle(periods, pi, beta_of)):
        np.testing.assert_allclose(w.numpy(), f, rtol=1e-10)
        np.testing.assert_allclose(total.item(), tot, rtol=1e-10)


@given(
    T=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    beta=st.sampled_from([None, 1.0, -1.0, 3.0]),
)
def test_propositions_1_and_2(T, seed, beta):
    """Σ_k (α d w)^t L_k^{t−1} = Σ_k (α d w)^{t−1} L_k^{t−1}: L^{t−1} is unchanged (eq. 8, 13)."""
    rng = np.random.default_rng(seed)
    m = LSB(T, priorities=rng.uniform(0.2, 1.0, T).tolist(), beta=beta, expected_periods=2)
    for t in range(1, 8):
        for _ in range(3):
            m.loss(torch.tensor(rng.uniform(0.05, 5.0, T) / t, dtype=torch.float64))
        before = m.weights.clone()
        m.end_period()
        avg = m._state["periods"].history[0]
        after = m._factors(avg.device)
        after = after[2] * after[1] * after[0]
        lhs, rhs = torch.dot(after, avg), torch.dot(before, avg)
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)
        if t + 1 >= 3 and beta is not None and T > 1:  # the difficulty factors are in play
            assert not torch.allclose(m.difficulty, torch.ones(T, dtype=torch.float64))


def test_period_one_uses_priorities_and_two_balances_scales():
    m = LSB(3, priorities=[2.0, 1.0, 1.0])
    assert torch.allclose(m.weights, torch.tensor([0.5, 0.25, 0.25]))
    L = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    m.loss(L)
    assert torch.allclose(m.weights, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    m.end_period()
    m.loss(L)
    scales = m.weights * L  # eq. 6: w_k L_k = π_k L^{t-1}
    overall = (torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64) * L).sum()
    torch.testing.assert_close(scales, m.priorities * overall)


def test_default_beta_schedule():
    assert linear_beta(1, 10) == 0.0 and linear_beta(3, 10) == 0.0
    assert linear_beta(8, 10) == pytest.approx(0.5)
    assert linear_beta(13, 10) == 1.0 and linear_beta(50, 10) == 1.0
    m = LSB(2, expected_periods=4)
    assert [m.beta_at(t) for t in (3, 4, 7, 9)] == [0.0, 0.25, 1.0, 1.0]
    assert LSB(2, beta=lambda t: 0.1 * t).beta_at(5) == pytest.approx(0.5)


def test_period_steps_equals_manual_periods():
    rng = np.random.default_rng(7)
    periods = [rng.uniform(0.1, 2.0, size=(3, 4)) for _ in range(5)]
    manual = run_periods(LSB(4, beta=1.0), periods)
    auto = LSB(4, beta=1.0, period_steps=3)
    for steps in periods:
        for L, (w, total) in zip(steps, manual[: len(steps)]):
            got = auto.loss(torch.tensor(L, dtype=torch.float64))
            assert torch.equal(auto.weights, w) and torch.equal(got, total)
        manual = manual[len(steps) :]
    assert auto.period == 6


def test_end_period_without_steps_is_a_noop():
    m = LSB(2)
    assert m.end_period() is False and m.period == 1
    m.loss(torch.tensor([1.0, 2.0]))
    assert m.end_period() is True and m.end_period() is False and m.period == 2


def test_masks_zero_weight_and_untouched_average():
    m = LSB(3, beta=1.0)
    for _ in range(2):
        m.loss(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    m.loss(torch.tensor([1.0, 99.0, 4.0], dtype=torch.float64), mask=[True, False, True])
    assert m.weights[1].item() == 0.0 and m.weights[0].item() == pytest.approx(1 / 3)
    m.end_period()
    assert m._state["periods"].history[0].tolist() == [1.0, 2.0, 4.0]
    # period 2: task 2 absent for the whole period -> its average carries forward
    for _ in range(2):
        m.loss(torch.tensor([0.5, 1.0, 7.0], dtype=torch.float64), mask=[True, True, False])
    m.end_period()
    assert m._state["periods"].history[0].tolist() == [0.5, 1.0, 4.0]
    assert torch.isfinite(m.weights).all()


def test_task_never_observed_keeps_priority():
    m = LSB(2, beta=1.0)
    for period in range(4):
        m.loss(torch.tensor([1.0 / (period + 1), 3.0], dtype=torch.float64), mask=[True, False])
        m.end_period()
    w, d, a = m._factors(torch.device("cpu"))
    assert w[1].item() == 0.5 and d[1].item() == 1.0
    assert torch.isfinite(a)


def test_state_dict_resume_mid_period_is_exact():
    rng = np.random.default_rng(11)
    periods = [rng.uniform(0.1, 3.0, size=(4, 3)) for _ in range(6)]
    flat = [L for p in periods for L in p]
    ref = LSB(3, beta=0.5, period_steps=4)
    full = [(ref.loss(torch.tensor(L)).detach(), ref.weights.clone()) for L in flat]
    first = LSB(3, beta=0.5, period_steps=4)
    for L in flat[:10]:
        first.loss(torch.tensor(L))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = LSB(3, beta=0.5, period_steps=4)
    second.load_state_dict(torch.load(buf, weights_only=True))
    assert second.period == first.period and second.step == 10
    for L, (total, w) in zip(flat[10:], full[10:]):
        assert torch.equal(second.loss(torch.tensor(L)).detach(), total)
        assert torch.equal(second.weights, w)


def test_torch_accumulator_same_weights():
    rng = np.random.default_rng(5)
    periods = [rng.uniform(0.1, 3.0, size=(3, 3)) for _ in range(5)]
    a = run_periods(LSB(3, beta=1.0), periods)
    b = run_periods(LSB(3, beta=1.0, accumulator="torch"), periods)
    for (wa, ta), (wb, tb) in zip(a, b):
        torch.testing.assert_close(wa, wb, rtol=1e-13, atol=0)
        torch.testing.assert_close(ta, tb, rtol=1e-13, atol=0)


def test_eval_mode_does_not_count():
    m = LSB(2, period_steps=2)
    m.eval()
    for _ in range(5):  # evaluation: Σ w_t L_t with the current (initial) weights
        assert m.loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(2.0)
    assert m.period == 1 and m._state["periods"].steps == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        LSB(2, priorities=[1.0])
    with pytest.raises(ValueError):
        LSB(2, priorities=[1.0, 0.0])
    with pytest.raises(ValueError):
        LSB(2, period_steps=0)
    with pytest.raises(ValueError):
        LSB(2, expected_periods=0)
