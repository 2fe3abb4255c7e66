"""GradVac (Wang et al. 2021) in Gram space: against the gradient-space algorithm, torchjd 0.18,
PCGrad (its first step), and its invariances, masks and state."""

from __future__ import annotations

import math

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

from mtl_fast.methods.gradvac import GradVac, gradvac_coefficients, gradvac_weights
from mtl_fast.methods.pcgrad import pcgrad_weights, random_orders

T = 3


def gradvac_direct(
    J: torch.Tensor, goals: torch.Tensor, orders: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's Algorithm 2 (one parameter group) on explicit vectors, float64:
    (the modified gradients g'_i [T, D], the updated goals)."""
    J = J.flatten(1).double()
    goals = goals.clone().double()
    out = []
    for i in range(J.shape[0]):
        g = J[i].clone()
        for j in orders[i].tolist():
            gj = J[j]
            phi = (g @ gj) / (g.norm() * gj.norm())
            goal = goals[i, j]
            if phi < goal:
                coef = g.norm() * (goal * torch.sqrt(1 - phi**2) - phi * torch.sqrt(1 - goal**2))
                g = g + coef / (gj.norm() * torch.sqrt(1 - goal**2)) * gj
            goals[i, j] = (1 - beta) * goal + beta * phi
        out.append(g)
    return torch.stack(out), goals


def _gradients(seed: int, Tn: int, D: int = 9) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
    J[1] = -0.6 * J[0] + 0.4 * J[1]  # a strong conflict
    return J * torch.logspace(-1, 1, Tn, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("seed", range(5))
def test_gram_space_equals_gradient_space_over_steps(seed):
    Tn, beta = 2 + seed, [0.01, 0.3, 0.5, 1.0, 0.2][seed]
    gen = torch.Generator().manual_seed(seed)
    goals = torch.zeros(Tn, Tn, dtype=torch.float64)
    goals_d = goals.clone()
    for step in range(4):
        J = _gradients(100 * seed + step, Tn)
        orders = random_orders(Tn, gen)
        C, goals = gradvac_coefficients(J @ J.T, goals, orders, beta)
        P, goals_d = gradvac_direct(J, goals_d, orders, beta)
        torch.testing.assert_close(C @ J, P, rtol=1e-9, atol=1e-12)  # every modified gradient
        torch.testing.assert_close(goals, goals_d, rtol=1e-12, atol=1e-12)
        alpha, _ = gradvac_weights(J @ J.T, goals_d, orders, beta)
        assert alpha.shape == (Tn,)


def test_first_step_is_pcgrad():
    # With every goal 0, eq. 2 is w = −g'_i·g_j/‖g_j‖² for conflicting pairs: PCGrad.
    for seed in range(4):
        J = _gradients(seed, 4)
        orders = random_orders(4, torch.Generator().manual_seed(seed))
        alpha, _ = gradvac_weights(J @ J.T, torch.zeros(4, 4, dtype=torch.float64), orders)
        torch.testing.assert_close(alpha, pcgrad_weights(J @ J.T, orders), rtol=1e-12, atol=0)


def test_correction_reaches_the_goal_exactly():
    # eq. 2 sets cos(g'_1, g_2) to the goal φ̂ (law of sines): check on a two-task step.
    J = torch.tensor([[1.0, 0.2, 0.0], [-0.3, 1.0, 0.5]], dtype=torch.float64)
    for goal in (0.2, 0.7, 0.99):
        goals = torch.full((2, 2), goal, dtype=torch.float64)
        C, _ = gradvac_coefficients(J @ J.T, goals, torch.tensor([[1], [0]]), beta=0.0)
        g1 = C[0] @ J
        cos = (g1 @ J[1]) / (g1.norm() * J[1].norm())
        assert cos.item() == pytest.approx(goal, abs=1e-12)


def _torchjd_orders(Tn: int, seed: int) -> torch.Tensor:
    """The orders torchjd 0.18 draws after torch.manual_seed(seed): one torch.randperm(T − 1)
    per task i over the other tasks, in task order."""
    torch.manual_seed(seed)
    out = []
    for i in range(Tn):
        others = [t for t in range(Tn) if t != i]
        out.append([others[p] for p in torch.randperm(Tn - 1).tolist()])
    return torch.tensor(out, dtype=torch.int64).reshape(Tn, Tn - 1)


@pytest.mark.parametrize("eps,tol", [(0.0, 1e-12), (1e-8, 1e-5)])
def test_agrees_with_torchjd(eps, tol):
    """torchjd 0.18 GradVac on explicit Jacobians, with its orders replayed: same aggregated
    vector and same goals at every step (exactly up to rounding with its ε = 0; within its
    ε-perturbation with the default ε = 1e-8, ~1e-7 relative here)."""
    from torchjd.aggregation import GradVac as TorchJDGradVac

    Tn, beta = 5, 0.5  # torchjd's default β
    agg = TorchJDGradVac(beta=beta, eps=eps)
    goals = torch.zeros(Tn, Tn, dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    worst_vec = worst_goal = 0.0
    for step in range(6):
        J = torch.randn(Tn, 11, generator=gen, dtype=torch.float64)
        J = J * torch.logspace(-2, 2, Tn, dtype=torch.float64)[:, None]
        orders = _torchjd_orders(Tn, 1000 + step)
        torch.manual_seed(1000 + step)
        theirs = agg(J)
        alpha, goals = gradvac_weights(J @ J.T, goals, orders, beta)
        ours = alpha @ J
        worst_vec = max(worst_vec, ((ours - theirs).norm() / theirs.norm()).item())
        worst_goal = max(worst_goal, (goals - agg.gramian_weighting._phi_t).abs().max().item())
    assert worst_vec <= tol and worst_goal <= tol, (worst_vec, worst_goal)


def test_method_draws_orders_from_its_generator_and_keeps_goals(device):
    model = ToyMTL(T, device=device)
    m = GradVac(seed=5, beta=0.2).to(device)
    gen = torch.Generator(device=device).manual_seed(5)
    goals = torch.zeros(T, T, dtype=torch.float64, device=device)
    for k in range(3):
        x, ys = toy_batch(model, seed=k, device=device)
        model.zero_grad(set_to_none=True)
        split_step(model, m, x, ys)
        _, J = feature_gradients(model, x, ys)
        J = J.flatten(1).double()
        expected, goals = gradvac_weights(J @ J.T, goals, random_orders(T, gen), 0.2)
        torch.testing.assert_close(m.weights.double(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.targets, goals, rtol=1e-4, atol=1e-5)
        assert m.targets.device.type == torch.device(device).type


def test_shared_gradient_is_sum_of_modified_gradients():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    m = GradVac(seed=3)
    m._state["targets"] = torch.full((T, T), 0.5, dtype=torch.float64)  # force corrections
    split_step(model, m, x, ys)
    got = [p.grad.clone() for p in model.encoder.parameters()]
    z, J = feature_gradients(model, x, ys)
    orders = random_orders(T, torch.Generator().manual_seed(3))
    P, _ = gradvac_direct(J, torch.full((T, T), 0.5, dtype=torch.float64), orders, 0.01)
    model.zero_grad(set_to_none=True)
    z.backward(P.sum(0).reshape(z.shape).float())
    for a, b in zip(got, model.encoder.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-6)


def test_permutation_equivariance():
    Tn = 5
    J = _gradients(3, Tn)
    G = J @ J.T
    goals = torch.rand(Tn, Tn, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    goals = goals * 1.6 - 0.8
    orders = random_orders(Tn, torch.Generator().manual_seed(2))
    alpha, new_goals = gradvac_weights(G, goals, orders, 0.3)
    perm = torch.tensor([3, 0, 4, 1, 2])  # new task p is old task perm[p]
    inv = torch.argsort(perm)
    alpha_p, goals_p = gradvac_weights(
        G[perm][:, perm], goals[perm][:, perm], inv[orders[perm]], 0.3
    )
    torch.testing.assert_close(alpha_p, alpha[perm], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(goals_p, new_goals[perm][:, perm], rtol=1e-12, atol=1e-12)


def test_scale_behaviour():
    Tn = 4
    J = _gradients(5, Tn)
    goals = torch.full((Tn, Tn), 0.3, dtype=torch.float64)
    orders = random_orders(Tn, torch.Generator().manual_seed(0))
    C, new_goals = gradvac_coefficients(J @ J.T, goals, orders, 0.1)
    # a common scale changes nothing (no ε anywhere)
    for c in (1e-12, 1e8):
        C2, g2 = gradvac_coefficients(c * (J @ J.T), goals, orders, 0.1)
        torch.testing.assert_close(C2, C, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g2, new_goals, rtol=1e-12, atol=1e-12)
    # per-task scales k_t: cosines unchanged, every modified gradient scales with its task,
    # g'_i(kJ) = k_i g'_i(J), i.e. C'_ik k_k = k_i C_ik
    k = torch.tensor([0.1, 3.0, 1.0, 50.0], dtype=torch.float64)
    Jk = k[:, None] * J
    Ck, gk = gradvac_coefficients(Jk @ Jk.T, goals, orders, 0.1)
    torch.testing.assert_close(Ck * k[None, :], k[:, None] * C, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gk, new_goals, rtol=1e-12, atol=1e-12)


def test_inactive_task_is_left_out_and_its_goals_untouched():
    Tn = 4
    J = _gradients(0, Tn)
    J[2] = 0.0
    goals = torch.full((Tn, Tn), 0.4, dtype=torch.float64)
    orders = random_orders(Tn, torch.Generator().manual_seed(0))
    alpha, new_goals = gradvac_weights(J @ J.T, goals, orders, 0.5)
    assert alpha[2] == 0 and torch.isfinite(alpha).all()
    assert torch.equal(new_goals[2], goals[2]) and torch.equal(new_goals[:, 2], goals[:, 2])
    # the others equal the 3-task problem with task 2 removed from every order
    keep = [0, 1, 3]
    sub_orders = torch.tensor(
        [[keep.index(j) for j in row if j != 2] for row in orders[keep].tolist()]
    )
    sub_alpha, sub_goals = gradvac_weights(
        (J @ J.T)[keep][:, keep], goals[keep][:, keep], sub_orders, 0.5
    )
    torch.testing.assert_close(alpha[keep], sub_alpha, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new_goals[keep][:, keep], sub_goals, rtol=1e-12, atol=1e-12)


def test_degenerate_inputs_stay_finite():
    # exactly opposite gradients: g'_1 can vanish; a goal of exactly 1; T = 1; all-zero G
    J = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    goals = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)
    for g in (goals, torch.ones(2, 2, dtype=torch.float64)):
        alpha, new = gradvac_weights(J @ J.T, g, torch.tensor([[1], [0]]), 0.5)
        assert torch.isfinite(alpha).all() and torch.isfinite(new).all()
    alpha, _ = gradvac_weights(
        torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 0, dtype=torch.long)
    )
    assert alpha.tolist() == [1.0]
    alpha, _ = gradvac_weights(
        torch.zeros(3, 3), torch.zeros(3, 3), random_orders(3, torch.Generator())
    )
    assert alpha.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        GradVac(beta=1.5)


def test_mask_and_nan_policy_and_goals_of_absent_task():
    m = check_mask_and_nan(lambda **kw: GradVac(seed=0, **kw))
    goals = m.targets
    assert torch.equal(goals[1], torch.zeros(T, dtype=torch.float64))
    assert torch.equal(goals[:, 1], torch.zeros(T, dtype=torch.float64))
    assert goals[0, 2] != 0 and math.isfinite(goals[0, 2].item())


def test_resume_equals_unbroken_including_orders_and_goals():
    check_resume(lambda: GradVac(beta=0.3), T, steps=6, split_at=3)


def test_resume_with_masks():
    check_resume(
        lambda: GradVac(beta=0.3, seed=1),
        T,
        steps=6,
        split_at=2,
        masks=lambda k: [True, k % 2 == 0, True],
    )
