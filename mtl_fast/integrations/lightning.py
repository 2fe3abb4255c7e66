"""PyTorch Lightning: a callback that does a method's bookkeeping under automatic optimization.

The LightningModule keeps the ordinary training step of docs/design.md and returns the total::

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder, self.heads = ..., ...
            self.method = mf.IMTL(2)  # a submodule: saved in the checkpoint with the model

        def training_step(self, batch, batch_idx):
            x, ys = batch
            zs = self.method.split(self.encoder(x))
            losses = [F.mse_loss(h(z), y) for h, z, y in zip(self.heads, zs, ys)]
            return self.method.loss(losses)

    trainer = L.Trainer(callbacks=[MultiTaskCallback(["depth", "normals"])], ...)

:class:`MultiTaskCallback` then, without manual optimization:

* calls ``method.end_epoch()`` once per training epoch and ``method.observe(metrics)`` after each
  validation (not the sanity check), for the methods whose class lists them in
  :attr:`mtl_fast.Weighting.lifecycle`, with the per-task metrics named by ``observe=``;
* logs the weights of every step as ``mtl_weight/<task name>``;
* gives the method's learnable parameters (IMTL's scales, Kendall's log-variances, GradNorm's
  weights) a parameter group of their own in the optimizer, at ``method_lr`` (default: the
  learning rate of the optimizer's first group), without weight decay;
* calls ``method.discard_pending()`` when ``training_step`` returned ``None`` (a skipped batch
  whose ``split`` will never be back-propagated), so the next step runs;
* keeps the method's state in the checkpoint (as part of the model when the method is a
  submodule, else in the callback's state) with the count of epochs it has closed, so that
  ``Trainer.fit(ckpt_path=...)`` continues with the weights of an unbroken run.

``accumulate_grad_batches``: each micro-batch is one ``split``/``loss`` step of the method (its
weights are per micro-batch); ``gradient_clip_val`` clips the balanced gradients; mixed
precision (``"bf16-mixed"``, ``"16-mixed"``) autocasts the forward as usual. A skipped batch
keeps what its ``loss`` call counted (the step counter and loss statistics).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mtl_fast.integrations.lightning needs the lightning package: "
        'pip install "mtl_fast[lightning]"'
    ) from exc

from mtl_fast.integrations._common import (
    DEFAULT_WEIGHT_PREFIX,
    EpochCloser,
    ObserveLike,
    add_method_group,
    check_lifecycle,
    check_task_names,
    observed_values,
    weights_by_name,
)
from mtl_fast.weighting import Weighting

__all__ = ["MultiTaskCallback"]


class MultiTaskCallback(pl.Callback):
    """The lifecycle, logging, optimizer group and checkpointing of one weighting method.

    Args:
        task_names: one name per task, in the order of the losses given to ``method.loss``
            (the logged metric names and the order of ``observe``).
        method: the :class:`~mtl_fast.Weighting`; ``None`` (default): the one submodule of the
            LightningModule that is a ``Weighting``.
        method_lr: learning rate of the method's learnable parameters; ``None``: that of the
            optimizer's first parameter group. Learning-rate schedulers built in
            ``configure_optimizers`` do not cover the group added here; to schedule it, put
            the method's parameters in a group of their own there (the callback keeps it).
        observe: for methods that learn from validation metrics (AMTL, DTP): the names of the
            T per-task metrics logged during validation (``trainer.callback_metrics``), in task
            order, or a function from those metrics to the T values. Required for them, else
            optional (it is then ignored by the methods that do not use it).
        log_weights: log the weights every training step (``on_step=True``).
        prefix: the prefix of the logged weights' names.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        method: Weighting | None = None,
        *,
        method_lr: float | None = None,
        observe: ObserveLike = None,
        log_weights: bool = True,
        prefix: str = DEFAULT_WEIGHT_PREFIX,
    ) -> None:
        super().__init__()
        if method is not None and not isinstance(method, Weighting):
            raise TypeError(f"method must be a mtl_fast.Weighting; got {type(method).__name__}")
        if method_lr is not None and not method_lr > 0:
            raise ValueError(f"method_lr must be > 0; got {method_lr!r}")
        self.task_names = tuple(task_names)
        self.method_lr = method_lr
        self.observe = observe
        self.log_weights = log_weights
        self.prefix = prefix
        self._given = method
        self._method: Weighting | None = None
        self._owned_by_module = False
        self._closer: EpochCloser | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def method(self) -> Weighting:
        """The method the callback serves (known from ``setup`` on)."""
        if self._method is None:
            raise RuntimeError("MultiTaskCallback: the method is known once Trainer.fit starts")
        return self._method

    # ------------------------------------------------------------------ set-up

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        method = self._find_method(pl_module)
        self.task_names = check_task_names(self.task_names, method)
        check_lifecycle(method, self.observe)
        if not pl_module.automatic_optimization:
            raise ValueError(
                "MultiTaskCallback serves automatic optimization; with manual optimization call "
                "the method's end_epoch()/observe() and discard_pending() in your loop"
            )
        self._method = method
        self._owned_by_module = any(m is method for m in pl_module.modules())
        self._closer = EpochCloser(method)
        if self._restored is not None:
            self._apply_restored(self._restored)
            self._restored = None

    def _find_method(self, pl_module: pl.LightningModule) -> Weighting:
        if self._given is not None:
            return self._given
        found = [m for m in pl_module.modules() if isinstance(m, Weighting)]
        if len(found) != 1:
            raise ValueError(
                f"MultiTaskCallback found {len(found)} mtl_fast.Weighting submodules in "
                f"{type(pl_module).__name__}: pass method= explicitly"
            )
        return found[0]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After configure_optimizers, before the optimizer's state is restored from a checkpoint,
        # so a resumed optimizer finds the same groups.
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"MultiTaskCallback expects one optimizer; got {len(trainer.optimizers)}"
            )
        add_method_group(trainer.optimizers[0], self.method, self.method_lr)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resumed from a checkpoint saved between an epoch's last batch and its epoch-end hook.
        self._require_closer().catch_up(trainer.current_epoch)

    # ------------------------------------------------------------------ training

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if outputs is None or (isinstance(outputs, Mapping) and not outputs):
            # training_step returned None: no backward runs for this batch's split.
            self.method.discard_pending()
            return
        if self.log_weights:
            for key, value in weights_by_name(self.method, self.task_names, self.prefix).items():
                pl_module.log(key, value, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._require_closer().catch_up(trainer.current_epoch + 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.observe is None:
            return
        values = observed_values(self.observe, trainer.callback_metrics, len(self.task_names))
        if values is not None:
            self.method.observe(values)

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epochs_closed": self._require_closer().closed}
        if not self._owned_by_module:
            state["method"] = self.method.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._closer is None:  # before setup: applied there
            self._restored = dict(state_dict)
        else:
            self._apply_restored(state_dict)

    def _apply_restored(self, state: Mapping[str, Any]) -> None:
        if "method" in state:
            self.method.load_state_dict(state["method"])
        elif not self._owned_by_module:
            raise ValueError(
                "the checkpoint holds no state for the method, which is not a submodule of the "
                "LightningModule: it was saved with the method inside the model"
            )
        self._require_closer().closed = int(state["epochs_closed"])

    def _require_closer(self) -> EpochCloser:
        if self._closer is None:
            raise RuntimeError("MultiTaskCallback: the method is known once Trainer.fit starts")
        return self._closer
