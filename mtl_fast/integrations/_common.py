"""What the trainer integrations share: task names, the lifecycle checks, the method's optimizer
parameter group, the per-task weights to log and the epoch bookkeeping.

Framework-free (no Lightning or transformers import), so it is tested on its own.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

from mtl_fast.weighting import Weighting

#: Metric names of the logged weights: ``f"{prefix}{task_name}"``.
DEFAULT_WEIGHT_PREFIX = "mtl_weight/"

#: ``observe=``: the metric names of the T per-task validation metrics (in task order), or a
#: function from the evaluation's metrics to the T values.
ObserveLike = Union[Sequence[str], Callable[[Mapping[str, Any]], Sequence[float]], None]


def check_task_names(task_names: Sequence[str], method: Weighting) -> tuple[str, ...]:
    """The task names as a tuple, checked: distinct strings, as many as the method's tasks."""
    if isinstance(task_names, str):
        raise TypeError(f"task_names must be a sequence of names, not one string: {task_names!r}")
    names = tuple(task_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"task_names must be non-empty strings; got {task_names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"task_names must be distinct; got {names!r}")
    if method.num_tasks is not None and method.num_tasks != len(names):
        raise ValueError(
            f"{len(names)} task names for a {type(method).__name__} built for "
            f"{method.num_tasks} tasks"
        )
    return names


def check_lifecycle(method: Weighting, observe: ObserveLike) -> None:
    """Refuse a method whose lifecycle the integration cannot serve, before training starts.

    ``"end_epoch"`` is always served. ``"observe"`` needs ``observe=`` (AMTL and DTP learn from
    validation metrics; without them they keep their warm-up weights). ``"update"`` (FAMO with
    ``extra_pass=True``) needs a second forward after each optimizer step, which a framework's
    automatic optimization does not make: FAMO's ``extra_pass=False`` updates from the next
    step's losses instead.
    """
    lifecycle = type(method).lifecycle
    name = type(method).__name__
    if "update" in lifecycle and getattr(method, "extra_pass", True):
        raise ValueError(
            f"{name} needs update(new_losses) after every optimizer step, a second forward pass "
            f"the trainer does not make: build it with extra_pass=False (it then updates from "
            f"the next step's losses), e.g. mf.{name}(T, extra_pass=False)"
        )
    if "observe" in lifecycle and observe is None:
        raise ValueError(
            f"{name} learns from per-task validation metrics: pass observe=[metric name of each "
            "task, in task order] (or a function from the evaluation's metrics to the T values) "
            "so that observe(metrics) is called after each evaluation"
        )
    if observe is not None and not callable(observe):
        if isinstance(observe, str) or not all(isinstance(k, str) for k in observe):
            raise TypeError(f"observe must be a sequence of metric names; got {observe!r}")


def observed_values(
    observe: ObserveLike, metrics: Mapping[str, Any], num_tasks: int
) -> list[float] | None:
    """The T values for ``method.observe`` from an evaluation's ``metrics`` (None: no
    ``observe=``).

    Raises:
        KeyError: a named metric was not logged (the message lists the ones that were).
        ValueError: the function returned a number of values other than T.
    """
    if observe is None:
        return None
    if callable(observe):
        values = [float(v) for v in observe(metrics)]
    else:
        missing = [k for k in observe if k not in metrics]
        if missing:
            raise KeyError(
                f"observe: metrics {missing} were not logged by the evaluation; logged: "
                f"{sorted(metrics)}"
            )
        values = [_as_float(metrics[k]) for k in observe]
    if len(values) != num_tasks:
        raise ValueError(f"observe gave {len(values)} values for {num_tasks} tasks")
    return values


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def method_param_groups(method: Weighting, lr: float) -> list[dict[str, Any]]:
    """The optimizer parameter group of the method's learnable parameters (IMTL's scales,
    Kendall's log-variances, GradNorm's weights), ``[]`` for a method without any.

    No weight decay: it would pull the log-scales towards 0 (weights towards 1), a prior the
    papers do not have.
    """
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        return []
    return [{"params": params, "lr": float(lr), "weight_decay": 0.0}]


def add_method_group(
    optimizer: torch.optim.Optimizer, method: Weighting, lr: float | None
) -> dict[str, Any] | None:
    """Give the method's learnable parameters a parameter group of their own in ``optimizer``.

    ``lr=None``: the learning rate of the optimizer's first group. When the optimizer already
    has a group of exactly the method's parameters (built by the caller), it is kept as it is;
    otherwise the method's parameters are moved out of the groups they are in (a model whose
    ``parameters()`` include the method's) into the new group. Learning-rate schedulers built
    before the group existed leave its learning rate constant.

    Returns the method's group (None: the method has no learnable parameters).

    Raises:
        RuntimeError: the optimizer has already stepped on the method's parameters.
    """
    groups = method_param_groups(method, 0.0)
    if not groups:
        return None
    ids = {id(p) for p in groups[0]["params"]}
    for group in optimizer.param_groups:
        if {id(p) for p in group["params"]} == ids:
            return group
    for group in optimizer.param_groups:
        if any(id(p) in ids and optimizer.state.get(p) for p in group["params"]):
            raise RuntimeError(
                "the optimizer has already stepped on the method's parameters: add their group "
                "before training starts"
            )
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    groups[0]["lr"] = float(optimizer.param_groups[0]["lr"] if lr is None else lr)
    optimizer.add_param_group(groups[0])
    return optimizer.param_groups[-1]


def weights_by_name(
    method: Weighting, task_names: Sequence[str], prefix: str = DEFAULT_WEIGHT_PREFIX
) -> dict[str, Tensor]:
    """``{prefix + name: weight}`` of the last step (0-d detached tensors, no host read)."""
    w = method.weights
    return {f"{prefix}{name}": w[t] for t, name in enumerate(task_names)}


class EpochCloser:
    """Calls ``method.end_epoch()`` exactly once per completed training epoch.

    A framework may save a checkpoint at the end of an epoch before or after its epoch-end hook
    (after validation, say) and, resumed from it, skip or repeat that hook. :meth:`catch_up`
    makes the count of ``end_epoch()`` calls equal to the number of completed epochs whatever
    the order: called at the epoch-end hook with the epochs completed so far, and when training
    (re)starts with those the framework has restored. :attr:`closed` goes into the checkpoint.
    """

    def __init__(self, method: Weighting) -> None:
        self.method = method
        self.closed = 0

    def catch_up(self, completed_epochs: int) -> None:
        """Close the epochs not closed yet, up to ``completed_epochs``."""
        while self.closed < completed_epochs:
            self.method.end_epoch()
            self.closed += 1


def completed_epochs(epoch: float) -> int:
    """The number of completed epochs from a fractional epoch counter (e.g. 2.0 after two)."""
    return math.floor(epoch + 1e-9)
