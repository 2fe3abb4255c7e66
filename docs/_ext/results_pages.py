"""Fragments drawn from the measured results, included by ``benchmarks.md``,
``comparison.md`` and ``which-method.md`` (written to ``docs/_generated/``).

The advice of the "which method?" page is computed here from the comparison results, not
written by hand: a new results file changes it at the next build.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from statistics import mean
from typing import Callable

from gen_common import (
    BANNER,
    COMPARE_RESULTS,
    DOCS,
    GENERATED,
    fmt_ms,
    fmt_ratio,
    md_table,
    write_if_changed,
)
from results_data import REFERENCE_METHODS, BenchRun, ProblemResult, compare_results, latest_runs

_BANNER = BANNER.format(gen="results_pages.py")
FIGURES = GENERATED / "figures"
#: A method within this many Δ_MTL points of the best on a problem counts as "near the best".
NEAR_BEST = 2.0
#: Mean |relative change| (%) of the metrics below which a method is called scale-invariant.
SCALE_INVARIANT = 2.0


def figure(path: Path, page: str) -> str:
    """Copy a figure into the build sources; the path to use from ``docs/<page>``."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    rel = path.resolve().relative_to(DOCS.parent).as_posix().replace("/", "__")
    target = FIGURES / rel
    if not target.is_file() or target.stat().st_size != path.stat().st_size:
        shutil.copyfile(path, target)
    del page
    return f"_generated/figures/{rel}"


def repo_link(path: Path) -> str:
    return f"`{path.resolve().relative_to(DOCS.parent).as_posix()}`"


# ---------------------------------------------------------------- benchmarks


def bench_fragment(run: BenchRun) -> str:
    out = [
        f"Run of {run.date} ({run.tier} tier): {run.machine_line}. Command: "
        f"`{run.data.get('command', 'mtl-fast bench')}`; full tables: "
        f"{repo_link(run.sibling('.md') or run.path)}.\n"
    ]
    if run.targets:
        rows = [
            [t["target"], "**miss**" if t["status"] == "miss" else t["status"], t["measured"]]
            for t in run.targets
        ]
        out.append(md_table(["target", "status", "measured"], rows))
    costs = run.train_costs()
    if costs:
        Ts = sorted({T for c in costs.values() for T in c})
        rows = [
            [name, *(fmt_ratio(c[T][0]) if T in c else "—" for T in Ts)]
            for name, c in costs.items()
        ]
        eq = costs.get("EqualWeighting", {})
        out.append(
            "\nTraining step of the benchmark model, relative to equal weighting in the same run "
            "(equal weighting's step: "
            + ", ".join(f"{fmt_ms(eq[T][1])} at T = {T}" for T in Ts if T in eq)
            + "):\n\n"
            + md_table(["method", *(f"T = {T}" for T in Ts)], rows, "l" + "r" * len(Ts))
        )
    png = run.sibling(".png")
    if png:
        out.append(f"\n![benchmark figures of this run]({figure(png, 'benchmarks.md')})\n")
    return "\n".join(out)


def write_bench_fragments() -> list[Path]:
    written = []
    runs = latest_runs()
    for device in ("cpu", "cuda"):
        path = GENERATED / f"bench_{device}.md"
        run = runs.get(device)
        text = bench_fragment(run) if run else "No run of this kind in `benchmarks/results/`.\n"
        write_if_changed(path, _BANNER + text)
        written.append(path)
    return written


# ---------------------------------------------------------------- comparison


def _fmt_delta(m: dict) -> str:
    d = f"{m['delta_mtl']:+.1f}"
    if m.get("delta_mtl_std") is not None:
        d += f" ± {m['delta_mtl_std']:.1f}"
    return d


def comparison_fragment(problems: list[ProblemResult]) -> str:
    names: list[str] = []
    for p in problems:
        names += [n for n in p.methods if n not in names]
    header = ["method", *(p.label for p in problems)]
    best = {
        p.label: max((m["delta_mtl"] for m in p.valid().values()), default=None) for p in problems
    }
    rows = []
    for n in names:
        row = [n]
        for p in problems:
            m = p.valid().get(n)
            if m is None:
                row.append("—")
                continue
            cell = f"{m['delta_mtl']:+.1f}"
            row.append(f"**{cell}**" if m["delta_mtl"] == best[p.label] else cell)
        rows.append(row)
    out = [
        "Δ_MTL in % (higher is better; 0 = the single-task models), bold: the best on the "
        "problem; — : not run.\n",
        md_table(header, rows, "l" + "r" * len(problems)),
    ]
    for p in problems:
        eq = p.equal_ms()
        rows = [
            [
                n,
                _fmt_delta(m),
                f"{m['acc_mtl']:.4g}" if m.get("acc_mtl") is not None else "—",
                f"{m['avg_rank']:.2f}" if m.get("avg_rank") is not None else "—",
                f"{m['ms_per_step']:.3g}" if m.get("ms_per_step") else "—",
                fmt_ratio(m["ms_per_step"] / eq) if eq and m.get("ms_per_step") else "—",
            ]
            for n, m in p.valid().items()
        ]
        failed = [n for n, m in p.methods.items() if m.get("error")]
        seeds = f"{p.seeds} seed{'s' if p.seeds > 1 else ''}"
        out.append(
            f"\n### {p.label}\n\n{p.title}. {seeds}; baseline: {p.data.get('baseline_label')}. "
            f"Source: {repo_link(p.path)} (`{p.meta.get('command', '')}`).\n\n"
            + md_table(
                ["method", "Δ_MTL %", "Acc_MTL", "avg rank", "ms/step", "× equal"],
                rows,
                "lrrrrr",
            )
        )
        if failed:
            out.append(f"\nFailed runs: {', '.join(failed)}.\n")
        weights_png = p.path.parent / f"{p.key}_weights.png"
        if weights_png.is_file():
            out.append(
                f"\n![{p.label}: weights over training]({figure(weights_png, 'comparison.md')})\n"
            )
    return "\n".join(out)


def _write_results_fragment(name: str, fragment: Callable[[list[ProblemResult]], str]) -> Path:
    """``GENERATED/<name>``: ``fragment`` of the comparison results, or a line saying there are
    none yet."""
    path = GENERATED / name
    problems = compare_results()
    text = fragment(problems) if problems else "No comparison results yet.\n"
    write_if_changed(path, _BANNER + text)
    return path


def write_comparison_fragment() -> Path:
    return _write_results_fragment("comparison.md", comparison_fragment)


# ---------------------------------------------------------------- which method?


def _ranks(p: ProblemResult) -> dict[str, int]:
    """1 = best Δ_MTL among the automatic methods run on ``p``."""
    auto = {n: m for n, m in p.valid().items() if n not in REFERENCE_METHODS}
    order = sorted(auto, key=lambda n: -auto[n]["delta_mtl"])
    return {n: i + 1 for i, n in enumerate(order)}


def advice_fragment(problems: list[ProblemResult]) -> str:
    from mtl_fast.methods import registry

    family = {s.name: s.family for s in registry.REGISTRY}
    out = []
    # 1. Per problem: the best methods, with their cost.
    rows = []
    for p in problems:
        ranks = _ranks(p)
        if not ranks:
            continue
        valid = p.valid()
        top = valid[min(ranks, key=ranks.__getitem__)]["delta_mtl"]
        near = [n for n in ranks if valid[n]["delta_mtl"] >= top - NEAR_BEST]
        eq = p.equal_ms()
        cheapest = min(near, key=lambda n: valid[n].get("ms_per_step") or float("inf"))
        cost = (
            fmt_ratio(valid[cheapest]["ms_per_step"] / eq)
            if eq and valid[cheapest].get("ms_per_step")
            else "—"
        )
        rows.append(
            [
                f"{p.title} (`{p.label}`)",
                ", ".join(f"{n} ({valid[n]['delta_mtl']:+.1f})" for n in near),
                f"{cheapest} ({cost})",
                str(len(ranks)),
            ]
        )
    out.append(
        "## Best on each measured problem\n\n"
        f"Methods within {NEAR_BEST:g} points of Δ_MTL of the best automatic method on the "
        "problem (Δ_MTL % in brackets), and the cheapest of them (its step time relative to "
        "equal weighting on that problem).\n\n"
        + md_table(["problem", "best (Δ_MTL %)", "cheapest of those", "methods run"], rows)
    )
    # 2. Over all problems: mean and worst relative rank of the methods run on at least half.
    ranked = [(p, _ranks(p)) for p in problems if _ranks(p)]
    counts: dict[str, int] = {}
    for _, r in ranked:
        for n in r:
            counts[n] = counts.get(n, 0) + 1
    enough = [n for n, c in counts.items() if 2 * c >= len(ranked)]
    if enough:

        def rel(n: str) -> list[float]:
            return [(r[n] - 1) / max(len(r) - 1, 1) for _, r in ranked if n in r]

        stats = {n: (mean(rel(n)), max(rel(n))) for n in enough}
        order = sorted(enough, key=lambda n: stats[n])
        rows = [
            [n, family.get(n, "?"), str(counts[n]), f"{stats[n][0]:.2f}", f"{stats[n][1]:.2f}"]
            for n in order
        ]
        robust = min(enough, key=lambda n: (stats[n][1], stats[n][0]))
        summary = f"Best mean rank: **{order[0]}**; best worst case: **{robust}**."
        loss_based = [n for n in order if family.get(n) == "loss"]
        if loss_based:
            summary += (
                f" Best loss-based method (no extra gradient work per step): **{loss_based[0]}**."
            )
        out.append(
            "\n## Over all problems\n\n"
            f"The methods run on at least half of the {len(ranked)} problems, by their mean "
            "relative rank over the problems they ran on (0: the best automatic method of the "
            "problem, 1: the worst); the worst relative rank says how badly a method can do.\n\n"
            + md_table(
                ["method", "family", "problems", "mean rel. rank", "worst rel. rank"],
                rows,
                "llrrr",
            )
            + f"\n{summary}\n"
        )
    # 3. Scale invariance: how much the metrics move when the losses are rescaled.
    for p in problems:
        changes = p.scale_changes()
        if not changes:
            continue
        inv = sorted((n for n, c in changes.items() if c < SCALE_INVARIANT), key=changes.get)
        var = sorted((n for n, c in changes.items() if c >= SCALE_INVARIANT), key=changes.get)
        out.append(
            f"\n## Robustness to the losses' scale: `{p.label}`\n\n{p.title}: mean |relative "
            "change| of the test metrics against the same problem without the rescaling. "
            f"Below {SCALE_INVARIANT:g} %: "
            + (", ".join(f"{n} ({changes[n]:.1f} %)" for n in inv) or "none")
            + ". At or above: "
            + (", ".join(f"{n} ({changes[n]:.1f} %)" for n in var) or "none")
            + ".\n"
        )
    # 4. What has not been compared.
    measured = {n for p in problems for n in p.valid()}
    missing = [s.name for s in registry.REGISTRY if s.name not in measured]
    if missing:
        out.append(
            "\n## Not in the comparison results yet\n\n"
            + ", ".join(f"[{n}](methods/{n}.md)" for n in missing)
            + ": no results file has them; run `mtl-fast compare --methods "
            + ",".join(missing[:3])
            + (",..." if len(missing) > 3 else "")
            + "` on your problem.\n"
        )
    return "\n".join(out)


def write_advice_fragment() -> Path:
    return _write_results_fragment("which_method.md", advice_fragment)


def write_results_toc() -> Path:
    """The comparison page's toctree: every Markdown page under ``docs/results/`` (the
    committed ``mtl-fast compare`` reports), ``README.md`` first, so a new report appears on
    the site without an edit."""
    path = GENERATED / "results_toc.md"
    docs = sorted(
        p.relative_to(DOCS).with_suffix("").as_posix() for p in COMPARE_RESULTS.rglob("*.md")
    )
    docs.sort(key=lambda d: (not d.endswith("/README"), d.count("/"), d))
    text = _BANNER + "```{toctree}\n:hidden:\n\ncompare\n" + "".join(f"{d}\n" for d in docs)
    write_if_changed(path, text + "```\n")
    return path
