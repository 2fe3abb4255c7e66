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
import platform
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mtl_fast.compare.train import MethodOutcome, ProblemResult, RunResult

__all__ = [
    "FEATURED",
    "problem_table",
    "results_json",
    "scale_changes",
    "scale_table",
    "write_figures",
    "write_report",
]

#: Methods drawn in the featured weight figure, when they ran (Lee et al. 2021 Figure 9's set plus
#: the gradient balancers).
#: above this many tasks the weight figures colour tasks by index instead of a legend.
MAX_LEGEND = 12

#: Δ_MTL below this is drawn clipped (with its value written) in the summary chart.
SUMMARY_FLOOR = -60.0

#: The methods of the featured weights figure (those of them that ran).
FEATURED = ("EqualWeighting", "UncertaintyWeighting", "DWA", "LSB", "IMTLG", "GradNorm")


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
        cells = [o.name]
        for c in cols:
            s = _fmt(d[c])
            cells.append(f"**{s}**" if best[c] is not None and d[c] == best[c] else s)
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
        before = _display(ref, r.metrics)
        changes = {c: now[c] - before[c] for c in now}
        rel = [abs(changes[c]) / abs(before[c]) for c in now if before[c] != 0]
        out[o.name] = {
            "scaled": now,
            "unscaled": before,
            "changes": changes,
            "mean_abs_rel_change": 100.0 * float(np.mean(rel)) if rel else float("nan"),
            "delta_mtl_change": o.delta_mtl - r.delta_mtl,
        }
    return out


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
def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def write_figures(
    result: ProblemResult,
    out_dir: Path,
    *,
    dpi: int = 60,
    per_figure: int = 6,
    all_methods: bool = False,
) -> dict[str, list[Path]]:
    """Weight / loss-scale figures of one problem (and the scale-change chart for ``scale``).

    The featured figure shows :data:`FEATURED` (the methods that ran); ``all_methods`` adds
    figures of every method, ``per_figure`` per file.

    Returns ``{"featured": [path], "all": [paths], "extra": [paths]}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    key = result.problem.key
    recorded = [m for m in result.history.methods]
    paths: dict[str, list[Path]] = {"featured": [], "all": [], "extra": []}
    if not recorded:
        return paths
    featured = [m for m in FEATURED if m in recorded] or recorded[:per_figure]
    chunks = _chunks(recorded, per_figure) if all_methods else []
    for kind, methods, p in [("featured", featured, out_dir / f"{key}_weights.png")] + [
        ("all", chunk, out_dir / f"{key}_weights_all_{i}.png")
        for i, chunk in enumerate(chunks, start=1)
    ]:
        with warnings.catch_warnings():
            # many tasks: the legend does not fit until _colour_by_task removes it
            warnings.filterwarnings("ignore", message="Tight layout not applied")
            fig = result.history.plot(
                None, methods=methods, log_scale=True, figsize=(2.6 * len(methods), 4.6), dpi=dpi
            )
        if result.problem.num_tasks > MAX_LEGEND:
            _colour_by_task(fig, result.problem.num_tasks)
        fig.savefig(p, dpi=dpi)
        _close(fig)
        paths[kind].append(p)
    if result.reference is not None:
        p = out_dir / f"{key}_changes.png"
        if _scale_chart(result, p, dpi=dpi):
            paths["extra"].append(p)
    return paths


def _close(fig: Any) -> None:
    fig.clf()


def _colour_by_task(fig: Any, num_tasks: int) -> None:
    """Many tasks: drop the legend, colour task t by viridis(t / (T − 1)) and add a colour bar
    (for ``synthetic`` the task index orders σ_t from 1 to 100)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        lines = ax.get_lines()
        if len(lines) == num_tasks:
            for t, line in enumerate(lines):
                line.set_color(cmap(t / max(1, num_tasks - 1)))
                line.set_linewidth(0.6)
    mappable = matplotlib.cm.ScalarMappable(
        norm=matplotlib.colors.Normalize(0, num_tasks - 1), cmap=cmap
    )
    width = fig.get_figwidth()
    right = 1.0 - 0.9 / width  # keep ~0.9 inch for the colour bar and its labels
    fig.tight_layout(rect=(0, 0, right, 1))
    cax = fig.add_axes((right + 0.1 / width, 0.15, 0.12 / width, 0.7))
    fig.colorbar(mappable, cax=cax, label="task index")


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
    fig.savefig(path, dpi=dpi)
    return True


def summary_chart(results: Sequence[ProblemResult], path: Path, *, dpi: int = 60) -> bool:
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
    fig.savefig(path, dpi=dpi)
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


def _outcome_json(o: MethodOutcome) -> dict[str, Any]:
    return {
        "error": o.error,
        "metrics": o.metrics,
        "delta_mtl": o.delta_mtl,
        "delta_mtl_std": o.delta_mtl_std,
        "acc_mtl": o.acc_mtl,
        "avg_rank": o.rank,
        "ms_per_step": o.ms_per_step,
        "win_rate_vs_equal": o.win_rate,
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
        "threads": 1,
    }


def _problem_section(result: ProblemResult, figures: dict[str, list[Path]]) -> list[str]:
    p = result.problem
    tc = result.train_config
    seeds = list(result.config.seeds)
    text = p.description()
    lines = [f"## {p.title} (`{p.key}`)", "", text[:1].upper() + text[1:], ""]
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
    if result.unavailable:
        lines.append("Unavailable methods:")
        lines += [f"- `{n}`: {why}" for n, why in result.unavailable.items()]
        lines.append("")
    if figures.get("featured"):
        lines.append(
            "Weights (top, normalised to sum to 1 per step) and loss scales w·L (bottom, log "
            "scale) over training, seed "
            f"{seeds[0]} (Groenendijk et al. 2021 Figure 1, Lee et al. 2021 Figure 9):"
        )
        lines.append("")
        lines += [f"![{p.key} weights]({f.name})" for f in figures["featured"]]
        if figures.get("all"):
            links = ", ".join(f"[{f.name}]({f.name})" for f in figures["all"])
            lines += ["", f"All methods: {links}."]
        else:
            lines += ["", "(`--all-figures` draws every method.)"]
        lines.append("")
    return lines


def write_report(
    results: Sequence[ProblemResult],
    out_dir: str | Path,
    *,
    command: str = "",
    seconds: float | None = None,
    dpi: int = 60,
    all_figures: bool = False,
) -> Path:
    """Write ``report.md``, ``results.json`` and the figures to ``out_dir``; return the report.

    ``all_figures``: also draw the weights of every method (else the featured methods only).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    cfg = results[0].config if results else None
    timing = f"{cfg.timing_rounds} × {cfg.timing_steps}" if cfg is not None else "20 × 3"
    lines = ["# mtl_fast method comparison", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    total = f"{seconds:.0f} s" if seconds is not None else "n/a"
    lines += [
        f"mtl_fast {env['mtl_fast']}, torch {env['torch']}, Python {env['python']}, "
        f"{env['machine']} CPU, one thread per run; training wall time {total}. Every run is "
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
    if summary_chart(results, out / "summary.png", dpi=dpi):
        lines += ["![Δ_MTL per method and problem](summary.png)", ""]
    for r in results:
        figs = write_figures(r, out, dpi=dpi, all_methods=all_figures)
        figures_all[r.problem.key] = figs
        lines += _problem_section(r, figs)
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    meta = {**env, "command": command, "seconds": seconds}
    (out / "results.json").write_text(
        json.dumps(results_json(results, meta), separators=(",", ":"), allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return path
