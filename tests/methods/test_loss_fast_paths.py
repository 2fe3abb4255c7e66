"""The unmasked CPU fast paths of the learnable-scale and STCH totals give the bits of their plain
torch formulations (written out here as they stood before the fast paths): total, weights and
the gradients with respect to the losses and the learnable parameters, with an upstream gradient
that is not 1 (so a reordered product would show)."""

from __future__ import annotations

import pytest
import torch

from mtl_fast.methods.imtl import IMTLL
from mtl_fast.methods.stch import STCH
from mtl_fast.methods.uncertainty import UncertaintyWeighting

T = 7


def _losses(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.logspace(-3, 3, T, dtype=dtype) * (torch.rand(T, generator=gen, dtype=dtype) + 0.5)


def _grads(total, *leaves):
    (0.37 * total).backward()
    return [x.grad.clone() for x in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("task_types", ["regression", "classification"])
def test_uncertainty_matches_the_plain_formula(dtype, task_types):
    m = UncertaintyWeighting(T, task_types=task_types).to(dtype)
    with torch.no_grad():
        m.log_vars.copy_(torch.linspace(-2.5, 3.0, T, dtype=dtype))
    L = _losses(dtype).requires_grad_(True)
    total = m.loss(L * 1)
    got = [total.detach(), m.weights.clone(), *_grads(total, L, m.log_vars)]

    s = m.log_vars.detach().clone().requires_grad_(True)
    L2 = _losses(dtype).requires_grad_(True)
    factors = m.coefficients.to(dtype) * torch.exp(-s)
    ref_total = torch.dot(factors.to(dtype), L2 * 1) + 0.5 * s.sum()
    want = [ref_total.detach(), factors.detach(), *_grads(ref_total, L2, s)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("far", [False, True])
def test_imtll_matches_the_plain_formula(dtype, far):
    m = IMTLL(T, max_log_scale=2.0 if far else 30.0).to(dtype)
    with torch.no_grad():
        m.log_scales.copy_(torch.linspace(-2.9, 2.9, T, dtype=dtype))
    m.log_scales.data[0] = -0.0
    L = _losses(dtype, 1).requires_grad_(True)
    total = m.loss(L * 1)
    got = [total.detach(), m.weights.clone(), *_grads(total, L, m.log_scales)]

    s = m.log_scales.detach().clone().requires_grad_(True)
    L2 = _losses(dtype, 1).requires_grad_(True)
    b = m.max_log_scale
    e = torch.exp(s + (s.detach().clamp(-b, b) - s.detach()))
    ref_total = torch.dot(e.to(dtype), L2 * 1) - s.sum()
    want = [ref_total.detach(), e.detach(), *_grads(ref_total, L2, s)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kwargs", [{}, {"mu": 0.3}, {"preference": [1.0] * (T - 1) + [2.0]}, {"ideal": [0.1] * T}]
)
def test_stch_matches_the_plain_formula(dtype, kwargs):
    ref = torch.linspace(0.5, 2.0, T, dtype=torch.float64)
    m = STCH(T, warmup_epochs=0, reference=ref, **kwargs)
    L = _losses(dtype, 2).requires_grad_(True)
    total = m.loss(L * 1)
    got = [total.detach(), m.weights.clone(), *_grads(total, L)]

    L2 = _losses(dtype, 2).requires_grad_(True)
    r = ref.to(dtype)
    lam = torch.as_tensor(kwargs.get("preference", [1.0] * T), dtype=torch.float64).to(dtype)
    z = torch.as_tensor(kwargs.get("ideal", [0.0] * T), dtype=torch.float64).to(dtype)
    mu = kwargs.get("mu", 1.0)
    x = L2 * 1
    f = torch.log(x / r + m.eps)
    dfdl = 1.0 / (x.detach() + m.eps * r)
    a = lam * (f - z) / mu
    ref_total = float(T) * mu * torch.logsumexp(a, dim=0)
    weights = float(T) * lam * torch.softmax(a.detach(), dim=0) * dfdl
    want = [ref_total.detach(), weights, *_grads(ref_total, L2)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)
