"""The fast paths of a loss-based step on CPU losses and the snapshot behind the step
transaction (mtl_fast/_losses.py, mtl_fast/_state.py, the methods' unmasked formulas):

* with every task present, a step without a mask (the fast path: one finiteness check, the
  unmasked formulas, the native steps) gives what the masked path gives with an all-True mask:
  weights, total and gradients, step after step;
* ``loss()`` snapshots the state by reference, which needs every method to replace its state
  tensors rather than modify them in place: their version counters must not move;
* the fast finiteness check hands anything unusual (NaN, overflow, mixed dtypes, non-scalar
  entries) to the exact path.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mtl_fast import _losses, _state
from mtl_fast._nonfinite import NonFiniteMonitor
from mtl_fast.methods import registry

LOSS_METHODS = [s.name for s in registry.REGISTRY if s.family == "loss"]
T = 5


def _build(name: str):
    torch.manual_seed(0)  # RLW draws its seed from the global generator
    return registry.get(name).build(T, **({"extra_pass": False} if name == "FAMO" else {}))


def _prepare(method) -> None:
    """Past warm-ups: accuracies observed, a few periods and epochs closed."""
    gen = torch.Generator().manual_seed(1)
    if "observe" in method.lifecycle:
        method.observe([0.3 + 0.1 * t for t in range(T)])
    for _ in range(6 if "end_epoch" in method.lifecycle else 1):
        for _ in range(3):
            method.loss(torch.rand(T, generator=gen) + 0.2)
        method.end_epoch()


def _steps(method, masked: bool, steps: int = 6) -> list[tuple[Tensor, Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(2)
    out = []
    for _ in range(steps):
        leaf = (torch.rand(T, generator=gen, dtype=torch.float64) + 0.2).requires_grad_(True)
        losses = [leaf[t] * 1.0 for t in range(T)]
        total = method.loss(losses, [True] * T if masked else None)
        total.backward()
        out.append((total.detach(), method.weights.clone(), leaf.grad.clone()))
    return out


def _tensors(obj, found: list[Tensor]) -> list[Tensor]:
    if isinstance(obj, Tensor):
        found.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, found)
    elif isinstance(obj, _state._Saved):
        _tensors(obj.state, found)
    return found


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_unmasked_fast_path_equals_the_masked_path(name: str) -> None:
    fast, slow = _build(name), _build(name)
    for m in (fast, slow):
        _prepare(m)
    for (ta, wa, ga), (tb, wb, gb) in zip(_steps(fast, False), _steps(slow, True)):
        torch.testing.assert_close(ta, tb, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(wa.double(), wb.double(), rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_state_tensors_are_replaced_not_modified(name: str) -> None:
    """What a snapshot references is never written in place by later steps or lifecycle
    calls, so restoring the snapshot restores the state."""
    method = _build(name)
    _prepare(method)
    snap = _state.snapshot(method._state)
    held = [(t, t._version) for t in _tensors(snap, [])]
    _steps(method, False, steps=3)
    _steps(method, True, steps=2)
    method.end_epoch()
    if "observe" in method.lifecycle:
        method.observe([0.5] * T)
    for t, version in held:
        assert t._version == version


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_restored_snapshot_replays_the_same_steps(name: str) -> None:
    method = _build(name)
    _prepare(method)
    snap = _state.snapshot(method._state)
    first = _steps(method, False, steps=3)
    method._state = _state.restore(snap, method._state)
    again = _steps(method, False, steps=3)
    for (ta, wa, ga), (tb, wb, gb) in zip(first, again):
        assert torch.equal(ta, tb) and torch.equal(wa, wb) and torch.equal(ga, gb)


def _fast(losses):
    return _losses._finite_cpu_losses(losses)


def test_fast_check_hands_the_unusual_to_the_exact_path() -> None:
    x = torch.tensor([1.0, 2.0])
    assert _fast([x[0], x[1]]) is not None and _fast(x) is x
    assert _fast([torch.tensor(1.0), torch.tensor(float("nan"))]) is None
    big = torch.tensor([3e38, 3e38])  # finite, but their sum overflows float32
    assert _fast(big) is None
    prepared = _losses.prepare_losses(
        big, None, owner="m", nonfinite="raise", monitor=NonFiniteMonitor(), step=0
    )
    assert prepared.present.all() and prepared.all_present
    assert _fast([torch.tensor([1.0]), torch.tensor([2.0])]) is None  # not 0-d
    assert _fast([1.0, 2.0]) is None and _fast([]) is None
    assert _fast(torch.tensor([1, 2])) is None  # integers: the exact path raises
    mixed = _fast([torch.tensor(1.0), torch.tensor(2.0, dtype=torch.float64)])
    assert mixed is not None and mixed.dtype == torch.float64  # promoted as as_losses does
    with pytest.raises(ValueError, match="non-finite"):
        _losses.prepare_losses(
            [torch.tensor(1.0), torch.tensor(math.inf)],
            None,
            owner="m",
            nonfinite="raise",
            monitor=NonFiniteMonitor(),
            step=0,
        )
