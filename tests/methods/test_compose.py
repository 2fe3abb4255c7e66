"""Compose(loss_method, gradient_method): IMTL-L ∘ IMTL-G is IMTL (Liu et al. 2021 §3.3) step for
step (weights, learnable scales, every gradient), on both routes; the scaled losses reach a
gradient method that reads them; state, rollback, masks and lifecycle of both parts; refusals."""

from __future__ import annotations

import pytest
import torch
from _toy import (
    ToyMTL,
    check_mask_and_nan,
    check_resume,
    feature_gradients,
    make_optimizer,
    split_step,
    toy_batch,
    train,
)

import mtl_fast as mf
from mtl_fast.methods.compose import Compose

T = 3


@pytest.mark.parametrize("route", ["split", "features"])
def test_imtl_l_then_imtl_g_is_imtl(route):
    def step_fn(model, method, x, ys, mask):
        if route == "split":
            split_step(model, method, x, ys, mask)
        else:
            z = model.encoder(x)
            mf.backward(model.task_losses([z] * T, ys), method=method, features=z, mask=mask)

    runs = []
    for make in (lambda: mf.IMTL(T), lambda: Compose(mf.IMTLL(T), mf.IMTLG())):
        torch.manual_seed(0)
        model, method = ToyMTL(T), make()
        opt = make_optimizer(model, method)
        history = train(model, method, opt, range(6), step_fn=step_fn)
        runs.append((model, method, history))
    (m_imtl, imtl, h_imtl), (m_comp, comp, h_comp) = runs
    for a, b in zip(h_imtl, h_comp):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(comp.loss_method.log_scales, imtl.log_scales, rtol=1e-6, atol=1e-7)
    assert not torch.equal(imtl.log_scales, torch.zeros(T))  # the scales did move
    torch.testing.assert_close(comp.gradient_weights, imtl.gradient_weights, rtol=1e-6, atol=1e-7)
    for p, q in zip(m_comp.parameters(), m_imtl.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_gradient_part_sees_the_scaled_gradients_and_losses():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    static = [2.0, 0.5, 3.0]
    comp = Compose(mf.StaticWeighting(static), mf.MGDA(T, normalization="loss"))
    split_step(model, comp, x, ys)
    got = [p.grad.clone() for p in model.encoder.parameters()]
    c = torch.tensor(static)
    torch.testing.assert_close(comp.loss_scales, c)
    z, J = feature_gradients(model, x, ys)
    losses = model.losses(x, ys).detach()
    # MGDA with loss normalisation on the scaled problem: gradients c_t g_t, losses c_t L_t;
    # λ from the normalised gradients, applied to the (scaled) gradients themselves
    scaled = (c[:, None, None] * J).flatten(1).double()
    normed = scaled / (c * losses).double()[:, None]
    lam = mf.mgda_weights(normed @ normed.T).double()
    want = (lam[:, None] * scaled).sum(0).reshape(z.shape)
    model.zero_grad(set_to_none=True)
    z.backward(want.float())
    for g, p in zip(got, model.encoder.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_statistics_part_resume_rollback_masks_and_lifecycle():
    make = lambda **kw: Compose(mf.CVWeighting(T), mf.PCGrad(T, seed=3), **kw)
    check_resume(make, T, steps=5, split_at=2, weights_only=True)
    m = check_mask_and_nan(make)
    assert m.weights[1] == 0
    # an abandoned step's update of the loss part is rolled back with the composite's step
    model = ToyMTL(T)
    comp = make()
    split_step(model, comp, *toy_batch(model, seed=0))
    x, ys = toy_batch(model, seed=1)
    comp.loss(model.task_losses(comp.split(model.encoder(x), num_tasks=T), ys))
    assert comp.step == 2 and comp.loss_method.step == 2
    split_step(model, comp, x, ys)  # the next step rolls the abandoned one back first
    assert comp.step == 2
    redo = make()
    for k in (0, 1):
        split_step(model, redo, *toy_batch(model, seed=k))
    for a, b in zip(comp.loss_method.statistics.snapshot(torch.device("cpu")),
                    redo.loss_method.statistics.snapshot(torch.device("cpu"))):  # fmt: skip
        torch.testing.assert_close(a, b)
    lsb = Compose(mf.LSB(T), mf.IMTLG())
    split_step(model, lsb, x, ys)
    assert lsb.end_epoch() is True and lsb.loss_method.period == 2


def test_refusals():
    with pytest.raises(ValueError, match="loss-based"):
        Compose(mf.IMTLG(), mf.MGDA())
    with pytest.raises(ValueError, match="gradient-based"):
        Compose(mf.IMTLL(T), mf.CVWeighting(T))
    for shaped in (mf.IMTL(T), mf.DBMTL(T), mf.GradNorm(T)):
        with pytest.raises(ValueError, match="shapes its own losses"):
            Compose(mf.IMTLL(T), shaped)
    with pytest.raises(ValueError, match="different numbers of tasks"):
        Compose(mf.IMTLL(3), mf.MGDA(4))
    with pytest.raises(TypeError):
        Compose(mf.IMTLL(T), "MGDA")  # type: ignore[arg-type]
    comp = Compose(mf.IMTLL(T), mf.IMTLG())
    assert (
        comp.param_groups() and comp.param_groups()[0]["params"][0] is comp.loss_method.log_scales
    )


def test_row_method_inside_compose():
    model = ToyMTL(T)
    comp = Compose(mf.UncertaintyWeighting(T), mf.GradDrop(T, seed=1))
    x, ys = toy_batch(model)
    split_step(model, comp, x, ys)
    assert comp.needs_gradient_rows and comp.weights.shape == (T,)
    assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters())
