"""Uncertainty weighting (Kendall et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtl_fast.methods.uncertainty import UncertaintyWeighting, optimal_log_variance


@given(
    T=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_total_and_gradients_match_formula(T, seed):
    rng = np.random.default_rng(seed)
    types = [("regression", "classification")[int(b)] for b in rng.integers(0, 2, T)]
    s = rng.normal(0, 1, T)
    L = rng.uniform(0.05, 3, T)
    m = UncertaintyWeighting(T, task_types=types).double()
    with torch.no_grad():
        m.log_vars.copy_(torch.tensor(s))
    x = torch.tensor(L, requires_grad=True)
    total = m.loss(x)
    total.backward()
    c = np.array([0.5 if t == "regression" else 1.0 for t in types])
    np.testing.assert_allclose(total.item(), np.sum(c * np.exp(-s) * L + 0.5 * s), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), c * np.exp(-s), rtol=1e-12)
    np.testing.assert_allclose(m.weights.numpy(), c * np.exp(-s), rtol=1e-12)
    np.testing.assert_allclose(m.log_vars.grad.numpy(), -c * np.exp(-s) * L + 0.5, rtol=1e-9)


@pytest.mark.parametrize(
    ("task_type", "expected"),
    [("regression", lambda L: np.log(L)), ("classification", lambda L: np.log(2 * L))],
)
@pytest.mark.parametrize("loss", [0.01, 0.7, 3.0, 50.0])
def test_gradient_vanishes_at_the_optimum(task_type, expected, loss):
    s_star = optimal_log_variance(loss, task_type)
    assert s_star.item() == pytest.approx(expected(loss), rel=1e-12)
    m = UncertaintyWeighting(1, task_types=task_type).double()
    with torch.no_grad():
        m.log_vars.fill_(s_star.item())
    m.loss(torch.tensor([loss], dtype=torch.float64)).backward()
    assert abs(m.log_vars.grad.item()) < 1e-12
    for delta in (-0.1, 0.1):  # a minimum: the loss grows on both sides
        with torch.no_grad():
            m.log_vars.fill_(s_star.item())
        base = m.loss(torch.tensor([loss], dtype=torch.float64)).item()
        with torch.no_grad():
            m.log_vars.fill_(s_star.item() + delta)
        assert m.loss(torch.tensor([loss], dtype=torch.float64)).item() > base


def test_training_converges_to_optimum():
    m = UncertaintyWeighting(2, task_types=["regression", "classification"]).double()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    L = torch.tensor([0.2, 3.0], dtype=torch.float64)
    for _ in range(400):
        opt.zero_grad()
        m.loss(L).backward()
        opt.step()
    torch.testing.assert_close(m.log_vars.detach(), torch.log(torch.tensor([0.2, 6.0]).double()))


def test_initial_state_and_masks():
    m = UncertaintyWeighting(3, task_types=["regression", "classification", "regression"])
    assert m.weights.tolist() == [0.5, 1.0, 0.5]
    assert "log_vars" in m.state_dict()
    total = m.loss(torch.tensor([1.0, 2.0, 3.0]), mask=[True, False, True])
    assert total.item() == pytest.approx(0.5 + 1.5)
    total.backward()
    assert m.log_vars.grad[1].item() == 0.0 and m.weights[1].item() == 0.0


def test_state_resume_and_eval():
    m = UncertaintyWeighting(2)
    with torch.no_grad():
        m.log_vars.copy_(torch.tensor([0.3, -0.2]))
    other = UncertaintyWeighting(2)
    other.load_state_dict(m.state_dict())
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(m.loss(x), other.loss(x))
    m.eval()
    w = m.weights.clone()
    assert m.loss(x).item() == pytest.approx((w * x).sum().item())


def test_bad_arguments():
    with pytest.raises(ValueError):
        UncertaintyWeighting(2, task_types=["regression"])
    with pytest.raises(ValueError):
        UncertaintyWeighting(1, task_types="ranking")
