"""The functional form ``backward(losses, features= | params=, method=)``."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, split_step, toy_batch

from mtl_fast import reference
from mtl_fast.functional import backward, graph_leaves
from mtl_fast.methods.baselines import EqualWeighting
from mtl_fast.methods.cagrad import CAGrad
from mtl_fast.methods.gradnorm import GradNorm
from mtl_fast.methods.imtl import IMTL, IMTLG
from mtl_fast.methods.mgda import MGDA
from mtl_fast.methods.pcgrad import PCGrad

T = 3

METHODS = {
    "IMTLG": lambda: IMTLG(),
    "IMTL": lambda: IMTL(T),
    "MGDA-loss": lambda: MGDA(normalization="loss"),
    "GradNorm": lambda: GradNorm(T),
    "PCGrad": lambda: PCGrad(seed=3),
    "CAGrad": lambda: CAGrad(),
}


def _all_grads(*modules) -> list[torch.Tensor | None]:
    out = []
    for m in modules:
        for p in m.parameters():
            out.append(None if p.grad is None else p.grad.detach().clone())
    return out


def _assert_grads_close(a, b, rtol=1e-5, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is None and y is None
        else:
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def _set_scales(method) -> None:
    if isinstance(method, IMTL):
        with torch.no_grad():
            method.log_scales.copy_(torch.tensor([0.5, -1.0, 0.2]))


@pytest.mark.parametrize("name", list(METHODS))
def test_features_form_equals_split(name, device):
    model = ToyMTL(T, device=device)
    x, ys = toy_batch(model, device=device)
    m1 = METHODS[name]().to(device)
    _set_scales(m1)
    split_step(model, m1, x, ys)
    expected = _all_grads(model, m1)

    model.zero_grad(set_to_none=True)
    m2 = METHODS[name]().to(device)
    _set_scales(m2)
    z = model.encoder(x)
    losses = model.task_losses([z] * T, ys, stack=False)
    total = backward(losses, features=z, method=m2)
    assert total.requires_grad is False
    torch.testing.assert_close(m2.weights, m1.weights, rtol=1e-5, atol=1e-7)
    _assert_grads_close(_all_grads(model, m2), expected)
    assert m2.step == 1


def test_features_form_one_encoder_traversal_and_no_retained_graph():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    calls = {"encoder": 0}
    model.encoder[0].weight.register_hook(
        lambda g: calls.__setitem__("encoder", 1 + calls["encoder"])
    )
    z = model.encoder(x)
    losses = model.task_losses([z] * T, ys)
    backward(losses, features=z, method=IMTLG())
    assert calls["encoder"] == 1
    with pytest.raises(RuntimeError):
        losses.sum().backward()  # the graph was freed by the final backward


def _per_task_param_grads(model, x, ys, scales=None):
    """Explicit loop: g_t = ∇_θ (c_t L_t) for every shared parameter θ, as [T, *θ.shape]."""
    shared = model.shared_parameters()
    losses = model.losses(x, ys)
    per_task = []
    for t in range(T):
        c = 1.0 if scales is None else float(scales[t])
        per_task.append(torch.autograd.grad(c * losses[t], shared, retain_graph=True))
    return [torch.stack([g[k] for g in per_task]) for k in range(len(shared))]


@pytest.mark.parametrize("batched", [None, False])
def test_params_form_exact_imtlg(batched, device):
    model = ToyMTL(T, device=device)
    x, ys = toy_batch(model, device=device)
    Js = _per_task_param_grads(model, x, ys)
    G = sum(reference.gram(J) for J in Js)
    alpha = reference.imtl_g_weights(G)
    expected_shared = [torch.einsum("t,t...->...", alpha.to(J.dtype), J) for J in Js]
    model.zero_grad(set_to_none=True)
    torch.autograd.backward(model.losses(x, ys).sum(), inputs=model.head_parameters())
    expected_heads = [p.grad.clone() for p in model.head_parameters()]

    model.zero_grad(set_to_none=True)
    method = IMTLG()
    losses = model.losses(x, ys)
    backward(losses, params=model.shared_parameters(), method=method, batched=batched)
    torch.testing.assert_close(method.weights, alpha, rtol=1e-5, atol=1e-7)
    for p, e in zip(model.shared_parameters(), expected_shared):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6)
    for p, e in zip(model.head_parameters(), expected_heads):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6)


def test_params_form_accumulates_into_existing_grad():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    method = IMTLG()
    backward(model.losses(x, ys), params=model.shared_parameters(), method=method)
    once = [p.grad.clone() for p in model.parameters()]
    backward(model.losses(x, ys), params=model.shared_parameters(), method=method)
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)


def test_params_form_imtl_trains_scales_and_heads():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    method = IMTL(T)
    _set_scales(method)
    e = method.scales
    Js = _per_task_param_grads(model, x, ys, scales=e)
    alpha = reference.imtl_g_weights(sum(reference.gram(J) for J in Js))
    model.zero_grad(set_to_none=True)
    losses = model.losses(x, ys)
    backward(losses, params=model.shared_parameters(), method=method)
    torch.testing.assert_close(method.gradient_weights, alpha, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(method.weights, alpha * e, rtol=1e-5, atol=1e-7)
    for p, J in zip(model.shared_parameters(), Js):
        torch.testing.assert_close(
            p.grad, torch.einsum("t,t...->...", alpha, J), rtol=1e-5, atol=1e-6
        )
    # s_t: ∂/∂s_t (e^{s_t} L_t − s_t) = e^{s_t} L_t − 1
    torch.testing.assert_close(method.log_scales.grad, e * losses.detach() - 1)


class _ItemInBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number: vmap (is_grads_batched) cannot run it."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        scale = float(g.abs().max().item() >= 0)  # always 1.0, but needs .item()
        return g * scale


def test_vmap_failure_falls_back_to_loop():
    model = ToyMTL(T)
    x, ys = toy_batch(model)

    def losses_of(z):
        return model.task_losses([_ItemInBackward.apply(z)] * T, ys)

    m_ref = IMTLG()
    z = model.encoder(x)
    backward(losses_of(z), features=z, method=m_ref, batched=False)
    expected = _all_grads(model)
    model.zero_grad(set_to_none=True)
    z = model.encoder(x)
    with pytest.raises(RuntimeError):
        backward(losses_of(z), features=z, method=IMTLG(), batched=True)
    model.zero_grad(set_to_none=True)
    z = model.encoder(x)
    m = IMTLG()
    backward(losses_of(z), features=z, method=m)  # batched=None: falls back
    torch.testing.assert_close(m.weights, m_ref.weights)
    _assert_grads_close(_all_grads(model), expected)


@pytest.mark.parametrize("mode", ["features", "params"])
def test_mask_in_functional_forms(mode):
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    ys = ys.clone()
    ys[2, 0, 0] = float("nan")  # task 2 unlabelled
    z = model.encoder(x)
    losses = model.task_losses([z] * T, ys, stack=False)
    method = IMTLG()
    kw = {"features": z} if mode == "features" else {"params": model.shared_parameters()}
    backward(losses, method=method, mask=[True, True, False], **kw)
    assert method.weights[2] == 0
    torch.testing.assert_close(method.weights.sum(), torch.tensor(1.0))
    assert all(p.grad is None for p in model.heads[2].parameters())
    assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters())

    # Same weights as the two-task problem.
    model.zero_grad(set_to_none=True)
    z = model.encoder(x)
    L2 = model.task_losses([z] * T, ys, stack=False)[:2]
    m2 = IMTLG()
    kw = {"features": z} if mode == "features" else {"params": model.shared_parameters()}
    backward(L2, method=m2, **kw)
    torch.testing.assert_close(method.weights[:2], m2.weights, rtol=1e-5, atol=1e-7)


def test_nan_without_mask_raises():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    ys[1, 0, 0] = float("nan")
    z = model.encoder(x)
    with pytest.raises(ValueError, match="task 1"):
        backward(model.task_losses([z] * T, ys), features=z, method=IMTLG())


def test_loss_based_and_eval_methods_do_a_plain_backward():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    backward(model.losses(x, ys), method=EqualWeighting(T))
    expected = _all_grads(model)
    model.zero_grad(set_to_none=True)
    m = IMTLG().eval()
    z = model.encoder(x)
    backward(model.task_losses([z] * T, ys), method=m, features=z)
    _assert_grads_close(_all_grads(model), expected)


def test_errors():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    z = model.encoder(x)
    losses = model.task_losses([z] * T, ys)
    with pytest.raises(ValueError, match="exactly one"):
        backward(losses, method=IMTLG())
    with pytest.raises(ValueError, match="exactly one"):
        backward(losses, method=IMTLG(), features=z, params=model.shared_parameters())
    with pytest.raises(ValueError, match="not a leaf"):
        backward(losses, method=IMTLG(), params=[z])
    with pytest.raises(ValueError, match="does not require grad"):
        backward(losses, method=IMTLG(), features=z.detach())
    with pytest.raises(TypeError, match="Weighting"):
        backward(losses, method="imtl", features=z)
    m = IMTLG()
    m.split(z, num_tasks=T)  # a split left by an abandoned step: backward() replaces it
    backward(losses, method=m, features=z)
    assert m.step == 1 and m.weights.shape == (T,)


def test_graph_leaves_finds_every_leaf():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    leaves = graph_leaves(model.losses(x, ys).sum())
    assert {id(p) for p in leaves} == {id(p) for p in model.parameters()}


def test_features_form_under_autocast_matches_split():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    m1, m2 = IMTLG(), IMTLG()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model.encoder(x)
        zs = m1.split(z, num_tasks=T)
        losses = model.task_losses(zs, ys).float()
    m1.loss(losses).backward()
    expected = _all_grads(model)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model.encoder(x)
        losses = model.task_losses([z] * T, ys).float()
    backward(losses, features=z, method=m2)
    assert m2.weights.dtype == torch.float32
    torch.testing.assert_close(m2.weights, m1.weights)
    _assert_grads_close(_all_grads(model), expected, rtol=1e-2, atol=1e-3)
