"""GradDrop (Chen et al. 2020) as a method: the shared gradient of a training step against a
direct transcription of the paper's Algorithm 1 on explicit feature gradients (with the same
uniform draws), on every route (``split``, ``mf.backward(features=)``, several feature tensors,
the per-element rule, ``params=``), and its properties, masks and arguments."""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, feature_gradients, split_step, toy_batch

import mtl_fast as mf
from mtl_fast.methods.graddrop import GradDrop

T = 3


def algorithm1(J: torch.Tensor, A: torch.Tensor, U: torch.Tensor, leak, batch: bool = True):
    """Chen et al. 2020, Algorithm 1, f = identity, on J [T, B, F] at activations A [B, F]."""
    J, A, U = J.double(), A.double(), U.double()
    grads = torch.sign(A)[None] * J  # ∇_i = sgn(A) ∘ ∇_A L_i
    if batch:
        grads = grads.sum(dim=1)  # batch-separated: summed over the batch dimension
    P = 0.5 * (1 + grads.sum(0) / (grads.abs().sum(0) + 1e-7))
    new = torch.zeros_like(J[0])
    for i in range(J.shape[0]):
        M = ((P > U) & (grads[i] > 0)) | ((P < U) & (grads[i] < 0))
        M = leak[i] + (1 - leak[i]) * M.double()
        new += (M[None] if batch else M) * J[i]
    return new


def _draws(seed: int, n: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("leak", [0.0, [0.0, 0.5, 1.0]])
def test_split_step_equals_algorithm1(leak):
    model = ToyMTL(T)
    m = GradDrop(T, leak=leak, seed=7)
    leaks = [leak] * T if isinstance(leak, float) else leak
    gen = torch.Generator().manual_seed(7)
    for k in range(3):
        x, ys = toy_batch(model, seed=k)
        model.zero_grad(set_to_none=True)
        split_step(model, m, x, ys)
        got = [p.grad.clone() for p in model.encoder.parameters()]
        z, J = feature_gradients(model, x, ys)
        U = torch.rand(z.shape[1], generator=gen)  # the method's k-th draw
        want = algorithm1(J, z.detach(), U, leaks)
        model.zero_grad(set_to_none=True)
        z.backward(want.float())
        for a, p in zip(got, model.encoder.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)
    assert m.weights.tolist() == [1.0, 1.0, 1.0]


def test_per_element_rule_and_params_route():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    m = GradDrop(T, batch=False, seed=3)
    split_step(model, m, x, ys)
    got = [p.grad.clone() for p in model.encoder.parameters()]
    z, J = feature_gradients(model, x, ys)
    want = algorithm1(J, z.detach(), _draws(3, z.numel()).reshape(z.shape), [0.0] * T, False)
    model.zero_grad(set_to_none=True)
    z.backward(want.float())
    for a, p in zip(got, model.encoder.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)
    # params=: the per-element rule on each parameter's task gradients, no activations
    model.zero_grad(set_to_none=True)
    m = GradDrop(T, seed=4)
    mf.backward(model.losses(x, ys), method=m, params=model.shared_parameters())
    gen = torch.Generator().manual_seed(4)
    for p in model.shared_parameters():
        per_task = torch.stack(
            [
                torch.autograd.grad(model.losses(x, ys)[t], p)[0]
                for t in range(T)  # fresh graphs
            ]
        )
        U = torch.rand(p.numel(), generator=gen).reshape(p.shape)
        flat = per_task.reshape(T, 1, -1)
        want = algorithm1(flat, torch.ones_like(flat[0]), U.reshape(1, -1), [0.0] * T, False)
        torch.testing.assert_close(p.grad, want.reshape(p.shape).float(), rtol=1e-5, atol=1e-6)


def test_routes_and_several_features_draw_alike():
    torch.manual_seed(0)
    enc = torch.nn.Linear(5, 8)
    heads = [torch.nn.Linear(8, 1) for _ in range(T)]
    x = torch.randn(4, 5)

    def losses(z1, z2):
        return [heads[t](torch.cat([z1, z2], dim=1)).pow(2).mean() * (t + 1) for t in range(T)]

    def run(route):
        enc.zero_grad(set_to_none=True)
        m = GradDrop(T, seed=11)
        h = enc(x)
        z1, z2 = h[:, :2], h[:, 2:]
        if route == "split":
            zs = m.split(z1, z2, num_tasks=T)
            m.loss([losses(*zs[t])[t] for t in range(T)]).backward()
        else:
            mf.backward(torch.stack(losses(z1, z2)), method=m, features=(z1, z2))
        return enc.weight.grad.clone()

    torch.testing.assert_close(run("split"), run("functional"), rtol=1e-6, atol=1e-7)


def test_leak_one_is_the_plain_sum():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    split_step(model, mf.EqualWeighting(T), x, ys)
    plain = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad(set_to_none=True)
    split_step(model, GradDrop(T, leak=1.0), x, ys)
    for a, p in zip(plain, model.encoder.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)


def test_same_seed_same_steps_and_backends():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    grads = []
    for backend in ("auto", "torch", "auto"):
        model.zero_grad(set_to_none=True)
        split_step(model, GradDrop(T, seed=5, backend=backend), x, ys)
        grads.append([p.grad.clone() for p in model.encoder.parameters()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_masks_resume_arguments_and_structured_head():
    m = check_mask_and_nan(lambda **kw: GradDrop(T, seed=1, **kw))
    assert m.weights[1] == 0
    check_resume(lambda: GradDrop(T, seed=2), T, steps=5, split_at=2, weights_only=True)
    with pytest.raises(ValueError, match="leak"):
        GradDrop(T, leak=1.5)
    with pytest.raises(ValueError, match="leak"):
        GradDrop(T, leak=[0.1, 0.2])
    m = GradDrop(T)
    head = mf.MultiTaskLinear(6, T, method=m)
    with pytest.raises(RuntimeError, match="needs their rows"):
        m.loss(head(torch.randn(4, 6, requires_grad=True)).pow(2).mean(0)).backward()
