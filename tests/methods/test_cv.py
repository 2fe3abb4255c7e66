"""CV-Weighting (Groenendijk et al. 2021) against an independent NumPy transcription, and its
properties."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtl_fast
from mtl_fast.methods.cv import CVWeighting, LossStatistics
from mtl_fast.running_stats import RunningStats, TorchRunningStats


def cv_oracle(losses, masks=None, denominator="mean", decay=None):
    """Eq. 3–5 and the published code's schedule, written from the definitions.

    Per task: the raw losses seen so far and the loss ratios seen so far (lists). Plain means
    and population variances are taken over the lists directly (np.mean / np.var); with a fixed
    decay the published recurrences are iterated instead. Returns [(alpha, total)] per step.
    """
    losses = np.asarray(losses, dtype=np.float64)
    steps, T = losses.shape
    masks = np.ones((steps, T), bool) if masks is None else np.asarray(masks, bool)
    raw = [[] for _ in range(T)]
    ratios = [[] for _ in range(T)]

    def mean_var(xs):
        if decay is None:
            return np.mean(xs), np.var(xs)
        m, m2 = xs[0], 0.0
        for x in xs[1:]:
            new = decay * m + (1 - decay) * x
            m2 += (x - m) * (x - new)
            m = new
        return m, m2 / len(xs)

    out = []
    for L, m in zip(losses, masks):
        cur = np.array([L[i] / mean_var(raw[i])[0] if raw[i] else 1.0 for i in range(T)])
        if m.any() and all(len(ratios[i]) >= 2 for i in range(T) if m[i]):
            c = np.zeros(T)
            for i in range(T):
                if m[i]:
                    mu, var = mean_var(ratios[i])
                    c[i] = np.sqrt(var + 1e-8) / (mu if denominator == "mean" else cur[i])
            alpha = c / c.sum()
        else:
            alpha = m / max(m.sum(), 1)
        out.append((alpha, float(np.sum(alpha * np.where(m, L, 0.0)))))
        for i in range(T):
            if m[i]:
                raw[i].append(L[i])
                ratios[i].append(cur[i])
    return out


def run(method, losses, masks=None):
    res = []
    for s, L in enumerate(losses):
        x = torch.tensor(L, dtype=torch.float64, requires_grad=True)
        total = method.loss(x, None if masks is None else [bool(b) for b in masks[s]])
        total.backward()  # a step counts once its total is back-propagated
        res.append((method.weights.clone(), total.detach().clone()))
    return res


@given(
    T=st.integers(1, 5),
    steps=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    denominator=st.sampled_from(["mean", "current"]),
    masked=st.booleans(),
)
def test_matches_oracle(T, steps, seed, denominator, masked):
    rng = np.random.default_rng(seed)
    losses = rng.uniform(0.05, 5.0, size=(steps, T))
    masks = rng.random((steps, T)) > 0.3 if masked else None
    got = run(CVWeighting(T, denominator=denominator), losses, masks)
    want = cv_oracle(losses, masks, denominator=denominator)
    for (w, total), (a, tot) in zip(got, want):
        np.testing.assert_allclose(w.numpy(), a, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(total.item(), tot, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("decay", [0.3, 0.9])
def test_mean_decay_matches_oracle(decay):
    losses = np.random.default_rng(1).uniform(0.1, 3.0, size=(15, 3))
    got = run(CVWeighting(3, mean_decay=decay), losses)
    # The accumulator's m + (1 - d)(x - m) and the oracle's d·m + (1 - d)·x round differently.
    # (d = 0 is left out: M2 is then 0 in exact arithmetic and the weights are rounding noise.)
    for (w, total), (a, tot) in zip(got, cv_oracle(losses, decay=decay)):
        np.testing.assert_allclose(w.numpy(), a, rtol=1e-8)
        np.testing.assert_allclose(total.item(), tot, rtol=1e-8)


def test_first_two_steps_equal_then_cv():
    m = CVWeighting(4)
    for step in range(3):
        m.loss(torch.tensor([1.0, 2.0 + step, 0.5, 7.0 * (step + 1)]))
        if step < 2:
            assert torch.equal(m.weights, torch.full((4,), 0.25))
    assert not torch.allclose(m.weights, torch.full((4,), 0.25))
    assert m.weights.sum().item() == pytest.approx(1.0)


def test_weights_carry_no_gradient():
    m = CVWeighting(3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = torch.tensor(rng.uniform(0.1, 1, 3), requires_grad=True)
        m.loss(x).backward()
        assert torch.allclose(x.grad, m.weights)


def test_uses_cpp_accumulator_on_cpu(monkeypatch):
    """CPU losses: each training step is one native call (weights and the update of the C++
    accumulator), and the statistics stay in that accumulator."""
    m = CVWeighting(3)
    acc = m.statistics.accumulator
    assert isinstance(acc, RunningStats)
    assert isinstance(acc._impl, mtl_fast._C.Welford)
    calls = []
    real = mtl_fast._C.cv_step

    def spy(stats, *a):
        calls.append(stats)
        return real(stats, *a)

    monkeypatch.setattr(mtl_fast._C, "cv_step", spy)
    for _ in range(3):
        m.loss((torch.rand(3) + 0.1).requires_grad_()).backward()
    assert len(calls) == 3 and all(c is acc._impl for c in calls)
    assert m.statistics.accumulator is acc
    assert acc.count.tolist() == [3] * 6


def test_native_step_matches_the_torch_core():
    """The native step (CPU, C++ accumulator) and the torch functional core (the torch
    accumulator runs it) agree step by step, masks and both denominators included."""
    rng = np.random.default_rng(7)
    losses = rng.uniform(0.05, 6.0, size=(12, 4))
    masks = rng.random((12, 4)) > 0.25
    for denominator in ("mean", "current"):
        for decay in (None, 0.8):
            a = run(CVWeighting(4, denominator=denominator, mean_decay=decay), losses, masks)
            b = run(
                CVWeighting(4, denominator=denominator, mean_decay=decay, accumulator="torch"),
                losses,
                masks,
            )
            for (wa, ta), (wb, tb) in zip(a, b):
                torch.testing.assert_close(wa, wb, rtol=1e-13, atol=1e-15)
                torch.testing.assert_close(ta, tb, rtol=1e-13, atol=0)


def test_torch_accumulator_gives_same_weights():
    losses = np.random.default_rng(2).uniform(0.1, 4.0, size=(20, 5))
    masks = np.random.default_rng(3).random((20, 5)) > 0.2
    a = run(CVWeighting(5), losses, masks)
    t_method = CVWeighting(5, accumulator="torch")
    b = run(t_method, losses, masks)
    assert isinstance(t_method.statistics.accumulator, TorchRunningStats)
    for (wa, ta), (wb, tb) in zip(a, b):
        torch.testing.assert_close(wa, wb, rtol=1e-13, atol=0)
        torch.testing.assert_close(ta, tb, rtol=1e-13, atol=0)


def test_statistics_switch_device_keeps_state():
    s = LossStatistics(2)
    s.update(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([True, True]))
    s.kind = "torch"  # force the switch path on the CPU
    mean, _, count = s.snapshot(torch.device("cpu"))
    assert isinstance(s.accumulator, TorchRunningStats)
    assert mean.tolist() == [1.0, 2.0] and count.tolist() == [1, 1]


@pytest.mark.parametrize("accumulator", ["auto", "torch"])
def test_state_dict_resume_is_exact(accumulator):
    rng = np.random.default_rng(4)
    losses = rng.uniform(0.1, 3.0, size=(14, 3))
    masks = rng.random((14, 3)) > 0.2
    full = run(CVWeighting(3, accumulator=accumulator), losses, masks)
    first = CVWeighting(3, accumulator=accumulator)
    run(first, losses[:6], masks[:6])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = CVWeighting(3, accumulator=accumulator)
    second.load_state_dict(torch.load(buf, weights_only=True))
    assert second.step == 6
    rest = run(second, losses[6:], masks[6:])
    for (wa, ta), (wb, tb) in zip(full[6:], rest):
        assert torch.equal(wa, wb) and torch.equal(ta, tb)


def test_mask_leaves_statistics_untouched():
    m = CVWeighting(3)
    for _ in range(3):
        m.loss(torch.rand(3) + 0.5)
    before = m.statistics.state_dict()
    m.loss(torch.tensor([1.0, 2.0, 3.0]), mask=[True, False, True])
    after = m.statistics.state_dict()
    assert after["count"].tolist() == [4, 3, 4, 4, 3, 4]
    assert after["mean"][1] == before["mean"][1] and after["mean"][4] == before["mean"][4]
    assert m.weights[1].item() == 0.0
    assert m.weights.sum().item() == pytest.approx(1.0)


def test_nan_policy():
    m = CVWeighting(2)
    with pytest.raises(ValueError, match="task 1"):
        m.loss(torch.tensor([1.0, float("nan")]))
    m = CVWeighting(2, nonfinite="absent")
    m.loss(torch.tensor([1.0, 2.0]))
    total = m.loss(torch.tensor([1.5, float("nan")]))
    assert torch.isfinite(total) and m.weights.tolist() == [1.0, 0.0]
    assert m.statistics.state_dict()["count"].tolist() == [2, 1, 2, 1]


def test_eval_mode_plain_sum_no_update():
    m = CVWeighting(2)
    for _ in range(4):
        m.loss(torch.rand(2) + 0.1)
    state = m.statistics.state_dict()
    m.eval()
    x = torch.tensor([0.3, 4.0])
    w = m.weights.clone()
    assert m.loss(x).item() == pytest.approx((w * x).sum().item())  # current weights
    assert m.step == 4
    after = m.statistics.state_dict()
    for k in state:
        np.testing.assert_array_equal(np.asarray(state[k]), np.asarray(after[k]))


def test_bad_arguments():
    with pytest.raises(ValueError):
        CVWeighting(2, denominator="median")
    with pytest.raises(ValueError):
        CVWeighting(2, accumulator="cuda")
    with pytest.raises(ValueError):
        CVWeighting(0)
