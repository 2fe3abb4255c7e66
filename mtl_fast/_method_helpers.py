"""What a :class:`mtl_fast.Weighting` subclass may call besides the public API: its weights, its
random stream, the distributed share of its statistics (:mod:`mtl_fast._sync`), bad-input
reports, gradient accumulation and the lifecycle warning. A mixin of the base class, so that
``weighting.py`` holds only the public API and the step."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import Tensor

from mtl_fast._sync import Update

if TYPE_CHECKING:
    from mtl_fast._nonfinite import NonFiniteMonitor
    from mtl_fast._step import StepBook
    from mtl_fast._sync import MethodSync


class MethodHelpers:
    """Protected helpers for the methods (used by ``mtl_fast/methods/*.py``)."""

    _state: dict[str, Any]
    _book: StepBook
    _sync: MethodSync
    _monitor: NonFiniteMonitor
    _lifecycle_seen: set[str]
    _lifecycle_warned: bool
    lifecycle: ClassVar[tuple[str, ...]]
    lifecycle_warn_steps: ClassVar[int]

    if TYPE_CHECKING:

        @property
        def step(self) -> int: ...

    def _all_present(self) -> bool:
        """In :meth:`total_loss`: every task of this step is present (no mask, all losses
        finite), known on the host (CPU losses; ``False`` when unknown). A method may then skip
        its masking ops; the results must be those of the masked formulas with all tasks
        present."""
        return self._book.all_present

    def _set_weights(self, weights: Tensor) -> None:
        self._state["weights"] = weights.detach()

    def _init_generator(self, seed: int | None) -> None:
        """Give the method its own random stream: ``seed``, or one drawn from PyTorch's global
        RNG now (``torch.manual_seed`` makes runs reproducible); kept in the state, so a
        resumed run draws what an unbroken run would."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self._state["seed"] = int(seed)
        self._state["generator"] = None

    def _generator(self, device: torch.device) -> torch.Generator:
        """The method's generator on ``device``, created at first use with process 0's seed
        under torch.distributed (one collective, at the first step only)."""
        gen = self._state["generator"]
        if gen is None:
            self._state["seed"] = self._sync.seed(self._state["seed"], device)
            gen = torch.Generator(device=device)
            gen.manual_seed(self._state["seed"])
            self._state["generator"] = gen
        return gen

    def _sync_active(self) -> bool:
        return self._sync.active

    @property
    def synchronising(self) -> bool:
        """Whether this method synchronises across processes now (see ``sync``)."""
        return self._sync.active

    def _synced_losses(self, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """See :meth:`mtl_fast._sync.MethodSync.losses`."""
        return self._sync.losses(losses, present)

    def _synced_losses_later(self, losses: Tensor, present: Tensor, update: Update) -> Tensor:
        """See :meth:`mtl_fast._sync.MethodSync.losses_later`."""
        return self._sync.losses_later(losses, present, update)

    def _synced_present(self, losses: Tensor, present: Tensor) -> Tensor:
        """The tasks present on any process (for weights normalised over present tasks)."""
        return self._sync.present(losses, present)

    def _linearised_total(
        self,
        total_fn: Callable[[Tensor, Tensor], Tensor],
        losses: Tensor,
        present: Tensor,
        synced: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """See :meth:`mtl_fast._sync.MethodSync.linearised_total`."""
        return self._sync.linearised_total(total_fn, losses, present, synced)

    def _wait_pending(self) -> None:
        """Apply deferred statistics updates before reading the state they change."""
        self._sync.wait()

    def _synced_gram(self, G: Tensor) -> Tensor:
        return self._sync.gram(G)

    def _completes_step(self) -> bool:
        """In :meth:`total_loss`: whether this call ends an optimizer step (always, unless
        :meth:`accumulate` groups micro-batches)."""
        return int(self._state.get("micro_batch", 0)) == 0

    def _lifecycle_called(self, call: str) -> None:
        """Record that the loop made a lifecycle call (``"end_epoch"``, ``"observe"``)."""
        self._lifecycle_seen.add(call)

    def _lifecycle_automatic(self) -> set[str]:
        """Lifecycle calls the method makes itself with its options (``period_steps=``)."""
        return set()

    def _warn_missing_lifecycle(self) -> None:
        if self._lifecycle_warned or self.step < type(self).lifecycle_warn_steps:
            return
        missing = (
            ({"end_epoch", "observe"} & set(type(self).lifecycle))
            - self._lifecycle_seen
            - self._lifecycle_automatic()
        )
        if not missing:
            return
        self._lifecycle_warned = True
        how = {
            "end_epoch": "method.end_epoch() after each epoch (or the method's period_steps= / "
            "epoch_steps= option)",
            "observe": "method.observe(per_task_metrics) after each evaluation",
        }
        calls = " and ".join(how[c] for c in sorted(missing))
        warnings.warn(
            f"{type(self).__name__}: {self.step} training steps without {calls}; without it the "
            "method keeps its warm-up weights",
            RuntimeWarning,
            stacklevel=3,
        )

    def _report_invalid(self, bad: Tensor, what: str, problem: str) -> None:
        """Report per-task invalid input (bool [T]) through the non-finite policy."""
        self._monitor.report(bad, what, self.step, problem=problem)
