"""The bookkeeping of one training step of a method, so that an abandoned step leaves nothing.

A step opens with ``split`` (gradient methods: the split's backward will solve for the weights)
and/or :meth:`mtl_fast.Weighting.loss`, and ends when the backward of the step's total runs.
A training loop may abandon a step at any point: an exception between ``split`` and
``backward`` (the library's own non-finite error included), or a trainer that skips the batch
(Lightning's ``training_step`` returning ``None``). Then:

* a new ``split`` replaces the stale one; the stale split's backward, if it ever runs, raises
  (it would otherwise balance with the inputs of another step);
* the state the abandoned ``loss()`` changed (statistics, step counter, periods, random
  streams) is rolled back to what it was before, at the start of the next step: the snapshot
  taken before the update is restored unless the step's backward reached its total.

With a gradient scaler (:mod:`mtl_fast.amp`) the update of an optimizer step is provisional
until the scaler has decided: a snapshot of the whole state is taken at the step's first scaled
``loss()`` and restored at the start of the next step when ``scaler.update()`` reported that the
scaler skipped the step (overflow), so a skipped step leaves no trace either.

A total that is back-propagated after the next step began (summing the totals of several
``loss()`` calls before one backward) raises with the fix: back-propagate each micro-batch, or
use :meth:`mtl_fast.Weighting.accumulate`.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from mtl_fast._losses import StepInputs
from mtl_fast.amp import ScalerWatch

#: Totals of compiled steps whose hooks are kept at once (see StepBook.keep_backward_hooks).
_KEPT_HOOKS = 8


class StepBook:
    """Open split, recorded inputs and the rollback snapshot of the current step."""

    def __init__(self) -> None:
        self.split_token = 0  # increases with every split; 0: none yet
        self.split_open = False  # a split (or a layer's balanced step) awaits its backward
        self.inputs: StepInputs | None = None  # recorded by loss() for the split's backward
        self.inputs_token = 0  # the update that recorded ``inputs`` (0: none)
        self.loss_token = 0  # increases with every loss() that updates the state
        self._snapshot: Any = None  # the state before the last uncommitted update, or None
        self._snapshot_token = 0
        self._rolled_back_token = 0
        # Compiled steps (mtl_fast._compiled_step): the hooks of a total collected instead of
        # registered while ``_collecting`` is a list, kept by token until its backward runs.
        self._collecting: list[Callable[[Tensor], Any]] | None = None
        self._kept_hooks: dict[int, list[Callable[[Tensor], Any]]] = {}
        self._hook_token = 0
        # Scaled steps: (the scaler's watch, its update count at the step's start, the snapshot).
        self._scaled: tuple[ScalerWatch, int, Any] | None = None

    # ------------------------------------------------------------------ split

    def open_split(self) -> int:
        """Open a split, replacing a stale one; returns its token."""
        self.split_token += 1
        self.split_open = True
        self.inputs = None
        self.inputs_token = 0
        return self.split_token

    def record_inputs(self, inputs: StepInputs, token: int) -> None:
        self.inputs = inputs
        self.inputs_token = token

    def close_split(self, token: int | None, owner: str) -> tuple[StepInputs | None, int]:
        """Close the open split for its backward; returns the inputs ``loss()`` recorded and
        the token of that update (0: none).

        ``token``: the split's token (``None``: the caller drives the step itself and knows it
        is current). Raises when the split is not the open one."""
        if token is not None and (token != self.split_token or not self.split_open):
            raise RuntimeError(
                f"{owner}: the backward of a split that was replaced or discarded is running "
                "(split was called again before this one was back-propagated). Pass all shared "
                "features of a step to one call, method.split(z1, z2, ...), and back-propagate "
                "each step before the next; to accumulate gradients over micro-batches use "
                "method.accumulate(k)"
            )
        self.split_open = False
        inputs, self.inputs = self.inputs, None
        update, self.inputs_token = self.inputs_token, 0
        return inputs, update

    def discard_split(self) -> None:
        self.split_open = False
        self.inputs = None
        self.inputs_token = 0

    # ------------------------------------------------------------------ update transactions

    def begin_update(self, snapshot: Any) -> int:
        """A ``loss()`` is about to change the state; ``snapshot`` restores it. Returns the
        update's token, which :meth:`commit` takes."""
        self.loss_token += 1
        self._snapshot = snapshot
        self._snapshot_token = self.loss_token
        return self.loss_token

    def commit(self, token: int, owner: str) -> None:
        """The step's backward reached its total (or its solve succeeded): keep the update."""
        if token and token == self._rolled_back_token:
            raise RuntimeError(
                f"{owner}: a total from an earlier method.loss(...) call is being "
                "back-propagated after a later call began a new step, so that step's update "
                "was rolled back. Back-propagate each method.loss(...) before the next one, "
                "or use method.accumulate(k) to sum the losses of k micro-batches"
            )
        if token == self._snapshot_token:
            self._snapshot = None

    def rollback(self, restore: Callable[[Any], None]) -> bool:
        """Restore the state before an uncommitted update (an abandoned step); returns whether
        there was one."""
        if self._snapshot is None:
            return False
        snapshot, self._snapshot = self._snapshot, None
        self._rolled_back_token = self._snapshot_token
        restore(snapshot)
        return True

    def commit_hook(self, token: int, owner: str) -> Callable[[Tensor], None]:
        """A tensor hook that commits update ``token`` when the backward reaches the total."""

        def hook(grad: Tensor) -> None:
            self.commit(token, owner)

        return hook

    def on_backward(self, total: Tensor, hook: Callable[[Tensor], Any]) -> None:
        """Run ``hook`` when the backward reaches ``total`` (a tensor hook; in a compiled step,
        by the ``commit_step`` operator of :mod:`mtl_fast._compiled_step`)."""
        if self._collecting is not None:
            self._collecting.append(hook)
        else:
            total.register_hook(hook)

    def collect_backward_hooks(self) -> list[Callable[[Tensor], Any]]:
        """Collect the hooks :meth:`on_backward` is given until :meth:`stop_collecting`."""
        self._collecting = []
        return self._collecting

    def stop_collecting(self) -> None:
        self._collecting = None

    def keep_backward_hooks(self, hooks: list[Callable[[Tensor], Any]]) -> int:
        """Keep collected hooks for :meth:`take_backward_hooks`; returns their token (> 0). Only
        the latest few are kept: an older total whose backward never ran was abandoned."""
        self._hook_token += 1
        token = self._hook_token
        self._kept_hooks[token] = hooks
        for old in [t for t in self._kept_hooks if t <= token - _KEPT_HOOKS]:
            del self._kept_hooks[old]
        return token

    def take_backward_hooks(self, token: int) -> list[Callable[[Tensor], Any]]:
        return self._kept_hooks.pop(token, [])

    # ------------------------------------------------------------------ scaled steps

    def begin_scaled(self, watch: ScalerWatch, snapshot: Callable[[], Any]) -> None:
        """A scaled ``loss()`` (:mod:`mtl_fast.amp`): the first of an optimizer step takes the
        snapshot its skip would restore (``snapshot()``, the whole state)."""
        if self._scaled is None or self._scaled[0] is not watch:
            self._scaled = (watch, watch.updates, snapshot())

    def settle_scaled(self, restore: Callable[[Any], None]) -> bool | None:
        """Apply the scaler's verdict on the pending scaled step, once ``update()`` gave it:
        restore its snapshot when the step was skipped. Returns whether it was skipped, or
        ``None`` when nothing was pending or the scaler has not decided yet (micro-batches of
        one optimizer step)."""
        if self._scaled is None:
            return None
        watch, start, snapshot = self._scaled
        if watch.updates == start:
            return None
        self._scaled = None
        skipped = watch.skipped(start + 1)
        if skipped:
            restore(snapshot)
        return skipped

    def forget(self) -> None:
        """Drop the step (a loaded state_dict replaces it)."""
        self.discard_split()
        self._snapshot = None
        self._scaled = None
