"""Multi-task evaluation metrics: Δ_MTL, Acc_MTL, average rank and win rate.

Everything here is pure NumPy/Python and accepts array-likes (Python numbers,
lists, NumPy arrays, 0-d tensors); nothing needs torch.

References:

* **[AMTL]** H. Yun and H. Cho, *Achievement-based Training Progress Balancing
  for Multi-Task Learning* (002-amtl) — Δ_MTL (eq. 6, eq. 7) and Acc_MTL
  (eq. 8, eq. 9); Tables 1 and 7.
* **[LSB]** J.-H. Lee, C. Lee and C.-S. Kim, *Learning Multiple Pixelwise Tasks
  Based on Loss Scale Balancing* (001-lsb) — rank-based evaluation protocol
  (Sec. 4.3; Tables 2, 4 and 5).
* **[CV]** R. Groenendijk et al., *Multi-Loss Weighting with Coefficient of
  Variations* (000-cv-weighting) — win rate (Sec. 3.1; Tables 2 and 4).

Input structure for :func:`delta_mtl` and :func:`acc_mtl`
----------------------------------------------------------
Results are a *task tree*: tasks, each with one or more metrics.  Two spellings
are accepted, and they can be mixed at the task level:

* mappings: ``{"seg": {"mIoU": 0.44}, "depth": {"d1": 0.81, "rmse": 0.58}}``;
* sequences: ``[[0.44], [0.81, 0.58]]`` (a 2-D array is a sequence of rows).

A task with a single metric may be written as a bare number
(``{"seg": 0.44, ...}`` or ``[0.44, [0.81, 0.58]]``); a flat list of numbers is
therefore eq. 6 of [AMTL] (one metric per task).

``higher_is_better`` has the same structure with ``bool`` leaves (``True`` when a
larger value is better, i.e. ``S = +1``).  A single ``bool`` may stand for a
whole task, or for everything.  ``baseline`` must have the structure of
``results`` (mapping keys may come in another order, and a bare number and a
one-metric task are interchangeable).  Mismatched structures, NaN/inf values
and non-positive baseline values raise :class:`ValueError`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Hashable, List, Mapping, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "acc_mtl",
    "average_rank",
    "delta_mtl",
    "metric_ranks",
    "win_rate",
]

Number = Union[float, int, np.floating, np.integer]
#: A task tree, see the module docstring.
TaskTree = Union[
    Mapping[Hashable, Union[Number, Mapping[Hashable, Number], Sequence[Number]]],
    Sequence[Union[Number, Mapping[Hashable, Number], Sequence[Number]]],
    np.ndarray,
]
#: ``higher_is_better`` for a task tree: the same structure with ``bool`` leaves,
#: or a ``bool`` standing for a whole (sub)tree.
SignTree = Union[bool, Mapping[Hashable, Any], Sequence[Any], np.ndarray]

# A normalised task tree: ordered list of (task key, ordered list of (metric key, value)).
_Tasks = List[Tuple[Hashable, List[Tuple[Hashable, Any]]]]


# --------------------------------------------------------------------------- helpers
def _is_scalar(x: Any) -> bool:
    if isinstance(x, (str, bytes)):
        return False
    if isinstance(x, (numbers.Number, np.generic)):
        return True
    if isinstance(x, (Mapping, list, tuple)):
        return False
    return np.ndim(x) == 0


def _is_bool(x: Any) -> bool:
    return isinstance(x, (bool, np.bool_))


def _children(node: Any, what: str) -> List[Tuple[Hashable, Any]]:
    """Ordered (key, child) pairs of a mapping or a sequence (keys 0..n-1)."""
    if isinstance(node, Mapping):
        return list(node.items())
    if isinstance(node, (str, bytes)):
        raise ValueError(f"{what}: expected a mapping or a sequence, got a string {node!r}")
    try:
        items = list(node)
    except TypeError:
        raise ValueError(
            f"{what}: expected a mapping or a sequence, got {type(node).__name__}"
        ) from None
    return list(enumerate(items))


def _normalise_tree(tree: Any, name: str) -> _Tasks:
    """Turn a task tree into ``[(task, [(metric, value), ...]), ...]`` (no value checks)."""
    if _is_scalar(tree):
        raise ValueError(f"{name} must be a mapping or a sequence of tasks, got a scalar")
    tasks = _children(tree, name)
    if not tasks:
        raise ValueError(f"{name} has no tasks")
    out: _Tasks = []
    for task, node in tasks:
        metrics: list[tuple[Hashable, Any]]
        if _is_scalar(node):
            metrics = [(None, node)]
        else:
            metrics = _children(node, f"{name}[{task!r}]")
            if not metrics:
                raise ValueError(f"{name}[{task!r}] has no metrics")
            for metric, value in metrics:
                if not _is_scalar(value):
                    raise ValueError(
                        f"{name}[{task!r}][{metric!r}] must be a number, got "
                        f"{type(value).__name__} (task trees have exactly two levels)"
                    )
        out.append((task, metrics))
    return out


def _where(task: Hashable, metric: Hashable) -> str:
    return f"[{task!r}]" if metric is None else f"[{task!r}][{metric!r}]"


def _match_keys(ref: Sequence[Hashable], other: Sequence[Hashable], what: str) -> None:
    if list(ref) != list(other) and (
        len(ref) != len(other) or set(ref) != set(other)  # same keys, other order is fine
    ):
        raise ValueError(f"{what}: expected keys {list(ref)!r}, got {list(other)!r}")


def _as_float(value: Any, where: str, *, positive: bool = False) -> float:
    if _is_bool(value):
        raise ValueError(f"{where}: expected a number, got a bool ({value!r})")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: value must be finite, got {x!r}")
    if positive and x <= 0.0:
        raise ValueError(f"{where}: value must be > 0, got {x!r}")
    return x


def _signs_for(tasks: _Tasks, higher_is_better: SignTree) -> List[List[float]]:
    """``S_{t,i}`` (+1 or -1) for every metric of ``tasks``, from a parallel tree."""
    if _is_bool(higher_is_better):
        return [[1.0 if higher_is_better else -1.0] * len(metrics) for _, metrics in tasks]
    if higher_is_better is None or _is_scalar(higher_is_better):
        raise ValueError(
            "higher_is_better must be a bool or a tree of bools with the structure of "
            f"results, got {higher_is_better!r}"
        )
    hib_tasks = dict(_children(higher_is_better, "higher_is_better"))
    _match_keys([t for t, _ in tasks], list(hib_tasks), "higher_is_better tasks")
    signs: List[List[float]] = []
    for task, metrics in tasks:
        node = hib_tasks[task]
        if _is_bool(node):
            signs.append([1.0 if node else -1.0] * len(metrics))
            continue
        if _is_scalar(node):
            raise ValueError(f"higher_is_better[{task!r}] must be a bool, got {node!r}")
        hib_metrics = dict(_children(node, f"higher_is_better[{task!r}]"))
        if metrics[0][0] is None:  # bare number in results: accept a 1-element node
            if len(hib_metrics) != 1:
                raise ValueError(
                    f"higher_is_better[{task!r}]: results[{task!r}] is a single number, "
                    f"expected one bool, got {node!r}"
                )
            hib_metrics = {None: next(iter(hib_metrics.values()))}
        _match_keys(
            [m for m, _ in metrics], list(hib_metrics), f"higher_is_better[{task!r}] metrics"
        )
        row = []
        for metric, _ in metrics:
            flag = hib_metrics[metric]
            if not _is_bool(flag):
                raise ValueError(
                    f"higher_is_better{_where(task, metric)} must be a bool, got {flag!r}"
                )
            row.append(1.0 if flag else -1.0)
        signs.append(row)
    return signs


def _values_for(
    tasks: _Tasks, name: str, *, positive: bool = False
) -> Tuple[List[Hashable], List[List[Hashable]], List[List[float]]]:
    task_keys, metric_keys, values = [], [], []
    for task, metrics in tasks:
        task_keys.append(task)
        metric_keys.append([m for m, _ in metrics])
        values.append(
            [_as_float(v, f"{name}{_where(task, m)}", positive=positive) for m, v in metrics]
        )
    return task_keys, metric_keys, values


def _baseline_for(tasks: _Tasks, baseline: TaskTree) -> List[List[float]]:
    """Baseline values parallel to ``tasks`` (same structure), all finite and > 0."""
    base = _normalise_tree(baseline, "baseline")
    base_tasks = dict(base)
    _match_keys([t for t, _ in tasks], [t for t, _ in base], "baseline tasks")
    out: List[List[float]] = []
    for task, metrics in tasks:
        b_metrics = base_tasks[task]
        # A bare number is interchangeable with a task that has a single metric.
        if len(metrics) == 1 and (metrics[0][0] is None or b_metrics[0][0] is None):
            if len(b_metrics) != 1:
                raise ValueError(
                    f"baseline[{task!r}]: results[{task!r}] has 1 metric but the baseline "
                    f"has {len(b_metrics)}"
                )
            b_map = {metrics[0][0]: b_metrics[0][1]}
        elif b_metrics[0][0] is None:
            raise ValueError(
                f"baseline[{task!r}]: a single number, but results[{task!r}] has "
                f"{len(metrics)} metrics"
            )
        else:
            b_map = dict(b_metrics)
            _match_keys([m for m, _ in metrics], list(b_map), f"baseline[{task!r}] metrics")
        row = []
        for metric, _ in metrics:
            where = f"baseline{_where(task, metric)}"
            x = _as_float(b_map[metric], where)
            if x == 0.0:
                raise ValueError(f"{where}: baseline value is 0; the relative change is undefined")
            if x < 0.0:
                raise ValueError(
                    f"{where}: baseline value must be > 0 (eq. 7 divides by M_b and its sign "
                    f"convention assumes positive metrics), got {x!r}"
                )
            row.append(x)
        out.append(row)
    return out


# --------------------------------------------------------------------------- Δ_MTL
def delta_mtl(
    results: TaskTree,
    baseline: TaskTree,
    higher_is_better: SignTree,
) -> float:
    r"""Average per-task relative change Δ_MTL against a baseline, in percent.

    [AMTL] eq. 7 (which reduces to eq. 6 when every task has one metric):

    .. math::

        \Delta_{MTL} = \frac{1}{N_T}\sum_{t=1}^{N_T}\frac{1}{N_t}\sum_{i=1}^{N_t}
            S_{t,i}\,\frac{M_{m,t,i} - M_{b,t,i}}{M_{b,t,i}}

    i.e. the signed relative changes are first averaged over the ``N_t`` metrics
    of each task and then over the ``N_T`` tasks — a task with many metrics does
    not weigh more than a task with one.  (A flat mean over all metrics does
    *not* reproduce [AMTL] Table 1; the per-task mean does.)  ``S_{t,i}`` is +1
    when the metric is higher-is-better and -1 otherwise, so a positive Δ_MTL
    means "better than the baseline".

    Args:
        results: task tree of the multi-task model's metrics ``M_m`` (see the
            module docstring for the accepted structures).
        baseline: task tree of the baseline (usually single-task) metrics
            ``M_b``, with the same structure; values must be positive.
        higher_is_better: the same tree with ``bool`` leaves, or a ``bool`` per
            task, or one ``bool`` for everything.

    Returns:
        Δ_MTL as a percentage, as [AMTL] prints it (``-3.64`` for "-3.64%").

    Raises:
        ValueError: structures that do not match, non-numeric / NaN / infinite
            values, or a baseline value ``<= 0``.

    Example:
        >>> delta_mtl({"seg": 0.75, "depth": {"d1": 0.8, "rmse": 0.5}},
        ...           {"seg": 0.50, "depth": {"d1": 0.8, "rmse": 0.5}},
        ...           {"seg": True, "depth": {"d1": True, "rmse": False}})
        25.0
    """
    tasks = _normalise_tree(results, "results")
    _, _, m = _values_for(tasks, "results")
    signs = _signs_for(tasks, higher_is_better)
    b = _baseline_for(tasks, baseline)
    per_task = []
    for m_t, b_t, s_t in zip(m, b, signs):
        rel = [s * (mi - bi) / bi for mi, bi, s in zip(m_t, b_t, s_t)]
        per_task.append(math.fsum(rel) / len(rel))
    return 100.0 * math.fsum(per_task) / len(per_task)


# --------------------------------------------------------------------------- Acc_MTL
def acc_mtl(results: TaskTree, higher_is_better: SignTree) -> float:
    r"""Geometric-mean multi-task accuracy Acc_MTL ([AMTL] eq. 8).

    .. math::

        Acc_{MTL} = \prod_{t=1}^{N_T}\prod_{i=1}^{N_t}
            M_{m,t,i}^{\,S_{t,i}/(N_T N_t)}

    i.e. the geometric mean over tasks of the per-task geometric mean of the
    metrics, where lower-is-better metrics enter inverted (``S_{t,i} = -1``).
    Eq. 8 prints the base as ``M_{m,t}``; the worked example eq. 9 (NYU v2:
    ``(mIoU · (δ1/rmse)^{1/2} · (11.25/(mean·median))^{1/3})^{1/3}``) shows that
    each metric ``M_{m,t,i}`` is meant, which is what this function computes (it
    reproduces the Acc_MTL columns of [AMTL] Tables 1 and 7 from their rows).
    The value does not depend on a baseline; it is computed in log space
    (``exp(Σ w·log M)``) for stability.

    Args:
        results: task tree of metrics (see the module docstring); all values
            must be finite and strictly positive.
        higher_is_better: the parallel tree of ``bool`` (or a ``bool`` per task,
            or one ``bool``).

    Returns:
        Acc_MTL as a float (higher is better; the units are those of the metrics,
        e.g. ``0.3847`` for AMTL in [AMTL] Table 1).

    Raises:
        ValueError: mismatched structures, NaN/inf, or a value ``<= 0``.
    """
    tasks = _normalise_tree(results, "results")
    _, _, m = _values_for(tasks, "results", positive=True)
    signs = _signs_for(tasks, higher_is_better)
    n_tasks = len(m)
    log_acc = math.fsum(
        s * math.log(v) / (n_tasks * len(m_t))
        for m_t, s_t in zip(m, signs)
        for v, s in zip(m_t, s_t)
    )
    return math.exp(log_acc)


# --------------------------------------------------------------------------- ranks
Table = Union[Mapping[Hashable, Union[Mapping[Hashable, Number], Sequence[Number]]], Any]


def _normalise_table(
    table: Table, higher_is_better: Union[bool, Mapping[Hashable, bool], Sequence[bool]]
) -> Tuple[List[Hashable] | None, List[Hashable], np.ndarray, np.ndarray]:
    """-> (method keys or None for an array table, metric keys, values [n, M], signs [M])."""
    if isinstance(table, Mapping):
        if not table:
            raise ValueError("table has no methods")
        methods = list(table)
        rows = list(table.values())
        named = isinstance(rows[0], Mapping)
        metric_keys: List[Hashable] = (
            list(rows[0]) if named else list(range(len(_children(rows[0], "table row"))))
        )
        values = []
        for method, row in zip(methods, rows):
            if isinstance(row, Mapping) != named:
                raise ValueError(
                    f"table[{method!r}]: rows must all be mappings or all be sequences"
                )
            if named:
                _match_keys(metric_keys, list(row), f"table[{method!r}] metrics")
                items = [(k, row[k]) for k in metric_keys]
            else:
                items = _children(row, f"table[{method!r}]")
                if len(items) != len(metric_keys):
                    raise ValueError(
                        f"table[{method!r}] has {len(items)} values, expected {len(metric_keys)}"
                    )
            values.append([_as_float(v, f"table[{method!r}][{k!r}]") for k, v in items])
        arr = np.asarray(values, dtype=np.float64)
        method_keys: List[Hashable] | None = methods
    else:
        raw = np.asarray(table)
        if raw.ndim == 1:
            raw = raw[:, None]
        if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
            raise ValueError(
                f"table must be a mapping or a non-empty 2-D array [methods, metrics], "
                f"got shape {raw.shape}"
            )
        if raw.dtype == np.bool_ or not np.issubdtype(raw.dtype, np.number):
            raise ValueError(f"table must hold numbers, got dtype {raw.dtype}")
        arr = raw.astype(np.float64)
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            i, j = bad[0]
            raise ValueError(f"table[{i}][{j}]: value must be finite, got {arr[i, j]!r}")
        method_keys = None
        metric_keys = list(range(arr.shape[1]))
    if arr.shape[1] == 0:
        raise ValueError("table has no metrics")

    if _is_bool(higher_is_better):
        signs = np.full(arr.shape[1], 1.0 if higher_is_better else -1.0)
    elif isinstance(higher_is_better, Mapping):
        _match_keys(metric_keys, list(higher_is_better), "higher_is_better metrics")
        flags = [higher_is_better[k] for k in metric_keys]
        signs = _flags_to_signs(flags, metric_keys)
    else:
        if higher_is_better is None or _is_scalar(higher_is_better):
            raise ValueError(
                f"higher_is_better must be a bool, a mapping or a sequence, got "
                f"{higher_is_better!r}"
            )
        assert not isinstance(higher_is_better, bool)  # a scalar was rejected above
        flags = list(higher_is_better)
        if len(flags) != len(metric_keys):
            raise ValueError(
                f"higher_is_better has {len(flags)} entries, the table has "
                f"{len(metric_keys)} metrics"
            )
        signs = _flags_to_signs(flags, metric_keys)
    return method_keys, metric_keys, arr, signs


def _flags_to_signs(flags: Sequence[Any], keys: Sequence[Hashable]) -> np.ndarray:
    for k, f in zip(keys, flags):
        if not _is_bool(f):
            raise ValueError(f"higher_is_better[{k!r}] must be a bool, got {f!r}")
    return np.where(np.asarray(flags, dtype=bool), 1.0, -1.0)


def _fractional_ranks(key: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``key`` ascending (1 = smallest); ties share their mean rank."""
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    ranks = np.empty(len(key), dtype=np.float64)
    start = 0
    n = len(key)
    while start < n:
        stop = start + 1
        while stop < n and sorted_key[stop] == sorted_key[start]:
            stop += 1
        # positions start..stop-1 hold ranks start+1..stop; their mean:
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0
        start = stop
    return ranks


def metric_ranks(
    table: Table,
    higher_is_better: Union[bool, Mapping[Hashable, bool], Sequence[bool]],
    *,
    decimals: int | None = None,
) -> Union[Dict[Hashable, Dict[Hashable, float]], np.ndarray]:
    """Rank of every method on every metric, as in the parentheses of [LSB] Table 2.

    On each metric the methods are ranked 1 (best) to ``n`` (worst); methods
    with equal values share the mean of the ranks they occupy (fractional
    ranking), e.g. two methods tied for 4th and 5th both get 4.5 and three tied
    for 3rd–5th all get 4 — exactly the convention of [LSB] Tables 2, 4 and 5.
    Only the methods in ``table`` are ranked (the single-task rows of [LSB] are
    reference values and are not part of the ranking).

    Args:
        table: either ``{method: {metric: value}}`` (or ``{method: [values]}``),
            or a 2-D array-like ``[n_methods, n_metrics]``.
        higher_is_better: ``{metric: bool}`` / a sequence of ``bool`` parallel to
            the metrics / one ``bool`` for all.
        decimals: if given, values are rounded to this many decimals before
            ranking, so that values equal at the printed precision tie.

    Returns:
        ``{method: {metric: rank}}`` for a mapping table (metrics keyed by
        position when rows are sequences), else an array ``[n_methods, n_metrics]``.

    Raises:
        ValueError: ragged/mismatched structures, NaN/inf, or bad ``higher_is_better``.
    """
    methods, metrics, values, signs = _normalise_table(table, higher_is_better)
    if decimals is not None:
        values = np.round(values, decimals)
    # Best = rank 1: sort ascending on -value for higher-is-better metrics.
    ranks = np.stack(
        [_fractional_ranks(-signs[j] * values[:, j]) for j in range(values.shape[1])], axis=1
    )
    if methods is None:
        return ranks
    return {
        m: {k: float(ranks[i, j]) for j, k in enumerate(metrics)} for i, m in enumerate(methods)
    }


def average_rank(
    table: Table,
    higher_is_better: Union[bool, Mapping[Hashable, bool], Sequence[bool]],
    *,
    decimals: int | None = None,
) -> Union[Dict[Hashable, float], np.ndarray]:
    """Average rank over metrics — the rank-based protocol of [LSB] Sec. 4.3.

    Each method is ranked on each metric separately (:func:`metric_ranks`, ties
    get the mean of the tied ranks), then its ranks are averaged with equal
    weight over all metrics (the "Rank Avg." column of [LSB] Tables 2, 4, 5).
    Lower is better; the best possible value is 1.  Over ``n`` methods the
    average ranks always sum to ``n(n+1)/2``.

    Args:
        table: ``{method: {metric: value}}``, ``{method: [values]}`` or a 2-D
            array-like ``[n_methods, n_metrics]``.
        higher_is_better: ``{metric: bool}``, a sequence of ``bool`` or one ``bool``.
        decimals: optional rounding before ranking (see :func:`metric_ranks`).

    Returns:
        ``{method: average rank}`` for a mapping table, else an array ``[n_methods]``.
    """
    ranks = metric_ranks(table, higher_is_better, decimals=decimals)
    if isinstance(ranks, np.ndarray):
        return ranks.mean(axis=1)
    return {m: math.fsum(r.values()) / len(r) for m, r in ranks.items()}


# --------------------------------------------------------------------------- win rate
def _per_sample(x: Any, name: str, keys: List[Hashable] | None) -> np.ndarray:
    if isinstance(x, Mapping):
        if keys is None:
            raise ValueError(f"{name} is a mapping but results is not")
        _match_keys(keys, list(x), f"{name} metrics")
        cols = [np.asarray(x[k]) for k in keys]
        lengths = {c.shape for c in cols}
        if any(c.ndim != 1 for c in cols) or len(lengths) != 1:
            raise ValueError(
                f"{name}: every metric must be a 1-D array of per-sample values of the same "
                f"length, got shapes {[c.shape for c in cols]}"
            )
        arr = np.stack(cols, axis=1)
    else:
        if keys is not None:
            raise ValueError(f"{name} must be a mapping like results")
        arr = np.asarray(x)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(
                f"{name} must be [n_samples] or [n_samples, n_metrics], got shape {arr.shape}"
            )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        i, j = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name}[sample {i}, metric {j}]: value must be finite")
    return arr


def win_rate(
    results: Any,
    baseline: Any,
    higher_is_better: Union[bool, Mapping[Hashable, bool], Sequence[bool]],
) -> float:
    """Fraction of test samples on which a method beats a baseline ([CV] Sec. 3.1).

    [CV] (Tables 2 and 4, after Taskonomy) defines the win rate as "the
    percentage of images in the test set for which a method outperforms a
    baseline", "implemented as a majority voting scheme over the 7 metrics".
    For every sample, each metric casts a vote for the method when the method is
    *strictly* better than the baseline on it (a tie is no vote); the sample is
    won when the method gets a strict majority of the ``M`` metric votes
    (``votes > M / 2``).  With one metric this is "strictly better".  With an
    odd ``M`` and no exact ties, ``win_rate(a, b) + win_rate(b, a) == 1``, as in
    [CV] Table 2 (0.747 + 0.253) and Table 4 (0.597 + 0.403).

    Args:
        results: per-sample metrics of the method: ``[n_samples]``,
            ``[n_samples, n_metrics]`` or ``{metric: [n_samples]}``.
        baseline: the baseline's per-sample metrics, same structure and shape
            (sample ``i`` must be the same test image in both).
        higher_is_better: one ``bool``, a sequence of ``n_metrics`` bools, or
            ``{metric: bool}`` for mapping inputs.

    Returns:
        The win rate as a fraction in ``[0, 1]`` (printed as e.g. ``0.641`` in [CV]).

    Raises:
        ValueError: mismatched shapes/keys, empty input, NaN/inf values.
    """
    keys = list(results) if isinstance(results, Mapping) else None
    m = _per_sample(results, "results", keys)
    b = _per_sample(baseline, "baseline", keys)
    if m.shape != b.shape:
        raise ValueError(f"results shape {m.shape} != baseline shape {b.shape}")
    n_metrics = m.shape[1]
    if _is_bool(higher_is_better):
        signs = np.full(n_metrics, 1.0 if higher_is_better else -1.0)
    elif isinstance(higher_is_better, Mapping):
        if keys is None:
            raise ValueError("higher_is_better is a mapping but results is not")
        _match_keys(keys, list(higher_is_better), "higher_is_better metrics")
        signs = _flags_to_signs([higher_is_better[k] for k in keys], keys)
    else:
        if higher_is_better is None or _is_scalar(higher_is_better):
            raise ValueError(
                f"higher_is_better must be a bool or a sequence, got {higher_is_better!r}"
            )
        assert not isinstance(higher_is_better, bool)  # a scalar was rejected above
        flags = list(higher_is_better)
        if len(flags) != n_metrics:
            raise ValueError(f"higher_is_better has {len(flags)} entries for {n_metrics} metric(s)")
        signs = _flags_to_signs(flags, keys if keys is not None else list(range(n_metrics)))
    votes = (signs * (m - b) > 0).sum(axis=1)
    return float(np.mean(2 * votes > n_metrics))
