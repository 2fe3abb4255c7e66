"""Guard rails of a training loop that are not per-method contracts (those are in
tests/test_conformance.py): gradient accumulation, the learnable weights' parameter groups,
missing lifecycle calls, IMTL-G's negative weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from _toy import ToyMTL, split_step, toy_batch

import mtl_fast as mf

T = 3


def test_accumulate_counts_optimizer_steps_and_solves_per_micro_batch() -> None:
    model = ToyMTL(T)
    method = mf.IMTLG().accumulate(2)
    alphas = []
    for k in range(4):
        x, ys = toy_batch(model, seed=k)
        split_step(model, method, x, ys)
        alphas.append(method.weights.clone())
    assert method.step == 2  # 4 micro-batches, 2 optimizer steps
    assert not torch.equal(alphas[0], alphas[1])  # each micro-batch solves its own α
    with pytest.raises(ValueError, match="positive int"):
        method.accumulate(0)


def test_accumulate_keeps_period_steps_in_optimizer_steps() -> None:
    a = mf.LSB(2, period_steps=2)
    b = mf.LSB(2, period_steps=2).accumulate(3)
    for k in range(6):
        L = torch.tensor([1.0 + k, 2.0], requires_grad=True)
        a.loss(L).backward() if k % 3 == 2 else None
        b.loss(L).backward()
    assert a.step == 2 and b.step == 2
    assert a.period == b.period


def test_summing_totals_before_one_backward_raises_with_the_fix() -> None:
    m = mf.CVWeighting(2)
    t1 = m.loss(torch.tensor([1.0, 2.0], requires_grad=True))
    t2 = m.loss(torch.tensor([1.5, 2.5], requires_grad=True))
    with pytest.raises(RuntimeError, match="accumulate"):
        (t1 + t2).backward()


def test_param_groups_default_lr_and_methods_without_parameters() -> None:
    uw = mf.UncertaintyWeighting(T)
    groups = uw.param_groups()
    assert len(groups) == 1 and groups[0]["lr"] == mf.Weighting.default_lr
    assert groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in uw.parameters()}
    assert uw.param_groups(lr=0.01)[0]["lr"] == 0.01
    assert mf.MGDA().param_groups() == []
    model = ToyMTL(T)
    opt = torch.optim.Adam([{"params": model.parameters()}, *uw.param_groups()], lr=1e-3)
    before = uw.log_vars.detach().clone()
    for k in range(20):
        x, ys = toy_batch(model, seed=k)
        opt.zero_grad()
        uw.loss(model.losses(x, ys)).backward()
        opt.step()
    # at the default rate the log-variances move by about lr per Adam step
    assert (uw.log_vars.detach() - before).abs().max() > 0.1


@pytest.mark.parametrize(
    ("make", "call"),
    [
        (lambda: mf.LSB(2), "end_epoch"),
        (lambda: mf.DWA(2), "end_epoch"),
        (lambda: mf.STCH(2), "end_epoch"),
        (lambda: mf.AMTL([0.5, 0.5]), "observe"),
        (lambda: mf.DTP(2), "observe"),
    ],
)
def test_missing_lifecycle_call_warns_once(make, call, monkeypatch) -> None:
    method = make()
    monkeypatch.setattr(type(method), "lifecycle_warn_steps", 3)
    with pytest.warns(RuntimeWarning, match=rf"method\.{call}\("):
        for _ in range(3):
            method.loss(torch.tensor([1.0, 2.0], requires_grad=True)).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.loss(torch.tensor([1.0, 2.0], requires_grad=True)).backward()  # once only


def test_no_lifecycle_warning_when_called_or_automatic(monkeypatch) -> None:
    monkeypatch.setattr(mf.LSB, "lifecycle_warn_steps", 2)
    auto, called = mf.LSB(2, period_steps=1), mf.LSB(2)
    called.end_epoch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for m in (auto, called):
            for _ in range(3):
                m.loss(torch.tensor([1.0, 2.0], requires_grad=True)).backward()


def test_imtl_g_weights_can_be_negative() -> None:
    """Three independent gradients where the equal-projection solution gives one task a
    negative weight (Σ α = 1 still, and the combined gradient projects equally on all)."""
    g = torch.tensor([[1.5, -0.3, -2.2], [0.6, -1.1, -1.4], [0.4, 0.8, -0.7]], dtype=torch.float64)
    alpha = mf.imtl_g_weights(g @ g.T)
    assert alpha.sum().item() == pytest.approx(1.0)
    assert (alpha < 0).any()
    d = alpha @ g
    u = g / g.norm(dim=1, keepdim=True)
    proj = u @ d
    torch.testing.assert_close(proj, proj[0].expand(3))


@pytest.mark.parametrize("solve", [mf.mgda_weights, mf.imtl_g_weights])
def test_public_solves_raise_on_a_non_finite_gram_matrix(solve) -> None:
    G = torch.eye(3)
    G[1, 2] = G[2, 1] = float("nan")
    with pytest.raises(ValueError, match="tasks 1, 2"):
        solve(G)
    with pytest.raises(ValueError, match="task 0"):
        solve(torch.diag(torch.tensor([float("inf"), 1.0, 1.0])), backend="torch")


def test_accumulate_step_weights_are_the_previous_steps_full_batch_solve() -> None:
    """``accumulate(2, weights="step")``: both micro-batches of step 2 use α solved from the
    mean Gram matrix of step 1's two micro-batches."""
    from _toy import feature_gradients

    model = ToyMTL(T)
    method = mf.IMTLG().accumulate(2, weights="step")
    batches = [toy_batch(model, seed=k) for k in range(4)]
    grams = []
    for x, ys in batches[:2]:
        _, J = feature_gradients(model, x, ys)
        grams.append(mf.gram(J.reshape(T, -1)).double())
    expected = mf.imtl_g_weights((grams[0] + grams[1]) / 2)
    for k, (x, ys) in enumerate(batches):
        model.zero_grad(set_to_none=True)
        split_step(model, method, x, ys)
        if k >= 2:
            torch.testing.assert_close(method.weights.double(), expected, rtol=1e-4, atol=1e-6)
    assert method.step == 2
    with pytest.raises(ValueError, match="loss-based"):
        mf.CVWeighting(T).accumulate(2, weights="step")
    with pytest.raises(ValueError, match="'micro_batch' or 'step'"):
        mf.IMTLG().accumulate(2, weights="optimizer")
