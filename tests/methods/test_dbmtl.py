"""DB-MTL (Lin et al. 2023) in Gram space: against direct transcriptions of the original (EMA of
the T gradients, T×D state) and of the T-norm variant, the exact equivalence conditions, the
balancing property, invariances, masks and state."""

from __future__ import annotations

import warnings

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

from mtl_fast.functional import backward
from mtl_fast.methods.dbmtl import DBMTL, dbmtl_weights

T = 3


def original_dbmtl(grads: list[torch.Tensor], beta: float, sigma: float = 0.0):
    """The original update on explicit gradients: ĝ_t ← β_k ĝ_t + (1−β_k) g_t (ĝ = 0 at the
    start, β_k = β/k^σ), u = Σ_t (max_s ‖ĝ_s‖/‖ĝ_t‖) ĝ_t. Returns u for every step."""
    buf = torch.zeros_like(grads[0])
    out = []
    for k, g in enumerate(grads, start=1):
        b = beta / k**sigma
        buf = b * buf + (1 - b) * g
        n = buf.norm(dim=1)
        out.append(((n.max() / n)[:, None] * buf).sum(0))
    return out


def norm_variant(grads: list[torch.Tensor], beta: float, sigma: float = 0.0):
    """The Gram-space variant written on explicit gradients: n̂_t ← β_k n̂_t + (1−β_k)‖g_t‖,
    u' = max_s n̂_s Σ_t g_t/‖g_t‖."""
    ema = torch.zeros(grads[0].shape[0], dtype=grads[0].dtype)
    out = []
    for k, g in enumerate(grads, start=1):
        b = beta / k**sigma
        n = g.norm(dim=1)
        ema = b * ema + (1 - b) * n
        out.append(ema.max() * (g / n[:, None]).sum(0))
    return out


def run_gram(grads, beta, sigma=0.0):
    Tn = grads[0].shape[0]
    ema = torch.zeros(Tn, dtype=torch.float64)
    counts = torch.zeros(Tn, dtype=torch.int64)
    out = []
    for g in grads:
        alpha, ema, counts = dbmtl_weights(g @ g.T, ema, counts, beta, sigma)
        out.append(alpha @ g)
    return out, ema


def _random_grads(steps, Tn=4, D=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, Tn, dtype=torch.float64)[:, None]
    return [torch.randn(Tn, D, generator=gen, dtype=torch.float64) * scales for _ in range(steps)]


@pytest.mark.parametrize("beta,sigma", [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)])
def test_gram_space_equals_norm_variant_transcription(beta, sigma):
    grads = _random_grads(6)
    ours, _ = run_gram(grads, beta, sigma)
    for a, b in zip(ours, norm_variant(grads, beta, sigma)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_equals_original_without_smoothing():
    grads = _random_grads(5, seed=1)
    ours, _ = run_gram(grads, 0.0)
    for a, b in zip(ours, original_dbmtl(grads, 0.0)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta,sigma", [(0.9, 0.0), (0.6, 0.5)])
def test_equals_original_when_each_task_keeps_its_direction(beta, sigma):
    # g_t^(k) = c_t^(k) d_t, c > 0: ĝ_t = n̂_t d_t, so both updates coincide at every step,
    # including the zero-start bias of the first steps.
    gen = torch.Generator().manual_seed(2)
    d = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    grads = [
        d * (0.1 + torch.rand(4, 1, generator=gen, dtype=torch.float64) * 10) for _ in range(6)
    ]
    ours, _ = run_gram(grads, beta, sigma)
    for a, b in zip(ours, original_dbmtl(grads, beta, sigma)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_differs_from_original_in_general_as_documented():
    grads = _random_grads(6, seed=3)
    ours, ema = run_gram(grads, 0.9)
    orig = original_dbmtl(grads, 0.9)
    assert not torch.allclose(ours[-1], orig[-1], rtol=1e-3)
    # magnitude: max EMA-of-norms ≥ max norm-of-EMA (triangle inequality)
    buf = torch.zeros_like(grads[0])
    for g in grads:
        buf = 0.9 * buf + 0.1 * g
    assert ema.max() >= buf.norm(dim=1).max()


def test_every_task_contributes_the_same_norm():
    grads = _random_grads(4, seed=4)
    ema = torch.zeros(4, dtype=torch.float64)
    counts = torch.zeros(4, dtype=torch.int64)
    for g in grads:
        alpha, ema, counts = dbmtl_weights(g @ g.T, ema, counts, 0.9)
        terms = (alpha[:, None] * g).norm(dim=1)
        torch.testing.assert_close(
            terms, torch.full_like(terms, ema.max().item()), rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("ema", ["gradient", "norm"])
def test_method_through_split_uses_log_loss_gradients(device, ema):
    model = ToyMTL(T, device=device)
    m = DBMTL(T, beta=0.5, ema=ema).to(device)
    transcription = original_dbmtl if ema == "gradient" else norm_variant
    grads = []
    for k in range(3):
        x, ys = toy_batch(model, seed=k, device=device)
        model.zero_grad(set_to_none=True)
        losses, total = split_step(model, m, x, ys)
        torch.testing.assert_close(total, torch.log(losses + 1e-8).sum())
        scales = 1.0 / (losses + 1e-8)
        z, J = feature_gradients(model, x, ys, scales=scales)
        grads.append(J.flatten(1).double().cpu())
        got = [p.grad.clone() for p in model.encoder.parameters()]
        heads = [p.grad.clone() for p in model.heads.parameters()]
        # heads are trained on their log-losses
        logs = torch.log(model.losses(x, ys) + 1e-8).sum()
        want_heads = torch.autograd.grad(logs, list(model.heads.parameters()))
        for a, b in zip(heads, want_heads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        want_u = transcription(grads, 0.5)[-1]
        model.zero_grad(set_to_none=True)
        z.backward(want_u.reshape(z.shape).to(z.dtype).to(z.device))
        for a, b in zip(got, model.encoder.parameters()):
            torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-6)
        # weights: effective factors on the raw losses' gradients, α_t / (L_t + ε)
        torch.testing.assert_close(
            m.weights, m.gradient_weights * scales.float(), rtol=1e-6, atol=0
        )


@pytest.mark.parametrize("ema", ["gradient", "norm"])
def test_functional_backward_with_parameters_is_parameter_level(ema):
    model = ToyMTL(T)
    m = DBMTL(T, beta=0.0, ema=ema)
    x, ys = toy_batch(model)
    params = model.shared_parameters()
    losses = model.losses(x, ys)
    logs = torch.log(losses + 1e-8)
    J = torch.stack(
        [
            torch.cat(
                [g.flatten() for g in torch.autograd.grad(logs[t], params, retain_graph=True)]
            )
            for t in range(T)
        ]
    ).double()
    want = norm_variant([J], 0.0)[0]
    model.zero_grad(set_to_none=True)
    backward(model.losses(x, ys), method=m, params=params)
    got = torch.cat([p.grad.flatten() for p in params]).double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_invariances():
    Tn = 4
    grads = _random_grads(3, Tn, seed=5)
    perm = torch.tensor([2, 3, 0, 1])
    ema = torch.rand(Tn, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counts = torch.tensor([1, 2, 3, 4])
    G = grads[0] @ grads[0].T
    alpha, new, _ = dbmtl_weights(G, ema, counts, 0.7, 0.5)
    alpha_p, new_p, _ = dbmtl_weights(G[perm][:, perm], ema[perm], counts[perm], 0.7, 0.5)
    torch.testing.assert_close(alpha_p, alpha[perm], rtol=1e-12, atol=0)
    torch.testing.assert_close(new_p, new[perm], rtol=1e-12, atol=0)
    # a common gradient scale c: u' scales by c (α unchanged given n̂ scaled alike)
    alpha_c, _, _ = dbmtl_weights(9.0 * G, 3.0 * ema, counts, 0.7, 0.5)
    torch.testing.assert_close(alpha_c, alpha, rtol=1e-12, atol=0)


@pytest.mark.parametrize("ema", ["gradient", "norm"])
def test_loss_scale_invariance_of_the_whole_method(ema):
    # log(k L) = log k + log L: scaling a task's loss changes nothing (ε = 0)
    k = [1.0, 1e3, 1e-2]
    a, b = ToyMTL(T), ToyMTL(T, loss_scales=[s * f for s, f in zip(ToyMTL(T).loss_scales, k)])
    ma, mb = DBMTL(T, eps=0.0, ema=ema), DBMTL(T, eps=0.0, ema=ema)
    for step in range(3):
        x, ys = toy_batch(a, seed=step)
        for model, m in ((a, ma), (b, mb)):
            model.zero_grad(set_to_none=True)
            split_step(model, m, x, ys)
        for pa, pb in zip(a.encoder.parameters(), b.encoder.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(ma.gradient_weights, mb.gradient_weights, rtol=1e-4, atol=0)


def test_absent_task_state_is_untouched():
    grads = _random_grads(1, 3, seed=6)[0]
    grads[1] = 0.0
    ema = torch.tensor([0.5, 0.7, 0.2], dtype=torch.float64)
    counts = torch.tensor([3, 3, 3])
    alpha, new, c = dbmtl_weights(grads @ grads.T, ema, counts, 0.9)
    assert alpha[1] == 0 and new[1] == 0.7 and c.tolist() == [4, 3, 4]
    assert torch.isfinite(alpha).all()
    m = check_mask_and_nan(lambda **kw: DBMTL(T, ema="norm", **kw))
    assert m.ema_norms[1] == 0 and m._state["counts"].tolist() == [1, 0, 1]
    m = check_mask_and_nan(lambda **kw: DBMTL(T, **kw))
    assert m._state["counts"].tolist() == [1, 0, 1]
    bufs = m.ema_gradients
    assert bufs is not None and bufs[0][1].abs().max() == 0 and bufs[0][0].abs().max() > 0


def test_degenerate_and_arguments():
    alpha, _, _ = dbmtl_weights(
        torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, dtype=torch.long), 0.9
    )
    assert alpha.tolist() == [0.0, 0.0]
    alpha, _, _ = dbmtl_weights(
        torch.eye(1) * 4.0, torch.zeros(1), torch.zeros(1, dtype=torch.long), 0.9
    )
    assert alpha.tolist() == pytest.approx([0.1])  # zero start: n̂ = 0.1·2, α = 0.2/2
    with pytest.raises(ValueError):
        DBMTL(2, beta=1.0)
    with pytest.raises(ValueError, match="DBMTL"):
        DBMTL(2).total_loss(torch.tensor([1.0, -1.0]), torch.ones(2, dtype=torch.bool))


@pytest.mark.parametrize("ema", ["gradient", "norm"])
def test_resume_equals_unbroken(ema):
    check_resume(lambda: DBMTL(T, beta=0.8, sigma=0.5, ema=ema), T, steps=6, split_at=3)
    check_resume(
        lambda: DBMTL(T, ema=ema),
        T,
        steps=5,
        split_at=2,
        masks=lambda k: [k != 1, True, k % 2 == 0],
    )


def _noisy_grads(noise: float, steps: int = 50, Tn: int = 4, D: int = 256, seed: int = 0):
    """Each task: a fixed direction (norms spread over 1e-1..1e1) plus isotropic noise whose
    norm is ``noise`` times the signal's."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True) * torch.logspace(-1, 1, Tn, dtype=torch.float64)[:, None]
    out = []
    for _ in range(steps):
        e = torch.randn(Tn, D, generator=gen, dtype=torch.float64)
        e = e / e.norm(dim=1, keepdim=True) * d.norm(dim=1, keepdim=True) * noise
        out.append(d + e)
    return out


@pytest.mark.parametrize(
    "noise,rel,cos", [(0.0, 0.0, 1.0), (0.3, 0.29, 0.96), (1.0, 0.94, 0.74), (3.0, 2.36, 0.47)]
)
def test_norm_variant_deviation(noise, rel, cos):
    """The deviation of ema='norm' from the published update that the module docstring states
    (relative difference and cosine at the last step, averaged over 5 seeds)."""
    rels, coss = [], []
    for seed in range(5):
        grads = _noisy_grads(noise, seed=seed)
        u = original_dbmtl(grads, 0.9)[-1]
        v = norm_variant(grads, 0.9)[-1]
        rels.append(float((v - u).norm() / u.norm()))
        coss.append(float(v @ u / (v.norm() * u.norm())))
    assert sum(rels) / 5 == pytest.approx(rel, abs=0.01)
    assert sum(coss) / 5 == pytest.approx(cos, abs=0.01)


def test_gradient_variant_state_and_errors():
    model = ToyMTL(T)
    m = DBMTL(T)
    x, ys = toy_batch(model)
    split_step(model, m, x, ys)
    bufs = m.ema_gradients
    assert bufs is not None and bufs[0].shape[0] == T and bufs[0].dtype == torch.float32
    # a different batch size: the EMA is indexed by sample position
    with pytest.raises(ValueError, match="drop_last"):
        split_step(model, m, x[:-1], ys[:, :-1])
    m.discard_pending()
    # a caller that forms only the Gram matrix cannot serve the published variant
    m2 = DBMTL(T)
    m2.open_split("test")
    with pytest.raises(RuntimeError, match="ema='norm'"):
        m2.balance_gram(torch.eye(T))
    with pytest.raises(ValueError, match="ema"):
        DBMTL(T, ema="grad")


def test_feature_level_gradient_ema_warns_once_norm_ema_does_not():
    """ema='gradient' at the feature level averages by sample position: one warning naming the
    fix; ema='norm' (T numbers of state) and the parameter route do not warn."""
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    m = DBMTL(T, ema="gradient")
    with pytest.warns(UserWarning, match="sample position.*ema='norm'"):
        split_step(model, m, x, ys)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_step(model, m, x, ys)
        split_step(model, DBMTL(T, ema="norm"), x, ys)
        backward(
            model.losses(x, ys), method=DBMTL(T, ema="gradient"), params=model.shared_parameters()
        )
