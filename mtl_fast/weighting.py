"""The base class of every weighting method, loss-based or gradient-based.

The training loop (docs/design.md) is the same for every method::

    method = mf.IMTL(num_tasks=T)              # or mf.MGDA(), mf.CVWeighting(T), ...
    zs = method.split(z, num_tasks=T)          # T views of the shared features z
    losses = torch.stack([crit[t](heads[t](zs[t]), y[t]) for t in range(T)])
    method.loss(losses).backward()             # ONE ordinary backward pass
    optimizer.step()

Loss-based methods compute the weighted total in :meth:`Weighting.loss`; ``split`` hands back the
features unchanged. Gradient-based methods return Σ L_t from ``loss`` and act inside the backward
of ``split`` (:class:`mtl_fast._split.SplitFunction`): from the T incoming feature gradients they
form the Gram matrix, solve for the weights α and return Σ α_t g_t as the features' gradient.

Subclasses implement:

* loss-based: :meth:`Weighting._total` (the scalar to back-propagate, statistics updates);
* gradient-based (``gradient_based = True``): :meth:`Weighting._gradient_weights` (α from G),
  and :meth:`Weighting._total` only when the total is not Σ L_t (IMTL).

State that must survive a restart lives in ``self._state`` (a dict) or in parameters; both are in
``state_dict()``, so a resumed run produces exactly the weights of an unbroken run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from mtl_fast import _state, distributed
from mtl_fast._backend import BACKENDS, cuda_capturing
from mtl_fast._nonfinite import NonFiniteMonitor

LossesLike = Union[Tensor, Sequence[Tensor]]
#: A deferred statistics update, called with (values, present) as from ``_synced_losses``.
_Update = Callable[[Tensor, Tensor], None]
MaskLike = Union[Tensor, Sequence[bool], None]

NONFINITE_POLICIES = ("raise", "absent")


@dataclass
class StepInputs:
    """What :meth:`Weighting.loss` hands to the solve that runs in ``split``'s backward."""

    losses: Tensor  # detached [T] (absent tasks: 0), as computed on this process
    present: Tensor  # bool [T] on the losses' device


class Weighting(nn.Module):
    """Base class of all mtl_fast weighting methods.

    Args:
        num_tasks: T. Optional for methods without per-task state (then taken from the first
            ``split``/``loss`` call), required by methods with per-task parameters or statistics.
        nonfinite: ``"raise"`` (default): a NaN/Inf loss without a ``mask`` raises ``ValueError``
            naming the task (lazily on accelerators, see :mod:`mtl_fast._nonfinite`);
            ``"absent"``: a non-finite loss marks its task absent for the step, silently.
        sync: ``None`` (default): synchronise across processes when ``torch.distributed`` is
            initialised (with more than one process in the group); ``False``: never (each
            process weighs its own batch); ``True``: require it. See :mod:`mtl_fast.distributed`
            for what is synchronised and the cost.
        process_group: the group to synchronise over (default: the world).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the Gram-space ops.
    """

    #: True when the weights act on the shared gradient inside ``split``'s backward.
    gradient_based: ClassVar[bool] = False
    #: True when the method needs the loss values in its gradient solve (MGDA "loss" norms).
    needs_losses_in_backward: bool = False
    #: True when a whole training step with this method can be captured in a CUDA graph and
    #: replayed like eager steps (checked on a GPU by ``tests/test_cuda_graph_step.py``). A
    #: method that keeps per-step state on the host, or whose capture failed, sets it False and
    #: says why in :attr:`cuda_graph_note`; :meth:`loss` then raises inside a capture instead of
    #: letting replays silently repeat the captured step.
    cuda_graph_capturable: ClassVar[bool] = True
    cuda_graph_note: ClassVar[str] = ""
    #: The lifecycle calls a training loop owes the method besides ``split`` and ``loss``:
    #: ``"end_epoch"`` (:meth:`end_epoch` after each epoch), ``"observe"`` (:meth:`observe` with
    #: validation metrics after each evaluation), ``"update"`` (FAMO's ``update(new_losses)``
    #: after each optimizer step). Without them the method keeps its warm-up weights.
    lifecycle: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        nonfinite: str = "raise",
        sync: bool | None = None,
        process_group: Any = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if num_tasks is not None and (not isinstance(num_tasks, int) or num_tasks < 1):
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}; got {nonfinite!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        self.num_tasks: int | None = num_tasks
        self.nonfinite = nonfinite
        self.sync = sync
        self.process_group = process_group
        self.backend = backend
        self._state: dict[str, Any] = {"step": 0, "weights": None}
        self._monitor = NonFiniteMonitor()
        self._inputs: StepInputs | None = None
        self._split_pending = False
        # torch.distributed: statistics updates whose collective is still in flight (applied in
        # order by _wait_pending) and the grad-averaging hooks on the method's own parameters.
        self._pending: list[tuple[distributed.PendingAverage, _Update]] = []
        self._grad_hooks: dict[int, Any] = {}

    # ------------------------------------------------------------------ public API

    @property
    def weights(self) -> Tensor:
        """The last weights, a detached tensor [T] on the losses' device (no sync to read it).

        Before the first step: the method's initial weights (:meth:`initial_weights`).
        """
        w = self._state["weights"]
        if w is not None:
            return w
        if self.num_tasks is None:
            raise RuntimeError(
                f"{type(self).__name__} has no weights yet: pass num_tasks or run one step"
            )
        return self.initial_weights(self.num_tasks)

    @property
    def step(self) -> int:
        """Number of training steps seen (calls of :meth:`loss` in training mode)."""
        return int(self._state["step"])

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        """Weights before the first step; equal weights 1/T unless the method says otherwise."""
        return torch.full((num_tasks,), 1.0 / num_tasks, device=device)

    def split(self, *features: Tensor, num_tasks: int | None = None) -> list:
        """T views of the shared features, one per task head.

        For a gradient-based method in training mode with gradients enabled, the views come from
        one autograd Function whose backward receives all T feature gradients at once and
        returns Σ α_t g_t. Otherwise (loss-based methods, ``eval()`` mode, ``torch.no_grad()``)
        the features are returned unchanged, T times.

        Args:
            *features: one or more tensors (several: e.g. multi-scale features; G is then the Gram
                matrix of the concatenated features and each task gets a tuple).
            num_tasks: T; defaults to the method's ``num_tasks``.

        Returns:
            a list of T tensors (one feature) or of T tuples (several features).
        """
        T = self._resolve_num_tasks(num_tasks, "split")
        if not features:
            raise ValueError("split needs at least one feature tensor")
        for k, f in enumerate(features):
            if not isinstance(f, Tensor):
                raise TypeError(f"feature {k} must be a Tensor; got {type(f).__name__}")
        plain = not (self.gradient_based and self.training and torch.is_grad_enabled())
        if plain:
            return [features[0] if len(features) == 1 else tuple(features) for _ in range(T)]
        for k, f in enumerate(features):
            if not f.requires_grad:
                raise ValueError(
                    f"feature {k} does not require grad: {type(self).__name__} balances the "
                    "gradients of the shared features, so split must receive the output of the "
                    "shared encoder (or wrap evaluation in torch.no_grad() / method.eval())"
                )
            if not f.is_floating_point():
                raise TypeError(f"feature {k} must be floating point; got {f.dtype}")
        self._begin_split("split")
        from mtl_fast._split import SplitFunction

        outs = SplitFunction.apply(self, T, *features)
        K = len(features)
        if K == 1:
            return list(outs)
        return [tuple(outs[t * K : (t + 1) * K]) for t in range(T)]

    def _begin_split(self, where: str) -> None:
        """Open a balanced step whose backward will call :meth:`_balance_gram`: refuse a second
        one before the first is back-propagated, report lazily recorded non-finite flags, and
        let :meth:`loss` record the step's inputs. Used by :meth:`split` and by layers that form
        the Gram matrix themselves (:class:`mtl_fast.MultiTaskLinear`)."""
        if self._split_pending:
            raise RuntimeError(
                f"{type(self).__name__}.{where} was called twice before one backward: "
                "back-propagate method.loss(...) once per split (call method.discard_pending() "
                "to drop a step that will not be back-propagated)"
            )
        self._monitor.poll()
        self._split_pending = True
        self._inputs = None

    def discard_pending(self) -> None:
        """Forget a ``split`` whose backward will never run (e.g. a skipped step)."""
        self._split_pending = False
        self._inputs = None

    def end_epoch(self) -> bool:
        """Tell the method that a training epoch ended; returns whether its state changed.

        Methods whose weights change by epoch or by period act on it (STCH closes its epoch;
        LSB and DWA close their period, unless ``period_steps=`` closes periods by steps); for
        the others it does nothing, so a training loop can call it whatever the method.
        """
        return False

    def observe(self, metrics: Sequence[float] | Tensor, *, sync: bool | None = None) -> None:
        """Per-task validation metrics after an evaluation (one per task; NaN: not evaluated).

        The achievement-based methods (AMTL, DTP) take them as their ``update_accuracy``; the
        others ignore them, so a training loop can call it whatever the method (evaluating
        only pays off for the methods whose registry entry lists ``update_accuracy``).
        """
        del metrics, sync

    def loss(self, losses: LossesLike, mask: MaskLike = None) -> Tensor:
        """The scalar to back-propagate.

        Args:
            losses: T scalar losses (a tensor [T] or a sequence of 0-d tensors).
            mask: optional bool [T]: False marks a task absent from this batch (partially
                labelled data): weight 0, excluded from the solve, no statistics updated. With a
                mask, a non-finite loss also marks its task absent. A host mask (list, CPU
                tensor) also keeps absent losses out of the graph (their heads get no gradient);
                a device mask uses ``torch.where`` (zero gradient) to avoid a sync.

        Without a mask a NaN/Inf loss raises ``ValueError`` (``nonfinite="raise"``) or marks the
        task absent (``nonfinite="absent"``).
        """
        self._refuse_capture()
        safe, present = self._prepare_losses(losses, mask)
        return self._loss_from(safe, present, keep_inputs=self._split_pending)

    def _refuse_capture(self) -> None:
        """Raise when a CUDA graph is being captured and this method cannot be replayed."""
        if not type(self).cuda_graph_capturable and cuda_capturing():
            raise RuntimeError(
                f"{type(self).__name__} cannot be captured in a CUDA graph: "
                f"{type(self).cuda_graph_note} Run its steps eagerly (a graph may still capture "
                "the model's forward and backward around it)."
            )

    def _prepare_losses(self, losses: LossesLike, mask: MaskLike) -> tuple[Tensor, Tensor]:
        """Validate the losses and the mask, apply the non-finite policy.

        Returns (safe [T]: the differentiable losses with absent tasks set to 0, present bool
        [T]). Used by :meth:`loss` and by the functional :func:`mtl_fast.backward`.
        """
        self._monitor.poll()
        items, L = self._as_losses(losses)
        self._resolve_num_tasks(L.shape[0], "loss")
        present, host = self._present_mask(L.detach(), mask)
        zero = torch.zeros((), dtype=L.dtype, device=L.device)
        if host is not None and items is not None and not all(host):
            # Absent losses never enter the graph: their heads get no gradient at all.
            safe = torch.stack([x.reshape(()) if p else zero for x, p in zip(items, host)])
        else:
            safe = torch.where(present, L, zero)
        return safe, present

    def _loss_from(self, safe: Tensor, present: Tensor, *, keep_inputs: bool) -> Tensor:
        """Count the step, keep the solve's inputs when ``keep_inputs`` (a gradient method whose
        backward will run), and return the scalar to back-propagate."""
        self._wait_pending()
        if self.training:
            self._state["step"] += 1
            if self._sync_active():
                self._ensure_grad_hooks()
        if self.gradient_based and keep_inputs:
            self._inputs = StepInputs(losses=safe.detach(), present=present)
        if not self.training:
            return safe.sum()
        total = self._total(safe, present)
        if self._pending and total.requires_grad:
            # Deferred statistics updates: their collectives overlap with the backward and are
            # waited for when it ends (before optimizer.step(), a checkpoint or
            # destroy_process_group()), or at the next use of the state if no backward runs.
            total.register_hook(self._wait_after_backward)
        return total

    def _wait_after_backward(self, grad: Tensor) -> Tensor:
        """Hook on the total: queue :meth:`_wait_pending` for the end of the backward pass."""
        torch.autograd.Variable._execution_engine.queue_callback(self._wait_pending)
        return grad

    def check_nonfinite(self) -> None:
        """Raise now for any non-finite loss/gradient recorded on an accelerator (syncs)."""
        self._monitor.check_now()

    # ------------------------------------------------------------------ subclass hooks

    def _total(self, losses: Tensor, present: Tensor) -> Tensor:
        """The scalar to back-propagate in training mode. ``losses`` [T] is differentiable with
        absent tasks set to 0. Gradient methods: Σ L_t (their weights act in ``split``)."""
        if self.gradient_based:
            return losses.sum()
        raise NotImplementedError(f"{type(self).__name__} must implement _total")

    def _loss_gradient_scales(self) -> Tensor | None:
        """c [T] with ∂total/∂L_t = c_t for present tasks in the last :meth:`_total` (detached),
        or ``None`` when every c_t is 1 (Σ L_t). ``split``'s backward receives c_t ∇_z L_t; the
        functional :func:`mtl_fast.backward` uses c to form exactly those gradients (IMTL:
        c_t = e^{s_t})."""
        return None

    def _gradient_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        """α [T] from the (global) Gram matrix G [T, T]; absent/inactive tasks have zero rows."""
        raise NotImplementedError(f"{type(self).__name__} must implement _gradient_weights")

    def _balance(self, rows: list, *, reduced: bool = False) -> Tensor:
        """Called by ``split``'s backward with the feature gradients (one TaskRows per feature
        tensor): the Gram matrix of their concatenation, then :meth:`_balance_gram`.
        ``reduced``: the rows are already the global task gradients (see
        :meth:`_balance_gram`)."""
        from mtl_fast import ops

        G = ops.gram_rows(rows[0], backend=self.backend)
        for r in rows[1:]:
            G = G + ops.gram_rows(r, backend=self.backend)
        return self._balance_gram(G, reduced=reduced)

    def _balance_gram(self, G: Tensor, *, reduced: bool = False) -> Tensor:
        """The weights from this process's Gram matrix G [T, T] of the task gradients: the
        non-finite policy, absent tasks, the cross-process reduction and the method's solve.

        Used by ``split``'s backward and by layers that form G in a structured way
        (e.g. :class:`mtl_fast.MultiTaskLinear`). Returns α [T] (float32 on G's device), also
        stored as :attr:`weights`.

        Under ``torch.distributed`` (:mod:`mtl_fast.distributed`): one collective gives every
        process G = Σ_r G_r / N², the tasks present (with a finite gradient) anywhere, the
        tasks with a non-finite gradient anywhere (reported on every process) and, when the
        solve needs them, the loss values averaged over the processes where each task is
        present. ``reduced=True``: G is already the global Gram matrix (the exact parameter
        mode averaged the task gradients themselves); only the task status and losses are
        combined.
        """
        self._split_pending = False
        inputs, self._inputs = self._inputs, None
        device = G.device
        T = G.shape[0]
        if inputs is None:  # loss() was not used: every task present, no loss values
            inputs = StepInputs(
                losses=torch.zeros(T, device=device),
                present=torch.ones(T, dtype=torch.bool, device=device),
            )
        present = inputs.present.to(device)
        losses = inputs.losses.to(device)
        sync = self._sync_active()
        group = self.process_group
        needs = self.needs_losses_in_backward

        def pair(m: Tensor) -> Tensor:
            return m[:, None] & m[None, :]

        if sync and reduced:
            no = torch.zeros_like(present)
            _, present, _, avg = distributed.reduce_gram(
                None, present, no, losses if needs else None, group
            )
            if avg is not None:
                losses = avg
        G = torch.where(pair(present), G, 0.0)
        bad = present & ~torch.isfinite(G.diagonal())
        ok = present & ~bad
        G = torch.where(pair(ok), G, 0.0)
        if sync and not reduced:
            G_global, ok, bad, avg = distributed.reduce_gram(
                G, ok, bad, losses if needs else None, group
            )
            assert G_global is not None
            G = G_global
            if avg is not None:
                losses = avg
        self._monitor.report(bad, "gradient", self.step)
        alpha = self._gradient_weights(G, StepInputs(losses=losses, present=ok))
        alpha = torch.where(G.diagonal() > 0, alpha.to(torch.float32), 0.0)
        self._set_weights(alpha)
        return alpha

    # ------------------------------------------------------------------ helpers for subclasses

    def _set_weights(self, weights: Tensor) -> None:
        self._state["weights"] = weights.detach()

    def _init_generator(self, seed: int | None) -> None:
        """Give the method its own random stream (PCGrad, GradVac, RLW): ``seed``, or one drawn
        from PyTorch's global RNG now (so ``torch.manual_seed`` makes runs reproducible). The
        seed and the generator live in the state, so a resumed run draws what an unbroken run
        would."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self._state["seed"] = int(seed)
        self._state["generator"] = None

    def _generator(self, device: torch.device) -> torch.Generator:
        """The method's generator on ``device``, created at first use. Under
        ``torch.distributed`` every process takes process 0's seed then (one collective and one
        host read, at the first step only), so all processes draw the same numbers."""
        gen = self._state["generator"]
        if gen is None:
            if self._sync_active():
                self._state["seed"] = distributed.seed_from_rank0(
                    self._state["seed"], device, self.process_group
                )
            gen = torch.Generator(device=device)
            gen.manual_seed(self._state["seed"])
            self._state["generator"] = gen
        return gen

    def _sync_active(self) -> bool:
        return distributed.is_active(self.sync, self.process_group)

    def _synced_losses(self, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Loss values for statistics: averaged across processes (each task over the processes
        where it is present) when synchronising, else as given. Returns (values, present),
        ``present`` being the tasks present on any process.

        Every loss-statistics update goes through this call or its deferred form
        :meth:`_synced_losses_later`. With NCCL the collective is stream-ordered (no host
        synchronisation); with gloo it is a CPU operation of 2T numbers.
        """
        values = losses.detach()
        if self._sync_active():
            return distributed.average_present(values, present, self.process_group)
        return values, present

    def _synced_losses_later(self, losses: Tensor, present: Tensor, update: _Update) -> Tensor:
        """The deferred form of :meth:`_synced_losses`, for updates read only at a later step.

        ``update(values, present)`` receives what :meth:`_synced_losses` would return. Without
        synchronisation it runs now. Under ``torch.distributed`` the collective is started with
        ``async_op=True`` (it overlaps with the rest of the forward and with the backward) and
        ``update`` runs when it is waited for: at the end of the backward pass of this step's
        total (an autograd callback), or earlier at the start of the next :meth:`loss` (or
        :func:`mtl_fast.backward`), in ``state_dict()`` / ``load_state_dict()``, pickling, or
        in the method's own accessors of that state (:meth:`_wait_pending`), whichever comes
        first; so nothing is left in flight when the step ends (``destroy_process_group()``
        after the last step is safe). Pending updates are applied in the order they were started,
        before anything reads the state they change, so every weight is the one the
        synchronous schedule gives; waiting issues no new collective (a ``state_dict()`` taken
        on one process only is safe).

        Returns the tasks present on any process (for this step's weights): known without the
        collective when every task is present here (host-side check on CPU tensors); otherwise
        the collective is waited for now (with NCCL: a stream wait, no host synchronisation).
        """
        values = losses.detach()
        if not self._sync_active():
            update(values, present)
            return present
        pending = distributed.start_average_present(values, present, self.process_group)
        self._pending.append((pending, update))
        if present.device.type == "cpu" and bool(present.all()):
            return torch.ones_like(present)
        self._wait_pending()
        return pending.wait()[1]

    def _synced_present(self, losses: Tensor, present: Tensor) -> Tensor:
        """The tasks present on any process (``present`` itself without synchronisation), for
        methods whose weights are normalised over the present tasks but keep no statistics."""
        return self._synced_losses_later(losses, present, _ignore)

    def _linearised_total(
        self,
        total_fn: Callable[[Tensor, Tensor], Tensor],
        losses: Tensor,
        present: Tensor,
        synced: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """A total that is not linear in the losses (a geometric mean, a log-sum-exp, log
        losses), made exact under data parallelism.

        Without synchronisation: ``total_fn(losses, present)``. Under ``torch.distributed``:
        with L̄ the losses averaged across processes (:meth:`_synced_losses`) and P̄ the tasks
        present anywhere, ``total_fn(L̄, P̄)`` (its side effects, e.g. the weights, see the global
        losses, so they are identical on every process) expanded to first order in this
        process's losses,

            f(L̄) + Σ_{t present here} c_t (L_t − L̄_t),     c = ∇f(L̄) (detached),

        so that DDP's mean of the per-process gradients is Σ_t c_t ∇L̄_t, the gradient of
        ``total_fn`` at the global losses (a process's own f(L_r) would give the mean of the
        per-process gradients of f, which differs for a non-linear f). The value averages to
        f(L̄) over the processes when every task is present everywhere. ``synced``: the result
        of :meth:`_synced_losses` for these losses when the caller already has it.
        """
        if not self._sync_active():
            return total_fn(losses, present)
        values, avail = self._synced_losses(losses, present) if synced is None else synced
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

    def _wait_pending(self) -> None:
        """Apply the deferred statistics updates (:meth:`_synced_losses_later`), in order."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for work, update in pending:
            update(*work.wait())

    def _synced_gram(self, G: Tensor) -> Tensor:
        """The global Gram matrix Σ_r G_r / N² when synchronising (see
        :mod:`mtl_fast.distributed`), else ``G``. :meth:`_balance_gram` uses
        :func:`mtl_fast.distributed.reduce_gram`, which carries the task status too."""
        if self._sync_active():
            n = distributed.world_size(self.process_group)
            return distributed.all_reduce_sum(G, self.process_group) / float(n * n)
        return G

    def _ensure_grad_hooks(self) -> None:
        """Register :meth:`_average_parameter_grad` on the method's own parameters (once per
        parameter object; re-registered if the parameters were replaced, e.g. a deep copy)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if {id(p) for p in params} == set(self._grad_hooks):
            return
        for handle in self._grad_hooks.values():
            handle.remove()
        self._grad_hooks = {
            id(p): p.register_post_accumulate_grad_hook(self._average_parameter_grad)
            for p in params
        }

    def _average_parameter_grad(self, param: Tensor) -> None:
        """Post-accumulate-grad hook: average the gradient of one of the method's parameters
        (IMTL's s_t, uncertainty log-variances) across processes, in place.

        Under DDP a method that is a submodule of the wrapped model is averaged by DDP too;
        averaging is idempotent, so either placement gives the same gradient. The hook runs
        when autograd has accumulated the parameter's gradient, before DDP's own hook on the
        same parameter, with a synchronous collective (stream-ordered with NCCL), so DDP reads
        the averaged value. It fires once per backward on every process (the method's total
        always depends on its parameters, whatever the mask), so the collectives match.
        """
        if param.grad is not None and self._sync_active():
            distributed.all_reduce_mean_(param.grad, self.process_group)

    def _resolve_num_tasks(self, given: int | None, where: str) -> int:
        if given is None:
            if self.num_tasks is None:
                raise ValueError(f"{where}: pass num_tasks (the method was built without it)")
            return self.num_tasks
        if not isinstance(given, int) or given < 1:
            raise ValueError(f"{where}: num_tasks must be a positive int; got {given!r}")
        if self.num_tasks is None:
            self.num_tasks = given
        elif given != self.num_tasks:
            raise ValueError(
                f"{where}: got {given} tasks but {type(self).__name__} was built for "
                f"{self.num_tasks}"
            )
        return given

    def _as_losses(self, losses: LossesLike) -> tuple[list[Tensor] | None, Tensor]:
        """(the T scalar losses when given as a sequence, else None; the losses as a [T] tensor)."""
        if isinstance(losses, Tensor):
            if losses.dim() != 1 or losses.numel() == 0:
                raise ValueError(
                    f"losses must be a 1-D tensor [T] of scalar task losses; got shape "
                    f"{tuple(losses.shape)} (reduce each task's loss to a scalar first)"
                )
            items, L = None, losses
        else:
            try:
                items = list(losses)
            except TypeError:
                raise TypeError(
                    f"losses must be a Tensor [T] or a sequence of scalar tensors; got "
                    f"{type(losses).__name__}"
                ) from None
            if not items:
                raise ValueError("losses is empty")
            for t, x in enumerate(items):
                if not isinstance(x, Tensor):
                    raise TypeError(f"losses[{t}] must be a Tensor; got {type(x).__name__}")
                if x.numel() != 1:
                    raise ValueError(
                        f"losses[{t}] must be a scalar; got shape {tuple(x.shape)} "
                        "(reduce each task's loss to a scalar first)"
                    )
            devices = {x.device for x in items}
            if len(devices) > 1:
                raise ValueError(f"losses are on several devices: {sorted(map(str, devices))}")
            L = torch.stack([x.reshape(()) for x in items])
        if not L.is_floating_point():
            raise TypeError(f"losses must be floating point; got {L.dtype}")
        return items, L

    def _present_mask(self, L: Tensor, mask: MaskLike) -> tuple[Tensor, list[bool] | None]:
        """(present bool [T] on L's device, the same as a host list when known without a sync)."""
        T = L.shape[0]
        finite = torch.isfinite(L.detach())
        if mask is None:
            if self.nonfinite == "raise":
                self._monitor.report(~finite, "loss", self.step)
            host = finite.tolist() if L.device.type == "cpu" else None
            return finite, host
        if isinstance(mask, Tensor):
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor; got {mask.dtype}")
            if mask.shape != (T,):
                raise ValueError(f"mask must have shape ({T},); got {tuple(mask.shape)}")
            host = mask.tolist() if mask.device.type == "cpu" else None
            m = mask.to(L.device, non_blocking=True)
        else:
            host = list(mask)
            if len(host) != T or not all(isinstance(b, (bool, int, np.bool_)) for b in host):
                raise ValueError(f"mask must be {T} booleans; got {mask!r}")
            host = [bool(b) for b in host]
            m = torch.tensor(host, dtype=torch.bool).to(L.device, non_blocking=True)
        present = m & finite
        if host is not None and L.device.type == "cpu":
            host = present.tolist()
        elif host is not None:
            host = None  # a NaN on the device may still remove a task: stay on the device path
        return present, host

    # ------------------------------------------------------------------ state

    def __getstate__(self) -> dict[str, Any]:
        """Pickling / ``copy.deepcopy``: in-flight collectives are finished first (their handles
        cannot be copied) and the copy registers its own grad-averaging hooks when it trains."""
        self._wait_pending()
        state = super().__getstate__()
        state["_pending"] = []
        state["_grad_hooks"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_pending", [])
        self.__dict__.setdefault("_grad_hooks", {})

    def get_extra_state(self) -> dict[str, Any]:
        self._wait_pending()  # the state includes every step taken (no new collective)
        return {"version": 1, "num_tasks": self.num_tasks, "state": _state.pack(self._state)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError(f"unrecognised {type(self).__name__} state (version mismatch)")
        self._wait_pending()  # finish in-flight collectives; the loaded state replaces theirs
        stored_T = state.get("num_tasks")
        if self.num_tasks is not None and stored_T is not None and stored_T != self.num_tasks:
            raise ValueError(
                f"state_dict is for {stored_T} tasks but this {type(self).__name__} has "
                f"{self.num_tasks}"
            )
        if self.num_tasks is None:
            self.num_tasks = stored_T
        self._state = _state.unpack(state["state"], self._state)
        self._split_pending = False
        self._inputs = None

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"


def _ignore(values: Tensor, present: Tensor) -> None:
    """An update that keeps nothing (:meth:`Weighting._synced_present`)."""
