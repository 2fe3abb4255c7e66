"""SDMGrad (Xiao et al. 2023): the Gram-space solve against a direct transcription of the
authors' training-code update on explicit gradients, its limits (λ = 0 → MGDA, λ → ∞ → mean),
warm start across steps, masks and state."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

import mtl_fast as mf
from mtl_fast.methods.sdmgrad import SDMGrad, sdmgrad_weights

T = 3


def _simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the simplex (sort and threshold), written out."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0)
    k = torch.arange(1, len(v) + 1, dtype=v.dtype)
    rho = int((u - (css - 1) / k > 0).nonzero().max()) + 1
    theta = (css[rho - 1] - 1) / rho
    return (v - theta).clamp_min(0)


def paper_sdmgrad(grads: list[torch.Tensor], lam: float, iters: int = 20):
    """The update on explicit gradient rows, step after step, with torch.optim.SGD (momentum
    0.5, lr 10) on φ(w) = ½ wᵀĜw + λ wᵀĜ1/T (+ const) and a projection after every step,
    Ĝ = JJᵀ / mean(√(diag + 1e-4))², w warm-started; d = (Jᵀw + λ mean_t g_t)/(1 + λ)."""
    Tn = grads[0].shape[0]
    w = torch.full((Tn,), 1.0 / Tn, dtype=torch.float64)
    out = []
    for J in grads:
        GG = J @ J.T
        s = torch.sqrt(GG.diagonal() + 1e-4).mean()
        GG = GG / s**2
        Gg = GG.mean(dim=1)
        w = w.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=10.0, momentum=0.5)
        for _ in range(iters):
            opt.zero_grad()
            obj = 0.5 * w @ GG @ w + lam * w @ Gg
            obj.backward()
            opt.step()
            with torch.no_grad():
                w.copy_(_simplex(w))
        w = w.detach()
        out.append((J.T @ w + lam * J.mean(0)) / (1 + lam))
    return out


def _grads(steps, Tn=4, D=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sc = torch.logspace(-1, 1, Tn, dtype=torch.float64)[:, None]
    return [torch.randn(Tn, D, generator=gen, dtype=torch.float64) * sc for _ in range(steps)]


@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_equals_transcription_over_steps(lam):
    grads = _grads(5)
    w = torch.full((4,), 0.25, dtype=torch.float64)
    for J, want in zip(grads, paper_sdmgrad(grads, lam)):
        alpha, w = sdmgrad_weights(J @ J.T, w, lam)
        torch.testing.assert_close(J.T @ alpha, want, rtol=1e-9, atol=1e-12)


def test_limits():
    J = _grads(1, seed=3)[0]
    G = J @ J.T
    w0 = torch.full((4,), 0.25, dtype=torch.float64)
    # λ = 0 with enough steps: MGDA's min-norm weights
    alpha, _ = sdmgrad_weights(G, w0, 0.0, iters=3000, lr=1.0)
    mgda = mf.mgda_weights(G)
    torch.testing.assert_close((alpha @ G @ alpha), (mgda @ G @ mgda), rtol=1e-6, atol=0)
    # λ → ∞: the average gradient
    alpha, _ = sdmgrad_weights(G, w0, 1e9)
    torch.testing.assert_close(
        alpha, torch.full((4,), 0.25, dtype=torch.float64), rtol=1e-8, atol=0
    )


def test_method_state_and_split():
    model = ToyMTL(T)
    m = SDMGrad(T, lam=0.5)
    grads = []
    for k in range(3):
        x, ys = toy_batch(model, seed=k)
        model.zero_grad(set_to_none=True)
        split_step(model, m, x, ys)
        z, J = feature_gradients(model, x, ys)
        grads.append(J.flatten(1).double())
        got = [p.grad.clone() for p in model.encoder.parameters()]
        want = paper_sdmgrad(grads, 0.5)[-1]
        model.zero_grad(set_to_none=True)
        z.backward(want.reshape(z.shape).float())
        for a, p in zip(got, model.encoder.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    assert abs(float(m.simplex_weights.sum()) - 1) < 1e-12


def test_masks_resume_and_arguments():
    m = check_mask_and_nan(lambda **kw: SDMGrad(T, **kw))
    assert m.simplex_weights[1] == 0
    check_resume(lambda: SDMGrad(T), T, steps=5, split_at=2, weights_only=True)
    check_resume(lambda: SDMGrad(T), T, steps=4, split_at=2, masks=lambda k: [k != 1, True, True])
    with pytest.raises(ValueError, match="lam"):
        SDMGrad(T, lam=-1.0)
