"""mtl_fast.integrations.lightning with the real lightning package: lifecycle calls, weight
logging, the method's optimizer group, skipped batches, accumulation, clipping, bf16 autocast and
checkpoint resume. Trained models are compared with a plain PyTorch loop that makes the same
calls (tests/integrations/_integration_toy.py), and resumed runs with unbroken ones.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

import mtl_fast as mf
from mtl_fast.methods import registry

L = pytest.importorskip(
    "lightning.pytorch",
    reason="lightning is not installed: pip install 'mtl_fast[lightning]' (make test installs it)",
)
from _integration_toy import (  # noqa: E402
    TASKS,
    Net,
    accuracies,
    assert_same_run,
    loader,
    mean_accuracies,
    plain_run,
)

from mtl_fast.integrations.lightning import MultiTaskCallback  # noqa: E402

EPOCHS = 3
BATCHES = 4  # per epoch


class Module(L.LightningModule):
    """The ordinary step of docs/design.md; ``skip``: (epoch, batch) pairs whose step returns
    None after ``split`` (a batch dropped before ``loss``)."""

    def __init__(
        self,
        method: mf.Weighting,
        *,
        inside: bool = True,
        skip: tuple[tuple[int, int], ...] = (),
        lr: float = 0.01,
    ) -> None:
        super().__init__()
        self.net = Net()
        if inside:
            self.method = method
        else:
            self._outside = [method]  # not a submodule: its state goes through the callback
        self.skip = skip
        self.lr = lr

    @property
    def mtl(self) -> mf.Weighting:
        return self.method if hasattr(self, "method") else self._outside[0]

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        losses = self.net.losses(x, y, self.mtl)
        if (self.current_epoch, batch_idx) in self.skip:
            return None
        return self.mtl.loss(losses)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for name, acc in zip(TASKS, accuracies(self.net, x, y)):
            self.log(f"acc_{name}", acc, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def trainer(tmp_path: Any, *, epochs: int = EPOCHS, val: bool = False, **kwargs: Any) -> Any:
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        limit_val_batches=1.0 if val else 0,
        num_sanity_val_steps=1 if val else 0,
        enable_checkpointing=any(
            isinstance(c, L.callbacks.ModelCheckpoint) for c in kwargs.get("callbacks", [])
        ),
    )
    options.update(kwargs)
    return L.Trainer(**options)


def fit(
    module: Module,
    callback: MultiTaskCallback,
    tmp_path: Any,
    *,
    val: bool = False,
    ckpt_path: str | None = None,
    **kwargs: Any,
) -> Any:
    t = trainer(tmp_path, val=val, callbacks=[callback, *kwargs.pop("callbacks", [])], **kwargs)
    t.fit(module, loader(), loader() if val else None, ckpt_path=ckpt_path)
    return t


# ---------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("accumulate", "clip", "precision"),
    [(1, None, "32-true"), (2, 0.5, "32-true"), (1, None, "bf16-mixed")],
)
def test_training_equals_the_plain_loop(
    tmp_path: Any, accumulate: int, clip: float | None, precision: str
) -> None:
    """IMTL (gradient-based, with learnable scales) trained by Lightning with the callback gives
    the parameters, weights and method state of the plain loop making the same calls:
    ``accumulate_grad_batches`` divides each micro-batch's total and steps every
    ``accumulate`` batches, ``gradient_clip_val`` clips the norm of every optimizer parameter
    (the method's included), ``bf16-mixed`` autocasts the step's forward on the CPU."""
    torch.manual_seed(0)
    module = Module(mf.IMTL(3))
    callback = MultiTaskCallback(TASKS, method_lr=0.02)
    fit(
        module,
        callback,
        tmp_path,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        precision=precision,
    )
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16-mixed"
        else contextlib.nullcontext
    )
    net, method = plain_run(
        mf.IMTL(3), EPOCHS, accumulate=accumulate, clip=clip, autocast=autocast, method_lr=0.02
    )
    assert method.step == EPOCHS * BATCHES
    assert_same_run((module.net, module.method), (net, method), exact=True)


def test_method_group_logging_and_lifecycle(tmp_path: Any) -> None:
    """The method's parameters are moved into one group at ``method_lr`` without weight decay;
    the weights are logged per task name; DWA gets ``end_epoch()`` once per epoch."""
    module = Module(mf.IMTL(3))
    t = fit(module, MultiTaskCallback(TASKS, method_lr=0.02), tmp_path, epochs=1)
    groups = t.optimizers[0].param_groups
    method_ids = {id(p) for p in module.method.parameters()}
    assert [{id(p) for p in g["params"]} & method_ids for g in groups] == [set(), method_ids]
    assert groups[1]["lr"] == 0.02 and groups[1]["weight_decay"] == 0.0
    logged = t.logged_metrics
    for t_idx, name in enumerate(TASKS):
        assert float(logged[f"mtl_weight/{name}"]) == float(module.method.weights[t_idx])

    dwa = mf.DWA(3)
    calls: list[int] = []
    original = dwa.end_epoch
    dwa.end_epoch = lambda: calls.append(dwa.step) or original()  # type: ignore[method-assign]
    fit(Module(dwa), MultiTaskCallback(TASKS), tmp_path)
    assert calls == [BATCHES * (e + 1) for e in range(EPOCHS)]


def test_observe_gets_the_validation_metrics(tmp_path: Any) -> None:
    """AMTL's ``observe`` receives the logged per-task metrics after every validation (the
    sanity check excluded), in task order; without ``observe=`` the callback refuses AMTL."""
    amtl = mf.AMTL([0.9, 0.9, 0.9])
    seen: list[list[float]] = []
    original = amtl.observe
    amtl.observe = lambda m, **kw: seen.append(list(m)) or original(m, **kw)  # type: ignore[method-assign]
    module = Module(amtl)
    t = fit(
        module, MultiTaskCallback(TASKS, observe=[f"acc_{n}" for n in TASKS]), tmp_path, val=True
    )
    assert len(seen) == EPOCHS
    assert seen[-1] == pytest.approx(mean_accuracies(module.net, list(loader())), rel=1e-5)
    assert seen[-1] == pytest.approx([float(t.callback_metrics[f"acc_{n}"]) for n in TASKS])
    with pytest.raises(ValueError, match="observe="):
        fit(Module(mf.AMTL([0.9] * 3)), MultiTaskCallback(TASKS), tmp_path)


def test_skipped_batch_is_discarded(tmp_path: Any) -> None:
    """A step that returns None after ``split`` leaves nothing behind (the method replaces a
    stale split by itself); with the callback the pending split is also discarded at once, and
    either way the skipped batch takes no method step."""
    skip = ((0, 1), (1, 3))
    bare = Module(mf.IMTLG(), skip=skip)
    trainer(tmp_path).fit(bare, loader())
    assert bare.method.step == EPOCHS * BATCHES - len(skip)
    module = Module(mf.IMTLG(), skip=skip)
    fit(module, MultiTaskCallback(TASKS), tmp_path)
    assert module.method.step == EPOCHS * BATCHES - len(skip)


def test_refuses_what_it_cannot_serve(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="extra_pass=False"):
        fit(Module(mf.FAMO(3)), MultiTaskCallback(TASKS), tmp_path)
    with pytest.raises(ValueError, match="3 tasks"):
        fit(Module(mf.IMTL(3)), MultiTaskCallback(TASKS[:2]), tmp_path)
    module = Module(mf.IMTL(3), inside=False)
    with pytest.raises(ValueError, match="pass method="):
        fit(module, MultiTaskCallback(TASKS), tmp_path)
    fit(Module(mf.FAMO(3, extra_pass=False)), MultiTaskCallback(TASKS), tmp_path, epochs=1)


# ---------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("name", "val", "inside"),
    [
        ("IMTL", False, True),
        ("DWA", True, True),
        ("STCH", False, True),
        ("AMTL", True, False),
        ("PCGrad", False, False),
    ],
)
def test_resume_gives_the_unbroken_run(tmp_path: Any, name: str, val: bool, inside: bool) -> None:
    """Fit 2 epochs with checkpoints, resume with ``Trainer.fit(ckpt_path=...)`` to 4 in a new
    process state (fresh module, method, callback and trainer): parameters, optimizer-driven
    method parameters, weights and the method's state equal an unbroken 4-epoch run exactly.
    With validation the checkpoint is written at validation end, before the epoch-end hook
    (``save_on_train_epoch_end=False``; Lightning runs the hook again on resuming, and DWA's
    period must be closed once); AMTL and PCGrad (RNG state) live outside the module, their
    state in the callback's."""
    spec = registry.get(name)
    observe = [f"acc_{n}" for n in TASKS] if val else None

    def run(epochs: int, ckpt: str | None, root: Any) -> Module:
        torch.manual_seed(0)
        module = Module(spec.build(3), inside=inside)
        callback = MultiTaskCallback(TASKS, module.mtl, method_lr=0.02, observe=observe)
        saver = L.callbacks.ModelCheckpoint(
            dirpath=str(root), save_last=True, save_top_k=-1, save_on_train_epoch_end=not val
        )
        fit(module, callback, root, val=val, epochs=epochs, ckpt_path=ckpt, callbacks=[saver])
        return module

    unbroken = run(4, None, tmp_path / "unbroken")
    run(2, None, tmp_path / "first")
    resumed = run(4, str(tmp_path / "first" / "last.ckpt"), tmp_path / "second")
    assert resumed.mtl.step == unbroken.mtl.step == 4 * BATCHES
    assert_same_run((resumed.net, resumed.mtl), (unbroken.net, unbroken.mtl), exact=True)


class SaveBeforeCallbacks(L.Callback):
    """Saves a checkpoint in ``on_train_epoch_end`` before the callbacks listed after it run."""

    def __init__(self, path: str, epoch: int) -> None:
        self.path, self.epoch = path, epoch

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def test_resume_from_a_checkpoint_saved_before_the_epoch_end_hook(tmp_path: Any) -> None:
    """A checkpoint written in ``on_train_epoch_end`` by a callback that runs before
    MultiTaskCallback holds a method whose epoch is not closed; Lightning resumes with the next
    epoch without calling the hook again, and the callback closes it when training starts: the
    resumed LSB run equals the unbroken one."""
    path = str(tmp_path / "early.ckpt")

    def run(epochs: int, ckpt: str | None, saver: list[Any]) -> Module:
        module = Module(mf.LSB(3))
        callbacks = [*saver, MultiTaskCallback(TASKS)]
        t = trainer(tmp_path, epochs=epochs, callbacks=callbacks)
        t.fit(module, loader(), ckpt_path=ckpt)
        return module

    unbroken = run(4, None, [])
    run(2, None, [SaveBeforeCallbacks(path, epoch=1)])
    resumed = run(4, path, [])
    assert_same_run((resumed.net, resumed.method), (unbroken.net, unbroken.method), exact=True)
