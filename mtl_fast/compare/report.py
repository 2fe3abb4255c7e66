"""The Markdown report, the figures and the JSON results of a comparison.

* :func:`problem_table` — the main table of one problem: the single-task baseline row(s), then
  one row per method with the per-task test metrics (best in bold), Δ_MTL (Yun & Cho 2023 eq. 7,
  against the problem's baseline), Acc_MTL (eq. 8), the average rank over all metrics (paper
  001's protocol) and the median time per training step.
* :func:`scale_table` — for the ``scale`` problem: every metric with its change from the
  unscaled ``digits`` run (Liu et al. 2021, Table 1) and the mean absolute relative change.
* :func:`write_figures` — weights and loss scales over training (Groenendijk et al. 2021 Figure 1,
  Lee et al. 2021
  Figure 9) through :meth:`mtl_fast.history.WeightHistory.plot`, and a Δ_MTL overview chart.
* :func:`write_report` — ``report.md``, ``results.json`` and the figures in one directory.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mtl_fast.compare import published_report
from mtl_fast.compare.train import MethodOutcome, ProblemResult, RunResult

__all__ = [
    "QUICK_NOTE",
    "problem_table",
    "results_json",
    "scale_changes",
    "scale_table",
    "write_figures",
    "write_report",
]

#: above this many tasks the weight figures colour tasks by index instead of a legend.
MAX_LEGEND = 12

#: Δ_MTL below this is drawn clipped (with its value written) in the summary chart.
SUMMARY_FLOOR = -60.0

#: what ``--quick`` results say about themselves (printed, and at the top of the report)
QUICK_NOTE = (
    "quick tier: indicative only. It differs from the full protocol: each problem's "
    "`quick_epochs` instead of its `epochs` (recorded per problem below), `synthetic` at T = 5 "
    "instead of 10, and 6 instead of 20 timing rounds; rankings and Δ_MTL can change at the "
    "full budget."
)


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.{digits}g}"


def _fmt_signed(v: float, std: float | None = None) -> str:
    if not math.isfinite(v):
        return "—"
    s = f"{v:+.2f}"
    if std is not None and math.isfinite(std):
        s += f" ± {std:.2f}"
    return s


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _best(values: Sequence[float], higher: bool) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if higher else min(finite)


def _display(result: ProblemResult, tree: dict[str, dict[str, float]]) -> dict[str, float]:
    return result.problem.display_columns(tree)


def _single_rows(result: ProblemResult) -> list[tuple[str, dict[str, float]]]:
    """(label, display columns) for the baseline row(s), averaged over seeds."""
    problem = result.problem
    if not result.singles:
        return []
    rows: list[tuple[str, dict[str, float]]] = []
    if problem.show_single_runs:
        # each single-loss model on its own row (denoise: all evaluate the same task)
        for i, first in enumerate(result.singles[0]):
            trees = [row[i].test.metrics for row in result.singles]
            mean = {
                t: {m: float(np.mean([tr[t][m] for tr in trees])) for m in ms}
                for t, ms in trees[0].items()
            }
            rows.append((first.label.replace("single:", "single-loss "), _display(result, mean)))
        return rows
    return [("single-task", _display(result, result.baseline))]


def _display_std(result: ProblemResult, outcome: MethodOutcome) -> dict[str, float]:
    """Standard deviation over the seeds of every display column (empty with one seed)."""
    if len(outcome.runs) < 2:
        return {}
    per_run = [_display(result, r.test.metrics) for r in outcome.runs]
    return {c: float(np.std([d[c] for d in per_run])) for c in per_run[0]}


def problem_table(result: ProblemResult) -> str:
    """The main Markdown table of one problem (see the module docstring)."""
    problem = result.problem
    hib = problem.display_higher_is_better()
    cols = list(hib)
    ran = result.ran
    show_win = any(o.win_rate is not None for o in ran)
    header = ["method", *[f"{c} {'↑' if hib[c] else '↓'}" for c in cols]]
    header += ["Δ_MTL % ↑", "Acc_MTL ↑", "avg rank ↓"]
    if show_win:
        header.append("win rate vs Equal ↑")
    header.append("ms/step")
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    displays = {o.name: _display(result, o.metrics or {}) for o in ran}
    best = {c: _best([displays[o.name][c] for o in ran], hib[c]) for c in cols}
    best_delta = _best([o.delta_mtl for o in ran], True)
    best_acc = _best([o.acc_mtl for o in ran], True)
    best_rank = _best([o.rank for o in ran], False)
    tail = ["—", "—", "—"] + (["—"] if show_win else []) + ["—"]
    for label, disp in _single_rows(result):
        lines.append(_row([f"*{label}*", *[_fmt(disp[c]) for c in cols], *tail]))
    for o in ran:
        d = displays[o.name]
        spread = _display_std(result, o)
        cells = [o.name]
        for c in cols:
            s = _fmt(d[c])
            s = f"**{s}**" if best[c] is not None and d[c] == best[c] else s
            if c in spread:
                s += f" ± {_fmt(spread[c], 2)}"
            cells.append(s)
        delta = _fmt_signed(o.delta_mtl, o.delta_mtl_std)
        cells.append(f"**{delta}**" if o.delta_mtl == best_delta else delta)
        acc = _fmt(o.acc_mtl)
        cells.append(f"**{acc}**" if o.acc_mtl == best_acc else acc)
        rank = f"{o.rank:.2f}" if math.isfinite(o.rank) else "—"
        cells.append(f"**{rank}**" if o.rank == best_rank else rank)
        if show_win:
            cells.append(_fmt(o.win_rate, 3))
        cells.append(f"{o.ms_per_step:.2f}")
        lines.append(_row(cells))
    for o in result.methods.values():
        if not o.ok:
            lines.append(_row([o.name, f"*{o.error}*", *[""] * (len(header) - 2)]))
    notes = sorted({o.delta_note for o in ran if o.delta_note})
    if notes:
        lines += ["", "Δ_MTL undefined: " + "; ".join(notes)]
    return "\n".join(lines)


def scale_changes(result: ProblemResult) -> dict[str, dict[str, Any]]:
    """Per method: each metric's change from the unscaled run, and summaries.

    Returns ``{method: {"changes": {column: scaled − unscaled}, "mean_abs_rel_change": %,
    "delta_mtl_change": Δ_MTL(scaled) − Δ_MTL(unscaled)}}`` for the methods that ran in both.
    """
    ref = result.reference
    if ref is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for o in result.ran:
        r = ref.methods.get(o.name)
        if r is None or not r.ok or o.metrics is None or r.metrics is None:
            continue
        now = _display(result, o.metrics)
        before_tree, before_delta = _reference_on_seeds(ref, r, list(result.config.seeds))
        before = _display(ref, before_tree)
        changes = {c: now[c] - before[c] for c in now}
        rel = [abs(changes[c]) / abs(before[c]) for c in now if before[c] != 0]
        out[o.name] = {
            "scaled": now,
            "unscaled": before,
            "changes": changes,
            "mean_abs_rel_change": 100.0 * float(np.mean(rel)) if rel else float("nan"),
            "delta_mtl_change": o.delta_mtl - before_delta,
        }
    return out


def _reference_on_seeds(
    ref: ProblemResult, outcome: MethodOutcome, seeds: Sequence[int]
) -> tuple[dict[str, dict[str, float]], float]:
    """The reference run's mean metrics and mean Δ_MTL over ``seeds`` only (a reference run
    with more seeds, e.g. ``qm9`` with 3 beside ``qm9-raw`` with 1, is compared seed for seed)."""
    ref_seeds = list(ref.config.seeds)
    runs = [r for r in outcome.runs if r.seed in seeds]
    trees = [r.test.metrics for r in runs]
    mean = {
        t: {m: float(np.mean([tr[t][m] for tr in trees])) for m in ms} for t, ms in trees[0].items()
    }
    deltas = []
    for r in runs:
        row = ref.singles[ref_seeds.index(r.seed)]
        base = ref.problem.baseline([s.test for s in row])
        deltas.append(ref.problem.delta_mtl(r.test.metrics, base))
    return mean, float(np.mean(deltas))


def scale_table(result: ProblemResult) -> str:
    """The ``scale`` table: metric (change) per method, as Liu et al. 2021's Table 1."""
    changes = scale_changes(result)
    if not changes:
        return "*(no unscaled reference run)*"
    hib = result.problem.display_higher_is_better()
    cols = list(hib)
    header = ["method", *[f"{c} {'↑' if hib[c] else '↓'} (change)" for c in cols]]
    header += ["Δ_MTL % (change)", "mean abs. rel. change % ↓"]
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    best = _best([v["mean_abs_rel_change"] for v in changes.values()], False)
    for name, v in changes.items():
        cells = [name]
        for c in cols:
            cells.append(f"{_fmt(v['scaled'][c])} ({v['changes'][c]:+.3g})")
        o = result.methods[name]
        cells.append(f"{o.delta_mtl:+.2f} ({v['delta_mtl_change']:+.2f})")
        m = f"{v['mean_abs_rel_change']:.2f}"
        cells.append(f"**{m}**" if v["mean_abs_rel_change"] == best else m)
        lines.append(_row(cells))
    return "\n".join(lines)


def overview_table(results: Sequence[ProblemResult]) -> str:
    """One row per method: Δ_MTL on every problem (and, for ``scale``, the mean absolute
    relative change of the metrics), best per column in bold."""
    cols: list[tuple[str, dict[str, float], bool]] = []  # (header, values, higher is better)
    for r in results:
        if r.reference is not None:
            ch = scale_changes(r)
            cols.append(
                (
                    f"{r.problem.key}: mean abs. change % ↓",
                    {n: v["mean_abs_rel_change"] for n, v in ch.items()},
                    False,
                )
            )
        else:
            cols.append((f"{r.problem.key} Δ_MTL % ↑", {o.name: o.delta_mtl for o in r.ran}, True))
    names: list[str] = []
    for _, values, _ in cols:
        names += [n for n in values if n not in names]
    if not names:
        return ""
    lines = [
        _row(["method", *[h for h, _, _ in cols]]),
        _row(["---"] + ["---:"] * len(cols)),
    ]
    best = [_best(list(v.values()), hib) for _, v, hib in cols]
    for n in names:
        cells = [n]
        for (header, values, _), b in zip(cols, best):
            v = values.get(n, float("nan"))
            text = f"{v:+.2f}" if "Δ" in header and math.isfinite(v) else _fmt(v, 3)
            cells.append(f"**{text}**" if b is not None and v == b else text)
        lines.append(_row(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures
def write_figures(result: ProblemResult, out_dir: Path, *, dpi: int = 150) -> dict[str, list[Path]]:
    """The figures of one problem: the weights of **every** method that ran, as small multiples
    (``{key}_weights.png``), their loss scales w·L (``{key}_scales.png``, log scale), and for a
    problem with a reference run, the change chart (``{key}_changes.png``).

    Returns ``{"weights": [path], "scales": [path], "extra": [paths]}`` (empty lists when
    nothing was recorded).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    key = result.problem.key
    paths: dict[str, list[Path]] = {"weights": [], "scales": [], "extra": [], "published": []}
    if result.history.methods:
        for kind in ("weights", "scales"):
            p = out_dir / f"{key}_{kind}.png"
            _small_multiples(result, kind, p, dpi=dpi)
            paths[kind].append(p)
    if result.reference is not None:
        p = out_dir / f"{key}_changes.png"
        if _scale_chart(result, p, dpi=dpi):
            paths["extra"].append(p)
    comp = published_report.comparison(result)
    if comp is not None:
        p = out_dir / f"{key}_published.png"
        if published_report.comparison_chart(comp, p, dpi=dpi):
            paths["published"].append(p)
    return paths


#: small multiples: methods per row
PANELS_PER_ROW = 6


#: the shared log y axis of the loss-scale small multiples spans these percentiles of every
#: plotted positive value (all panels pooled) where the data reach further
#: (:func:`scale_axis_limits`)
SCALE_PERCENTILES = (1.0, 99.0)

#: a side of that axis is cut at its percentile only when the data go more than this many
#: decades beyond it; otherwise it spans the data
SCALE_SLACK_DECADES = 2.0


def scale_axis_limits(values: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """Robust limits of a shared log axis over ``values`` (the w·L series of every panel):
    each side is the extreme value, unless that lies more than :data:`SCALE_SLACK_DECADES`
    beyond the :data:`SCALE_PERCENTILES` percentile of the positive finite values of all
    panels pooled, where the percentile is used instead (one method's w·L collapsing to
    1e-40 would otherwise squash every panel); padded by 5 % of the span in log space.
    ``None`` when there is no positive finite value."""
    flat = [np.asarray(v, dtype=np.float64).ravel() for v in values]
    pos = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in flat] + [np.empty(0)])
    if pos.size == 0:
        return None
    logs = np.log10(pos)
    lo_q, hi_q = np.percentile(logs, SCALE_PERCENTILES)
    lo, hi = float(logs.min()), float(logs.max())
    if lo < lo_q - SCALE_SLACK_DECADES:
        lo = float(lo_q)
    if hi > hi_q + SCALE_SLACK_DECADES:
        hi = float(hi_q)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return 10.0 ** (lo - pad), 10.0 ** (hi + pad)


#: colours of a saved figure's palette (:func:`save_png`)
PNG_COLOURS = 64


def save_png(fig: Any, path: Path, *, dpi: int) -> None:
    """Save a Matplotlib figure as a palette PNG (:data:`PNG_COLOURS` adaptive colours, no
    dithering): line plots of hundreds of noisy steps are 3-4 times smaller than the RGBA file
    and look the same at the saved resolution."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        palette = im.convert("RGB").quantize(
            colors=PNG_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    palette.save(path, format="PNG", optimize=True)


def _small_multiples(
    result: ProblemResult, kind: str, path: Path, *, dpi: int
) -> tuple[float, float] | None:
    """One panel per recorded method: the normalised weights (``kind="weights"``, shared
    linear y axis) or the loss scales w·L (``"scales"``, shared log y axis with the robust
    range of :func:`scale_axis_limits`; values outside it are drawn on the frame and the title
    says how many) of every task over the training steps of the first seed; tasks coloured
    alike in every panel (a legend up to :data:`MAX_LEGEND` tasks, else a colour bar over the
    task index). Returns the shared y limits of a ``"scales"`` figure (else ``None``)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = result.history
    methods = list(history.methods)
    T = result.problem.num_tasks
    names = list(result.problem.task_names)
    cols = min(PANELS_PER_ROW, len(methods))
    rows = -(-len(methods) // cols)
    fig = Figure(figsize=(2.4 * cols + 1.4, 1.9 * rows + 0.9), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=False, sharey=True, squeeze=False)
    cmap = matplotlib.colormaps["viridis" if T > MAX_LEGEND else "tab20" if T > 10 else "tab10"]
    colour = [cmap(t / max(1, T - 1)) if T > MAX_LEGEND else cmap(t) for t in range(T)]
    series = [history.to_arrays(m) for m in methods]
    limits = scale_axis_limits([a["scales"] for a in series]) if kind == "scales" else None
    clipped = plotted = 0
    for k, ax in enumerate(axes.flat):
        if k >= len(methods):
            ax.set_visible(False)
            continue
        arrays = series[k]
        values = arrays[kind]
        for t in range(values.shape[1]):
            ys = values[:, t]
            if kind == "scales":
                ys = np.where(ys > 0, ys, np.nan)
                if limits is not None:
                    shown = np.isfinite(ys)
                    plotted += int(shown.sum())
                    clipped += int((shown & ((ys < limits[0]) | (ys > limits[1]))).sum())
                    ys = np.clip(ys, *limits)
            ax.plot(arrays["steps"], ys, color=colour[t], lw=0.7 if T > MAX_LEGEND else 0.9)
        outcome = result.methods.get(methods[k])
        failed = outcome is not None and not outcome.ok
        ax.set_title(
            methods[k] + (" (failed, see the table)" if failed else ""),
            fontsize=9 if not failed else 7,
            color="C3" if failed else "black",
        )
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if kind == "scales":
            ax.set_yscale("log")
            if limits is not None:
                ax.set_ylim(*limits)
        if k % cols == 0:
            ax.set_ylabel("weight (Σ = 1)" if kind == "weights" else "w·L (log)", fontsize=8)
        if k // cols == rows - 1 or k + cols >= len(methods):
            ax.set_xlabel("step", fontsize=8)
    what = "task weights, normalised to sum to 1" if kind == "weights" else "loss scales w·L"
    title = f"{result.problem.key}: {what}, every method (seed {result.config.seeds[0]})"
    if clipped:
        title += (
            f"\ny axis cut at percentiles {SCALE_PERCENTILES[0]:g} / {SCALE_PERCENTILES[1]:g} "
            f"of all panels' values: {clipped} of {plotted} ({100 * clipped / plotted:.2g} %) "
            "lie outside and are drawn on the frame"
        )
    fig.suptitle(title, fontsize=10 if not clipped else 9)
    right = 1.0 - 1.3 / fig.get_figwidth()
    fig.tight_layout(rect=(0, 0, right, 0.97 - (0.22 / fig.get_figheight() if clipped else 0.0)))
    if T > MAX_LEGEND:
        mappable = matplotlib.cm.ScalarMappable(
            norm=matplotlib.colors.Normalize(0, T - 1), cmap=cmap
        )
        cax = fig.add_axes(
            (right + 0.15 / fig.get_figwidth(), 0.15, 0.15 / fig.get_figwidth(), 0.7)
        )
        fig.colorbar(mappable, cax=cax, label="task index")
    else:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colour[t], lw=1.5) for t in range(T)]
        fig.legend(
            handles, names, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=8,
            frameon=False,
        )  # fmt: skip
    save_png(fig, path, dpi=dpi)
    return limits


def _scale_chart(result: ProblemResult, path: Path, *, dpi: int) -> bool:
    changes = scale_changes(result)
    if not changes:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(changes)
    values = [changes[n]["mean_abs_rel_change"] for n in names]
    fig = Figure(figsize=(max(5.0, 0.55 * len(names)), 3.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(range(len(names)), values, color="C3")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize="small")
    ax.set_ylabel("mean |relative change| %")
    ax.set_title(f"{result.problem.key}: metric change when one loss is ×10 (lower = invariant)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, dpi=dpi)
    return True


def summary_chart(results: Sequence[ProblemResult], path: Path, *, dpi: int = 150) -> bool:
    """Δ_MTL per method (rows) and problem (bars): an overview figure."""
    shown = [r for r in results if r.ran and r.reference is None]
    if not shown:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names: list[str] = []
    for r in shown:
        for o in r.ran:
            if o.name not in names:
                names.append(o.name)
    fig = Figure(figsize=(max(6.0, 0.6 * len(names) * max(1, len(shown)) / 2), 3.8), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(shown)
    for k, r in enumerate(shown):
        vals = [
            r.methods[n].delta_mtl if n in r.methods and r.methods[n].ok else np.nan for n in names
        ]
        xs = np.arange(len(names)) + (k - (len(shown) - 1) / 2) * width
        clipped = [max(v, SUMMARY_FLOOR) if np.isfinite(v) else np.nan for v in vals]
        ax.bar(xs, clipped, width=width, label=r.problem.key, color=f"C{k}")
        for x, v in zip(xs, vals):
            if np.isfinite(v) and v < SUMMARY_FLOOR:
                ax.annotate(
                    f"{v:.0f}",
                    (x, SUMMARY_FLOOR),
                    fontsize=6,
                    rotation=90,
                    ha="center",
                    va="bottom",
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize="small")
    ax.set_ylabel("Δ_MTL % vs baseline (↑)")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, dpi=dpi)
    return True


# --------------------------------------------------------------------------- JSON
def _run_json(r: RunResult) -> dict[str, Any]:
    return {
        "label": r.label,
        "seed": r.seed,
        "tasks": r.tasks,
        "test": r.test.metrics,
        "val_kpi": r.val.kpi,
        "steps": r.steps,
        "ms_per_step": r.ms_per_step,
        "seconds": r.seconds,
        "final_weights": r.final_weights,
    }


#: version of the results.json layout (docs/compare.md, "results.json"); bumped on any change
#: that is not a pure addition
RESULTS_SCHEMA = 1


def _family(name: str) -> str | None:
    from mtl_fast.compare import registry

    try:
        return registry.family(name)
    except (ValueError, KeyError):
        return None


def _outcome_json(o: MethodOutcome) -> dict[str, Any]:
    return {
        "family": _family(o.name),
        "error": o.error,
        "metrics": o.metrics,
        "delta_mtl": o.delta_mtl,
        "delta_mtl_std": o.delta_mtl_std,
        "acc_mtl": o.acc_mtl,
        "avg_rank": o.rank,
        "ms_per_step": o.ms_per_step,
        "win_rate_vs_equal": o.win_rate,
        "delta_note": o.delta_note,
        "runs": [_run_json(r) for r in o.runs],
    }


def _clean(x: Any) -> Any:
    """JSON-ready: non-finite floats → None, floats to 7 significant digits."""
    if isinstance(x, float):
        return float(f"{x:.7g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def results_json(results: Sequence[ProblemResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, as a JSON-friendly dict (non-finite numbers become null)."""
    out: dict[str, Any] = {"meta": meta, "problems": {}}
    for r in results:
        tc = r.train_config
        out["problems"][r.problem.key] = {
            "problem": r.problem.config(),
            "train": {
                "epochs": tc.epochs,
                "batch_size": tc.batch_size,
                "lr": tc.lr,
                "method_lr": tc.method_lr,
                "max_steps": tc.max_steps,
                "seeds": list(r.config.seeds),
            },
            "baseline": r.baseline,
            "baseline_label": r.problem.baseline_label(),
            "static_weights": r.static_weights,
            "singles": [[_run_json(s) for s in row] for row in r.singles],
            "methods": {n: _outcome_json(o) for n, o in r.methods.items()},
            "unavailable": r.unavailable,
            "seconds": r.seconds,
            "scale_changes": scale_changes(r) if r.reference is not None else None,
            "published_comparison": published_report.comparison(r),
        }
    return _clean(out)


# --------------------------------------------------------------------------- report
def _environment() -> dict[str, Any]:
    from mtl_fast import __version__

    return {
        "mtl_fast": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "threads": 1,
    }


def _cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _problem_section(result: ProblemResult, figures: dict[str, list[Path]]) -> list[str]:
    p = result.problem
    tc = result.train_config
    seeds = list(result.config.seeds)
    text = p.description()
    lines = [f"## {p.title} (`{p.key}`)", "", text[:1].upper() + text[1:], ""]
    if result.config.quick:
        lines += [
            f"**Quick tier: indicative only** ({tc.epochs} epochs instead of the full "
            f"protocol's {p.epochs}).",
            "",
        ]
    lines.append(
        f"Budget: {tc.epochs} epochs, batch {tc.batch_size}, Adam lr {tc.lr:g} (the methods' "
        f"own parameters: {tc.method_lr:g}), seeds {seeds} (metrics averaged over seeds; "
        f"Δ_MTL is mean ± std over seeds). Δ_MTL baseline: {p.baseline_label()}. "
        f"`StaticWeighting`: {p.static_weights_label()}. Wall time: {result.seconds:.0f} s."
    )
    lines.append("")
    if result.reference is not None:
        lines += [
            f"Change of every metric from the `{result.reference.problem.key}` run of the same "
            "method "
            "(Liu et al. 2021, Table 1: a scale-invariant method shows no change):",
            "",
            scale_table(result),
            "",
        ]
        for path in figures.get("extra", []):
            lines += [f"![{p.key} changes]({path.name})", ""]
    lines += [problem_table(result), ""]
    comp = published_report.comparison(result)
    if comp is not None:
        charts = figures.get("published", [])
        lines += published_report.comparison_lines(result, comp, charts[0].name if charts else None)
    if result.unavailable:
        lines.append("Unavailable methods:")
        lines += [f"- `{n}`: {why}" for n, why in result.unavailable.items()]
        lines.append("")
    if figures.get("weights"):
        lines.append(
            "Weights (normalised to sum to 1 per step) and loss scales w·L (log scale) of every "
            f"method over training, seed {seeds[0]} (Groenendijk et al. 2021 Figure 1, Lee et "
            "al. 2021 Figure 9):"
        )
        lines.append("")
        for kind in ("weights", "scales"):
            lines += [f"![{p.key} {kind}]({f.name})" for f in figures.get(kind, [])]
            lines.append("")
    return lines


def write_report(
    results: Sequence[ProblemResult],
    out_dir: str | Path,
    *,
    command: str = "",
    seconds: float | None = None,
    dpi: int = 150,
    figures: bool = True,
    partial: bool = False,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.md``, ``results.json`` and the figures to ``out_dir``; return the report.

    ``figures=False`` skips the figures (the partial reports written while a long comparison
    runs); ``partial`` marks the report as such; ``notes``: provenance lines (the commit, the
    machine, which rows come from a later run) listed under the command and kept in
    ``results.json`` (``meta.notes``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    cfg = results[0].config if results else None
    timing = f"{cfg.timing_rounds} × {cfg.timing_steps}" if cfg is not None else "20 × 3"
    lines = ["# mtl_fast method comparison", ""]
    quick = any(r.config.quick for r in results)
    if quick:
        lines += [f"**{QUICK_NOTE[:1].upper() + QUICK_NOTE[1:]}**", ""]
    if partial:
        lines += [
            "*Partial report, written while the comparison runs: the problems finished so far,"
            " no figures.*",
            "",
        ]
    if command:
        lines += [f"Command: `{command}`", ""]
    if notes:
        lines += [f"* {n}" for n in notes] + [""]
    total = f"{seconds:.0f} s" if seconds is not None else "n/a"
    lines += [
        f"mtl_fast {env['mtl_fast']}, torch {env['torch']}, Python {env['python']}, "
        f"{env['machine']} CPU ({env['cpu']}, {env['cpus']} cores), one thread per run; "
        f"training wall time {total}. Every run is "
        "seeded and deterministic (same seed ⇒ same numbers); the times per step are "
        "indicative only (a shared machine).",
        "",
        "Columns: per-task test metrics (↑ higher / ↓ lower is better; best in bold), Δ_MTL "
        "(Yun & Cho 2023 eq. 7, % relative to the baseline, ↑), Acc_MTL (Yun & Cho 2023 eq. 8, "
        "geometric "
        "mean with lower-is-better metrics inverted, ↑), the average rank over all metrics "
        "(Lee et al. 2021's protocol, ↓), and the median wall time of a training step (forward, "
        "backward, optimizer step; measured round-robin over the methods after training, "
        f"{timing} steps each, so that load changes on the machine do not favour any method). "
        "AMTL "
        "and DTP "
        "receive validation KPIs in [0, 1] after each epoch (accuracy for classification, "
        "clipped R² = max(0, 1 − SSE/SST) for regression; the denoise KPIs are in its "
        "section); AMTL's potentials are the single-task models' validation KPIs.",
        "",
    ]
    figures_all: dict[str, dict[str, list[Path]]] = {}
    overview = overview_table(results)
    if overview and len(results) > 1:
        lines += ["## Overview", "", overview, ""]
    if figures and summary_chart(results, out / "summary.png", dpi=dpi):
        lines += ["![Δ_MTL per method and problem](summary.png)", ""]
    for r in results:
        figs = write_figures(r, out, dpi=dpi) if figures else {}
        figures_all[r.problem.key] = figs
        lines += _problem_section(r, figs)
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    meta = {
        "schema": RESULTS_SCHEMA,
        **env,
        "command": command,
        "seconds": seconds,
        "tier": "quick" if quick else "full",
        "partial": partial,
        "notes": list(notes),
    }
    (out / "results.json").write_text(
        json.dumps(results_json(results, meta), separators=(",", ":"), allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return path
