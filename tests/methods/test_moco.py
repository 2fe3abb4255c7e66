"""MoCo (Fernando et al. 2023): the method's shared gradient over several steps against a direct
transcription of the update on explicit gradients (the authors' code variant: normalised
tracking and a softmax step; and the paper's Algorithm 1: raw gradients and the simplex
projection), with ``params=`` (the paper's setting) and with ``split``; masks, state and
arguments."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

import mtl_fast as mf
from mtl_fast.methods.moco import MoCo


def _simplex(v: torch.Tensor) -> torch.Tensor:
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0)
    k = torch.arange(1, len(v) + 1, dtype=v.dtype)
    rho = int((u - (css - 1) / k > 0).nonzero().max()) + 1
    return (v - (css[rho - 1] - 1) / rho).clamp_min(0)


def transcription(grads, losses, *, normalize=True, simplex="softmax", beta=0.5, bs=0.5,
                  gamma=0.1, gs=0.5, rho=0.0):  # fmt: skip
    """y_t ← y_t − β_k (y_t − h_t); λ ← step(λ − γ_k (YYᵀ + ρI) λ); d = Yᵀλ (float64)."""
    Tn, D = grads[0].shape
    y = torch.zeros(Tn, D, dtype=torch.float64)
    lam = torch.full((Tn,), 1.0 / Tn, dtype=torch.float64)
    out = []
    for k, (g, L) in enumerate(zip(grads, losses), start=1):
        g = g.double()
        h = g / (g.norm(dim=1, keepdim=True) + 1e-8) * L.double()[:, None] if normalize else g
        y = y - beta / k**bs * (y - h)
        v = lam - gamma / k**gs * (y @ y.T + rho * torch.eye(Tn, dtype=torch.float64)) @ lam
        lam = torch.softmax(v, 0) if simplex == "softmax" else _simplex(v)
        out.append(y.T @ lam)
    return out


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize(
    "options", [{}, {"normalize": False, "simplex": "project", "gamma": 0.01}, {"rho": 0.5}]
)
def test_params_route_equals_transcription(options):
    T = 3
    model = ToyMTL(T)
    m = MoCo(T, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    shared = model.shared_parameters()
    grads, losses = [], []
    for k in range(4):
        x, ys = toy_batch(model, seed=k)
        L = model.losses(x, ys)
        per_task = [_flat(torch.autograd.grad(L[t], shared, retain_graph=True)) for t in range(T)]
        grads.append(torch.stack(per_task))
        losses.append(L.detach())
        opt.zero_grad(set_to_none=True)
        mf.backward(model.losses(x, ys), method=m, params=shared)
        want = transcription(grads, losses, **options)[-1]
        torch.testing.assert_close(
            _flat([p.grad for p in shared]).double(), want, rtol=1e-5, atol=1e-7
        )
        opt.step()
    assert float(m.lambdas.sum()) == pytest.approx(1.0)
    y = m.tracked_gradients
    assert y is not None and len(y) == len(shared)


def test_split_route_tracks_feature_gradients():
    T = 3
    model = ToyMTL(T)
    m = MoCo(T)
    grads, losses = [], []
    for k in range(3):
        x, ys = toy_batch(model, seed=k)
        model.zero_grad(set_to_none=True)
        L, _ = split_step(model, m, x, ys)
        got = [p.grad.clone() for p in model.encoder.parameters()]
        z, J = feature_gradients(model, x, ys)
        grads.append(J.flatten(1))
        losses.append(L)
        want = transcription(grads, losses)[-1]
        model.zero_grad(set_to_none=True)
        z.backward(want.reshape(z.shape).float())
        for a, p in zip(got, model.encoder.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)


def test_masks_state_and_errors():
    T = 3
    m = check_mask_and_nan(lambda **kw: MoCo(T, **kw))
    assert m.tracked_gradients is not None and m.tracked_gradients[0][1].abs().sum() == 0
    check_resume(lambda: MoCo(T), T, steps=5, split_at=2, weights_only=True)
    check_resume(lambda: MoCo(T), T, steps=4, split_at=2, masks=lambda k: [k != 1, True, True])
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    split_step(model, m, x, ys)
    with pytest.raises(ValueError, match="drop_last"):
        split_step(model, m, x[:-1], ys[:, :-1])
    m.discard_pending()
    for bad in ({"beta": 0.0}, {"gamma": -1.0}, {"simplex": "sparsemax"}, {"rho": -1.0}):
        with pytest.raises(ValueError):
            MoCo(T, **bad)


def test_ema_rows_cpu_and_device_formulations_agree():
    from mtl_fast.methods._rows import ema_rows_, ema_rows_masked_

    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(50, generator=gen) for _ in range(3)]
    rows[1][3] = float("nan")  # a task that is not updated keeps its (non-finite) row
    buf = torch.randn(3, 50, generator=gen)
    keep = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    update = torch.tensor([True, False, True])
    scale = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    rows_b, buf_b = [r.clone() for r in rows], buf.clone()
    ema_rows_(buf, rows, keep, update, scale)
    ema_rows_masked_(buf_b, rows_b, keep, update, scale)
    torch.testing.assert_close(buf, buf_b, rtol=1e-6, atol=1e-7)
    for a, b in zip(rows, rows_b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, equal_nan=True)
    assert torch.isnan(rows[1][3])
