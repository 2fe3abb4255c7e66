"""Reading the measured results committed to the repository.

* Benchmark runs: ``benchmarks/results/*.json`` written by ``mtl-fast bench`` (a ``records``
  list and the ``targets`` verdicts; the training-step section gives each method's cost
  relative to equal weighting on the same machine, in the same run).
* Comparison runs: every ``results.json`` written by ``mtl-fast compare`` under
  ``docs/results/`` and ``benchmarks/results/`` (per problem, per method: Δ_MTL, Acc_MTL,
  average rank, time per step).

New result files are picked up by the next build without an edit to the docs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen_common import BENCH_RESULTS, COMPARE_RESULTS, ROOT

#: Methods whose weights are set by hand per problem (a reference point, not an automatic
#: method): kept in the tables, left out of the advice.
REFERENCE_METHODS = frozenset({"StaticWeighting"})


@dataclass
class BenchRun:
    """One ``mtl-fast bench`` results file."""

    path: Path
    data: dict[str, Any]

    @property
    def device(self) -> str:
        return "cuda" if self.data["machine"].get("gpu") else "cpu"

    @property
    def date(self) -> str:
        return str(self.data.get("date", ""))

    @property
    def tier(self) -> str:
        return str(self.data.get("tier", ""))

    @property
    def machine_line(self) -> str:
        m = self.data["machine"]
        where = m.get("gpu") or f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"
        parts = [where, f"torch {m.get('torch', '?')}"]
        if m.get("cuda"):
            parts.append(f"CUDA {m['cuda']}")
        if m.get("triton"):
            parts.append(f"Triton {m['triton']}")
        commit = str(m.get("git_commit") or "")[:7]
        return ", ".join(parts) + (f"; commit {commit}" if commit else "")

    def train_costs(self) -> dict[str, dict[int, tuple[float, float]]]:
        """method → T → (step time / equal weighting's step time, median step seconds)."""
        out: dict[str, dict[int, tuple[float, float]]] = {}
        for r in self.data["records"]:
            if r.get("section") == "train" and r.get("vs_equal") is not None:
                out.setdefault(r["method"], {})[int(r["T"])] = (
                    float(r["vs_equal"]),
                    float(r["median_s"]),
                )
        return out

    @property
    def targets(self) -> list[dict[str, Any]]:
        return list(self.data.get("targets", []))

    def sibling(self, suffix: str) -> Path | None:
        p = self.path.with_suffix(suffix)
        return p if p.is_file() else None


def bench_runs() -> list[BenchRun]:
    """Every benchmark results file (those with ``records`` and a ``machine``), newest first."""
    runs = []
    for path in sorted(BENCH_RESULTS.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "records" in data and "machine" in data:
            runs.append(BenchRun(path, data))
    return sorted(runs, key=lambda r: (r.date, r.tier == "full"), reverse=True)


def latest_runs() -> dict[str, BenchRun]:
    """The newest run per device (``"cpu"``, ``"cuda"``), full tier preferred over quick."""
    best: dict[str, BenchRun] = {}
    for run in bench_runs():
        cur = best.get(run.device)
        if cur is None or (run.tier == "full", run.date) > (cur.tier == "full", cur.date):
            best[run.device] = run
    return best


def train_run_for(method: str, device: str) -> BenchRun | None:
    """The run whose training-step section gives ``method``'s cost on ``device``: the run of
    :func:`latest_runs` when it measured the method, else the newest run that did (a method
    added after the last full run is measured by a later, smaller one)."""
    preferred = latest_runs().get(device)
    if preferred is not None and method in preferred.train_costs():
        return preferred
    for run in bench_runs():  # newest first
        if run.device == device and method in run.train_costs():
            return run
    return None


@dataclass
class ProblemResult:
    """One problem of one ``mtl-fast compare`` run."""

    path: Path  # the results.json
    key: str  # the problem key in that file (e.g. "digits", "synthetic-T100")
    data: dict[str, Any]
    meta: dict[str, Any]
    label: str = ""
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def problem_name(self) -> str:
        """The registered problem (``synthetic-T100`` → ``synthetic``)."""
        base = self.key.split("-T")[0]
        return base

    @property
    def title(self) -> str:
        try:
            from mtl_fast.compare.problems import PROBLEMS
        except ImportError:  # pragma: no cover - the comparison tooling is part of the package
            return self.key
        cls = PROBLEMS.get(self.key) or PROBLEMS.get(self.problem_name)
        title = getattr(cls, "title", None) or self.key
        if self.key.startswith("synthetic-T"):
            title += f" (T = {self.key.split('-T')[1]})"
        return str(title)

    @property
    def seeds(self) -> int:
        return len(self.data.get("train", {}).get("seeds", []) or [0])

    def valid(self) -> dict[str, dict[str, Any]]:
        """The methods that ran without error and have a Δ_MTL."""
        return {
            name: m
            for name, m in self.methods.items()
            if not m.get("error") and m.get("delta_mtl") is not None
        }

    def equal_ms(self) -> float | None:
        eq = self.methods.get("EqualWeighting")
        return float(eq["ms_per_step"]) if eq and eq.get("ms_per_step") else None

    def scale_changes(self) -> dict[str, float]:
        """method → mean |relative change| (%) of the metrics when one loss is scaled."""
        changes = self.data.get("scale_changes") or {}
        return {
            name: float(c["mean_abs_rel_change"])
            for name, c in changes.items()
            if c and c.get("mean_abs_rel_change") is not None
        }


def compare_results() -> list[ProblemResult]:
    """Every problem of every comparison results file, labelled uniquely."""
    files = sorted(COMPARE_RESULTS.glob("**/results.json")) + sorted(
        BENCH_RESULTS.glob("**/results.json")
    )
    out: list[ProblemResult] = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or "problems" not in data:
            continue
        for key, prob in data["problems"].items():
            protocol = (prob.get("problem") or {}).get("protocol")
            label = f"{key} ({protocol})" if protocol else key
            out.append(
                ProblemResult(
                    path,
                    key,
                    prob,
                    data.get("meta", {}),
                    label,
                    dict(prob.get("methods", {})),
                )
            )
    seen: dict[str, int] = {}
    for r in out:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in out:
        if seen[r.label] > 1:
            r.label = f"{r.label}, {r.path.parent.name}"
    return out


def source_link(path: Path) -> str:
    """A repository-relative path for prose (``benchmarks/results/x.md``)."""
    return path.resolve().relative_to(ROOT).as_posix()
