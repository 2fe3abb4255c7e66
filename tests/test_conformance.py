"""Every registered method (``mtl_fast.methods.registry``) held to the same contract, the way
PyTorch holds its optimizers to ``optim_db``: a method added to the registry is checked here
without another list to edit.

The contract: the registry is complete and consistent; ``state_dict()`` loads with
``torch.load(weights_only=True)`` and a resumed run equals an unbroken one exactly; an absent
task (mask, or a NaN loss under a mask or ``nonfinite="absent"``) gets weight 0 and no gradient,
a NaN loss without a mask raises naming the task; for gradient methods ``split`` and
``mf.backward(features=)`` give the same gradients and weights; float64 models work.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from _toy import ToyMTL, check_mask_and_nan, check_resume, split_step, toy_batch

import mtl_fast as mf
import mtl_fast.methods as methods_pkg
from mtl_fast.methods import registry
from mtl_fast.weighting import Weighting

# The contract runs no lifecycle calls: FAMO's warning that update() was not called is expected.
pytestmark = pytest.mark.filterwarnings("ignore:FAMO.*update\\(\\) was not called:RuntimeWarning")

NAMES = registry.names()
GRADIENT = [n for n in NAMES if registry.get(n).family == "gradient"]
T = 3


def test_registry_covers_every_exported_method() -> None:
    exported = {
        name
        for name in methods_pkg.__all__
        if inspect.isclass(getattr(methods_pkg, name))
        and issubclass(getattr(methods_pkg, name), Weighting)
    }
    assert exported == set(NAMES)
    assert len(set(NAMES)) == len(NAMES)
    for name in NAMES:
        spec = registry.get(name)
        assert spec.cls.__name__ == name and getattr(mf, name, spec.cls) is spec.cls
        assert spec.family in ("loss", "gradient")
        for call in spec.lifecycle:
            assert callable(getattr(spec.cls, call, None)), f"{name} has no {call}()"


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="registered: EqualWeighting"):
        registry.get("NoSuchMethod")


@pytest.mark.parametrize("name", NAMES)
def test_build_gives_a_fresh_instance_for_t_tasks(name: str) -> None:
    spec = registry.get(name)
    a, b = spec.build(T), spec.build(T)
    assert isinstance(a, spec.cls) and a is not b
    assert a.num_tasks == T
    assert spec.build(T, nonfinite="absent").nonfinite == "absent"


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_exact_with_weights_only_load(name: str) -> None:
    check_resume(lambda: registry.get(name).build(T), num_tasks=T, weights_only=True)


@pytest.mark.parametrize("name", NAMES)
def test_masks_and_non_finite_losses(name: str) -> None:
    spec = registry.get(name)
    check_mask_and_nan(lambda **kw: spec.build(T, **kw), num_tasks=T)


@pytest.mark.parametrize("name", GRADIENT)
def test_split_equals_functional_backward(name: str) -> None:
    spec = registry.get(name)
    torch.manual_seed(0)
    model_a, model_b = ToyMTL(T), ToyMTL(T)
    x, ys = toy_batch(model_a)
    # Methods that draw random numbers (PCGrad's task order) get the same seed on both routes.
    seeded = {"seed": 0} if "seed" in inspect.signature(spec.cls.__init__).parameters else {}
    method_a, method_b = spec.build(T, **seeded), spec.build(T, **seeded)
    split_step(model_a, method_a, x, ys)

    z = model_b.encoder(x)
    losses = model_b.task_losses([z] * T, ys)
    mf.backward(losses, features=z, method=method_b)

    torch.testing.assert_close(method_b.weights, method_a.weights, rtol=1e-6, atol=1e-9)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_float64_model(name: str) -> None:
    spec = registry.get(name)
    model = ToyMTL(T, dtype=torch.float64)
    method = spec.build(T)
    for k in range(2):
        x, ys = toy_batch(model, seed=k)
        model.zero_grad(set_to_none=True)
        split_step(model, method, x, ys)
    w = method.weights
    assert w.shape == (T,) and torch.isfinite(w).all()
    assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters())


def _state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype):
                return False
            same = x == y
            if x.is_floating_point():
                same |= x.isnan() & y.isnan()  # NaN marks unset statistics
            if not bool(same.all()):
                return False
        elif isinstance(x, dict):
            if not (isinstance(y, dict) and _state_equal(x, y)):
                return False
        elif isinstance(x, (list, tuple)):  # e.g. one state tensor per feature tensor
            if not (type(y) is type(x) and len(x) == len(y)):
                return False
            if not _state_equal(dict(enumerate(x)), dict(enumerate(y))):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_lifecycle_hooks_exist_and_are_inert_where_undeclared(name: str) -> None:
    """Every method takes ``end_epoch()`` and ``observe(metrics)``; a method that does not
    declare a hook in its ``lifecycle`` is unchanged by it (a loop may call both always)."""
    spec = registry.get(name)
    model = ToyMTL(T)
    method = spec.build(T)
    for k in range(3):
        x, ys = toy_batch(model, seed=k)
        model.zero_grad(set_to_none=True)
        split_step(model, method, x, ys)
    before = method.state_dict()
    changed = method.end_epoch()
    assert isinstance(changed, bool)
    method.observe([0.5] * T)
    if not set(spec.lifecycle) & {"end_epoch", "observe"}:
        assert changed is False
        assert _state_equal(before, method.state_dict())


def test_end_epoch_closes_a_period_unless_periods_close_by_steps() -> None:
    for cls in (mf.LSB, mf.DWA):
        by_epoch, by_steps = cls(T), cls(T, period_steps=1000)
        for m in (by_epoch, by_steps):
            m.loss(torch.tensor([1.0, 2.0, 3.0]))
        assert by_epoch.end_epoch() is True and by_epoch.period == 2
        assert by_steps.end_epoch() is False and by_steps.period == 1


def test_observe_is_update_accuracy() -> None:
    a, b = mf.AMTL([0.9] * T), mf.AMTL([0.9] * T)
    a.observe([0.5, 0.6, 0.7])
    b.update_accuracy([0.5, 0.6, 0.7])
    assert _state_equal(a.state_dict(), b.state_dict())


# ------------------------------------------------------------------ guard rails of a training loop


def _warm(method: Weighting, model: ToyMTL, steps: int = 2) -> None:
    for k in range(steps):
        x, ys = toy_batch(model, seed=k)
        model.zero_grad(set_to_none=True)
        split_step(model, method, x, ys)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["eval", "no_grad", "inference_mode"])
def test_evaluation_changes_nothing(name: str, how: str) -> None:
    """``loss()`` in eval mode or without gradients returns Σ w_t L_t with the current weights
    and leaves the state (statistics, step, periods, RNG) exactly as it was."""
    model = ToyMTL(T)
    method = registry.get(name).build(T)
    _warm(method, model)
    before = method.state_dict()
    weights = method.weights.clone()
    x, ys = toy_batch(model, seed=7)
    if how == "eval":
        method.eval()
        z = model.encoder(x)
        total = method.loss(model.task_losses(method.split(z, num_tasks=T), ys))
        method.train()
    else:
        ctx = torch.no_grad() if how == "no_grad" else torch.inference_mode()
        with ctx:
            z = model.encoder(x)
            total = method.loss(model.task_losses(method.split(z, num_tasks=T), ys))
    losses = model.task_losses([model.encoder(x)] * T, ys).detach()
    torch.testing.assert_close(total.detach(), (weights * losses).sum(), rtol=1e-5, atol=1e-6)
    assert _state_equal(before, method.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_an_abandoned_step_leaves_nothing_behind(name: str) -> None:
    """A step abandoned after ``loss()`` (an exception before ``backward``, a trainer skipping
    the batch) does not poison the next step, and nothing of it reaches the state: the run
    continues exactly like a run that never saw it."""
    spec = registry.get(name)
    seeded = {"seed": 0} if "seed" in inspect.signature(spec.cls.__init__).parameters else {}
    torch.manual_seed(0)
    model_a, model_b = ToyMTL(T), ToyMTL(T)
    model_b.load_state_dict(model_a.state_dict())
    clean, skipped = spec.build(T, **seeded), spec.build(T, **seeded)
    _warm(clean, model_a)
    _warm(skipped, model_b)
    x, ys = toy_batch(model_b, seed=11)
    zs = skipped.split(model_b.encoder(x), num_tasks=T)
    skipped.loss(model_b.task_losses(zs, ys))  # abandoned: no backward
    for k in (3, 4):
        x, ys = toy_batch(model_a, seed=k)
        for model, method in ((model_a, clean), (model_b, skipped)):
            model.zero_grad(set_to_none=True)
            split_step(model, method, x, ys)
    assert clean.step == skipped.step
    assert _state_equal(clean.state_dict(), skipped.state_dict())
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_an_exception_between_split_and_loss_does_not_poison_the_next_step(name: str) -> None:
    model = ToyMTL(T)
    method = registry.get(name).build(T)
    x, ys = toy_batch(model)
    with pytest.raises(ValueError, match="task 1"):
        zs = method.split(model.encoder(x), num_tasks=T)
        bad = ys.clone()
        bad[1, 0, 0] = float("nan")
        method.loss(model.task_losses(zs, bad))
    split_step(model, method, x, ys)  # the next step runs
    assert method.step == 1


@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_method_refuses_loss_without_split(name: str) -> None:
    method = registry.get(name).build(T)
    with pytest.raises(RuntimeError, match=rf"{name} is gradient-based and no split is pending"):
        method.loss(torch.ones(T, requires_grad=True))
    with pytest.raises(RuntimeError, match="no weights yet"):
        _ = method.weights


@pytest.mark.parametrize("name", NAMES)
def test_dict_losses_name_the_tasks(name: str) -> None:
    model = ToyMTL(T)
    method = registry.get(name).build(T)
    x, ys = toy_batch(model)
    zs = method.split(model.encoder(x), num_tasks=T)
    losses = model.task_losses(zs, ys, stack=False)
    method.loss({f"t{k}": v for k, v in enumerate(losses)}).backward()
    assert list(method.weights_dict()) == ["t0", "t1", "t2"]
    bad = dict(
        zip(("a", "b", "c"), [torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(1.0)])
    )
    with pytest.raises(ValueError, match=rf"{name}: .*task 1 \('b'\)"):
        method.loss(bad)
