"""The base class of every weighting method, loss-based or gradient-based (docs/design.md).

The training loop is the same for every method::

    method = mf.IMTL(num_tasks=T)              # or mf.MGDA(), mf.CVWeighting(T), ...
    zs = method.split(z, num_tasks=T)          # T views of the shared features z
    losses = torch.stack([crit[t](heads[t](zs[t]), y[t]) for t in range(T)])
    method.loss(losses).backward()             # ONE ordinary backward pass
    optimizer.step()

**Subclass contract.** A loss-based method implements :meth:`Weighting.total_loss` (the losses
→ the scalar to back-propagate, updating its statistics). A gradient method sets
``gradient_based = True`` and implements :meth:`Weighting.gram_weights` (the Gram matrix G of
the task gradients → the weights α), in the spirit of a ``forward(gramian)``; it never sees the
gradients themselves. State that must survive a restart lives in ``self._state`` (a dict) or in
parameters; both are in ``state_dict()``, so a resumed run reproduces an unbroken one.

The base class only keeps the step's state and delegates each job to its own module: the
inputs and their validation (:mod:`mtl_fast._losses`), the step bookkeeping and the rollback of
an abandoned step (:mod:`mtl_fast._step`), the balance policy (:mod:`mtl_fast._balance`), the
autograd Function of ``split`` (:mod:`mtl_fast._split`), distributed synchronisation
(:mod:`mtl_fast._sync`), the helpers subclasses call (:mod:`mtl_fast._method_helpers`) and
(de)serialisation (:mod:`mtl_fast._state`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from mtl_fast import _state
from mtl_fast._backend import BACKENDS, cuda_capturing
from mtl_fast._balance import balance_gram, gram_of_features
from mtl_fast._losses import (
    NONFINITE_POLICIES,
    LossesLike,
    MaskLike,
    PreparedLosses,
    StepInputs,
    prepare_losses,
)
from mtl_fast._method_helpers import MethodHelpers
from mtl_fast._nonfinite import NonFiniteMonitor
from mtl_fast._split import SplitFunction
from mtl_fast._step import StepBook
from mtl_fast._sync import MethodSync
from mtl_fast._validation import TaskRows

__all__ = ["LossesLike", "MaskLike", "StepInputs", "Weighting"]


class Weighting(nn.Module, MethodHelpers):
    """Base class of all mtl_fast weighting methods.

    Args:
        num_tasks: T. Optional for methods without per-task state (then taken from the first
            ``split``/``loss`` call), required by methods with per-task parameters or statistics.
        nonfinite: ``"raise"`` (default): a NaN/Inf loss without a ``mask`` raises ``ValueError``
            naming the task (lazily on accelerators, see :mod:`mtl_fast._nonfinite`);
            ``"absent"``: a non-finite loss marks its task absent for the step, silently.
        sync: ``None`` (default): synchronise across processes when ``torch.distributed`` is
            initialised (with more than one process in the group); ``False``: never; ``True``:
            require it. See :mod:`mtl_fast.distributed`.
        process_group: the group to synchronise over (default: the world).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the Gram-space ops.
    """

    #: True when the weights act on the shared gradient inside ``split``'s backward.
    gradient_based: ClassVar[bool] = False
    #: True when the method needs the loss values in its gradient solve (MGDA "loss" norms).
    needs_losses_in_backward: bool = False
    #: True when a whole training step can be captured in a CUDA graph and replayed like eager
    #: steps; otherwise :attr:`cuda_graph_note` says why and :meth:`loss` raises in a capture.
    cuda_graph_capturable: ClassVar[bool] = True
    cuda_graph_note: ClassVar[str] = ""
    #: The calls a training loop owes the method besides ``split`` and ``loss``: ``"end_epoch"``,
    #: ``"observe"`` (validation metrics), ``"update"`` (FAMO). Without them the method keeps
    #: its warm-up weights.
    lifecycle: ClassVar[tuple[str, ...]] = ()
    #: Training steps after which a declared ``end_epoch`` / ``observe`` that never came is
    #: warned about (once): the method would keep its warm-up weights.
    lifecycle_warn_steps: ClassVar[int] = 5000
    #: Learning rate of :meth:`param_groups` for methods with learnable weights (UW, IMTL-L,
    #: IMTL, GradNorm, FAMO), and of ``mtl-fast compare --method-lr``: the best worst case over
    #: the compare problems (digits, denoise, synthetic) among 0.01 / 0.05 / 0.2 (README,
    #: "Pitfalls"; 0.05 and 0.2 collapse UW and IMTL-L on denoise).
    default_lr: ClassVar[float] = 0.01

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
        self.backend = backend
        self.task_names: list[str] | None = None
        self._state: dict[str, Any] = {"step": 0, "weights": None, "micro_batch": 0}
        self._micro_batches = 1
        self._accumulate_weights = "micro_batch"
        self._lifecycle_seen: set[str] = set()
        self._lifecycle_warned = False
        self._monitor = NonFiniteMonitor(type(self).__name__)
        self._book = StepBook()
        self._sync = MethodSync(sync, process_group)

    # ------------------------------------------------------------------ public API

    @property
    def sync(self) -> bool | None:
        """Cross-process synchronisation: ``None`` (default) when a group of more than one
        process is initialised, ``False`` never, ``True`` required."""
        return self._sync.sync

    @sync.setter
    def sync(self, value: bool | None) -> None:
        self._sync.sync = value

    @property
    def process_group(self) -> Any:
        """The ``torch.distributed`` process group the method synchronises over (``None``: the
        world)."""
        return self._sync.group

    @process_group.setter
    def process_group(self, value: Any) -> None:
        self._sync.group = value

    @property
    def weights(self) -> Tensor:
        """The last weights, a detached tensor [T] on the losses' device (no sync to read it).

        Loss-based methods: before the first step, the weights the first step will use
        (:meth:`initial_weights`). Gradient methods have no weights before their first solve
        (in the backward of the first step): reading them then raises ``RuntimeError``.
        """
        w = self._state["weights"]
        if w is not None:
            return w
        who = type(self).__name__
        if self.gradient_based:
            raise RuntimeError(
                f"{who} has no weights yet: a gradient method solves them in the backward of "
                "a step (split + method.loss(...).backward()); read them after the first step"
            )
        if self.num_tasks is None:
            raise RuntimeError(f"{who} has no weights yet: pass num_tasks or run one step")
        return self.initial_weights(self.num_tasks)

    def weights_dict(self) -> dict[str, float]:
        """``{task name: weight}`` (names from a dict of losses, else ``"task<t>"``; reads the
        weights on the host)."""
        w = self.weights.tolist()
        names = self.task_names or [f"task{t}" for t in range(len(w))]
        return dict(zip(names, w))

    @property
    def step(self) -> int:
        """Number of training steps seen (calls of :meth:`loss` that updated the method)."""
        return int(self._state["step"])

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        """Weights before the first step; equal weights 1/T unless the method says otherwise."""
        return torch.full((num_tasks,), 1.0 / num_tasks, device=device)

    def split(self, *features: Tensor, num_tasks: int | None = None) -> list:
        """T views of the shared features, one per task head.

        For a gradient method in training mode with gradients enabled, the views come from one
        autograd Function whose backward receives all T feature gradients at once and returns
        Σ α_t g_t. Otherwise (loss-based methods, ``eval()`` mode, ``torch.no_grad()``) the
        features are returned unchanged, T times. A split left from an abandoned step (no
        backward ran) is replaced.

        Args:
            *features: one or more tensors (several: G is the Gram matrix of their
                concatenation and each task gets a tuple). Pass all of a step's shared features
                to one call.
            num_tasks: T; defaults to the method's ``num_tasks``.

        Returns:
            a list of T tensors (one feature) or of T tuples (several features).
        """
        T = self.resolve_num_tasks(num_tasks, "split")
        if not features:
            raise ValueError("split needs at least one feature tensor")
        for k, f in enumerate(features):
            if not isinstance(f, Tensor):
                raise TypeError(f"feature {k} must be a Tensor; got {type(f).__name__}")
        if not (self.gradient_based and self._updating()):
            return [features[0] if len(features) == 1 else tuple(features) for _ in range(T)]
        for k, f in enumerate(features):
            if not f.is_floating_point():
                raise TypeError(
                    f"{type(self).__name__}.split: feature {k} must be floating point; got "
                    f"{f.dtype} (split takes the shared encoder's output)"
                )
            if not f.requires_grad:
                raise ValueError(
                    f"{type(self).__name__}.split: feature {k} does not require grad: the "
                    "method balances the gradients of the shared features, so split must "
                    "receive the output of the shared encoder (or wrap evaluation in "
                    "torch.no_grad() / method.eval())"
                )
        token = self.open_split("split")
        outs = SplitFunction.apply(self, T, token, *features)
        K = len(features)
        return list(outs) if K == 1 else [tuple(outs[t * K : (t + 1) * K]) for t in range(T)]

    def loss(self, losses: LossesLike, mask: MaskLike = None) -> Tensor:
        """The scalar to back-propagate.

        Args:
            losses: T scalar losses: a tensor [T], a sequence of 0-d tensors, or a dict
                ``{task name: loss}`` (the names then label :meth:`weights_dict` and messages).
            mask: optional bool [T]: False marks a task absent from this batch (weight 0,
                excluded from the solve, no statistics updated). With a mask, a non-finite loss
                also marks its task absent. A host mask (list, CPU tensor) also keeps absent
                losses out of the graph; a device mask uses ``torch.where`` (no sync).

        Without a mask a NaN/Inf loss raises ``ValueError`` (``nonfinite="raise"``) or marks the
        task absent (``nonfinite="absent"``). In ``eval()`` mode or with gradients disabled the
        method changes nothing and returns Σ_t w_t L_t with its current weights (gradient
        methods before their first solve: Σ_t L_t, the value of their training total). A
        gradient method in training needs a pending ``split`` (or
        :class:`mtl_fast.MultiTaskLinear`, or :func:`mtl_fast.backward`).
        """
        self._refuse_capture()
        prepared = self.prepare_losses(losses, mask)
        if not self._updating():
            return self._frozen_total(prepared)
        if self.gradient_based and not self._book.split_open:
            raise RuntimeError(
                f"{type(self).__name__} is gradient-based and no split is pending: its weights "
                "act on the gradients of the shared features, so back-propagating this total "
                "would apply none. Call zs = method.split(z) on the shared features before the "
                "heads, or use mtl_fast.backward(losses, features=z, method=method), or "
                "mtl_fast.MultiTaskLinear as the last layer"
            )
        return self.record_loss(prepared)

    def accumulate(self, micro_batches: int, *, weights: str = "micro_batch") -> Weighting:
        """Gradient accumulation: ``micro_batches`` back-propagated micro-batches per optimizer
        step. Every micro-batch is one ``split`` + ``loss(...).backward()``; the step counter
        (:attr:`step`, and with it ``period_steps`` / ``epoch_steps``) counts optimizer steps,
        i.e. once every ``micro_batches`` calls of :meth:`loss`. Statistics take every
        micro-batch's losses. Summing several ``loss()`` totals before one backward is refused.

        ``weights`` (gradient methods): ``"micro_batch"`` (default) solves α per micro-batch,
        exact for the gradient each backward adds. ``"step"`` solves α once per optimizer step
        from the mean Gram matrix of its micro-batches, one step late: every micro-batch of
        step s is combined with the α of step s − 1 (the first step solves per micro-batch).
        That is the exact α of the previous step's full batch; the current step's cannot be
        used, since the encoder's backward of its first micro-batches has already run when the
        last micro-batch's Gram matrix exists (keeping the K micro-batches' feature gradients
        would not help for the same reason). Returns the method."""
        if weights not in ("micro_batch", "step"):
            raise ValueError(f"weights must be 'micro_batch' or 'step'; got {weights!r}")
        if weights == "step" and not self.gradient_based:
            raise ValueError(
                f"{type(self).__name__} is loss-based: weights='step' is for gradient methods"
            )
        self._accumulate_weights = weights
        if (
            not isinstance(micro_batches, int)
            or isinstance(micro_batches, bool)
            or micro_batches < 1
        ):
            raise ValueError(f"micro_batches must be a positive int; got {micro_batches!r}")
        self._micro_batches = micro_batches
        return self

    def param_groups(self, lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer parameter groups for the method's learnable weights (empty when it has
        none): ``optimizer = torch.optim.Adam([*model_groups, *method.param_groups()])``.

        ``lr``: their learning rate (default :attr:`default_lr`, 0.01: the weights are a handful
        of log-scales that must move within a few hundred steps, which the model's 1e-3 would
        not do; higher rates help some problems and collapse others); no weight decay (it would
        pull them towards equal weights)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        rate = type(self).default_lr if lr is None else float(lr)
        return [{"params": params, "lr": rate, "weight_decay": 0.0}]

    def discard_pending(self) -> None:
        """Forget a ``split`` whose backward will never run (not needed: a new step replaces
        it; kept for loops that want to be explicit)."""
        self._book.discard_split()

    def end_epoch(self) -> bool:
        """Tell the method that a training epoch ended; returns whether its state changed.

        Methods whose weights change by epoch or by period act on it (STCH, LSB, DWA); the
        others do nothing, so a training loop can call it whatever the method.
        """
        return False

    def observe(self, metrics: Sequence[float] | Tensor, *, sync: bool | None = None) -> None:
        """Per-task validation metrics after an evaluation (one per task; NaN: not evaluated).
        The achievement-based methods (AMTL, DTP) use them; the others ignore them."""
        del metrics, sync

    def check_nonfinite(self) -> None:
        """Raise now for any non-finite loss/gradient recorded on an accelerator (syncs)."""
        self._monitor.check_now()

    # ------------------------------------------------------------------ subclass contract

    def total_loss(self, losses: Tensor, present: Tensor) -> Tensor:
        """The scalar to back-propagate in training. ``losses`` [T] is differentiable with
        absent tasks set to 0. Gradient methods: Σ L_t (their weights act in ``split``) and
        must not change state here."""
        if self.gradient_based:
            return losses.sum()
        raise NotImplementedError(f"{type(self).__name__} must implement total_loss")

    def gram_weights(self, gram: Tensor, inputs: StepInputs) -> Tensor:
        """α [T] from the (global) Gram matrix [T, T]; absent/inactive tasks have zero rows."""
        raise NotImplementedError(f"{type(self).__name__} must implement gram_weights")

    def loss_gradient_scales(self) -> Tensor | None:
        """c [T] with ∂total/∂L_t = c_t in the last :meth:`total_loss` (detached), or ``None``
        when every c_t is 1; :func:`mtl_fast.backward` forms the gradients c_t ∇_z L_t from it."""
        return None

    def effective_weights(self, alpha: Tensor) -> Tensor:
        """What :attr:`weights` reports after a solve gave α (IMTL: α_t e^{s_t})."""
        return alpha

    # ------------------------------------------------------------------ engine API
    # For code that drives a balanced step itself: split's autograd Function,
    # mtl_fast.backward and layers that form the Gram matrix (mtl_fast.MultiTaskLinear).

    def resolve_num_tasks(self, given: int | None, where: str) -> int:
        """T from ``given`` (checked against the method's) or the method's own."""
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

    def open_split(self, where: str) -> int:
        """Open a balanced step whose backward calls :meth:`balance_gram`: report lazily
        recorded non-finite flags, roll back an abandoned step and return the split's token."""
        del where
        self._start_step()
        return self._book.open_split()

    def prepare_losses(self, losses: LossesLike, mask: MaskLike) -> PreparedLosses:
        """Validate the losses and the mask and apply the non-finite policy (once per step)."""
        self._monitor.poll()
        prepared = prepare_losses(
            losses,
            mask,
            owner=type(self).__name__,
            nonfinite=self.nonfinite,
            monitor=self._monitor,
            step=self.step,
        )
        self.resolve_num_tasks(prepared.safe.shape[0], "loss")
        if prepared.names is not None:
            self.task_names = prepared.names
        return prepared

    def record_loss(self, prepared: PreparedLosses) -> Tensor:
        """Count a training step, keep the inputs for the pending balanced step and return the
        total; the update is rolled back unless the total is back-propagated."""
        if not self._book.split_open:
            self._start_step()
        safe, present = prepared.safe, prepared.present
        self._sync.wait()
        token = self._book.begin_update(self._snapshot())
        micro = (int(self._state.get("micro_batch", 0)) + 1) % self._micro_batches
        self._state["micro_batch"] = micro
        if micro == 0:
            self._state["step"] += 1
            self._warn_missing_lifecycle()
        if self._sync.active:
            self._sync.ensure_grad_hooks(self.parameters())
        if self.gradient_based:
            self._book.record_inputs(StepInputs(losses=safe.detach(), present=present), token)
        total = self.total_loss(safe, present)
        if not total.requires_grad:
            self._book.commit(token, type(self).__name__)
        elif not self.gradient_based:  # gradient methods commit when their solve succeeds
            total.register_hook(self._book.commit_hook(token, type(self).__name__))
        if self._sync.has_pending and total.requires_grad:
            # Deferred statistics updates: waited for when the backward ends (MethodSync).
            total.register_hook(self._sync.wait_after_backward)
        return total

    def balance(
        self, rows: Sequence[TaskRows], *, token: int | None = None, reduced: bool = False
    ) -> Tensor:
        """α from the feature gradients (one ``TaskRows`` per feature tensor): the Gram
        matrix of their concatenation, then :meth:`balance_gram`."""
        return self.balance_gram(gram_of_features(rows, self.backend), token=token, reduced=reduced)

    def balance_gram(self, G: Tensor, *, token: int | None = None, reduced: bool = False) -> Tensor:
        """α [T] (float32 on G's device) from this process's Gram matrix of the task gradients,
        by the shared policy of :func:`mtl_fast._balance.balance_gram` and :meth:`gram_weights`;
        also stored as :attr:`weights`. ``token``: the split being back-propagated;
        ``reduced``: G is already global (exact parameter mode under torch.distributed)."""
        inputs, update = self._book.close_split(token, type(self).__name__)
        alpha = balance_gram(
            G,
            inputs,
            self._solve_for_step,
            monitor=self._monitor,
            step=self.step,
            sync=self._sync.active,
            group=self.process_group,
            needs_losses=self.needs_losses_in_backward,
            reduced=reduced,
        )
        self._set_weights(self.effective_weights(alpha))
        self._book.commit(update, type(self).__name__)
        return alpha

    # ------------------------------------------------------------------ step internals

    def _solve_for_step(self, G: Tensor, inputs: StepInputs) -> Tensor:
        """:meth:`gram_weights`, or under ``accumulate(k, weights="step")`` the previous
        optimizer step's α while this step's Gram matrices are summed (see :meth:`accumulate`)."""
        if self._accumulate_weights != "step" or self._micro_batches == 1:
            return self.gram_weights(G, inputs)
        acc = self._state.get("gram_sum")
        acc = G.detach().clone() if acc is None else acc.to(G.device) + G
        previous = self._state.get("step_alpha")
        alpha = self.gram_weights(G, inputs) if previous is None else previous.to(G.device)
        if self._completes_step():
            self._state["step_alpha"] = self.gram_weights(acc / self._micro_batches, inputs)
            self._state["gram_sum"] = None
        else:
            self._state["gram_sum"] = acc
        return alpha

    def _updating(self) -> bool:
        """Whether a call is a training step (training mode, gradients enabled)."""
        return self.training and torch.is_grad_enabled()

    def _refuse_capture(self) -> None:
        if not type(self).cuda_graph_capturable and cuda_capturing():
            raise RuntimeError(
                f"{type(self).__name__} cannot be captured in a CUDA graph: "
                f"{type(self).cuda_graph_note} Run its steps eagerly (a graph may still capture "
                "the model's forward and backward around it)."
            )

    def _start_step(self) -> None:
        """A new step begins: report lazy non-finite flags, undo an abandoned step's update."""
        self._monitor.poll()
        self._sync.wait()
        self._book.rollback(self._restore)

    def _snapshot(self) -> Any:
        if self.gradient_based:  # their loss() changes nothing but the step counter
            return self._state["step"]
        return _state.pack(self._state)

    def _restore(self, snapshot: Any) -> None:
        if self.gradient_based:
            self._state["step"] = snapshot
        else:
            self._state = _state.unpack(snapshot, self._state)

    def _frozen_total(self, prepared: PreparedLosses) -> Tensor:
        """Evaluation: Σ_t w_t L_t with the current weights; nothing changes."""
        w = self._state["weights"]
        if w is None:
            T = prepared.safe.shape[0]
            # Gradient methods before their first solve: Σ L_t, their training total's value.
            w = torch.ones(T) if self.gradient_based else self.initial_weights(T)
        safe = prepared.safe
        return (safe * w.to(safe.device, safe.dtype)).sum()

    # ------------------------------------------------------------------ state

    def get_extra_state(self) -> dict[str, Any]:
        self._sync.wait()  # the state includes every step taken (no new collective)
        return {"version": 1, "num_tasks": self.num_tasks, "state": _state.pack(self._state)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError(f"unrecognised {type(self).__name__} state (version mismatch)")
        self._sync.wait()  # finish in-flight collectives; the loaded state replaces theirs
        stored_T = state.get("num_tasks")
        if self.num_tasks is not None and stored_T is not None and stored_T != self.num_tasks:
            raise ValueError(
                f"state_dict is for {stored_T} tasks but this {type(self).__name__} has "
                f"{self.num_tasks}"
            )
        if self.num_tasks is None:
            self.num_tasks = stored_T
        self._state = _state.unpack(state["state"], self._state)
        self._book.forget()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"
