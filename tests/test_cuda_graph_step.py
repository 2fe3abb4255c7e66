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
from _toy import ToyMTL, toy_batch

import mtl_fast as mf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: The methods whose step the GPU issue requires to be capturable.
METHODS = {
    "IMTLG": lambda T: mf.IMTLG(T),
    "MGDA": lambda T: mf.MGDA(T),
    "IMTL": lambda T: mf.IMTL(T),
    "CVWeighting": lambda T: mf.CVWeighting(T),
}

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
    eager_model, eager_method, eager_opt = _setup(name)
    graph_model, graph_method, graph_opt = _setup(name)
    batches = _batches(WARMUP_STEPS + REPLAYS, eager_model)

    for x, ys in batches:
        _step(eager_model, eager_method, eager_opt, x, ys)

    static_x = batches[0][0].clone()
    static_ys = batches[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compiles kernels, creates optimizer state
        for x, ys in batches[:WARMUP_STEPS]:
            static_x.copy_(x)
            static_ys.copy_(ys)
            _step(graph_model, graph_method, graph_opt, static_x, static_ys)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # raises on any host synchronisation
        _step(graph_model, graph_method, graph_opt, static_x, static_ys)
    for x, ys in batches[WARMUP_STEPS:]:
        static_x.copy_(x)
        static_ys.copy_(ys)
        graph.replay()
    torch.cuda.synchronize()

    for pe, pg in zip(eager_model.parameters(), graph_model.parameters()):
        torch.testing.assert_close(pg, pe, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graph_method.weights, eager_method.weights, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(graph_method.weights).all()
