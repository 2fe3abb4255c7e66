"""ExcessMTL (He et al. 2024): the method's weights and shared gradient over several steps
against a direct transcription of the authors' update on explicit gradients (parameter
gradients with ``params=``; batch-summed feature gradients with ``split``), the invariance to a
task's loss scale that the normalisation by the first estimate gives, masks, state and
arguments."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

import mtl_fast as mf
from mtl_fast.methods.excess_mtl import ExcessMTL

T = 3


def transcription(grads, eta=1e-2):
    """a += g²; r_t = g_t (1/√(a_t + 1e-7)) g_tᵀ; first step r⁰ = r (weights 1), later
    w ← w exp(η r / r⁰), w ← T w / Σ w; the update Σ w_t g_t (float64)."""
    a = torch.zeros_like(grads[0], dtype=torch.float64)
    w = torch.ones(grads[0].shape[0], dtype=torch.float64)
    r0 = None
    out = []
    for g in grads:
        g = g.double()
        a = a + g**2
        r = torch.stack([g[t] * (1 / torch.sqrt(a[t] + 1e-7)) @ g[t] for t in range(g.shape[0])])
        if r0 is None:
            r0 = r
        else:
            w = w * torch.exp(eta * r / r0)
            w = w / w.sum() * g.shape[0]
        out.append((w.clone(), g.T @ w))
    return out


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def test_params_route_equals_transcription():
    model = ToyMTL(T)
    m = ExcessMTL(T, step_size=0.5)  # a large step: the weights move visibly in 4 steps
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    shared = model.shared_parameters()
    grads = []
    for k in range(4):
        x, ys = toy_batch(model, seed=k)
        L = model.losses(x, ys)
        grads.append(
            torch.stack(
                [_flat(torch.autograd.grad(L[t], shared, retain_graph=True)) for t in range(T)]
            )
        )
        opt.zero_grad(set_to_none=True)
        mf.backward(model.losses(x, ys), method=m, params=shared)
        w, d = transcription(grads, 0.5)[-1]
        torch.testing.assert_close(m.weights.double(), w, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(
            _flat([p.grad for p in shared]).double(), d, rtol=1e-5, atol=1e-7
        )
        opt.step()
    assert not torch.allclose(m.weights, torch.ones(T))
    assert float(m.weights.sum()) == pytest.approx(T)


def test_split_route_uses_batch_summed_feature_gradients():
    model = ToyMTL(T)
    m = ExcessMTL(T, step_size=0.5)
    sums = []
    for k in range(3):
        x, ys = toy_batch(model, seed=k)
        model.zero_grad(set_to_none=True)
        split_step(model, m, x, ys)
        got = [p.grad.clone() for p in model.encoder.parameters()]
        z, J = feature_gradients(model, x, ys)
        sums.append(J.sum(dim=1))
        w, _ = transcription(sums, 0.5)[-1]
        torch.testing.assert_close(m.weights.double(), w, rtol=1e-5, atol=1e-7)
        model.zero_grad(set_to_none=True)
        z.backward((w.float()[:, None, None] * J).sum(0))
        for a, p in zip(got, model.encoder.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)


def test_weights_do_not_depend_on_a_tasks_loss_scale():
    """Dividing by the first estimate: multiplying a task's loss by k multiplies its gradients by
    k, r_t and r⁰_t by k (up to ε), so the weights stay (a fixed model, several batches)."""
    runs = []
    for scale in (1.0, 10.0):
        model = ToyMTL(T, loss_scales=[scale, 1.0, 1.0])
        m = ExcessMTL(T, step_size=0.5)
        for k in range(4):
            x, ys = toy_batch(model, seed=k)
            model.zero_grad(set_to_none=True)
            split_step(model, m, x, ys)
        runs.append(m.weights.clone())
    assert float(runs[0].max() - runs[0].min()) > 0.5  # the weights did move
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-6)


def test_masks_state_and_arguments():
    m = check_mask_and_nan(lambda **kw: ExcessMTL(T, **kw))
    assert m.weights[1] == 0 and torch.isnan(m.initial_excess_risks[1])
    check_resume(lambda: ExcessMTL(T, step_size=0.5), T, steps=5, split_at=2, weights_only=True)
    check_resume(
        lambda: ExcessMTL(T, step_size=0.5), T, steps=4, split_at=2,
        masks=lambda k: [k != 1, True, True],
    )  # fmt: skip
    # the batch size may change (statistics per feature), the features per sample may not
    model = ToyMTL(T)
    m = ExcessMTL(T)
    x, ys = toy_batch(model)
    split_step(model, m, x, ys)
    split_step(model, m, x[:-3], ys[:, :-3])
    with pytest.raises(ValueError, match="step_size"):
        ExcessMTL(T, step_size=0.0)
