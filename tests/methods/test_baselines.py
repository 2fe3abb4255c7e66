"""Baselines: static weights, GLS, DWA, RLW, equal weights and the shared helpers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtl_fast.methods.baselines import (
    DWA,
    GLS,
    RLW,
    EqualWeighting,
    StaticWeighting,
    normalize_over_present,
    softmax_over_present,
)


def resumed_equals_unbroken(make, steps, split, drive):
    """Run ``steps`` unbroken; run ``split`` steps, save through torch.save (weights_only
    load) into a fresh instance, continue; compare totals and weights exactly."""
    full = drive(make(), range(steps))
    first = make()
    drive(first, range(split))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = make()
    second.load_state_dict(torch.load(buf, weights_only=True))
    rest = drive(second, range(split, steps))
    for (ta, wa), (tb, wb) in zip(full[split:], rest):
        assert torch.equal(ta, tb) and torch.equal(wa, wb)


def test_helpers():
    present = torch.tensor([True, False, True])
    v = torch.tensor([1.0, 5.0, 3.0])
    assert normalize_over_present(v, present).tolist() == [0.25, 0.0, 0.75]
    assert normalize_over_present(v, torch.zeros(3, dtype=torch.bool)).tolist() == [0, 0, 0]
    w = softmax_over_present(v, present)
    assert w[1].item() == 0 and w.sum().item() == pytest.approx(1.0)
    assert softmax_over_present(v, torch.zeros(3, dtype=torch.bool)).tolist() == [0, 0, 0]


# --------------------------------------------------------------------------- static / equal


def test_static_weighting():
    m = StaticWeighting([1.0, 0.2, 0.2])
    assert m.loss(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(2.0)
    m.loss(torch.tensor([1.0, 2.0, 3.0]), mask=[True, False, True])
    assert m.weights.tolist() == pytest.approx([1.0, 0.0, 0.2])
    n = StaticWeighting([1.0, 0.2, 0.2], normalize=True)  # Groenendijk et al. 2021: Σ α = 1
    assert n.weights.tolist() == pytest.approx([1 / 1.4, 0.2 / 1.4, 0.2 / 1.4])
    n.loss(torch.tensor([1.0, 2.0, 3.0]), mask=[True, False, True])
    assert n.weights.tolist() == pytest.approx([1 / 1.2, 0.0, 0.2 / 1.2])
    with pytest.raises(ValueError):
        StaticWeighting([1.0, -1.0])
    other = StaticWeighting([1.0, 0.2, 0.2])
    other.load_state_dict(m.state_dict())
    assert other.loss(torch.tensor([1.0, 1.0, 1.0])).item() == pytest.approx(1.4)


def test_equal_weighting():
    m = EqualWeighting(3)
    assert m.loss(torch.tensor([1.0, 2.0, 3.0]), mask=[True, False, True]).item() == 4.0
    assert m.weights.tolist() == [1.0, 0.0, 1.0]


# --------------------------------------------------------------------------- GLS


@given(T=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_gls_matches_formula_and_gradient_weights(T, seed):
    rng = np.random.default_rng(seed)
    L = rng.uniform(0.05, 5.0, T)
    mask = rng.random(T) > 0.3
    m = GLS(T)
    x = torch.tensor(L, requires_grad=True)
    total = m.loss(x, [bool(b) for b in mask])
    k = mask.sum()
    want = np.prod(L[mask]) ** (1.0 / k) if k else 0.0
    np.testing.assert_allclose(total.item(), want, rtol=1e-12)
    if k:
        total.backward()
        np.testing.assert_allclose(x.grad.numpy(), m.weights.numpy(), rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(m.weights.numpy()[mask], want / (k * L[mask]), rtol=1e-12)


def test_gls_many_tasks_and_positivity():
    T = 300
    x = torch.full((T,), 1e-2, requires_grad=True)
    total = GLS().loss(x)
    assert total.item() == pytest.approx(1e-2, rel=1e-5)
    with pytest.raises(ValueError, match="GLS"):
        GLS().loss(torch.tensor([1.0, -0.5]))


# --------------------------------------------------------------------------- DWA


def dwa_oracle(periods, temp):
    avgs, out = [], []
    for steps in periods:
        T = steps.shape[1]
        if len(avgs) < 2:
            w = np.ones(T)
        else:
            r = avgs[-1] / avgs[-2]
            e = np.exp(r / temp)
            w = T * e / e.sum()
        out.extend((w, float(np.sum(w * L))) for L in steps)
        avgs.append(steps.mean(axis=0))
    return out


@given(
    T=st.integers(1, 5),
    num_periods=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    temp=st.sampled_from([0.5, 2.0]),
)
def test_dwa_matches_oracle(T, num_periods, seed, temp):
    rng = np.random.default_rng(seed)
    periods = [rng.uniform(0.1, 3, (int(rng.integers(1, 4)), T)) for _ in range(num_periods)]
    m = DWA(T, temperature=temp)
    got = []
    for steps in periods:
        for L in steps:
            total = m.loss(torch.tensor(L))
            got.append((m.weights.clone(), total))
        m.end_period()
    for (w, total), (a, tot) in zip(got, dwa_oracle(periods, temp)):
        np.testing.assert_allclose(w.numpy(), a, rtol=1e-12)
        np.testing.assert_allclose(total.item(), tot, rtol=1e-12)


def test_dwa_masks_and_period_steps():
    m = DWA(3, period_steps=2)
    for period in range(3):
        for _ in range(2):
            m.loss(torch.tensor([1.0, 2.0, 3.0]) / (period + 1) ** torch.tensor([1.0, 2.0, 0.0]))
    assert m.period == 4
    m.loss(torch.tensor([1.0, 2.0, 3.0]), mask=[True, False, True])
    w = m.weights
    assert w[1].item() == 0.0 and w.sum().item() == pytest.approx(2.0)
    # task 0's loss keeps falling (r_0 = 2/3), task 2's is flat (r_2 = 1): task 2 weighs more
    assert w[2] > w[0]


def test_dwa_state_resume():
    rng = np.random.default_rng(2)
    losses = rng.uniform(0.1, 3, (12, 3))

    def drive(m, steps):
        return [(m.loss(torch.tensor(losses[s])), m.weights.clone()) for s in steps]

    resumed_equals_unbroken(lambda: DWA(3, period_steps=3), 12, 7, drive)


# --------------------------------------------------------------------------- RLW


def test_rlw_is_softmax_of_a_normal_draw():
    m = RLW(4, seed=123)
    gen = torch.Generator().manual_seed(123)
    for _ in range(3):
        total = m.loss(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
        eps = torch.randn(4, generator=gen, dtype=torch.float64).numpy()
        w = np.exp(eps) / np.exp(eps).sum()
        np.testing.assert_allclose(m.weights.numpy(), w, rtol=1e-12)
        np.testing.assert_allclose(total.item(), np.sum(w * [1, 2, 3, 4]), rtol=1e-12)
    m.loss(torch.tensor([1.0, 2.0, 3.0, 4.0]), mask=[False, True, True, False])
    eps = torch.randn(4, generator=gen, dtype=torch.float64).numpy()[1:3]
    np.testing.assert_allclose(
        m.weights.numpy(), [0, *(np.exp(eps) / np.exp(eps).sum()), 0], rtol=1e-6
    )


def test_rlw_seed_from_global_and_resume():
    torch.manual_seed(0)
    a = RLW(3)
    torch.manual_seed(0)
    b = RLW(3)
    x = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(a.loss(x), b.loss(x))

    def drive(m, steps):
        return [(m.loss(x), m.weights.clone()) for _ in steps]

    resumed_equals_unbroken(lambda: RLW(3, seed=5), 10, 4, drive)


# --------------------------------------------------------------------------- every method, device


def _method_factories(T):
    from mtl_fast.methods.amtl import AMTL
    from mtl_fast.methods.cv import CVWeighting
    from mtl_fast.methods.dtp import DTP
    from mtl_fast.methods.lsb import LSB
    from mtl_fast.methods.uncertainty import UncertaintyWeighting

    return {
        "cv": lambda: CVWeighting(T),
        "lsb": lambda: LSB(T, beta=1.0, period_steps=2),
        "amtl": lambda: AMTL([0.8] * T),
        "dtp": lambda: DTP(T),
        "uncertainty": lambda: UncertaintyWeighting(T),
        "gls": lambda: GLS(T),
        "dwa": lambda: DWA(T, period_steps=2),
        "rlw": lambda: RLW(T, seed=0),
        "static": lambda: StaticWeighting([1.0, 2.0, 3.0], normalize=True),
        "equal": lambda: EqualWeighting(T),
    }


@pytest.mark.parametrize("name", sorted(_method_factories(3)))
def test_every_method_on_device_matches_cpu_without_sync(name, device):
    """Same weights on the device as on the CPU; on CUDA, loss() never synchronises after the
    first step (which moves per-method constants to the device once)."""
    T = 3
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 3.0, (9, T))
    masks = rng.random((9, T)) > 0.2
    make = _method_factories(T)[name]
    ref, dev = make(), make().to(device)
    for m in (ref, dev):
        if hasattr(m, "update_accuracy"):
            m.update_accuracy([0.2, 0.5, 0.7])
    for s in range(9):
        mask = [bool(b) for b in masks[s]]
        want = ref.loss(torch.tensor(losses[s]), mask)
        x = torch.tensor(losses[s], device=device)
        if device.type == "cuda" and s > 0:
            torch.cuda.set_sync_debug_mode("error")
        try:
            got = dev.loss(x, mask)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
        if name == "rlw":  # the device generator draws another stream
            assert torch.isfinite(got).all()
            assert dev.weights.sum().item() == pytest.approx(1.0)
            continue
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(dev.weights.cpu(), ref.weights, rtol=1e-6, atol=1e-9)
