"""torch.compile: a model whose forward calls ``split`` compiles with ``fullgraph=True`` and a
whole training step compiles without a graph break from mtl_fast, for every registered method;
compiled and eager training give the same weights and state; nothing recompiles after the first
steps (docs/compile_and_amp.md).

CI cost: the registry loops use ``torch._dynamo.explain`` and the ``aot_eager`` backend (Dynamo
and AOTAutograd, functionalisation of the custom operators included, without code generation);
inductor (which builds C++ with gcc on the CPU) runs for two representative methods, IMTL-G
(gradient-based: ``split_backward`` with the native Gram, solve and combine) and CV-Weighting
(loss-based: ``method_loss`` with the C++ Welford accumulator).
"""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
from _toy import ToyMTL, toy_batch
from test_conformance import _state_equal
from torch import Tensor, nn

import mtl_fast as mf
from mtl_fast.methods import registry
from mtl_fast.weighting import Weighting

T = 3
NAMES = registry.names()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _build(name: str) -> Weighting:
    spec = registry.get(name)
    params = inspect.signature(spec.cls.__init__).parameters
    options: dict[str, Any] = {"seed": 0} if "seed" in params else {}
    if "extra_pass" in params:
        options["extra_pass"] = False  # FAMO's update() is a second forward, not a step
    torch.manual_seed(0)
    return spec.build(T, **options)


class SplitModel(nn.Module):
    """The toy model with ``split`` in its forward: features -> split -> heads -> T losses."""

    def __init__(self, toy: ToyMTL, method: Weighting) -> None:
        super().__init__()
        self.toy = toy
        self.method = method

    def forward(self, x: Tensor, ys: Tensor) -> Tensor:
        zs = self.method.split(self.toy.encoder(x), num_tasks=T)
        return self.toy.task_losses(zs, ys)


def _lifecycle(method: Weighting, k: int) -> None:
    if "observe" in method.lifecycle and k == 1:
        method.observe([0.4, 0.6, 0.8])
    if "end_epoch" in method.lifecycle and k % 2 == 1:
        method.end_epoch()


def _setup(name: str):
    method = _build(name)
    toy = ToyMTL(T)
    model = SplitModel(toy, method)
    opt = torch.optim.SGD([*toy.parameters(), *method.parameters()], lr=0.05)
    return model, method, opt


def _make_step(model: nn.Module, method: Weighting, opt: torch.optim.Optimizer):
    def step(x: Tensor, ys: Tensor) -> Tensor:
        losses = model(x, ys)
        total = method.loss(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
        return total.detach()

    return step


def _train(name: str, how: str, steps: int = 4, backend: str = "aot_eager"):
    """(weights after each step, method, model) of ``steps`` training steps. ``how``:
    ``"eager"``; ``"model"``: the model compiled with ``fullgraph=True``, loss and backward
    eager; ``"loss"``: forward and ``method.loss`` compiled together with ``fullgraph=True``,
    backward and optimizer eager; ``"step"``: the whole step compiled. After two steps a
    recompilation raises."""
    model, method, opt = _setup(name)
    forward = model
    if how == "model":
        forward = torch.compile(model, fullgraph=True, backend=backend)
    step = _make_step(forward, method, opt)
    if how == "loss":
        total_of = torch.compile(
            lambda x, ys: method.loss(model(x, ys)), fullgraph=True, backend=backend
        )

        def step(x: Tensor, ys: Tensor) -> Tensor:
            total = total_of(x, ys)
            opt.zero_grad()
            total.backward()
            opt.step()
            return total.detach()

    if how == "step":
        step = torch.compile(step, backend=backend)
    history = []
    for k in range(steps):
        x, ys = toy_batch(model.toy, seed=k)
        with torch._dynamo.config.patch(error_on_recompile=k >= 2):
            step(x, ys)
        _lifecycle(method, k)
        history.append(method.weights.clone())
    return torch.stack(history), method, model


def _mtl_fast_frames(reasons) -> list[str]:
    root = str(Path(mf.__file__).parent)
    return [
        f"{f.filename}:{f.lineno}"
        for r in reasons
        for f in r.user_stack
        if f.filename.startswith(root)
    ]


def _assert_same_training(name: str, how: str, backend: str = "aot_eager", **tol: float) -> None:
    w_eager, m_eager, model_eager = _train(name, "eager")
    torch._dynamo.reset()
    w, m, model = _train(name, how, backend=backend)
    tol = tol or {"rtol": 0.0, "atol": 0.0}
    torch.testing.assert_close(w, w_eager, **tol)
    assert m.step == m_eager.step
    if not tol["rtol"]:
        assert _state_equal(m.state_dict(), m_eager.state_dict())
    for p, q in zip(model.parameters(), model_eager.parameters()):
        torch.testing.assert_close(p, q, **tol)


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", NAMES)
def test_model_compiles_in_one_graph_and_trains_as_eager(name: str) -> None:
    """``torch._dynamo.explain``: the model with ``split`` is one graph without a break. Then
    the forward and ``method.loss`` compiled together with ``fullgraph=True`` (aot_eager: Dynamo
    and AOTAutograd, no code generation, hence no rounding differences) give bitwise the eager
    weights, state and parameters, and nothing is recompiled after the second step."""
    model = _setup(name)[0]
    x, ys = toy_batch(model.toy, seed=0)
    explained = torch._dynamo.explain(model)(x, ys)
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1
    torch._dynamo.reset()
    _assert_same_training(name, "loss")


#: Representative methods for the slower whole-step checks (the optimizer step traced too):
#: gradient-based with the native solve (IMTL-G) and loss-based with learnable log-variances
#: (uncertainty weighting); CV-Weighting's whole step runs under inductor below.
REPRESENTATIVE = ["IMTLG", "UncertaintyWeighting"]


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_whole_step_breaks_only_in_torch_and_trains_as_eager(name: str) -> None:
    """The whole step (forward, loss, backward, optimizer step) breaks only where torch itself
    does (``Optimizer.zero_grad``, ``Tensor.backward``), never in mtl_fast; compiled (and the
    model alone compiled with ``fullgraph=True``) it trains bitwise as the eager step."""
    model, method, opt = _setup(name)
    x, ys = toy_batch(model.toy, seed=0)
    explained = torch._dynamo.explain(_make_step(model, method, opt))(x, ys)
    assert _mtl_fast_frames(explained.break_reasons) == []
    assert explained.graph_break_count <= 2
    for how in ("model", "step"):
        torch._dynamo.reset()
        _assert_same_training(name, how)


def test_the_recompile_check_can_fail() -> None:
    """A Python counter read in a compiled function recompiles at every step (what a traced
    method step would do), and the check used above catches it."""
    counter = {"n": 0}

    def f(x: Tensor) -> Tensor:
        counter["n"] += 1
        return x * counter["n"]

    compiled = torch.compile(f, backend="eager")
    compiled(torch.ones(2))
    with torch._dynamo.config.patch(error_on_recompile=True):
        with pytest.raises(Exception, match=r"[Rr]ecompil"):
            compiled(torch.ones(2))


# --------------------------------------------------------------------------- inductor


@pytest.mark.parametrize("name", ["IMTLG", "CVWeighting"])
def test_inductor_training_matches_eager(name: str) -> None:
    """Inductor (C++ code generated for the toy model), the whole step compiled: the same
    weights and parameters up to float32 rounding of the fused kernels (measured ~1e-8;
    tolerance 1e-5 relative)."""
    _assert_same_training(name, "step", backend="inductor", rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- step semantics


def test_compiled_step_keeps_the_eager_contract() -> None:
    """Masks, dict losses and the non-finite policy behave as in eager mode; an abandoned
    compiled step is rolled back; evaluation changes nothing."""
    model, method, _ = _setup("CVWeighting")
    eager_method = copy.deepcopy(method)
    assert eager_method._compile_handle != method._compile_handle

    def dict_loss(m: Weighting, x: Tensor, ys: Tensor, mask: Tensor | None) -> Tensor:
        losses = model.toy.task_losses([model.toy.encoder(x)] * T, ys)
        return m.loss({"a": losses[0], "b": losses[1], "c": losses[2]}, mask)

    compiled_loss = torch.compile(dict_loss, fullgraph=True, backend="aot_eager")

    def compiled(m: Weighting, x: Tensor, ys: Tensor, mask: Tensor | None) -> Tensor:
        total = compiled_loss(m, x, ys, mask)
        total.backward()
        return total.detach()

    def dict_step(m: Weighting, x: Tensor, ys: Tensor, mask: Tensor | None) -> Tensor:
        total = dict_loss(m, x, ys, mask)
        total.backward()
        return total.detach()

    mask = torch.tensor([True, False, True])
    for k in range(3):
        x, ys = toy_batch(model.toy, seed=k)
        torch.testing.assert_close(
            compiled(method, x, ys, mask), dict_step(eager_method, x, ys, mask)
        )
    assert method.task_names == ["a", "b", "c"]
    assert _state_equal(method.state_dict(), eager_method.state_dict())

    # NaN loss without a mask: the same ValueError naming the task, raised at run time.
    x, ys = toy_batch(model.toy, seed=5)
    bad = ys.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"task 1 \('b'\)"):
        compiled(method, x, bad, None)

    # An abandoned compiled step (no backward) is rolled back by the next one: the run goes on
    # exactly like the eager run that never saw it.
    def forward_only(m: Weighting, x: Tensor, ys: Tensor) -> Tensor:
        return m.loss(model.toy.task_losses([model.toy.encoder(x)] * T, ys))

    torch.compile(forward_only, fullgraph=True, backend="aot_eager")(method, x, ys)
    assert method.step == eager_method.step + 1
    x, ys = toy_batch(model.toy, seed=6)
    compiled(method, x, ys, mask)
    dict_step(eager_method, x, ys, mask)
    assert _state_equal(method.state_dict(), eager_method.state_dict())
    before = method.state_dict()

    # Evaluation under no_grad: Σ w L with the current weights, nothing changes.
    with torch.no_grad():
        value = torch.compile(forward_only, fullgraph=True, backend="aot_eager")(method, x, ys)
    losses = model.toy.task_losses([model.toy.encoder(x)] * T, ys).detach()
    torch.testing.assert_close(value, (method.weights * losses).sum())
    assert _state_equal(method.state_dict(), before)


def test_learnable_weights_get_their_gradient_in_a_compiled_step() -> None:
    """Uncertainty weighting's log-variances: the compiled total's gradient equals eager."""
    grads = []
    for compiled in (False, True):
        method = _build("UncertaintyWeighting")
        losses = torch.tensor([0.5, 2.0, 8.0], requires_grad=True)
        fn = (
            torch.compile(method.loss, fullgraph=True, backend="aot_eager")
            if compiled
            else method.loss
        )
        fn(losses * 1.0).backward()
        grads.append((losses.grad, [p.grad for p in method.parameters()]))
    (l_e, p_e), (l_c, p_c) = grads
    torch.testing.assert_close(l_c, l_e, rtol=0, atol=0)
    for a, b in zip(p_c, p_e):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_scaler_is_refused_inside_a_compiled_loss() -> None:
    method = _build("IMTLG")
    scaler = torch.amp.GradScaler("cpu")

    def f(losses: Tensor) -> Tensor:
        return method.loss(losses, scaler=scaler)

    with pytest.raises(Exception, match=r"cannot run inside torch\.compile"):
        torch.compile(f, backend="eager")(torch.ones(T, requires_grad=True))


# --------------------------------------------------------------------------- operators


def test_public_ops_compile_without_graph_breaks() -> None:
    """gram / imtl_g_weights / mgda_weights / combine (native C++ on the CPU) under
    fullgraph=True: bitwise the eager results; a NaN gradient raises the same ValueError."""

    def f(J: Tensor, out: Tensor):
        G = mf.gram(J)
        a = mf.imtl_g_weights(G)
        b = mf.mgda_weights(G)
        c = mf.combine(J, a)
        mf.combine(list(J.unbind(0)), b, out=out)
        return G, a, b, c

    gen = torch.Generator().manual_seed(0)
    J = torch.randn(4, 3, 50, generator=gen)
    explained = torch._dynamo.explain(f)(J, torch.zeros(3, 50))
    assert explained.graph_break_count == 0
    out_eager, out_compiled = torch.zeros(3, 50), torch.zeros(3, 50)
    eager = f(J, out_eager)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(J, out_compiled)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(out_compiled, out_eager, rtol=0, atol=0)
    J[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="gradient for task 1"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(J, torch.zeros(3, 50))


def test_welford_and_non_finite_checks_compile() -> None:
    """The C++ Welford accumulator (update, moments), the device accumulator's CPU non-finite
    check and the monitor's report compile without graph breaks and behave as in eager mode
    (the failed update changes nothing)."""
    compiled_stats, eager_stats = mf.RunningStats(3), mf.RunningStats(3)

    def update(stats: mf.RunningStats, x: Tensor, mask: Tensor):
        stats.update(x, mask)
        moments = stats.moments()
        stats.update(2 * x)
        return moments

    assert (
        torch._dynamo.explain(update)(
            mf.RunningStats(3), torch.ones(3), torch.ones(3, dtype=torch.bool)
        ).graph_break_count
        == 0
    )
    compiled = torch.compile(update, fullgraph=True, backend="aot_eager")
    mask = torch.tensor([True, False, True])
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(3, dtype=torch.float64, generator=gen)
        for a, b in zip(compiled(compiled_stats, x, mask), update(eager_stats, x, mask)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(compiled_stats.moments(), eager_stats.moments()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    device_stats = mf.TorchRunningStats(3)

    def device_update(x: Tensor) -> Tensor:
        device_stats.update(x)
        return device_stats.mean

    step = torch.compile(device_update, fullgraph=True, backend="aot_eager")
    step(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"stream\(s\) \[1\]"):
        step(torch.tensor([1.0, math.nan, 2.0], dtype=torch.float64))
    assert device_stats.count.tolist() == [1, 1, 1]

    monitor = mf.Weighting()._monitor
    report = torch.compile(
        lambda L: (monitor.report(~torch.isfinite(L), "loss", 3), L * 2)[1],
        fullgraph=True,
        backend="aot_eager",
    )
    report(torch.ones(3))
    with pytest.raises(ValueError, match="loss for task 2"):
        report(torch.tensor([1.0, 2.0, math.inf]))


# --------------------------------------------------------------------------- benchmark


def test_compile_benchmark_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mtl-fast bench --only compile`` (here: smoke sizes, IMTL-G, aot_eager): eager, model and
    whole-step rows relative to eager, and their table in the report."""
    from benchmarks.harness import report, runner
    from benchmarks.harness import workloads as wl

    monkeypatch.setattr(wl, "COMPILE_METHODS", ("IMTLG",))
    monkeypatch.setattr(wl, "COMPILE_BACKEND", "aot_eager")
    results = runner.run(tier="smoke", sections=["compile"], device="cpu")
    recs = [r for r in results["records"] if r["section"] == "compile"]
    assert {r["mode"] for r in recs} == set(wl.COMPILE_MODES), results["skipped"]
    assert all(r["vs_eager"] > 0 for r in recs)
    assert "training step compiled vs eager" in report.markdown(results)
