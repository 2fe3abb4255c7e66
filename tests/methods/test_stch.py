"""STCH (Lin et al. 2024): against a direct transcription of the smooth Tchebycheff MTL loop
(warm-up, reference estimation, normalised log-losses), the scalarisation's properties,
invariances, masks and state."""

from __future__ import annotations

import math

import pytest
import torch
from _toy import check_mask_and_nan, check_resume

from mtl_fast.methods.stch import STCH

EPS = 1e-20


def stch_direct(epochs: list[list[torch.Tensor]], mu: float, warmup: int):
    """Per step: (total, ∂total/∂L) of the published MTL scheme, written from its equations:
    epochs < W: Σ log(L + ε); epoch W: the same, and the losses are averaged into r;
    afterwards T μ log Σ_t exp(log(L_t/r_t + ε)/μ)."""
    out, seen, ref = [], [], None
    for e, epoch in enumerate(epochs):
        for L in epoch:
            L = L.clone().requires_grad_(True)
            if e <= warmup:
                total = torch.log(L + EPS).sum()
                if e == warmup:
                    seen.append(L.detach())
            else:
                if ref is None:
                    ref = torch.stack(seen).mean(0)
                f = torch.log(L / ref + EPS)
                total = L.shape[0] * mu * torch.log(torch.exp(f / mu).sum())
            (grad,) = torch.autograd.grad(total, L)
            out.append((total.detach(), grad))
    return out, ref


def _epochs(n_epochs, steps, T, seed=0, scales=None):
    gen = torch.Generator().manual_seed(seed)
    if scales is None:
        scales = torch.logspace(-1, 2, T, dtype=torch.float64)
    return [
        [torch.rand(T, generator=gen, dtype=torch.float64) * scales + 1e-3 for _ in range(steps)]
        for _ in range(n_epochs)
    ]


def _drive(m: STCH, epochs, mask=None, device="cpu"):
    out = []
    for epoch in epochs:
        for L in epoch:
            x = L.clone().to(device).requires_grad_(True)
            total = m.loss(x, mask)
            total.backward()
            out.append((total.detach(), x.grad, m.weights.clone()))
        if m.epoch_steps is None:
            m.end_epoch()
    return out


@pytest.mark.parametrize("mu", [0.1, 1.0, 5.0])
def test_equals_direct_transcription(mu, device):
    T, W = 4, 2
    epochs = _epochs(W + 3, 3, T)
    want, ref = stch_direct(epochs, mu, W)
    m = STCH(T, mu=mu, warmup_epochs=W)
    got = _drive(m, epochs, device=device)
    torch.testing.assert_close(m.reference.cpu(), ref, rtol=1e-12, atol=0)
    for (ta, ga, w), (tb, gb) in zip(got, want):
        torch.testing.assert_close(ta.cpu(), tb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ga.cpu(), gb, rtol=1e-10, atol=1e-300)
        torch.testing.assert_close(w.cpu(), gb, rtol=1e-10, atol=1e-300)  # ∂total/∂L_t


def test_epoch_steps_ends_epochs_automatically():
    T = 3
    epochs = _epochs(4, 2, T, seed=1)
    a = STCH(T, warmup_epochs=1)
    b = STCH(T, warmup_epochs=1, epoch_steps=2)
    for (ta, ga, _), (tb, gb, _) in zip(_drive(a, epochs), _drive(b, epochs)):
        assert torch.equal(ta, tb) and torch.equal(ga, gb)
    assert a.epoch == b.epoch == 4 and not b.warming_up
    assert not STCH(T).end_epoch()  # an epoch without a step does not count


def test_smoothing_bounds_and_limits():
    # max_t f_t ≤ total/(T μ)·μ ≤ max_t f_t + μ log T (paper's bounds, λ = 1, z* = 0)
    T = 5
    ref = torch.linspace(0.5, 2.0, T, dtype=torch.float64)
    L = torch.tensor([0.3, 4.0, 1.0, 0.2, 2.5], dtype=torch.float64)
    f = torch.log(L / ref + EPS)
    for mu in (1e-3, 0.1, 1.0, 10.0):
        m = STCH(T, mu=mu, warmup_epochs=0, reference=ref)
        g = m.loss(L).item() / T
        assert f.max().item() - 1e-12 <= g <= f.max().item() + mu * math.log(T) + 1e-12
    # μ → 0: the worst normalised task takes all the weight (T on its log-loss)
    m = STCH(T, mu=1e-4, warmup_epochs=0, reference=ref)
    m.loss(L)
    worst = int(f.argmax())
    assert m.weights[worst].item() == pytest.approx(T / L[worst].item(), rel=1e-9)
    assert (m.weights.sum() - m.weights[worst]).item() < 1e-12
    # μ → ∞: equal weighting of the log-losses, ∂/∂L_t = 1/L_t
    m = STCH(T, mu=1e9, warmup_epochs=0, reference=ref)
    m.loss(L)
    torch.testing.assert_close(m.weights, 1.0 / L, rtol=1e-6, atol=0)


def test_preference_ideal_and_plain_variant():
    T = 3
    ref = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    lam = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    z = torch.tensor([-0.1, 0.2, 0.0], dtype=torch.float64)
    L = torch.tensor([1.0, 0.7, 0.3], dtype=torch.float64, requires_grad=True)
    for log_transform in (True, False):
        m = STCH(
            T,
            mu=0.3,
            warmup_epochs=0,
            reference=ref,
            preference=lam,
            ideal=z,
            log_transform=log_transform,
        )
        f = torch.log(L / ref + EPS) if log_transform else L / ref
        want = T * 0.3 * torch.logsumexp(lam * (f - z) / 0.3, 0)
        total = m.loss(L)
        torch.testing.assert_close(total, want, rtol=1e-12, atol=0)
        (g,) = torch.autograd.grad(total, L)
        torch.testing.assert_close(m.weights, g, rtol=1e-12, atol=0)
    # plain variant warm-up: equal weighting of the raw losses
    m = STCH(T, log_transform=False)
    assert m.loss(L).item() == pytest.approx(L.sum().item())
    assert m.weights.tolist() == [1.0, 1.0, 1.0]


def test_permutation_equivariance():
    T = 4
    epochs = _epochs(4, 2, T, seed=2)
    perm = torch.tensor([3, 1, 0, 2])
    a = _drive(STCH(T, warmup_epochs=1, mu=0.5), epochs)
    b = _drive(STCH(T, warmup_epochs=1, mu=0.5), [[L[perm] for L in e] for e in epochs])
    for (ta, ga, wa), (tb, gb, wb) in zip(a, b):
        torch.testing.assert_close(tb, ta, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gb, ga[perm], rtol=1e-12, atol=0)
        torch.testing.assert_close(wb, wa[perm], rtol=1e-12, atol=0)


def test_loss_scale_invariance():
    # multiplying a task's loss by k for the whole run scales its reference by k: the
    # normalised objectives, the total and the shared update Σ_t w_t ∇L_t are unchanged
    T = 3
    k = torch.tensor([1.0, 1e3, 1e-3], dtype=torch.float64)
    epochs = _epochs(4, 2, T, seed=3)
    a = _drive(STCH(T, warmup_epochs=1, eps=0.0), epochs)
    b = _drive(STCH(T, warmup_epochs=1, eps=0.0), [[L * k for L in e] for e in epochs])
    for s, ((ta, ga, _), (tb, gb, _)) in enumerate(zip(a, b)):
        torch.testing.assert_close(gb * k, ga, rtol=1e-9, atol=0)
        if s >= 4:  # after warm-up the total itself is invariant (warm-up: shifted by Σ log k)
            torch.testing.assert_close(tb, ta, rtol=1e-9, atol=1e-12)


def test_absent_task_equals_the_subproblem_and_stays_out_of_the_reference():
    T = 3
    epochs = _epochs(4, 3, T, seed=4)
    keep = [0, 2]
    full = _drive(STCH(T, warmup_epochs=1), epochs, mask=[True, False, True])
    m_sub = STCH(2, warmup_epochs=1)
    sub = _drive(m_sub, [[L[keep] for L in e] for e in epochs])
    for (ta, ga, wa), (tb, gb, wb) in zip(full, sub):
        torch.testing.assert_close(ta, tb, rtol=1e-12, atol=1e-12)
        assert ga[1] == 0 and wa[1] == 0
        torch.testing.assert_close(ga[keep], gb, rtol=1e-12, atol=0)
        torch.testing.assert_close(wa[keep], wb, rtol=1e-12, atol=0)


def test_reference_fallbacks():
    T = 3
    m = STCH(T, warmup_epochs=1)
    m.loss(torch.tensor([1.0, 2.0, 3.0]), mask=[True, True, False])  # warm-up epoch 0
    m.end_epoch()
    m.loss(torch.tensor([3.0, 5.0, 7.0]), mask=[True, False, False])  # estimation epoch
    m.end_epoch()
    # task 0: estimation mean; task 1: mean over the warm-up; task 2: never seen → 1
    assert m.reference.tolist() == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError):
        STCH(T, mu=0.0)
    with pytest.raises(ValueError):
        STCH(T, reference=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="STCH"):
        STCH(2).loss(torch.tensor([1.0, -1.0]))


def test_mask_and_nan_policy_in_both_phases():
    check_mask_and_nan(lambda **kw: STCH(3, **kw))
    check_mask_and_nan(lambda **kw: STCH(3, warmup_epochs=0, reference=[1.0, 2.0, 3.0], **kw))


def test_resume_equals_unbroken_across_the_warm_up():
    # 2 steps per epoch, W = 1: warm-up (steps 0–1), estimation (2–3), STCH (4–); the checkpoint
    # falls inside the estimation epoch.
    check_resume(lambda: STCH(3, warmup_epochs=1, epoch_steps=2), 3, steps=8, split_at=3)
    check_resume(
        lambda: STCH(3, warmup_epochs=1, epoch_steps=2, mu=0.3),
        3,
        steps=8,
        split_at=5,
        masks=lambda k: [True, k % 3 != 0, True],
    )
