"""PCGrad (Yu et al. 2020) in Gram space against the gradient-space algorithm."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

from mtl_fast.methods.pcgrad import PCGrad, pcgrad_coefficients, pcgrad_weights, random_orders

T = 3


def pcgrad_direct(J: torch.Tensor, orders: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Yu et al. Algorithm 1 on explicit gradient vectors (float64): (projected g_i^PC, Σ_i)."""
    J = J.flatten(1).double()
    projected = []
    for i in range(J.shape[0]):
        g = J[i].clone()
        for j in orders[i].tolist():
            dot = g @ J[j]
            if dot < 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        projected.append(g)
    P = torch.stack(projected)
    return P, P.sum(0)


def _conflicting(seed: int, Tn: int, D: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
    J[1] = -0.7 * J[0] + 0.3 * J[1]  # a strong conflict
    return J * torch.logspace(-1, 1, Tn, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("seed", range(6))
def test_gram_space_equals_gradient_space(seed):
    Tn = 2 + seed
    J = _conflicting(seed, Tn)
    orders = random_orders(Tn, torch.Generator().manual_seed(seed))
    P, g = pcgrad_direct(J, orders)
    C = pcgrad_coefficients(J @ J.T, orders)
    torch.testing.assert_close(C @ J, P, rtol=1e-9, atol=1e-12)  # every projected gradient
    alpha = pcgrad_weights(J @ J.T, orders)
    torch.testing.assert_close(alpha, C.sum(0))
    torch.testing.assert_close(alpha @ J, g, rtol=1e-9, atol=1e-12)  # final = Σ_i g_i^PC


def test_orders_are_permutations_of_the_other_tasks():
    gen = torch.Generator().manual_seed(0)
    for Tn in (1, 2, 5):
        orders = random_orders(Tn, gen)
        assert orders.shape == (Tn, Tn - 1)
        for i in range(Tn):
            assert sorted(orders[i].tolist()) == [t for t in range(Tn) if t != i]


def test_no_conflict_gives_plain_sum_and_two_task_formula():
    J = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    orders = random_orders(3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(pcgrad_weights(J @ J.T, orders), torch.ones(3, dtype=torch.float64))
    # Two conflicting tasks: g = g1 + g2 − (g1·g2)(1/‖g2‖² g2 + 1/‖g1‖² g1).
    J = torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=torch.float64)
    G = J @ J.T
    alpha = pcgrad_weights(G, torch.tensor([[1], [0]]))
    d = G[0, 1]
    torch.testing.assert_close(alpha, torch.stack([1 - d / G[0, 0], 1 - d / G[1, 1]]))


def test_method_draws_orders_from_its_generator(device):
    model = ToyMTL(T, device=device)
    x, ys = toy_batch(model, device=device)
    m = PCGrad(seed=5).to(device)
    gen = torch.Generator(device=device).manual_seed(5)
    split_step(model, m, x, ys)
    _, J = feature_gradients(model, x, ys)
    expected = pcgrad_weights(J.flatten(1) @ J.flatten(1).T, random_orders(T, gen))
    torch.testing.assert_close(m.weights.double(), expected, rtol=1e-5, atol=1e-6)
    # the next step draws new orders from the same stream
    gen_state = m._state["generator"].get_state()
    assert not torch.equal(gen_state, torch.Generator(device=device).manual_seed(5).get_state())


def test_seed_from_global_rng_is_reproducible():
    torch.manual_seed(3)
    a = PCGrad()
    torch.manual_seed(3)
    b = PCGrad()
    assert a._state["seed"] == b._state["seed"]


def test_inactive_tasks_are_never_projected_onto():
    J = _conflicting(0, 3)
    J[1] = 0.0
    G = J @ J.T
    orders = random_orders(3, torch.Generator().manual_seed(0))
    alpha = pcgrad_weights(G, orders)
    assert alpha[1] == 0 and torch.isfinite(alpha).all()
    sub = pcgrad_weights(G[[0, 2]][:, [0, 2]], torch.tensor([[1], [0]]))
    torch.testing.assert_close(alpha[[0, 2]], sub)


def test_mask_and_nan_policy():
    check_mask_and_nan(lambda **kw: PCGrad(seed=0, **kw))


def test_resume_equals_unbroken_including_random_orders():
    # seed drawn from the global RNG: the resumed method is built under another RNG state and
    # must take its seed and generator from the state_dict.
    check_resume(lambda: PCGrad(), T, steps=6, split_at=3)
