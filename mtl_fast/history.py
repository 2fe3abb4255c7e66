"""Recording task weights, losses and loss scales over training, for any method.

:class:`WeightHistory` keeps, per method name and per step, the task weights
``w_t``, the task losses ``L_t`` and the *loss scales* ``w_t · L_t`` — the
quantities plotted in Figure 1 of Groenendijk et al. (CV-Weighting: weights over
training) and Figure 9 of Lee et al. (LSB: weights and loss scales over
training).  It can export them as NumPy arrays, a long-format CSV file,
TensorBoard scalars, or a matplotlib figure.

No GPU→host synchronisation per step
------------------------------------
:meth:`WeightHistory.record` never reads a tensor's values: it stores a detached
*device-side copy* (``tensor.detach().clone()``, an asynchronous kernel) in a
pending buffer and only checks shapes, which are host metadata.  The pending
tensors are moved to the host in one batched transfer (``torch.stack(...).cpu()``,
one copy per device/dtype) every ``chunk_size`` records of a method, and on
:meth:`~WeightHistory.flush` or any export.  So a training loop pays one
synchronisation per ``chunk_size`` steps instead of one per step, while later
in-place updates of the recorded tensors do not alter the history.  The price
is that values are not validated at record time (checking for NaN would need a
synchronisation); they are stored as given.

Gram diagnostics
----------------
:meth:`WeightHistory.record_diagnostics` records, per step, the Gram matrix G a gradient method
solved with and its weights α (``method.last_gram``: T² + T numbers, a device copy, no host
synchronisation, transferred in the same chunks); :meth:`~WeightHistory.diagnostics_arrays`
turns them into the gradient norms, cosine matrices, conflict rates, norm spreads and weight
entropies of :mod:`mtl_fast.diagnostics` on the host, and
:meth:`~WeightHistory.plot_diagnostics` draws the cosines of every task pair over training as a
heat map above the conflict-rate curve.

Missing / masked tasks (NaN)
----------------------------
A task without a loss at some step (absent labels, masked task) may be recorded
as NaN.  NaN is kept as is in :meth:`~WeightHistory.to_arrays`, in the CSV (as
``nan``) and in the state dict — the scale of that step is then NaN too.
:meth:`~WeightHistory.plot` and :meth:`~WeightHistory.to_tensorboard` skip
non-finite points (a curve is drawn through the remaining steps).
"""

from __future__ import annotations

import csv
import math
import operator
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["WeightHistory"]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[Any]]
PathLike = Union[str, "os.PathLike[str]"]

CSV_COLUMNS = ("method", "step", "task", "weight", "loss", "scale")
#: The per-step scalars of :meth:`WeightHistory.diagnostics_arrays` besides norms and cosines.
DIAGNOSTIC_SCALARS = ("conflict_rate", "norm_spread", "weight_entropy")

_STATE_VERSION = 1


class _MethodLog:
    """Storage of one method: host chunks plus not-yet-transferred records."""

    __slots__ = ("host_losses", "host_weights", "last_step", "pending", "steps")

    def __init__(self) -> None:
        self.steps: List[int] = []
        self.last_step: Optional[int] = None
        # Each pending entry: (weights, losses); each a detached tensor or a float64 ndarray.
        self.pending: List[Tuple[Any, Any]] = []
        self.host_weights: List[np.ndarray] = []  # chunks [k, T]
        self.host_losses: List[np.ndarray] = []


class _GramLog:
    """Gram diagnostics of one method: the (G, α) of each recorded step."""

    __slots__ = ("host_alpha", "host_gram", "last_step", "pending", "steps")

    def __init__(self) -> None:
        self.steps: List[int] = []
        self.last_step: Optional[int] = None
        self.pending: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.host_gram: List[np.ndarray] = []  # chunks [k, T, T]
        self.host_alpha: List[np.ndarray] = []  # chunks [k, T]

    def flush(self) -> None:
        if not self.pending:
            return
        grams = torch.stack([g for g, _ in self.pending]).cpu().to(torch.float64).numpy()
        alphas = torch.stack([a for _, a in self.pending]).cpu().to(torch.float64).numpy()
        self.host_gram.append(grams)
        self.host_alpha.append(alphas)
        self.pending = []

    def num_tasks(self) -> Optional[int]:
        if self.pending:
            return int(self.pending[0][1].shape[0])
        return int(self.host_alpha[0].shape[1]) if self.host_alpha else None

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        """(G [S, T, T], α [S, T]) float64 host arrays of every record."""
        self.flush()
        if len(self.host_gram) > 1:
            self.host_gram = [np.concatenate(self.host_gram)]
            self.host_alpha = [np.concatenate(self.host_alpha)]
        if not self.host_gram:
            return np.zeros((0, 0, 0)), np.zeros((0, 0))
        return self.host_gram[0], self.host_alpha[0]


def _next_step(method_name: str, last: Optional[int], step: Optional[int]) -> int:
    """The step of a new record: ``last + 1`` (0 first) when ``step`` is None, else ``step``,
    which must be an integer above ``last``."""
    if step is None:
        return 0 if last is None else last + 1
    if isinstance(step, bool):
        raise ValueError(f"step must be an integer, got {step!r}")
    try:
        step = operator.index(step)
    except TypeError:
        raise ValueError(f"step must be an integer, got {step!r}") from None
    if last is not None and step <= last:
        raise ValueError(f"{method_name!r}: steps must strictly increase, got {step} after {last}")
    return step


def _objects_to_host(objs: Sequence[Any]) -> List[np.ndarray]:
    """float64 host copies of 1-D tensors/arrays, one transfer per (device, dtype) group."""
    out: List[Optional[np.ndarray]] = [None] * len(objs)
    groups: Dict[Tuple[torch.device, torch.dtype], List[int]] = OrderedDict()
    for i, obj in enumerate(objs):
        if isinstance(obj, torch.Tensor):
            groups.setdefault((obj.device, obj.dtype), []).append(i)
        else:
            out[i] = obj
    for idx in groups.values():
        stacked = torch.stack([objs[i] for i in idx]).cpu().to(torch.float64).numpy()
        for row, i in zip(stacked, idx):
            out[i] = row
    return out  # type: ignore[return-value]


def _agg_figure_maker(caller: str) -> Callable[[Tuple[float, float], int], Figure]:
    """A function ``(figsize, dpi)`` → a matplotlib ``Figure`` on its own Agg canvas (no pyplot,
    so no global state); ImportError naming ``WeightHistory.<caller>()`` when matplotlib is not
    installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            f"WeightHistory.{caller}() needs matplotlib: `pip install matplotlib`"
        ) from err

    def new_figure(figsize: Tuple[float, float], dpi: int) -> Figure:
        fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)
        return fig

    return new_figure


def _save_figure(fig: Figure, path: Optional[PathLike], dpi: int) -> None:
    """Save ``fig`` to ``path`` when given (format from the suffix; PNG without one)."""
    if path is not None:
        path = Path(path)
        fig.savefig(path, format=None if path.suffix else "png", dpi=dpi)


class WeightHistory:
    """Per-method, per-step record of task weights, losses and loss scales.

    Args:
        task_names: names of the ``T`` tasks, used by the CSV, TensorBoard and
            plot exports.  If ``None``, ``T`` is taken from the first record and
            the tasks are named ``task_0 … task_{T-1}``.  All methods share the
            same tasks.
        chunk_size: number of records of a method kept on the device before
            they are moved to the host in one batched transfer (see the module
            docstring).  ``None`` moves them only on :meth:`flush` / export.

    Example::

        history = WeightHistory(["depth", "normal", "seg"])
        for step in range(num_steps):
            losses = torch.stack([l_depth, l_normal, l_seg])   # on the GPU
            weights = weighting(losses)                         # Tensor[3]
            history.record("lsb", weights, losses, step=step)   # no sync here
        history.plot("weights.png", log_scale=True)
        history.to_csv("weights.csv")
    """

    def __init__(
        self, task_names: Optional[Sequence[str]] = None, *, chunk_size: Optional[int] = 256
    ) -> None:
        if task_names is not None:
            if isinstance(task_names, str):
                raise TypeError("task_names must be a sequence of names, not a single string")
            task_names = [str(n) for n in task_names]
            if not task_names:
                raise ValueError("task_names must not be empty")
            if len(set(task_names)) != len(task_names):
                raise ValueError(f"task_names must be unique, got {task_names!r}")
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or operator.index(chunk_size) < 1:
                raise ValueError(
                    f"chunk_size must be a positive integer or None, got {chunk_size!r}"
                )
            chunk_size = operator.index(chunk_size)
        self._task_names: Optional[List[str]] = task_names
        self._chunk_size = chunk_size
        self._logs: Dict[str, _MethodLog] = OrderedDict()
        self._grams: Dict[str, _GramLog] = OrderedDict()

    # ------------------------------------------------------------------ properties
    @property
    def task_names(self) -> Optional[List[str]]:
        """The task names (``None`` until the first record when not given)."""
        return None if self._task_names is None else list(self._task_names)

    @property
    def num_tasks(self) -> Optional[int]:
        """``T``, or ``None`` before the first record when no names were given."""
        return None if self._task_names is None else len(self._task_names)

    @property
    def methods(self) -> List[str]:
        """Recorded method names, in order of first record."""
        return list(self._logs)

    @property
    def chunk_size(self) -> Optional[int]:
        """Records of a method kept on the device before one batched transfer to the host
        (``None``: only on :meth:`flush` or an export)."""
        return self._chunk_size

    def num_steps(self, method_name: str) -> int:
        """Number of records of ``method_name``."""
        return len(self._log(method_name).steps)

    def __contains__(self, method_name: object) -> bool:
        return method_name in self._logs

    def __repr__(self) -> str:
        counts = ", ".join(f"{m!r}: {len(log.steps)}" for m, log in self._logs.items())
        return f"WeightHistory(task_names={self._task_names!r}, steps={{{counts}}})"

    def _log(self, method_name: str) -> _MethodLog:
        try:
            return self._logs[method_name]
        except KeyError:
            raise KeyError(
                f"no records for method {method_name!r}; recorded methods: {self.methods!r}"
            ) from None

    # ------------------------------------------------------------------ recording
    def _prepare(self, value: Any, what: str) -> Any:
        """Detached device copy (tensor) or float64 host copy (anything else), 1-D."""
        if isinstance(value, torch.Tensor):
            t = value.detach()
        elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            # e.g. a list of scalar loss tensors: stack on their device (no sync).
            ref = next(v for v in value if isinstance(v, torch.Tensor))
            dtype = ref.dtype if ref.is_floating_point() else torch.float32
            parts = []
            for v in value:
                if isinstance(v, torch.Tensor):
                    if v.numel() != 1:
                        raise ValueError(
                            f"{what}: a list of tensors must hold one-element tensors, "
                            f"got shape {tuple(v.shape)}"
                        )
                    parts.append(v.detach().reshape(()).to(device=ref.device, dtype=dtype))
                else:
                    parts.append(torch.as_tensor(v, dtype=dtype, device=ref.device))
            return torch.stack(parts)  # fresh storage: no clone needed
        else:
            try:
                arr = np.array(value, dtype=np.float64)  # always a copy
            except (TypeError, ValueError):
                raise ValueError(
                    f"{what} must be a 1-D tensor or array of numbers, got {type(value).__name__}"
                ) from None
            if arr.ndim != 1:
                raise ValueError(f"{what} must be 1-D [T], got shape {arr.shape}")
            return arr
        if t.is_complex():
            raise ValueError(f"{what} must be real, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{what} must be 1-D [T], got shape {tuple(t.shape)}")
        return t.clone()  # asynchronous device copy, protects against in-place updates

    def record(
        self,
        method_name: str,
        weights: ArrayLike,
        losses: ArrayLike,
        step: Optional[int] = None,
    ) -> int:
        """Record the task weights and losses of ``method_name`` at one step.

        Args:
            method_name: any non-empty string (one curve panel per method).
            weights: ``Tensor[T]`` (any device, with or without grad) or a 1-D
                array-like of ``T`` numbers.
            losses: ``Tensor[T]``, a list of ``T`` scalar tensors, or a 1-D
                array-like; NaN marks a task without a loss at this step.
            step: the training step; ``None`` means previous step + 1 (0 for the
                first record of the method).  Steps of a method must strictly
                increase.

        Returns:
            The step under which the record was stored.

        Raises:
            ValueError: empty method name, non 1-D inputs, ``T`` different from
                the task names / earlier records, or a non-increasing step.

        Tensors are neither read nor moved here (no device synchronisation); see
        the module docstring.
        """
        if not isinstance(method_name, str) or not method_name:
            raise ValueError(f"method_name must be a non-empty string, got {method_name!r}")
        w = self._prepare(weights, "weights")
        loss = self._prepare(losses, "losses")
        n_w, n_l = int(w.shape[0]), int(loss.shape[0])
        if n_w != n_l:
            raise ValueError(f"weights have {n_w} tasks but losses have {n_l}")
        if n_w == 0:
            raise ValueError("weights and losses must have at least one task")
        self._check_num_tasks(method_name, n_w)

        log = self._logs.get(method_name)
        step = _next_step(method_name, None if log is None else log.last_step, step)

        self._name_tasks(n_w)
        if log is None:
            log = self._logs[method_name] = _MethodLog()
        log.steps.append(step)
        log.last_step = step
        log.pending.append((w, loss))
        if self._chunk_size is not None and len(log.pending) >= self._chunk_size:
            self._flush_log(log)
        return step

    def _check_num_tasks(self, method_name: str, T: int) -> None:
        """ValueError when task names are known and ``T`` differs from their number."""
        if self._task_names is not None and T != len(self._task_names):
            raise ValueError(
                f"{method_name!r}: got {T} tasks, expected {len(self._task_names)} "
                f"({self._task_names!r})"
            )

    def _name_tasks(self, T: int) -> None:
        """Name the tasks ``task_0 … task_{T-1}`` unless they have names already."""
        if self._task_names is None:
            self._task_names = [f"task_{i}" for i in range(T)]

    # ------------------------------------------------------------------ host transfer
    @staticmethod
    def _flush_log(log: _MethodLog) -> None:
        if not log.pending:
            return
        k = len(log.pending)
        host = _objects_to_host([w for w, _ in log.pending] + [loss for _, loss in log.pending])
        log.host_weights.append(np.stack(host[:k]))
        log.host_losses.append(np.stack(host[k:]))
        log.pending = []

    def flush(self) -> None:
        """Move every pending device record to the host now (one sync per device/dtype)."""
        for log in self._logs.values():
            self._flush_log(log)
        for glog in self._grams.values():
            glog.flush()

    # ------------------------------------------------------------------ Gram diagnostics
    def record_diagnostics(self, method_name: str, source: Any, step: Optional[int] = None) -> int:
        """Record the Gram diagnostics of ``method_name`` at one step (module docstring).

        Args:
            method_name: any non-empty string.
            source: a :class:`mtl_fast.Weighting` after a training step (its ``last_gram``), or
                a pair (G [T, T], α [T]) of tensors.
            step: the training step; ``None``: the previous diagnostics step + 1 (0 first).

        Returns:
            The step under which the record was stored.

        Raises:
            ValueError: no Gram matrix yet (a loss-based method without ``diagnostics=True``,
                or no step taken), shapes that do not match the task names or earlier records,
                or a non-increasing step.

        Nothing is read on the host (a device copy of T² + T numbers).
        """
        if not isinstance(method_name, str) or not method_name:
            raise ValueError(f"method_name must be a non-empty string, got {method_name!r}")
        pair = getattr(source, "last_gram", source)
        if pair is None:
            raise ValueError(
                f"{method_name!r}: no Gram matrix to record yet (take a training step first; a "
                "loss-based method needs diagnostics=True)"
            )
        G, alpha = (torch.as_tensor(x).detach() for x in pair)
        T = int(alpha.shape[0]) if alpha.dim() == 1 else -1
        if alpha.dim() != 1 or G.shape != (T, T):
            raise ValueError(
                f"expected G [T, T] and alpha [T]; got {tuple(G.shape)} and {tuple(alpha.shape)}"
            )
        self._check_num_tasks(method_name, T)
        glog = self._grams.get(method_name)
        known = None if glog is None else glog.num_tasks()
        if known is not None and known != T:
            raise ValueError(f"{method_name!r}: got {T} tasks, earlier records had {known}")
        step = _next_step(method_name, None if glog is None else glog.last_step, step)
        self._name_tasks(T)
        if glog is None:
            glog = self._grams[method_name] = _GramLog()
        glog.steps.append(step)
        glog.last_step = step
        # float64 device copies: the (asynchronous) clone protects against later updates.
        glog.pending.append((G.to(torch.float64).clone(), alpha.to(torch.float64).clone()))
        if self._chunk_size is not None and len(glog.pending) >= self._chunk_size:
            glog.flush()
        return step

    @property
    def diagnostic_methods(self) -> List[str]:
        """Methods with recorded Gram diagnostics, in order of first record."""
        return list(self._grams)

    def diagnostics_arrays(self, method_name: str) -> Dict[str, np.ndarray]:
        """The recorded diagnostics of ``method_name`` as NumPy arrays (flushes first).

        Returns:
            ``{"steps": int64 [S], "gram": [S, T, T], "alpha": [S, T], "norms": [S, T],
            "cosines": [S, T, T], "conflict_rate": [S], "norm_spread": [S],
            "weight_entropy": [S]}``, float64, computed by
            :func:`mtl_fast.diagnostics.gram_diagnostics` from each step's G and α.
        """
        from mtl_fast.diagnostics import gram_diagnostics

        try:
            glog = self._grams[method_name]
        except KeyError:
            raise KeyError(
                f"no diagnostics for method {method_name!r}; recorded: {self.diagnostic_methods!r}"
            ) from None
        grams, alphas = glog.arrays()
        S = len(glog.steps)
        T = grams.shape[1] if S else 0
        out: Dict[str, np.ndarray] = {
            "steps": np.asarray(glog.steps, dtype=np.int64),
            "gram": grams.copy(),
            "alpha": alphas.copy(),
            "norms": np.zeros((S, T)),
            "cosines": np.zeros((S, T, T)),
        }
        for key in DIAGNOSTIC_SCALARS:
            out[key] = np.zeros(S)
        for i in range(S):
            d = gram_diagnostics(torch.from_numpy(grams[i]), torch.from_numpy(alphas[i]))
            out["norms"][i] = d.norms.numpy()
            out["cosines"][i] = d.cosines.numpy()
            for key in DIAGNOSTIC_SCALARS:
                out[key][i] = float(getattr(d, key))
        return out

    def plot_diagnostics(
        self,
        path: Optional[PathLike] = None,
        *,
        methods: Optional[Sequence[str]] = None,
        figsize: Optional[Tuple[float, float]] = None,
        dpi: int = 100,
    ) -> Figure:
        """Figure of the Gram diagnostics over training, one column per method: the cosine of
        every task pair (s < t) as a heat map over the steps (red: conflicting, blue:
        aligned), above the conflict rate (share of negative cosines). Built without pyplot,
        like :meth:`plot`; saved to ``path`` when given.

        Raises:
            ImportError: matplotlib is not installed.
            ValueError: no diagnostics recorded.
            KeyError: an unknown method name.
        """
        new_figure = _agg_figure_maker("plot_diagnostics")
        chosen = self.diagnostic_methods if methods is None else list(methods)
        if not chosen:
            raise ValueError("nothing to plot: no diagnostics have been recorded")
        arrays = [self.diagnostics_arrays(m) for m in chosen]
        names = self._task_names or []
        n = len(chosen)
        fig = new_figure(figsize or (4.5 * n, 6.0), dpi)
        axes = fig.subplots(
            2, n, sharex="col", squeeze=False, gridspec_kw={"height_ratios": [2, 1]}
        )
        image = None
        for col, (method, a) in enumerate(zip(chosen, arrays)):
            steps, cos = a["steps"], a["cosines"]
            T = cos.shape[1]
            pairs = [(s, t) for s in range(T) for t in range(s + 1, T)]
            ax = axes[0, col]
            if pairs and len(steps):
                grid = np.stack([cos[:, s, t] for s, t in pairs])  # [pairs, S]
                image = ax.imshow(
                    grid,
                    aspect="auto",
                    cmap="RdBu",
                    vmin=-1.0,
                    vmax=1.0,
                    interpolation="nearest",
                    extent=(steps[0] - 0.5, steps[-1] + 0.5, len(pairs) - 0.5, -0.5),
                )
                if len(pairs) <= 28:
                    ax.set_yticks(range(len(pairs)))
                    label = [f"{names[s]}·{names[t]}" for s, t in pairs]
                    ax.set_yticklabels(label, fontsize="x-small")
            ax.set_title(method)
            if col == 0:
                ax.set_ylabel("task pair (cosine)")
            ax2 = axes[1, col]
            ax2.plot(steps, a["conflict_rate"], color="C3", lw=1.2)
            ax2.set_ylim(-0.02, 1.02)
            ax2.grid(True, alpha=0.3)
            ax2.set_xlabel("step")
            if col == 0:
                ax2.set_ylabel("conflict rate")
        if image is not None:
            fig.colorbar(image, ax=list(axes[0]), fraction=0.05, label="cosine")
        _save_figure(fig, path, dpi)
        return fig

    def to_arrays(self, method_name: str) -> Dict[str, np.ndarray]:
        """All records of ``method_name`` as NumPy arrays (flushes pending records).

        Returns:
            ``{"steps": int64 [S], "weights": float64 [S, T], "losses": float64 [S, T],
            "scales": float64 [S, T]}`` with ``scales = weights * losses``.  NaN
            entries are kept (and make the corresponding scale NaN).  The arrays
            are copies.
        """
        log = self._log(method_name)
        self._flush_log(log)
        if len(log.host_weights) > 1:  # consolidate once
            log.host_weights = [np.concatenate(log.host_weights)]
            log.host_losses = [np.concatenate(log.host_losses)]
        weights = log.host_weights[0].copy()
        losses = log.host_losses[0].copy()
        with np.errstate(invalid="ignore", over="ignore"):
            scales = weights * losses
        return {
            "steps": np.asarray(log.steps, dtype=np.int64),
            "weights": weights,
            "losses": losses,
            "scales": scales,
        }

    # ------------------------------------------------------------------ CSV
    def to_csv(self, path: PathLike) -> Path:
        """Write every record in long format, one row per (method, step, task).

        Columns: ``method, step, task, weight, loss, scale``; rows are ordered by
        method (first-record order), step, then task.  Floats are written with
        ``repr`` so they read back exactly; NaN is written as ``nan``.

        Returns:
            The path written.
        """
        path = Path(path)
        names = self._task_names or []
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for method in self._logs:
                a = self.to_arrays(method)
                for s, step in enumerate(a["steps"].tolist()):
                    for t, task in enumerate(names):
                        writer.writerow(
                            (
                                method,
                                step,
                                task,
                                repr(float(a["weights"][s, t])),
                                repr(float(a["losses"][s, t])),
                                repr(float(a["scales"][s, t])),
                            )
                        )
        return path

    @classmethod
    def from_csv(cls, path: PathLike, *, chunk_size: Optional[int] = 256) -> WeightHistory:
        """Read a file written by :meth:`to_csv` (the ``scale`` column is recomputed).

        Raises:
            ValueError: missing columns, or a (method, step) without every task.
        """
        with Path(path).open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(CSV_COLUMNS[:5]) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: missing CSV column(s) {sorted(missing)}")
            tasks: List[str] = []
            data: Dict[str, Dict[int, Dict[str, Tuple[float, float]]]] = OrderedDict()
            for row in reader:
                task = row["task"]
                if task not in tasks:
                    tasks.append(task)
                by_step = data.setdefault(row["method"], OrderedDict())
                by_step.setdefault(int(row["step"]), {})[task] = (
                    float(row["weight"]),
                    float(row["loss"]),
                )
        history = cls(tasks or None, chunk_size=chunk_size)
        for method, by_step in data.items():
            for step in sorted(by_step):
                values = by_step[step]
                if len(values) != len(tasks):
                    raise ValueError(
                        f"{path}: method {method!r} step {step} lacks task(s) "
                        f"{sorted(set(tasks) - set(values))}"
                    )
                history.record(
                    method,
                    [values[t][0] for t in tasks],
                    [values[t][1] for t in tasks],
                    step=step,
                )
        return history

    # ------------------------------------------------------------------ TensorBoard
    def to_tensorboard(self, log_dir: PathLike) -> Path:
        """Write the records as TensorBoard scalars.

        One run per method (``log_dir/<method>``, with characters other than
        letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``) so that the
        methods overlay in TensorBoard; tags ``weight/<task>``, ``loss/<task>``
        and ``scale/<task>``, ``global_step`` = the recorded step.  Non-finite
        values (e.g. NaN losses of absent tasks) are skipped.

        Requires the ``tensorboard`` package (used through
        :class:`torch.utils.tensorboard.SummaryWriter`).

        Returns:
            ``log_dir`` as a :class:`~pathlib.Path`.

        Raises:
            ImportError: ``tensorboard`` is not installed.
        """
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "WeightHistory.to_tensorboard() needs the 'tensorboard' package, which is "
                "not installed: `pip install tensorboard` (or use to_csv()/plot() instead)"
            ) from err
        log_dir = Path(log_dir)
        names = self._task_names or []
        for method in self._logs:
            a = self.to_arrays(method)
            run = re.sub(r"[^A-Za-z0-9._-]", "_", method)
            writer = SummaryWriter(log_dir=str(log_dir / run))
            try:
                for s, step in enumerate(a["steps"].tolist()):
                    for kind, key in (
                        ("weight", "weights"),
                        ("loss", "losses"),
                        ("scale", "scales"),
                    ):
                        row = a[key][s]
                        for t, task in enumerate(names):
                            v = float(row[t])
                            if math.isfinite(v):
                                writer.add_scalar(f"{kind}/{task}", v, global_step=step)
            finally:
                writer.close()
        return log_dir

    # ------------------------------------------------------------------ plotting
    def plot(
        self,
        path: Optional[PathLike] = None,
        *,
        methods: Optional[Sequence[str]] = None,
        log_scale: bool = False,
        sharey: bool = True,
        figsize: Optional[Tuple[float, float]] = None,
        dpi: int = 100,
    ) -> Figure:
        """Figure of weights (top row) and loss scales ``w·L`` (bottom row) over training.

        One column per method, one coloured curve per task (same colour for a
        task in every panel), in the style of Figure 1 of CV-Weighting and
        Figure 9 of LSB.  Non-finite points (NaN losses of absent tasks) are
        skipped; with ``log_scale`` non-positive scales are masked too.

        The figure is built on the non-interactive Agg canvas without pyplot, so
        it never opens a window or touches pyplot's global state;
        ``plt.show()`` is never called.

        Args:
            path: if given, the figure is saved there (format from the suffix;
                PNG when the suffix is missing or ``.png``).
            methods: methods to draw, in order (default: all, in record order).
            log_scale: logarithmic y axis for the loss-scale row.
            sharey: share the y axis along each row, so that methods compare.
            figsize: figure size in inches (default ``(4 × columns, 6)``).
            dpi: resolution.

        Returns:
            The :class:`matplotlib.figure.Figure` (``2 × len(methods)`` axes).

        Raises:
            ImportError: matplotlib is not installed.
            ValueError: nothing recorded.
            KeyError: an unknown method name.
        """
        new_figure = _agg_figure_maker("plot")
        from matplotlib.lines import Line2D

        chosen = self.methods if methods is None else list(methods)
        if not chosen:
            raise ValueError("nothing to plot: no method has been recorded")
        arrays = [self.to_arrays(m) for m in chosen]  # KeyError for unknown names
        names = self._task_names or []
        n = len(chosen)
        fig = new_figure(figsize or (4.0 * n, 6.0), dpi)
        axes = fig.subplots(2, n, sharex="col", sharey="row" if sharey else False, squeeze=False)
        colours = [f"C{t % 10}" for t in range(len(names))]
        for col, (method, a) in enumerate(zip(chosen, arrays)):
            for row, (key, label) in enumerate((("weights", "weight"), ("scales", "loss scale"))):
                ax = axes[row, col]
                for t in range(len(names)):
                    y = a[key][:, t]
                    ok = np.isfinite(y)
                    if log_scale and row == 1:
                        ok &= y > 0
                    if ok.any():
                        # markers keep short or single-point series visible
                        marker = "o" if ok.sum() <= 20 else None
                        ax.plot(
                            a["steps"][ok], y[ok], color=colours[t], lw=1.2, marker=marker, ms=3
                        )
                if log_scale and row == 1:
                    ax.set_yscale("log", nonpositive="mask")
                ax.grid(True, alpha=0.3)
                if col == 0:
                    ax.set_ylabel(label if row == 0 else "loss scale (weight × loss)")
                if row == 0:
                    ax.set_title(method)
                else:
                    ax.set_xlabel("step")
        handles = [Line2D([], [], color=c, lw=1.5) for c in colours]
        axes[0, 0].legend(handles, names, fontsize="small", loc="best")
        fig.tight_layout()
        _save_figure(fig, path, dpi)
        return fig

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Host-side snapshot (NumPy arrays only), loadable by :meth:`load_state_dict`."""
        return {
            "version": _STATE_VERSION,
            "task_names": self.task_names,
            "chunk_size": self._chunk_size,
            "methods": OrderedDict(
                (m, {k: v for k, v in self.to_arrays(m).items() if k != "scales"})
                for m in self._logs
            ),
            "diagnostics": OrderedDict(
                (m, dict(zip(("steps", "gram", "alpha"), (np.asarray(g.steps), *g.arrays()))))
                for m, g in self._grams.items()
            ),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the contents with a :meth:`state_dict` snapshot."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported WeightHistory state version {state.get('version')!r}")
        names = state["task_names"]
        logs: Dict[str, _MethodLog] = OrderedDict()
        for method, arrays in state["methods"].items():
            steps = np.asarray(arrays["steps"], dtype=np.int64)
            weights = np.asarray(arrays["weights"], dtype=np.float64)
            losses = np.asarray(arrays["losses"], dtype=np.float64)
            if (
                weights.ndim != 2
                or weights.shape != losses.shape
                or weights.shape[0] != steps.shape[0]
                or (names is not None and weights.shape[1] != len(names))
            ):
                raise ValueError(f"inconsistent arrays for method {method!r} in state")
            if steps.size > 1 and not (np.diff(steps) > 0).all():
                raise ValueError(f"steps of method {method!r} do not strictly increase")
            log = _MethodLog()
            log.steps = steps.tolist()
            log.last_step = log.steps[-1] if log.steps else None
            log.host_weights = [weights.copy()]
            log.host_losses = [losses.copy()]
            logs[method] = log
        grams: Dict[str, _GramLog] = OrderedDict()
        for method, arrays in state.get("diagnostics", {}).items():  # absent in older states
            glog = _GramLog()
            glog.steps = np.asarray(arrays["steps"], dtype=np.int64).tolist()
            glog.last_step = glog.steps[-1] if glog.steps else None
            if glog.steps:
                glog.host_gram = [np.asarray(arrays["gram"], dtype=np.float64).copy()]
                glog.host_alpha = [np.asarray(arrays["alpha"], dtype=np.float64).copy()]
            grams[method] = glog
        self._task_names = None if names is None else list(names)
        self._chunk_size = state.get("chunk_size", self._chunk_size)
        self._logs = logs
        self._grams = grams

    def __getstate__(self) -> Dict[str, Any]:
        return self.state_dict()  # flushes: pickles hold host arrays only

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._task_names = None
        self._chunk_size = None
        self._logs = OrderedDict()
        self._grams = OrderedDict()
        self.load_state_dict(state)
