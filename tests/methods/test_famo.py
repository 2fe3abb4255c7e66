"""FAMO (Liu et al. 2023): against a direct transcription of Algorithm 1 (logit step by
torch.optim.Adam / plain SGD, softmax Jacobian by autograd), both δ options, invariances, masks
and state."""

from __future__ import annotations

import io

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, make_optimizer, toy_batch

from mtl_fast.methods.famo import FAMO, famo_logit_gradient


class Transcription:
    """Algorithm 1 written out: logits ξ (a leaf), z = softmax(ξ), D = L − ℓ* + ε,
    total = Σ z_t log D_t / c with c = Σ z_t / D_t (detached); the logit step takes
    d = ∂(zᵀδ)/∂ξ by autograd and steps ξ with ``torch.optim.Adam(weight_decay=γ)`` (the
    published code's choice) or ξ ← ξ − η(d + γξ)."""

    def __init__(self, T, lr=0.025, gamma=0.01, optimizer="adam", floor=None, eps=1e-8):
        self.xi = torch.zeros(T, dtype=torch.float64, requires_grad=True)
        self.floor = torch.zeros(T, dtype=torch.float64) if floor is None else floor
        self.eps, self.lr, self.gamma, self.kind = eps, lr, gamma, optimizer
        self.opt = torch.optim.Adam([self.xi], lr=lr, weight_decay=gamma)
        self.prev = None

    def total(self, L):
        z = torch.softmax(self.xi.detach(), 0)
        D = L - self.floor + self.eps
        c = (z / D).sum().detach()
        self.prev = L.detach().clone()
        return (z / c * torch.log(D)).sum()

    def update(self, L_after):
        delta = torch.log(self.prev - self.floor + self.eps) - torch.log(
            L_after - self.floor + self.eps
        )
        with torch.enable_grad():
            (d,) = torch.autograd.grad(torch.softmax(self.xi, 0), self.xi, grad_outputs=delta)
        if self.kind == "adam":
            self.opt.zero_grad()
            self.xi.grad = d
            self.opt.step()
        else:
            with torch.no_grad():
                self.xi -= self.lr * (d + self.gamma * self.xi)


def _loss_sequence(T, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 2, T, dtype=torch.float64)
    before = torch.rand(steps, T, generator=gen, dtype=torch.float64) * scales + 1e-3
    after = before * (0.7 + 0.5 * torch.rand(steps, T, generator=gen, dtype=torch.float64))
    return before, after


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_extra_pass_equals_transcription(optimizer):
    T, steps = 4, 8
    before, after = _loss_sequence(T, steps)
    floor = torch.tensor([0.0, 1e-4, 0.0, 1e-3], dtype=torch.float64)
    ref = Transcription(T, optimizer=optimizer, lr=0.1, gamma=0.01, floor=floor)
    m = FAMO(T, optimizer=optimizer, lr=0.1, gamma=0.01, min_losses=floor)
    for k in range(steps):
        La = before[k].clone().requires_grad_(True)
        Lb = before[k].clone().requires_grad_(True)
        ta, tb = m.loss(La), ref.total(Lb)
        ta.backward()
        tb.backward()
        # same gradient; the value is the weighted mean Σ w_t L_t (theirs is log-domain)
        torch.testing.assert_close(La.grad, Lb.grad, rtol=1e-12, atol=0)
        torch.testing.assert_close(ta, (La.grad * before[k]).sum(), rtol=1e-12, atol=0)
        torch.testing.assert_close(m.weights, La.grad, rtol=1e-12, atol=0)  # effective factors
        assert m.weights.sum().item() == pytest.approx(1.0, rel=1e-12)
        m.update(after[k])
        ref.update(after[k])
        torch.testing.assert_close(m.logits, ref.xi.detach(), rtol=1e-12, atol=1e-15)
    assert m.logits.abs().max() > 1e-3  # the logits did move


def test_next_step_option_uses_the_next_losses():
    T, steps = 3, 7
    before, _ = _loss_sequence(T, steps, seed=1)
    ref = Transcription(T)
    m = FAMO(T, extra_pass=False)
    for k in range(steps):
        if k > 0:
            ref.update(before[k])  # δ from the previous step's losses to this step's
        La = before[k].clone().requires_grad_(True)
        Lb = before[k].clone().requires_grad_(True)
        m.loss(La).backward()
        ref.total(Lb).backward()
        torch.testing.assert_close(La.grad, Lb.grad, rtol=1e-12, atol=0)
        torch.testing.assert_close(m.logits, ref.xi.detach(), rtol=1e-12, atol=1e-15)
    with pytest.raises(RuntimeError, match="extra_pass=False"):
        m.update(before[0])


def test_logit_gradient_is_the_softmax_jacobian_product():
    gen = torch.Generator().manual_seed(0)
    xi = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(5, generator=gen, dtype=torch.float64)
    (want,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
    got = famo_logit_gradient(xi.detach(), delta, torch.ones(5, dtype=torch.bool))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    # the task whose log-loss decreased most gets the largest logit decrease
    assert got.argmax() == delta.argmax() or got[delta.argmax()] > 0


def test_balances_decrease_rates():
    # two tasks, task 0 improves much faster: its logit (and weight) go down
    m = FAMO(2, optimizer="sgd", lr=0.5, gamma=0.0)
    for _ in range(5):
        m.loss(torch.tensor([1.0, 1.0], dtype=torch.float64))
        m.update(torch.tensor([0.5, 0.95], dtype=torch.float64))
    z = m.task_weights
    assert z[0] < 0.5 < z[1]


def test_permutation_equivariance():
    T, steps = 4, 6
    before, after = _loss_sequence(T, steps, seed=2)
    perm = torch.tensor([2, 0, 3, 1])
    a, b = FAMO(T), FAMO(T)
    for k in range(steps):
        a.loss(before[k])
        b.loss(before[k][perm])
        a.update(after[k])
        b.update(after[k][perm])
        torch.testing.assert_close(b.logits, a.logits[perm], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(b.weights, a.weights[perm], rtol=1e-12, atol=1e-15)


def test_loss_scale_invariance():
    # ℓ* = 0, ε = 0: δ is a log-ratio, unchanged when a task's loss is multiplied by k, so the
    # logits are unchanged; that task's effective factor is divided by k (up to the common
    # renormalisation c), so the DIRECTION of the shared update Σ_t w_t ∇L_t is unchanged.
    T, steps = 3, 6
    before, after = _loss_sequence(T, steps, seed=3)
    k = torch.tensor([1.0, 1e3, 1e-2], dtype=torch.float64)
    a, b = FAMO(T, eps=0.0), FAMO(T, eps=0.0)
    for s in range(steps):
        a.loss(before[s])
        b.loss(before[s] * k)
        a.update(after[s])
        b.update(after[s] * k)
        torch.testing.assert_close(b.logits, a.logits, rtol=1e-9, atol=1e-12)
        wb = b.weights * k
        torch.testing.assert_close(wb / wb.sum(), a.weights / a.weights.sum(), rtol=1e-9, atol=0)


def test_absent_task_is_untouched_and_others_equal_the_subproblem():
    T, steps = 3, 6
    before, after = _loss_sequence(T, steps, seed=4)
    full, sub = FAMO(T), FAMO(2)
    keep = [0, 2]
    mask = [True, False, True]
    for s in range(steps):
        full.loss(before[s], mask=mask)
        sub.loss(before[s][keep])
        assert full.weights[1] == 0
        torch.testing.assert_close(full.weights[keep], sub.weights, rtol=1e-12, atol=0)
        full.update(after[s], mask=mask if s % 2 else None)  # δ needs both: task 1 skipped
        sub.update(after[s][keep])
        torch.testing.assert_close(full.logits[keep], sub.logits, rtol=1e-12, atol=1e-15)
        assert full.logits[1] == 0 and full._state["updates"][1] == 0
        assert full._state["exp_avg"][1] == 0 and full._state["exp_avg_sq"][1] == 0


def test_mask_and_nan_policy():
    check_mask_and_nan(lambda **kw: FAMO(3, **kw))
    with pytest.raises(ValueError, match="FAMO"):
        FAMO(2, min_losses=[0.5, 0.0]).loss(torch.tensor([0.1, 1.0]))


def test_misuse_is_reported():
    m = FAMO(2)
    with pytest.raises(RuntimeError, match="preceding training step"):
        m.update(torch.tensor([1.0, 1.0]))
    m.loss(torch.tensor([1.0, 2.0]))
    with pytest.warns(RuntimeWarning, match="update"):
        m.loss(torch.tensor([1.0, 2.0]))  # update() was skipped: warned once, logits kept
    assert torch.equal(m.logits, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        FAMO(2, optimizer="rmsprop")


def _famo_training(model, method, opt, steps, device):
    """The paper's loop: step, then recompute the losses on the same batch and update."""
    history = []
    for k in steps:
        x, ys = toy_batch(model, seed=k, device=device)
        opt.zero_grad(set_to_none=True)
        method.loss(model.losses(x, ys)).backward()
        opt.step()
        with torch.no_grad():
            method.update(model.losses(x, ys))
        history.append((method.weights.clone(), method.logits.clone()))
    return history


def test_resume_equals_unbroken_extra_pass(device):
    T, steps, split = 3, 6, 3

    def fresh(seed=0):
        model = ToyMTL(T, seed=seed, device=device)
        method = FAMO(T, lr=0.1).to(device)
        return model, method, make_optimizer(model, method)

    model_a, method_a, opt_a = fresh()
    hist_a = _famo_training(model_a, method_a, opt_a, range(steps), device)
    model_b, method_b, opt_b = fresh()
    hist_b = _famo_training(model_b, method_b, opt_b, range(split), device)
    buf = io.BytesIO()
    torch.save(
        {"model": model_b.state_dict(), "method": method_b.state_dict(), "opt": opt_b.state_dict()},
        buf,
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model_c, method_c, opt_c = fresh(seed=9)
    model_c.load_state_dict(ckpt["model"])
    method_c.load_state_dict(ckpt["method"])
    opt_c.load_state_dict(ckpt["opt"])
    hist_c = _famo_training(model_c, method_c, opt_c, range(split, steps), device)
    for (wa, la), (wc, lc) in zip(hist_a, hist_b + hist_c):
        assert torch.equal(wa, wc) and torch.equal(la, lc)
    assert method_c.logits.device.type == torch.device(device).type


def test_resume_equals_unbroken_next_step_option():
    check_resume(lambda: FAMO(3, extra_pass=False, lr=0.1), 3, steps=6, split_at=3)
    check_resume(
        lambda: FAMO(3, extra_pass=False, lr=0.1),
        3,
        steps=6,
        split_at=2,
        masks=lambda k: [True, k % 3 != 1, True],
    )


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_native_cpu_step_equals_the_torch_step(monkeypatch, optimizer):
    """CPU state takes one native call per logit step and per weight (mtl_fast._C.famo_*); the
    torch operations (any device) give the same weights and state, masks included."""
    gen = torch.Generator().manual_seed(3)
    losses = torch.rand(10, 4, generator=gen, dtype=torch.float64) * 3 + 0.1
    masks = torch.rand(10, 4, generator=gen) > 0.25

    def run():
        m = FAMO(4, optimizer=optimizer, extra_pass=False)
        weights = []
        for L, mask in zip(losses, masks):
            m.loss(L.clone().requires_grad_(), mask.tolist()).backward()
            weights.append(m.weights.clone())
        return weights, {k: v for k, v in m._state.items() if isinstance(v, torch.Tensor)}

    native = run()
    monkeypatch.setattr(FAMO, "_native_logit_step", FAMO._torch_logit_step)
    monkeypatch.setattr(FAMO, "_factors", FAMO._torch_factors)
    torch_path = run()
    for a, b in zip(native[0], torch_path[0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert native[1].keys() == torch_path[1].keys()
    for k in native[1]:
        torch.testing.assert_close(native[1][k], torch_path[1][k], rtol=1e-12, atol=1e-15)
