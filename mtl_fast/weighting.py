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
gradients themselves. A gradient method that must act on the gradient rows (an EMA of the
gradients, per-coordinate statistics or a per-coordinate rule) also sets
``needs_gradient_rows = True`` and implements one or both row hooks,
:meth:`Weighting.prepare_rows` (before G is formed) and :meth:`Weighting.combine_rows` (instead
of Σ_t α_t g_t); see :mod:`mtl_fast._row_step`. State that must survive a restart lives in
``self._state`` (a dict) or in parameters; both are in ``state_dict()``, so a resumed run
reproduces an unbroken one.

**Diagnostics.** Every gradient method keeps the Gram matrix its last solve used and the weights
it found; :attr:`Weighting.diagnostics` turns them into gradient norms, cosines, the conflict
rate, the norm spread and the weights' entropy (:mod:`mtl_fast.diagnostics`) on first read, on
the device, with no extra pass over the gradients. Loss-based methods opt in with
``diagnostics=True`` (one Gram pass per step in ``split``'s backward).

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

from mtl_fast import _compiled_step, _custom_ops, _state, amp, distributed, ops
from mtl_fast._backend import BACKENDS, cuda_capturing
from mtl_fast._balance import balance_gram, gram_of_features, native_balance, native_serves
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
from mtl_fast._row_step import RowKind, RowStep, make_row_step, refuse_gram_only
from mtl_fast._split import SplitFunction
from mtl_fast._step import StepBook
from mtl_fast._sync import MethodSync
from mtl_fast._validation import TaskRows
from mtl_fast.diagnostics import GramDiagnostics, gram_diagnostics

__all__ = ["LossesLike", "MaskLike", "StepInputs", "Weighting"]


_NATIVE_SOLVE_IS_OWN: dict[type, bool] = {}


def _native_solve_is_own(cls: type) -> bool:
    """The class whose ``native_solve`` ``cls`` uses also defines the ``gram_weights`` it uses
    (a subclass that overrides only ``gram_weights`` solves in Python); cached per class."""
    known = _NATIVE_SOLVE_IS_OWN.get(cls)
    if known is None:
        owner = next(c for c in cls.__mro__ if "native_solve" in c.__dict__)
        known = owner.__dict__.get("gram_weights") is getattr(cls, "gram_weights", None)
        _NATIVE_SOLVE_IS_OWN[cls] = known
    return known


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
        diagnostics: loss-based methods only (gradient methods always keep them, at no cost):
            ``True`` makes ``split`` form the Gram matrix of the T feature gradients in its
            backward (one Gram pass per step) so that :attr:`diagnostics` is available.
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
    #: True when the method acts on the task gradient rows themselves (:meth:`prepare_rows`,
    #: :meth:`combine_rows`), so it needs a caller that has them (``split``,
    #: :func:`mtl_fast.backward`); callers that form only G (MultiTaskLinear) refuse it.
    needs_gradient_rows: bool = False
    #: True when the row hooks read the forward features (``RowStep.features``): ``split``
    #: then keeps them for its backward.
    needs_features: bool = False
    #: How to fix a refusal by a caller that formed only G (e.g. a variant that needs no rows).
    gram_only_fix: str = ""

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        nonfinite: str = "raise",
        sync: bool | None = None,
        process_group: Any = None,
        backend: str = "auto",
        diagnostics: bool = False,
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
        self._diagnose = bool(diagnostics)
        # (G, α) of the last solve and their diagnostics, computed on first read.
        self._diag_source: tuple[Tensor, Tensor] | None = None
        self._diag_cache: GramDiagnostics | None = None
        self._solve_gram: Tensor | None = None
        # The open row step (row hooks) and the feature tensors already combined.
        self._row_step: RowStep | None = None
        self._rows_combined: set[int] = set()
        self._rows_balanced = False
        self._compile_handle = _custom_ops.register(self)
        # Orders a compiled step's operators (mtl_fast._compiled_step); not in state_dict.
        self._compile_order = torch.zeros(1, dtype=torch.int64)

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
        After a step a gradient scaler skipped, the weights from before it (:mod:`mtl_fast.amp`).
        """
        self._settle_scaled()
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
    def diagnostics(self) -> GramDiagnostics | None:
        """Gram diagnostics of the last step (:mod:`mtl_fast.diagnostics`): gradient norms, the
        cosine matrix, the conflict rate, the norm spread and the entropy of the weights' terms,
        as float64 tensors on the device (no host synchronisation; read them with ``.item()``
        or record them with :meth:`mtl_fast.history.WeightHistory.record_diagnostics`).

        Updated by every training step's backward (``split``, :func:`mtl_fast.backward`,
        MultiTaskLinear), from the Gram matrix G the solve used and its weights α: for most
        gradient methods the Gram matrix of the task gradients ``split`` receives; for methods
        that rewrite the rows first (DB-MTL's and MoCo's tracked gradients) the Gram matrix of
        the tracked gradients. Computed on first read after a step (a few T×T operations).
        Loss-based methods: ``None`` unless built with ``diagnostics=True``; then, from the
        steps that go through ``split``, from the weighted gradients c_t g_t their total gives
        each task, with α = 1 (:func:`mtl_fast.backward` and MultiTaskLinear form no Gram matrix
        for them). ``None`` before the first step."""
        src = self._diag_source
        if src is None:
            return None
        if self._diag_cache is None:
            self._diag_cache = gram_diagnostics(*src)
        return self._diag_cache

    @property
    def last_gram(self) -> tuple[Tensor, Tensor] | None:
        """(G, α) of the last step, detached device tensors, from which :attr:`diagnostics` is
        computed; ``None`` before the first step (or for a loss-based method without
        ``diagnostics=True``)."""
        return self._diag_source

    @property
    def step(self) -> int:
        """Number of training steps seen (calls of :meth:`loss` that updated the method)."""
        self._settle_scaled()
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
        balanced = self.gradient_based or self._diagnose
        if not (balanced and self._updating()):
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
        if _custom_ops.compiling():
            outs = _compiled_step.traced_split(self, T, features)
        else:
            outs = SplitFunction.apply(self, T, self.open_split("split"), *features)
        K = len(features)
        return list(outs) if K == 1 else [tuple(outs[t * K : (t + 1) * K]) for t in range(T)]

    def loss(self, losses: LossesLike, mask: MaskLike = None, *, scaler: Any = None) -> Tensor:
        """The scalar to back-propagate.

        Args:
            losses: T scalar losses: a tensor [T], a sequence of 0-d tensors, or a dict
                ``{task name: loss}`` (the names then label :meth:`weights_dict` and messages).
            mask: optional bool [T]: False marks a task absent from this batch (weight 0,
                excluded from the solve, no statistics updated). With a mask, a non-finite loss
                also marks its task absent. A host mask (list, CPU tensor) also keeps absent
                losses out of the graph; a device mask uses ``torch.where`` (no sync).
            scaler: a :class:`torch.amp.GradScaler` for fp16 training: the result is
                ``scaler.scale(total)`` (do not scale it again), the solve sees the unscaled
                gradients, and a step the scaler skips (overflow) leaves no trace in the method
                (:mod:`mtl_fast.amp`, docs/compile_and_amp.md).

        Without a mask a NaN/Inf loss raises ``ValueError`` (``nonfinite="raise"``) or marks the
        task absent (``nonfinite="absent"``). In ``eval()`` mode or with gradients disabled the
        method changes nothing and returns Σ_t w_t L_t with its current weights (gradient
        methods before their first solve: Σ_t L_t, the value of their training total). A
        gradient method in training needs a pending ``split`` (or
        :class:`mtl_fast.MultiTaskLinear`, or :func:`mtl_fast.backward`).

        Under ``torch.compile`` the step runs as custom operators (docs/compile_and_amp.md).
        """
        scaling = amp.is_scaling(scaler)
        if _custom_ops.compiling():
            if scaling:
                raise RuntimeError(
                    f"{type(self).__name__}.loss(..., scaler=) cannot run inside torch.compile: "
                    "compile the model (its forward, with split) and keep method.loss, the "
                    "backward and the scaler calls outside the compiled function"
                )
            return _compiled_step.traced_loss(self, losses, mask)
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
        return self.record_loss(prepared, scaler=scaler if scaling else None)

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

    def native_solve(self) -> str | None:
        """The native CPU solve (``"imtl_g"``, ``"mgda"``) that :meth:`gram_weights` is, in this
        configuration, or ``None``. When set, a CPU step on one process runs the Gram matrix,
        the masks, the non-finite check, the solve and the combine in one native call
        (:func:`mtl_fast._balance.native_balance`); a subclass that overrides
        :meth:`gram_weights` without overriding this runs its own solve."""
        return None

    def prepare_rows(self, step: RowStep) -> None:
        """Row methods (``needs_gradient_rows``): called with the step's task gradient rows
        before their Gram matrix is formed. May rewrite ``step.rows`` in place (the Gram matrix,
        the solve and the combine then act on the rewritten rows) or read them into state.
        Default: nothing."""
        del step

    def combine_rows(
        self, step: RowStep, alpha: Tensor, index: int, out: Tensor | None = None
    ) -> Tensor:
        """The shared gradient of feature tensor ``index`` from its rows and the solve's α
        (``out +=`` it when given; returned). Default: Σ_t α_t g_t. Row methods acting per
        coordinate override it (GradDrop)."""
        return ops.combine_rows(step.rows[index], alpha, out=out, backend=self.backend)

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

    def record_loss(self, prepared: PreparedLosses, *, scaler: Any = None) -> Tensor:
        """Count a training step, keep the inputs for the pending balanced step and return the
        total; the update is rolled back unless the total is back-propagated. ``scaler``: an
        enabled gradient scaler (:mod:`mtl_fast.amp`): the total is returned scaled and the
        update stays provisional until the scaler's verdict."""
        if not self._book.split_open:
            self._start_step()
        if scaler is not None:
            self._book.begin_scaled(amp.watch(scaler), self._snapshot_all)
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
        book = self._book
        book.all_present = prepared.all_present
        try:
            total = self.total_loss(safe, present)
        finally:
            book.all_present = False
        if not total.requires_grad:
            self._book.commit(token, type(self).__name__)
        elif not self.gradient_based:  # gradient methods commit when their solve succeeds
            self._book.on_backward(total, self._book.commit_hook(token, type(self).__name__))
        if self._sync.has_pending and total.requires_grad:
            # Deferred statistics updates: waited for when the backward ends (MethodSync).
            self._book.on_backward(total, self._sync.wait_after_backward)
        if scaler is None:
            return total
        scaled, scale = amp.scale_total(scaler, total)
        if self.gradient_based and self._book.inputs is not None:
            self._book.inputs.grad_scale = scale
        return scaled

    def balance(
        self,
        rows: Sequence[TaskRows],
        *,
        token: int | None = None,
        reduced: bool = False,
        kind: RowKind = "features",
        features: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """α from the task gradients (one ``TaskRows`` per feature tensor or parameter):
        the row hook :meth:`prepare_rows` of a row method, the Gram matrix of the rows'
        concatenation, then :meth:`balance_gram`. ``kind``: gradients of the shared
        ``"features"`` (first dimension: the batch) or of the shared ``"params"``;
        ``features``: the forward tensors (for methods with ``needs_features``). Follow it with
        :meth:`combine` for every feature tensor."""
        rows = tuple(rows)
        if not self.gradient_based:  # a loss-based method with diagnostics=True
            return self._observe_rows(rows, token)
        self._row_step = None
        self._rows_combined = set()
        if self.needs_gradient_rows:
            recorded = self._book.inputs
            self._row_step = make_row_step(
                rows,
                kind=kind,
                features=None if features is None else tuple(features),
                present=None if recorded is None else recorded.present,
                losses=None if recorded is None else recorded.losses,
                partial=self._sync.active and not reduced,
                group=self.process_group,
            )
            self.prepare_rows(self._row_step)
            self._rows_balanced = True
        G = gram_of_features(rows, self.backend)
        return self.balance_gram(G, token=token, reduced=reduced)

    def combine(
        self, rows: TaskRows, alpha: Tensor, *, index: int = 0, out: Tensor | None = None
    ) -> Tensor:
        """The shared gradient of feature tensor ``index`` after :meth:`balance` gave α:
        Σ_t α_t g_t, or the row method's :meth:`combine_rows` (``out +=`` it when given)."""
        step = self._row_step
        if step is None:
            return ops.combine_rows(rows, alpha, out=out, backend=self.backend)
        result = self.combine_rows(step, alpha, index, out)
        self._rows_combined.add(index)
        if len(self._rows_combined) == len(step.rows):  # every feature served: free the rows
            self._row_step = None
        return result

    def balance_and_combine(
        self,
        rows: Sequence[TaskRows],
        *,
        token: int | None = None,
        features: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, ...]:
        """The shared gradient of each feature tensor (what ``split``'s backward returns):
        :meth:`balance`, then :meth:`combine` per feature tensor. One process's CPU rows of one
        feature tensor take the native path when :meth:`_native_step_applies`
        (:func:`mtl_fast._balance.native_balance`: the Gram matrix, masks and non-finite check in
        one call, with the solve and the combine when :meth:`native_solve` names one)."""
        if not self._native_step_applies(rows):
            alpha = self.balance(rows, token=token, kind="features", features=features)
            return tuple(self.combine(r, alpha, index=k) for k, r in enumerate(rows))
        who = type(self).__name__
        inputs, update = self._book.close_split(token, who)
        solver = self._native_step_solver(rows[0].num_tasks)
        G, native_alpha, out = native_balance(
            rows[0], inputs, solver, monitor=self._monitor, step=self.step
        )
        self._solve_gram = G
        if native_alpha is not None and out is not None:
            alpha = native_alpha
        else:
            T = rows[0].num_tasks
            if inputs is None:
                inputs = StepInputs(losses=torch.zeros(T), present=torch.ones(T, dtype=torch.bool))
            alpha = self._solve_for_step(G, inputs)
            alpha = torch.where(G.diagonal() > 0, alpha.to(torch.float32), 0.0)
            out = ops.combine_rows(rows[0], alpha, backend=self.backend)
        self._set_weights(self.effective_weights(alpha))
        self._note_gram(G, alpha)
        self._book.commit(update, who)
        return (out,)

    def balance_gram(self, G: Tensor, *, token: int | None = None, reduced: bool = False) -> Tensor:
        """α [T] (float32 on G's device) from this process's Gram matrix of the task gradients,
        by the shared policy of :func:`mtl_fast._balance.balance_gram` and :meth:`gram_weights`;
        also stored as :attr:`weights`. ``token``: the split being back-propagated;
        ``reduced``: G is already global (exact parameter mode under torch.distributed).
        Row methods (``needs_gradient_rows``) refuse a Gram matrix without :meth:`balance`."""
        rows_seen, self._rows_balanced = self._rows_balanced, False
        if self.needs_gradient_rows and not rows_seen:
            refuse_gram_only(self)
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
        weights = self.effective_weights(alpha)
        if inputs is not None and inputs.grad_scale is not None:
            # An overflowing scaled step keeps the weights it had (its alpha is NaN).
            previous = self._state["weights"]
            keep = torch.zeros_like(weights) if previous is None else previous.to(weights)
            weights = torch.where(torch.isfinite(weights), weights, keep)
        self._set_weights(weights)
        self._note_gram(self._solve_gram, alpha)
        self._book.commit(update, type(self).__name__)
        return alpha

    def _note_gram(self, G: Tensor | None, alpha: Tensor) -> None:
        """Keep (G, α) of the step for :attr:`diagnostics` (no copy, no computation)."""
        self._solve_gram = None
        if G is not None:
            self._diag_source = (G.detach(), alpha.detach())
            self._diag_cache = None

    def _observe_rows(self, rows: tuple[TaskRows, ...], token: int | None) -> Tensor:
        """``split``'s backward for a loss-based method built with ``diagnostics=True``: the
        Gram matrix of the (already weighted) rows for :attr:`diagnostics`, α = 1 (the plain
        sum autograd would form). Under torch.distributed the Gram matrices are summed over the
        processes (one collective, T(T+1)/2 + 2T numbers)."""
        self._book.close_split(token, type(self).__name__)
        G = gram_of_features(rows, self.backend)
        T = G.shape[0]
        ones = torch.ones(T, dtype=torch.float32, device=G.device)
        if self._sync.active:
            ok = torch.ones(T, dtype=torch.bool, device=G.device)
            G_global, _, _, _ = distributed.reduce_gram(
                torch.nan_to_num(G), ok, ~ok, None, self.process_group
            )
            assert G_global is not None
            G = G_global
        self._note_gram(G, ones)
        return ones

    # ------------------------------------------------------------------ step internals

    def _native_step_applies(self, rows: Sequence[TaskRows]) -> bool:
        """:meth:`balance_and_combine` may take the native path: a gradient method without row
        hooks, CPU rows of one feature tensor, one process, eager, ``backend="auto"``, an
        unscaled step, and the base class's balance policy (a subclass
        that overrides :meth:`balance`, :meth:`balance_gram` or :meth:`combine` keeps its own)."""
        cls = type(self)
        inputs = self._book.inputs
        return (
            self.backend == "auto"
            and self.gradient_based  # a loss-based method's split only observes (diagnostics)
            and not self.needs_gradient_rows  # row methods run their hooks (balance, combine)
            and (inputs is None or inputs.grad_scale is None)  # scaled: G / s² (balance_gram)
            and cls.balance is Weighting.balance
            and cls.balance_gram is Weighting.balance_gram
            and cls.combine is Weighting.combine
            and not _custom_ops.compiling()
            and native_serves(rows)
            and not self._sync.active
        )

    def _native_step_solver(self, num_tasks: int) -> str | None:
        """:meth:`native_solve` where it stands for this class's :meth:`gram_weights` and the
        step solves per micro-batch; else ``None`` (the method's own solve)."""
        if self._accumulate_weights == "step" and self._micro_batches > 1:
            return None
        solver = self.native_solve()
        if solver is None or not _native_solve_is_own(type(self)):
            return None
        if solver == "imtl_g" and num_tasks > ops.NATIVE_IMTL_G_MAX_T:
            return None
        return solver

    def _solve_for_step(self, G: Tensor, inputs: StepInputs) -> Tensor:
        """:meth:`gram_weights`, or under ``accumulate(k, weights="step")`` the previous
        optimizer step's α while this step's Gram matrices are summed (see :meth:`accumulate`)."""
        self._solve_gram = G
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

    def _step_grad_scale(self) -> Tensor | None:
        """The gradient scaler's scale s of the step whose backward runs (:mod:`mtl_fast.amp`),
        else ``None``; for methods that read the gradients themselves (DB-MTL's EMA)."""
        inputs = self._book.inputs
        return None if inputs is None else inputs.grad_scale

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
        self._settle_scaled()

    def _settle_scaled(self) -> None:
        """Apply a gradient scaler's verdict on the last scaled step (:mod:`mtl_fast.amp`): a
        skipped step's whole update is undone."""
        self._book.settle_scaled(self._restore_all)

    def _snapshot_all(self) -> Any:
        """The whole state and the method's parameters (a backward may change them in place:
        GradNorm renormalises its weights), for a scaled step (:mod:`mtl_fast.amp`)."""
        return _state.pack(self._state), [p.detach().clone() for p in self.parameters()]

    def _restore_all(self, snapshot: Any) -> None:
        state, params = snapshot
        self._state = _state.unpack(state, self._state)
        with torch.no_grad():
            for p, saved in zip(self.parameters(), params):
                p.copy_(saved)

    def _snapshot(self) -> Any:
        if self.gradient_based:  # their loss() changes nothing but the step counter
            return self._state["step"]
        return _state.snapshot(self._state)

    def _restore(self, snapshot: Any) -> None:
        if self.gradient_based:
            self._state["step"] = snapshot
        else:
            self._state = _state.restore(snapshot, self._state)

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
        self._settle_scaled()  # a step the scaler skipped is not saved
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

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling / ``copy.deepcopy``: the copy gets its own operator handle."""
        super().__setstate__(state)
        self._compile_handle = _custom_ops.register(self)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"
