"""A method's share of ``torch.distributed``: deferred statistics updates, exact totals that are
not linear in the losses, the averaging of its own parameters' gradients and its random seed.

One :class:`MethodSync` per :class:`mtl_fast.Weighting`; the collectives themselves are in
:mod:`mtl_fast.distributed`, which also explains what is synchronised and what it costs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from mtl_fast import distributed

#: A deferred statistics update, called with (values, present) as from :meth:`MethodSync.losses`.
Update = Callable[[Tensor, Tensor], None]


def _ignore(values: Tensor, present: Tensor) -> None:
    """An update that keeps nothing (:meth:`MethodSync.present`)."""


class MethodSync:
    """Cross-process state of one method.

    Args:
        sync: the method's ``sync`` setting (``None``: when a group of more than one process is
            initialised; ``False``: never; ``True``: required).
        group: the process group (``None``: the world).
    """

    def __init__(self, sync: bool | None, group: Any) -> None:
        self.sync = sync
        self.group = group
        # Statistics updates whose collective is still in flight (applied in order by wait())
        # and the grad-averaging hooks on the method's own parameters.
        self._pending: list[tuple[distributed.PendingAverage, Update]] = []
        self._grad_hooks: dict[int, Any] = {}

    @property
    def active(self) -> bool:
        """Whether this step synchronises across processes."""
        return distributed.is_active(self.sync, self.group)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def losses(self, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Loss values for statistics: averaged across processes (each task over the processes
        where it is present) when synchronising, else as given. Returns (values, present),
        ``present`` being the tasks present on any process. With NCCL the collective is
        stream-ordered (no host synchronisation); with gloo it is a CPU operation of 2T
        numbers."""
        values = losses.detach()
        if self.active:
            return distributed.average_present(values, present, self.group)
        return values, present

    def losses_later(self, losses: Tensor, present: Tensor, update: Update) -> Tensor:
        """The deferred form of :meth:`losses`, for updates read only at a later step.

        ``update(values, present)`` receives what :meth:`losses` would return. Without
        synchronisation it runs now. Under ``torch.distributed`` the collective is started with
        ``async_op=True`` (it overlaps with the rest of the forward and with the backward) and
        ``update`` runs when it is waited for (:meth:`wait`): at the end of the backward pass of
        the step's total, at the start of the next step, in ``state_dict()`` /
        ``load_state_dict()``, pickling, or in the method's accessors of that state, whichever
        comes first; so nothing is left in flight when a step ends. Updates are applied in the
        order they were started, before anything reads the state they change; waiting issues no
        new collective.

        Returns the tasks present on any process: known without the collective when every task
        is present here (host-side check on CPU tensors); otherwise the collective is waited
        for now (with NCCL: a stream wait, no host synchronisation).
        """
        values = losses.detach()
        if not self.active:
            update(values, present)
            return present
        pending = distributed.start_average_present(values, present, self.group)
        self._pending.append((pending, update))
        if present.device.type == "cpu" and bool(present.all()):
            return torch.ones_like(present)
        self.wait()
        return pending.wait()[1]

    def present(self, losses: Tensor, present: Tensor) -> Tensor:
        """The tasks present on any process (``present`` itself without synchronisation)."""
        return self.losses_later(losses, present, _ignore)

    def linearised_total(
        self,
        total_fn: Callable[[Tensor, Tensor], Tensor],
        losses: Tensor,
        present: Tensor,
        synced: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """A total that is not linear in the losses, made exact under data parallelism.

        Without synchronisation: ``total_fn(losses, present)``. Under ``torch.distributed``,
        with L̄ the losses averaged across processes and P̄ the tasks present anywhere,
        ``total_fn(L̄, P̄)`` expanded to first order in this process's losses,

            f(L̄) + Σ_{t present here} c_t (L_t − L̄_t),     c = ∇f(L̄) (detached),

        so that DDP's mean of the per-process gradients is Σ_t c_t ∇L̄_t, the gradient of f at
        the global losses (a process's own f(L_r) would give the mean of the per-process
        gradients of f, which differs for a non-linear f). ``synced``: the result of
        :meth:`losses` for these losses when the caller already has it.
        """
        if not self.active:
            return total_fn(losses, present)
        values, avail = self.losses(losses, present) if synced is None else synced
        with torch.enable_grad():
            v = values.detach().to(losses.dtype).requires_grad_(True)
            at_mean = total_fn(v, avail)
            c = None
            if at_mean.requires_grad:
                (c,) = torch.autograd.grad(at_mean, v, allow_unused=True)
        if c is None:
            c = torch.zeros_like(v)
        deviation = torch.where(present, losses - v.detach(), 0.0)
        return at_mean.detach() + (c.detach() * deviation).sum()

    def wait(self) -> None:
        """Apply the deferred statistics updates (:meth:`losses_later`), in order."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for work, update in pending:
            update(*work.wait())

    def wait_after_backward(self, grad: Tensor) -> Tensor:
        """Tensor hook for a step's total: queue :meth:`wait` for the end of the backward."""
        torch.autograd.Variable._execution_engine.queue_callback(self.wait)
        return grad

    def gram(self, G: Tensor) -> Tensor:
        """The global Gram matrix Σ_r G_r / N² when synchronising, else ``G``."""
        if self.active:
            n = distributed.world_size(self.group)
            return distributed.all_reduce_sum(G, self.group) / float(n * n)
        return G

    def seed(self, seed: int, device: torch.device) -> int:
        """Process 0's seed on every process when synchronising (one collective), else ``seed``."""
        if self.active:
            return distributed.seed_from_rank0(seed, device, self.group)
        return seed

    def ensure_grad_hooks(self, params: Iterable[Tensor]) -> None:
        """Average the gradients of the method's own parameters across processes (IMTL's s_t,
        uncertainty log-variances): a post-accumulate-grad hook per parameter, registered once
        per parameter object (again if the parameters were replaced, e.g. a deep copy).

        Under DDP a method that is a submodule of the wrapped model is averaged by DDP too;
        averaging is idempotent, so either placement gives the same gradient. The hook runs when
        autograd has accumulated the parameter's gradient, before DDP's own hook, with a
        synchronous collective (stream-ordered with NCCL), so DDP reads the averaged value. It
        fires once per backward on every process (a method's total always depends on its
        parameters, whatever the mask), so the collectives match.
        """
        params = [p for p in params if p.requires_grad]
        if {id(p) for p in params} == set(self._grad_hooks):
            return
        for handle in self._grad_hooks.values():
            handle.remove()
        self._grad_hooks = {
            id(p): p.register_post_accumulate_grad_hook(self._average_grad) for p in params
        }

    def _average_grad(self, param: Tensor) -> None:
        if param.grad is not None and self.active:
            distributed.all_reduce_mean_(param.grad, self.group)

    def __getstate__(self) -> dict[str, Any]:
        """Pickling / ``copy.deepcopy``: in-flight collectives are finished first (their handles
        cannot be copied) and the copy registers its own grad-averaging hooks."""
        self.wait()
        state = dict(self.__dict__)
        state["_pending"] = []
        state["_grad_hooks"] = {}
        return state
