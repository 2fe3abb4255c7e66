"""Mixed precision with a gradient scaler (mtl_fast.amp, docs/compile_and_amp.md):
``method.loss(losses, scaler=scaler)``.

* A scaled step gives every method the weights, state and parameters of the unscaled step (the
  solve sees G / s²; with a power-of-two scale and no overflow the backward is exactly s times the
  unscaled one, so the comparison is bitwise).
* A step whose gradients overflow raises nothing, shrinks the scale and leaves no trace: the run
  equals one that never saw the batch (fp16 autocast on the CPU, ``GradScaler("cpu")``).

The same checks on CUDA (fp16 autocast, ``GradScaler("cuda")``, no host synchronisation) are in
``tests/test_cuda_compile_amp.py`` (skipped without a GPU).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from _toy import ToyMTL, toy_batch
from test_conformance import _state_equal

import mtl_fast as mf
from mtl_fast.methods import registry
from mtl_fast.weighting import Weighting

T = 3
NAMES = registry.names()
#: Methods whose weights change with the scale of the gradients (what the unscaling is for).
SCALE_SENSITIVE = ("NashMTL", "GradNorm", "DBMTL", "FairGrad")


def _build(name: str, **extra: Any) -> Weighting:
    spec = registry.get(name)
    params = inspect.signature(spec.cls.__init__).parameters
    options: dict[str, Any] = {"seed": 0} if "seed" in params else {}
    if "extra_pass" in params:
        options["extra_pass"] = False
    torch.manual_seed(0)
    return spec.build(T, **options, **extra)


def make_scaler(device: str = "cpu", scale: float = 2.0**8, enabled: bool = True):
    """A scaler whose scale only changes by an overflow (no growth), backing off 2^30-fold so
    that the step after an injected overflow runs at the scale before it."""
    return torch.amp.GradScaler(
        device,
        init_scale=scale,
        growth_interval=10**9,
        backoff_factor=2.0**-30,
        enabled=enabled,
    )


def run(
    name: str,
    scaler: Any,
    *,
    steps: int = 5,
    autocast: bool = False,
    overflow_at: int | None = None,
    drop: int | None = None,
    device: str = "cpu",
    naive: bool = False,
    micro_batches: int = 1,
):
    """Train the toy model; returns (method, model, scales seen after each update)."""
    method = _build(name).to(device)
    model = ToyMTL(T, device=device)
    opt = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.05)
    method.accumulate(micro_batches)
    scales = []
    for k in range(steps):
        if k == drop:
            continue
        if k == overflow_at:  # the scale of this step overflows fp16
            scaler.update(new_scale=2.0**40)
        opt.zero_grad()
        for micro in range(micro_batches):
            x, ys = toy_batch(model, seed=10 * k + micro, device=device)
            with torch.autocast(device, dtype=torch.float16, enabled=autocast):
                zs = method.split(model.encoder(x), num_tasks=T)
                losses = [loss.float() for loss in model.task_losses(zs, ys, stack=False)]
            if scaler is None:
                method.loss(losses).backward()
            elif naive:
                scaler.scale(method.loss(losses)).backward()
            else:
                method.loss(losses, scaler=scaler).backward()
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        if "observe" in method.lifecycle and k == 1:
            method.observe([0.4, 0.6, 0.8])
        if "end_epoch" in method.lifecycle and k % 2 == 1:
            method.end_epoch()
    return method, model, scales


def assert_same_run(a, b) -> None:
    (method_a, model_a, _), (method_b, model_b, _) = a, b
    assert method_a.step == method_b.step
    torch.testing.assert_close(method_a.weights, method_b.weights, rtol=0, atol=0)
    assert _state_equal(method_a.state_dict(), method_b.state_dict())
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_a_scaled_step_is_the_unscaled_step(name: str) -> None:
    assert_same_run(run(name, make_scaler()), run(name, None))


@pytest.mark.parametrize("name", SCALE_SENSITIVE)
def test_scaling_the_total_by_hand_changes_scale_sensitive_weights(name: str) -> None:
    """Control: ``scaler.scale(method.loss(losses))`` hands the solve s²·G, and these methods'
    state then differs from the unscaled one (so the test above can fail): Nash-MTL's and
    FairGrad's weights, GradNorm's gradient-norm loss, DB-MTL's gradient EMA (its weights follow
    once the scale changes between steps)."""
    naive = run(name, make_scaler(), naive=True)[0]
    plain = run(name, None)[0]
    assert not _state_equal(naive.state_dict(), plain.state_dict())
    if name in ("NashMTL", "FairGrad"):
        assert not torch.allclose(naive.weights, plain.weights, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_an_overflowed_step_leaves_no_trace(name: str) -> None:
    """fp16 autocast, an overflow injected at step 2: no exception, the scale shrinks, and the
    method, its weights and the model are exactly those of a run without that batch."""
    overflowed = run(name, make_scaler(), autocast=True, overflow_at=2)
    assert overflowed[2][2] == 2.0**10  # 2^40 backed off 2^30-fold: the scaler saw the overflow
    assert_same_run(overflowed, run(name, make_scaler(), autocast=True, drop=2))


def test_without_scaler_an_overflow_is_an_error() -> None:
    """Scaling by hand, the method cannot tell an overflow from a bad gradient: it raises."""
    with pytest.raises(ValueError, match="non-finite"):
        run("IMTLG", make_scaler(), autocast=True, overflow_at=2, naive=True)


@pytest.mark.parametrize("name", ["IMTLG", "CVWeighting", "NashMTL"])
def test_an_overflowed_accumulated_step_is_rolled_back_whole(name: str) -> None:
    """accumulate(2): both micro-batches of the optimizer step whose scale overflows are undone
    (its counters count optimizer steps)."""
    kw = {"autocast": True, "micro_batches": 2}
    overflowed = run(name, make_scaler(), overflow_at=3, **kw)
    assert_same_run(overflowed, run(name, make_scaler(), drop=3, **kw))


def test_scaler_contract_details() -> None:
    method = _build("IMTLG")
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    # A disabled scaler is no scaler.
    assert_same_run(run("CVWeighting", make_scaler(enabled=False)), run("CVWeighting", None))
    # The returned total is scaler.scale(total); evaluation returns the unscaled total.
    scaler = make_scaler()
    zs = method.split(model.encoder(x), num_tasks=T)
    losses = model.task_losses(zs, ys)
    total = method.loss(losses, scaler=scaler)
    torch.testing.assert_close(total, losses.sum() * 2.0**8)
    total.backward()
    method.eval()
    torch.testing.assert_close(
        method.loss(losses.detach(), scaler=scaler), losses.detach() @ method.weights
    )
    # update() is wrapped once per scaler, whatever the number of methods and steps.
    wrapped = scaler.update
    other = _build("CVWeighting")
    other.loss(losses.detach().requires_grad_(), scaler=scaler)
    assert scaler.update is wrapped
    with pytest.raises(TypeError, match="GradScaler"):
        other.loss(losses.detach().requires_grad_(), scaler=object())


def test_a_compiled_model_with_a_scaler_trains_as_eager() -> None:
    """The model (with split) compiled with fullgraph=True, loss, backward and scaler eager:
    an overflowed step still leaves no trace."""
    eager = run("MGDA", make_scaler(), autocast=True, overflow_at=2)
    method = _build("MGDA")
    model = ToyMTL(T)
    opt = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.05)
    scaler = make_scaler()

    def forward(x: torch.Tensor, ys: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.float16):
            zs = method.split(model.encoder(x), num_tasks=T)
            return [loss.float() for loss in model.task_losses(zs, ys, stack=False)]

    torch._dynamo.reset()
    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    for k in range(5):
        if k == 2:
            scaler.update(new_scale=2.0**40)
        x, ys = toy_batch(model, seed=10 * k)
        opt.zero_grad()
        method.loss(compiled(x, ys), scaler=scaler).backward()
        scaler.step(opt)
        scaler.update()
    torch._dynamo.reset()
    assert_same_run(eager, (method, model, None))


@pytest.mark.parametrize("name", ["NashMTL", "IMTLG"])
def test_multitask_linear_with_a_scaler(name: str) -> None:
    """``MultiTaskLinear`` forms its Gram matrix from the scaled logit gradients: the solve
    sees it unscaled too, and an overflow is skipped."""

    def train(scaler: Any, overflow_at: int | None = None, drop: int | None = None, fp16=False):
        method = _build(name)
        torch.manual_seed(1)
        encoder = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh())
        head = mf.MultiTaskLinear(8, T, method=method)
        params = [*encoder.parameters(), *head.parameters()]
        opt = torch.optim.SGD(params, lr=0.05)
        gen = torch.Generator().manual_seed(0)
        for k in range(4):
            x, y = torch.randn(16, 5, generator=gen), torch.randn(16, T, generator=gen)
            if k == drop:
                continue
            if k == overflow_at:
                scaler.update(new_scale=2.0**40)
            with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
                out = head(encoder(x)).float()
            losses = ((out - y) ** 2).mean(0)
            opt.zero_grad()
            if scaler is None:
                method.loss(losses).backward()
                opt.step()
            else:
                method.loss(losses, scaler=scaler).backward()
                scaler.step(opt)
                scaler.update()
        return method, params

    (a, pa), (b, pb) = train(make_scaler()), train(None)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=0)
    (a, pa), (b, pb) = (
        train(make_scaler(), overflow_at=2, fp16=True),
        train(make_scaler(), drop=2, fp16=True),
    )
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=0)
    assert a.step == b.step == 3
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
