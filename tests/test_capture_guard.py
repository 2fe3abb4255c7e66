"""The CUDA-graph capturability flag of every method, and the guard that refuses a capture of a
method marked not capturable (checked here without a GPU by simulating a capture; the captures
themselves run in ``tests/test_cuda_graph_step.py`` on a GPU)."""

from __future__ import annotations

import pytest
import torch

import mtl_fast as mf
from mtl_fast.methods import registry


@pytest.mark.parametrize("name", registry.names())
def test_flag_and_note_are_consistent(name: str) -> None:
    cls = registry.get(name).cls
    assert isinstance(cls.cuda_graph_capturable, bool)
    if cls.cuda_graph_capturable:
        assert cls.cuda_graph_note == ""
    else:
        assert len(cls.cuda_graph_note) > 40  # says why


def _simulate_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)


def test_not_capturable_method_refuses_a_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    method = mf.PCGrad(3)
    assert not type(method).cuda_graph_capturable
    _simulate_capture(monkeypatch)
    with pytest.raises(RuntimeError, match="PCGrad cannot be captured in a CUDA graph: its random"):
        method.loss(torch.ones(3))


def test_capturable_method_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    method = mf.IMTLL(3)
    assert type(method).cuda_graph_capturable
    method.loss(torch.ones(3, requires_grad=True))  # an eager step first
    _simulate_capture(monkeypatch)
    total = method.loss(torch.ones(3, requires_grad=True))
    assert total.shape == ()


def test_no_capture_no_refusal() -> None:
    method = mf.PCGrad(3)
    z = torch.randn(4, 5, requires_grad=True)
    zs = method.split(z, num_tasks=3)
    method.loss(torch.stack([(s**2).sum() for s in zs])).backward()
    assert z.grad is not None
