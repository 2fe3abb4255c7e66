"""A whole training step captured in one CUDA graph: the proof that a step has no host sync.

A host synchronisation (``.item()``, ``.cpu()``, a data-dependent shape, a host branch on a
device value) raises inside ``torch.cuda.graph`` capture, so a step that captures and then
replays to the same parameters and weights as the eager loop issues none. The step is the
user's loop: forward, ``method.split`` on the shared features, ``method.loss``, ``backward``,
and a capturable Adam step (the method's own parameters included).

Needs a CUDA device (skipped elsewhere); ``benchmarks/gpu_check.sh`` runs it on the GPU machine.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _toy import ToyMTL, toy_batch

import mtl_fast as mf
from mtl_fast.methods import registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: Every registered method. A method whose class says it is capturable
#: (``cuda_graph_capturable``) must replay like eager steps; the others must refuse the capture
#: with a clear error rather than replay stale state.
METHOD_NAMES = registry.names()


def _build(name: str, T: int) -> mf.Weighting:
    return registry.get(name).build(T)


METHODS = {name: (lambda T, name=name: _build(name, T)) for name in METHOD_NAMES}

T = 4
WARMUP_STEPS = 3
REPLAYS = 5


def _setup(name: str):
    dev = torch.device("cuda")
    model = ToyMTL(num_tasks=T, hidden=32, feat=64, seed=1, device=dev)
    method = METHODS[name](T).to(dev)
    params = list(model.parameters()) + list(method.parameters())
    opt = torch.optim.Adam(params, lr=1e-2, capturable=True)
    return model, method, opt


def _step(model: ToyMTL, method: mf.Weighting, opt, x, ys) -> None:
    opt.zero_grad(set_to_none=False)
    z = model.encoder(x)
    losses = model.task_losses(method.split(z, num_tasks=T), ys)
    method.loss(losses).backward()
    opt.step()


def _batches(n: int, model: ToyMTL):
    return [toy_batch(model, n=32, seed=s, device="cuda") for s in range(n)]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_training_step_replays_like_eager(name: str) -> None:
    if not registry.get(name).capturable:
        _check_capture_refused(name)
        return
    eager_model, eager_method, eager_opt = _setup(name)
    graph_model, graph_method, graph_opt = _setup(name)
    batches = _batches(WARMUP_STEPS + REPLAYS, eager_model)

    for x, ys in batches:
        _step(eager_model, eager_method, eager_opt, x, ys)

    static_x = batches[0][0].clone()
    static_ys = batches[0][1].clone()
    # Warm-up (compiles kernels, creates optimizer state), then the capture, which raises on any
    # host synchronisation.
    graph = _capture(
        lambda: _step(graph_model, graph_method, graph_opt, static_x, static_ys),
        batches[:WARMUP_STEPS],
        (static_x, static_ys),
    )
    for x, ys in batches[WARMUP_STEPS:]:
        static_x.copy_(x)
        static_ys.copy_(ys)
        graph.replay()
    torch.cuda.synchronize()

    for pe, pg in zip(eager_model.parameters(), graph_model.parameters()):
        torch.testing.assert_close(pg, pe, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graph_method.weights, eager_method.weights, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(graph_method.weights).all()


def _check_capture_refused(name: str) -> None:
    """A method marked not capturable raises a clear error inside a capture (after eager
    warm-up steps on the same stream discipline as the capturable ones)."""
    model, method, opt = _setup(name)
    x, ys = _batches(1, model)[0]
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        _capture(lambda: _step(model, method, opt, x, ys), [()], ())


def _capture(step, warmup_inputs, static_inputs):
    """Warm up ``step`` on a side stream, then capture one call of it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for inputs in warmup_inputs:
            for dst, src in zip(static_inputs, inputs):
                dst.copy_(src)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


@pytest.mark.parametrize("method_name", ["IMTLG", "MGDA"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multitask_linear_step_replays_like_eager(method_name: str, dtype: torch.dtype) -> None:
    """A training step through :class:`mtl_fast.MultiTaskLinear` (structured Gram kernel, solve,
    balanced input gradient) captured and replayed equals the eager steps."""
    dev = torch.device("cuda")
    num_tasks, C, B = 24, 64, 32

    def build():
        torch.manual_seed(0)
        enc = torch.nn.Sequential(torch.nn.Linear(16, C), torch.nn.ReLU()).to(dev, dtype)
        method = _build(method_name, num_tasks).to(dev)
        head = mf.MultiTaskLinear(C, num_tasks, method=method).to(dev, dtype)
        params = list(enc.parameters()) + list(head.parameters()) + list(method.parameters())
        return enc, head, method, torch.optim.Adam(params, lr=1e-2, capturable=True)

    gen = torch.Generator(device="cpu").manual_seed(3)
    data = [
        (torch.randn(B, 16, generator=gen), (torch.rand(B, num_tasks, generator=gen) > 0.5))
        for _ in range(WARMUP_STEPS + REPLAYS)
    ]
    data = [(x.to(dev, dtype), y.to(dev, dtype)) for x, y in data]

    def make_step(enc, head, method, opt, x, y):
        def step() -> None:
            opt.zero_grad(set_to_none=False)
            logits = head(enc(x))
            losses = F.binary_cross_entropy_with_logits(
                logits.float(), y.float(), reduction="none"
            ).mean(0)
            method.loss(losses).backward()
            opt.step()

        return step

    eager = build()
    for x, y in data:
        make_step(*eager, x, y)()

    graph_parts = build()
    static_x, static_y = data[0][0].clone(), data[0][1].clone()
    step = make_step(*graph_parts, static_x, static_y)
    graph = _capture(step, data[:WARMUP_STEPS], (static_x, static_y))
    for x, y in data[WARMUP_STEPS:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
    torch.cuda.synchronize()
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for pe, pg in zip(eager[1].parameters(), graph_parts[1].parameters()):
        torch.testing.assert_close(pg, pe, **tol)
    torch.testing.assert_close(graph_parts[2].weights, eager[2].weights, **tol)
    assert torch.isfinite(graph_parts[2].weights).all()
