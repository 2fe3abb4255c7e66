"""The published-results section of a report: this library's results beside a paper's table
(:mod:`mtl_fast.compare.published`), as Markdown, a figure and JSON.

Used by :mod:`mtl_fast.compare.report` for problems whose class names a published table
(``Problem.published``; ``qm9``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mtl_fast.compare.published import QM9_SOURCES, qm9_comparison
from mtl_fast.compare.train import ProblemResult

__all__ = ["comparison", "comparison_chart", "comparison_lines"]


def comparison(result: ProblemResult) -> dict[str, Any] | None:
    """:func:`~mtl_fast.compare.published.qm9_comparison` of ``result`` (None when the problem
    has no published table or nothing ran)."""
    if result.problem.published != "qm9" or not result.ran:
        return None
    ran = [o for o in result.ran if o.metrics is not None]
    return qm9_comparison(
        {o.name: o.delta_mtl for o in ran},
        {o.name: o.delta_mtl_std for o in ran},
        {o.name: {t: v["MAE"] for t, v in (o.metrics or {}).items()} for o in ran},
    )


def _num(v: Any, fmt: str = ".1f") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _corr_sentence(name: str, c: dict[str, Any]) -> str:
    if c["spearman"] is None:
        return f"{name}: too few methods in common ({c['n']}) for a rank correlation."
    return (
        f"{name} over the {c['n']} methods in common: Spearman ρ = {c['spearman']:+.2f} "
        f"(p = {c['spearman_p']:.2g}), Kendall τ = {c['kendall']:+.2f} (p = {c['kendall_p']:.2g})"
    )


def comparison_lines(result: ProblemResult, comp: dict[str, Any], chart: str | None) -> list[str]:
    """The Markdown of the published-results section."""
    rows = comp["rows"]
    published = [n for n in rows if "published_rank" in rows[n]]
    published.sort(key=lambda n: rows[n]["published_rank"])
    others = sorted((n for n in rows if n not in published), key=lambda n: rows[n]["delta_m"])
    seeds = len(result.config.seeds)
    lines = [
        "### Beside the published QM9 table",
        "",
        "Δm% ↓ is the papers' convention (the mean relative *increase* of the test MAE over the "
        "single-task models, = −Δ_MTL; lower is better). Published: "
        f"{QM9_SOURCES['navon2022']['citation']} and {QM9_SOURCES['liu2023']['citation']}. "
        f"Ours: this run, mean ± std over {seeds} "
        "seed(s); rank = rank by Δm% among the published methods that ran here (1 = best), MR = "
        "mean over the 11 targets of the rank among those methods (the papers' MR), rank (all) = "
        "rank by Δm% among every method that ran. Not comparable in absolute value: see the "
        "protocol differences in docs/compare.md.",
        "",
        "| method | paper's name | Δm% ↓ (ours) | rank (ours) | MR (ours) | Δm% ↓ (published) | "
        "rank (published) | MR (published) | rank (all, ours) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in published + others:
        r = rows[n]
        std = r.get("delta_m_std")
        ours = _num(r["delta_m"]) + (
            f" ± {std:.1f}" if std is not None and math.isfinite(std) else ""
        )
        pub = "—"
        if "published_delta_m" in r:
            pm = r.get("published_delta_m_pm")
            pub = _num(r["published_delta_m"]) + (f" ± {pm}" if pm is not None else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    n,
                    r.get("published_label", "—"),
                    ours,
                    _num(r.get("rank"), "g"),
                    _num(r.get("mr"), ".2f"),
                    pub,
                    _num(r.get("published_rank"), "g"),
                    _num(r.get("published_mr"), ".2f"),
                    _num(r["rank_all"], "g"),
                ]
            )
            + " |"
        )
    failed = [o.name for o in result.methods.values() if not o.ok]
    lines.append("")
    if comp["missing"]:
        lines.append("Published methods that did not run here: " + ", ".join(comp["missing"]) + ".")
    if failed:
        lines.append("Failed here (no row): " + ", ".join(failed) + ".")
    c = comp["correlation"]
    lines += [
        "",
        "Rank agreement with Liu et al. 2023's Table 2 (measured, not tuned for: one "
        "learning-rate policy for every method):",
        "",
        "- " + _corr_sentence("Δm%", c["delta_m"]) + ".",
        "- " + _corr_sentence(f"MR (against the {c['mr_published']} MR)", c["mr"]) + ".",
        "",
    ]
    if chart:
        lines += [f"![ours vs published]({chart})", ""]
    return lines


def comparison_chart(comp: dict[str, Any], path: Path, *, dpi: int = 150) -> bool:
    """Our Δm% against the published Δm% of each published method (one labelled point each)."""
    rows = {n: r for n, r in comp["rows"].items() if "published_delta_m" in r}
    if len(rows) < 2:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for r in rows.values():
        x, y = r["published_delta_m"], r["delta_m"]
        std = r.get("delta_m_std")
        ax.errorbar(x, y, yerr=std if std is not None and math.isfinite(std) else None,
                    fmt="o", color="C0", ms=4, capsize=2)  # fmt: skip
        ax.annotate(r["published_label"], (x, y), xytext=(4, 3), textcoords="offset points",
                    fontsize=8)  # fmt: skip
    c = comp["correlation"]["delta_m"]
    title = "QM9 Δm% ↓: this library (reduced protocol) vs published"
    if c["spearman"] is not None:
        title += f"\nSpearman ρ = {c['spearman']:+.2f} (p = {c['spearman_p']:.2g})"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("published Δm% (Liu et al. 2023, Table 2)", fontsize=9)
    ax.set_ylabel("ours: Δm% (mean ± std over seeds)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return True
