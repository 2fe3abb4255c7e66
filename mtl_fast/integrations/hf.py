"""Hugging Face ``transformers``: a ``Trainer`` for models that return one loss per task.

The model returns its task losses under ``"task_losses"`` (a mapping task name → scalar loss, or
a sequence in ``task_names`` order) and receives the method as the keyword ``mtl_method`` when
its ``forward`` declares it; a gradient-based method must be declared there, since its ``split``
runs between the shared encoder and the heads (docs/design.md)::

    class Model(PreTrainedModel):
        def forward(self, x, y_a, y_b, mtl_method=None):
            z = self.encoder(x)
            za, zb = mtl_method.split(z) if mtl_method is not None else (z, z)
            return {"task_losses": {"a": mse(self.head_a(za), y_a), "b": mse(self.head_b(zb), y_b)}}

    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=ds,
                               method=mf.IMTL(2), task_names=["a", "b"])

The method is the trainer's, not a submodule of the model: ``save_pretrained`` writes the
model's tensors only, and the method's state (a dict of statistics, counters and RNG states)
goes into each checkpoint folder as ``mtl_fast_method.pt`` (``torch.save`` of its
``state_dict()``, loaded with ``weights_only=True``) and is restored by
``train(resume_from_checkpoint=...)``. :class:`MultiTaskTrainer` also gives the method's
learnable parameters an optimizer group of their own (``method_lr``; default: the trainer's
learning rate; no weight decay), puts the method in the model's train/eval mode, logs the
weights as ``mtl_weight/<task name>`` with the training loss, calls ``end_epoch()`` once per
epoch and ``observe(metrics)`` after each evaluation with the metrics named by ``observe=``.
Each gradient-accumulation micro-batch is one method step; its total is divided by the number
of accumulation steps (``loss_is_scaled_for_ga = False``).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'mtl_fast.integrations.hf needs the transformers package: pip install "mtl_fast[hf]"'
    ) from exc

from mtl_fast.integrations._common import (
    DEFAULT_WEIGHT_PREFIX,
    EpochCloser,
    ObserveLike,
    add_method_group,
    check_lifecycle,
    check_task_names,
    completed_epochs,
    observed_values,
    weights_by_name,
)
from mtl_fast.weighting import Weighting

__all__ = ["METHOD_STATE_FILE", "MultiTaskTrainer"]

#: The file of the method's state in each checkpoint folder.
METHOD_STATE_FILE = "mtl_fast_method.pt"
#: The keyword under which the model's ``forward`` receives the method.
METHOD_KEYWORD = "mtl_method"


class MultiTaskTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is ``method.loss`` of the model's task losses.

    Args:
        *args: the positional arguments of ``transformers.Trainer``.
        **kwargs: its keyword arguments.
        method: the :class:`~mtl_fast.Weighting` (not a submodule of the model).
        task_names: one name per task (the keys of the model's ``task_losses``).
        method_lr: learning rate of the method's learnable parameters; ``None``: the trainer's.
        observe: for AMTL and DTP, the names of the T per-task evaluation metrics (as
            ``evaluate()`` reports them, e.g. ``"eval_acc_a"``), in task order, or a function
            from the metrics to the T values.
        prefix: prefix of the logged weights' names.
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        method: Weighting,
        task_names: Sequence[str],
        method_lr: float | None = None,
        observe: ObserveLike = None,
        prefix: str = DEFAULT_WEIGHT_PREFIX,
        **kwargs: Any,
    ) -> None:
        if not isinstance(method, Weighting):
            raise TypeError(f"method must be a mtl_fast.Weighting; got {type(method).__name__}")
        if method_lr is not None and not method_lr > 0:
            raise ValueError(f"method_lr must be > 0; got {method_lr!r}")
        self.method = method
        self.task_names = check_task_names(task_names, method)
        check_lifecycle(method, observe)
        self.method_lr = method_lr
        self.observe = observe
        self.prefix = prefix
        self._closer = EpochCloser(method)
        super().__init__(*args, **kwargs)
        model = self.model
        assert model is not None
        if any(m is method for m in model.modules()):
            raise ValueError(
                "the method is a submodule of the model: save_pretrained cannot write its state "
                f"(a dict). Keep it out of the model and let forward take it as `{METHOD_KEYWORD}`"
            )
        self._pass_method = METHOD_KEYWORD in inspect.signature(model.forward).parameters
        if method.gradient_based and not self._pass_method:
            raise ValueError(
                f"{type(method).__name__} balances the shared features' gradients inside the "
                f"model: give its forward a parameter `{METHOD_KEYWORD}=None` and call "
                f"{METHOD_KEYWORD}.split(features) between the encoder and the heads"
            )
        method.to(self.args.device)
        self.add_callback(_Lifecycle(self))

    # ------------------------------------------------------------------ loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        self.method.train(model.training)
        extra = {METHOD_KEYWORD: self.method} if self._pass_method else {}
        outputs = model(**inputs, **extra)
        total = self.method.loss(self._task_losses(outputs))
        return (total, outputs) if return_outputs else total

    def _task_losses(self, outputs: Any) -> list[Tensor]:
        try:
            losses = outputs["task_losses"]
        except (KeyError, TypeError, IndexError):
            raise ValueError(
                "the model's output must hold its task losses under 'task_losses' (a mapping "
                f"task name -> scalar loss over {list(self.task_names)}, or a sequence in that "
                "order)"
            ) from None
        if isinstance(losses, Mapping):
            if set(losses) != set(self.task_names):
                raise ValueError(
                    f"task_losses has tasks {sorted(losses)}; expected {sorted(self.task_names)}"
                )
            return [losses[name] for name in self.task_names]
        return list(losses)

    # ------------------------------------------------------------------ optimizer, logging

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        add_method_group(optimizer, self.method, self.method_lr)
        return optimizer

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self.method.num_tasks is not None:
            for key, value in weights_by_name(self.method, self.task_names, self.prefix).items():
                logs[key] = float(value)
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, model: nn.Module, trial: Any, *args: Any, **kwargs: Any) -> None:
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if not self.args.should_save:
            return
        folder = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        state = {
            "method": self.method.state_dict(),
            "epochs_closed": self._closer.closed,
            "epochs_completed": completed_epochs(self.state.epoch or 0.0),
        }
        torch.save(state, os.path.join(folder, METHOD_STATE_FILE))

    def train(
        self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint to resume from in {self.args.output_dir}")
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.load_method_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def load_method_state(self, checkpoint: str | os.PathLike) -> None:
        """Restore the method from a checkpoint folder written by this trainer."""
        path = os.path.join(checkpoint, METHOD_STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint was not written by MultiTaskTrainer, so it "
                "has no state for the method"
            )
        state = torch.load(path, map_location=self.args.device, weights_only=True)
        self.method.load_state_dict(state["method"])
        self._closer.closed = int(state["epochs_closed"])
        # Saved between an epoch's last step and its epoch end: close that epoch now.
        self._closer.catch_up(int(state["epochs_completed"]))


class _Lifecycle(TrainerCallback):
    """``end_epoch()`` at each epoch end, ``observe(metrics)`` after each evaluation, and the
    method's gradients cleared after each optimizer step (the Trainer clears the model's only)."""

    def __init__(self, trainer: MultiTaskTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.method.zero_grad(set_to_none=True)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._closer.catch_up(completed_epochs(state.epoch or 0.0))

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        metrics: Mapping[str, Any] = kwargs["metrics"]
        trainer = self.trainer
        values = observed_values(trainer.observe, metrics, len(trainer.task_names))
        if values is not None:
            trainer.method.observe(values)
