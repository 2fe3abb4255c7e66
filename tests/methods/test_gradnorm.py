"""GradNorm (Chen et al. 2018) on the shared-feature gradients."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

from mtl_fast.methods.gradnorm import GradNorm, inverse_norm_weights
from mtl_fast.weighting import StepInputs

T = 3


def gradnorm_transcription(J, w, losses, L0, gamma):
    """Chen et al. eq. 2 on explicit gradient rows, with autograd for ∂L_grad/∂w:
    G_W(t) = ‖∇(w_t L_t)‖ = w_t ‖g_t‖, target = mean G_W · r_t^γ (constant)."""
    w = w.detach().double().clone().requires_grad_(True)
    J = J.flatten(1).double()
    GW = torch.stack([(w[t] * J[t]).norm() for t in range(J.shape[0])])
    tilde = losses.double() / L0.double()
    r = tilde / tilde.mean()
    target = (GW.mean() * r**gamma).detach()
    L_grad = (GW - target).abs().sum()
    L_grad.backward()
    return w.grad, L_grad.detach()


@pytest.mark.parametrize("gamma", [0.0, 1.5, 3.0])
def test_weight_gradient_equals_transcription(gamma):
    gen = torch.Generator().manual_seed(int(gamma * 10))
    J = torch.randn(4, 9, generator=gen, dtype=torch.float64) * torch.tensor(
        [[0.1], [1.0], [3.0], [0.5]], dtype=torch.float64
    )
    L0 = torch.tensor([2.0, 1.0, 0.5, 4.0], dtype=torch.float64)
    L1 = torch.tensor([1.0, 0.9, 0.1, 3.0], dtype=torch.float64)
    m = GradNorm(4, gamma=gamma)
    present = torch.ones(4, dtype=torch.bool)
    m.gram_weights(J @ J.T, StepInputs(L0, present))  # step 1: records L(0)
    with torch.no_grad():
        m.loss_weights.copy_(torch.tensor([0.5, 1.5, 1.2, 0.8]))  # sums to T = 4
    m.loss_weights.grad = None
    alpha = m.gram_weights(J @ J.T, StepInputs(L1, present))
    expected_grad, expected_loss = gradnorm_transcription(J, m.loss_weights, L1, L0, gamma)
    torch.testing.assert_close(m.loss_weights.grad.double(), expected_grad)
    torch.testing.assert_close(m.grad_norm_loss, expected_loss)
    torch.testing.assert_close(alpha.double(), m.loss_weights.detach().double())


def test_weights_renormalised_to_sum_T_before_use():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    m = GradNorm(T)
    with torch.no_grad():
        m.loss_weights.copy_(torch.tensor([1.0, 4.0, 1.0]))  # sum 6, as after an optimizer step
    split_step(model, m, x, ys)
    torch.testing.assert_close(m.loss_weights.detach(), torch.tensor([0.5, 2.0, 0.5]))
    torch.testing.assert_close(m.weights, torch.tensor([0.5, 2.0, 0.5]))
    # The shared gradient is Σ w_t g_t with the renormalised weights.
    enc = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad(set_to_none=True)
    z, J = feature_gradients(model, x, ys)
    z.backward(torch.einsum("t,t...->...", m.weights, J))
    for a, p in zip(enc, model.encoder.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        m.loss_weights.copy_(torch.tensor([-1.0, 2.0, 2.0]))  # a negative weight is clamped
    m.zero_grad()
    split_step(model, m, x, ys)
    torch.testing.assert_close(m.weights, torch.tensor([0.0, 1.5, 1.5]))


def test_gamma0_converges_to_inverse_norm_closed_form():
    """Paper 004 Theorem 1 / Corollary 4: GradNorm with γ = 0 equalises w_t‖g_t‖, i.e.
    α_t ∝ 1/‖g_t‖; the closed form of ``closed_form=True``."""
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(T, 10, generator=gen) * torch.tensor([[0.2], [1.0], [2.5]])
    G = J @ J.T
    m = GradNorm(T, gamma=0.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.98)
    inputs = StepInputs(torch.ones(T), torch.ones(T, dtype=torch.bool))
    for _ in range(400):  # subgradient steps on the L1 loss, decaying step size
        opt.zero_grad()
        m.gram_weights(G, inputs)
        opt.step()
        sched.step()
    final = m.gram_weights(G, inputs)
    closed = inverse_norm_weights(G, float(T))
    torch.testing.assert_close(final.double(), closed, rtol=2e-3, atol=0)
    norms = G.diagonal().sqrt()
    closed_sum1 = (1 / norms) / (1 / norms).sum()  # Corollary 4 with Σα = 1
    torch.testing.assert_close(closed, T * closed_sum1.double())
    cf = GradNorm(T, gamma=0.0, closed_form=True)
    torch.testing.assert_close(cf.gram_weights(G, inputs).double(), closed)
    with pytest.raises(ValueError, match="gamma=0"):
        GradNorm(T, closed_form=True)


def test_initial_loss_from_first_steps_and_masks():
    m = GradNorm(T, initial_loss_steps=2)
    G = torch.eye(T)
    m.gram_weights(G, StepInputs(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0]) > 0))
    torch.testing.assert_close(m.initial_losses[:2], torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.isnan(m.initial_losses[2])  # absent: not recorded
    m.gram_weights(G, StepInputs(torch.tensor([3.0, 4.0, 5.0]), torch.ones(T) > 0))
    m.gram_weights(G, StepInputs(torch.tensor([9.0, 9.0, 7.0]), torch.ones(T) > 0))
    # task 0, 1: mean of the first two present steps; task 2: first two present are 5 and 7
    torch.testing.assert_close(m.initial_losses, torch.tensor([2.0, 3.0, 6.0], dtype=torch.float64))


def test_absent_task_gets_no_weight_gradient():
    m = GradNorm(T)
    G = torch.diag(torch.tensor([1.0, 4.0, 9.0]))
    present = torch.tensor([True, False, True])
    alpha = m.gram_weights(G, StepInputs(torch.tensor([1.0, 2.0, 3.0]), present))
    assert alpha[1] == 0 and m.loss_weights.grad[1] == 0
    assert m.loss_weights.grad[0] != 0


def test_mask_and_nan_policy():
    m = check_mask_and_nan(lambda **kw: GradNorm(T, **kw))
    assert m.loss_weights.grad[1] == 0


def test_resume_equals_unbroken_including_initial_losses():
    check_resume(lambda: GradNorm(T, initial_loss_steps=3), T, steps=5, split_at=2)


def test_invalid_options():
    with pytest.raises(ValueError):
        GradNorm(T, gamma=-1.0)
    with pytest.raises(ValueError):
        GradNorm(T, initial_loss_steps=0)
