"""Many tasks on one linear head: the structured route (:class:`mtl_fast.MultiTaskLinear`) against
the Jacobian route (``method.split`` + T per-task linear heads) and equal weighting.

The model: a shared MLP encoder (x [B, 512] → 512 → ReLU → C → ReLU = z) and one linear layer
with T outputs on z (multi-label: T binary tasks, BCE). One training step is forward, T losses,
``method.loss(losses).backward()``, SGD on every parameter. Routes:

* ``structured`` — ``MultiTaskLinear(C, T, method=IMTLG() | MGDA())``: G = (ΔᵀΔ) ∘ (W Wᵀ) from
  the logits' gradient Δ [B, T], α from the method, input gradient (Δ diag α) W;
* ``jacobian`` — ``method.split(z)`` and T ``F.linear`` heads on the rows of the same weight:
  autograd forms the T feature gradients g_t = δ_t w_tᵀ ([B, C] each: a T×B×C Jacobian) and
  ``split``'s backward reads them twice (Gram, combine);
* ``equal`` — the same head with :class:`mtl_fast.EqualWeighting` (a plain linear layer).

Sizes by tier (``--bench-tier`` / ``$MTL_FAST_BENCH_TIER``): smoke T = 8, B = 16, C = 32;
quick T ∈ {40, 256}; full T ∈ {40, 256, 1024, 4096}; gpu T ∈ {256, 1024, 4096} (for a CUDA
device) — B = 256, C = 512 for quick, full and gpu.
Cases that cannot run in reasonable time or memory are skipped with the reason (on the CPU: the
Jacobian route beyond T = 1024 — its Gram alone is 2·T²·B·C flops, 4.4 TFLOP at T = 4096; on
any device: a Jacobian over the tier's memory budget). MGDA runs at every T: on the CPU its
solve is the native exact Wolfe solver of ``mtl_fast._C``.

Timing: on the CPU a host clock around each call (wall and process CPU time); on CUDA
:func:`benchmarks.harness.runner.time_interleaved` (CUDA events, one synchronisation per round).
A time limit (``--time-limit``; by default 75 s on the gpu tier, none elsewhere) bounds the
run: (T, method) cells not started within it are listed as skipped.

pytest-benchmark (as the other suites)::

    pytest benchmarks/bench_structured.py --bench-tier quick

Side-by-side table with medians of interleaved rounds, peak extra memory
(:func:`benchmarks.harness.runner.peak_extra_bytes`: CUDA allocator peak, or the CPU profiler's
allocation events) and the ratios, written to ``benchmarks/results/structured-<machine>-<tier>``
``.json`` / ``.md``. On the CPU the table reports process CPU time next to wall time: with one
torch thread it is robust to a loaded machine (time spent preempted is not counted)::

    python benchmarks/bench_structured.py --tier full --threads 1 [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

# Run as a script (`python benchmarks/x.py`): the repository root, so `benchmarks.harness` imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtl_fast as mf
from benchmarks.harness import runner
from benchmarks.harness import workloads as wl
from mtl_fast.methods import registry
from mtl_fast.multitask_linear import MultiTaskLinear

#: (T values, B, C) of each tier.
SIZES: dict[str, tuple[tuple[int, ...], int, int]] = {
    "smoke": ((8,), 16, 32),
    "quick": ((40, 256), 256, 512),
    "full": ((40, 256, 1024, 4096), 256, 512),
    "gpu": ((256, 1024, 4096), 256, 512),
}
#: Default time limit (seconds) of a tier's table run (``None``: no limit).
TIME_LIMIT_S: dict[str, float | None] = {"gpu": 75.0}
ROUTES = ("structured", "jacobian", "equal")
METHODS = ("IMTLG", "MGDA")
#: Input width of the encoder.
IN_FEATURES = 512
#: CPU limits: above these T a route is skipped (minutes per step on a small CPU, see module doc).
CPU_MAX_T_JACOBIAN = 1024


@dataclass
class Case:
    method: str
    route: str
    T: int
    B: int
    C: int


def _method(name: str, T: int) -> mf.Weighting:
    return registry.get(name).build(T)


def skip_reason(case: Case, device: torch.device, budget: int | None = None) -> str | None:
    """Why ``case`` is not run here (``None``: it runs); ``budget``: bytes a case may use
    (default: :func:`benchmarks.harness.workloads.memory_budget` of the device)."""
    T, B, C = case.T, case.B, case.C
    if case.route == "jacobian":
        need = 2 * T * B * C * 4  # the T feature gradients, and as much again for the split's views
        budget = wl.memory_budget(device) if budget is None else budget
        if need > budget:
            return (
                f"memory: the Jacobian needs ~{need / 2**30:.1f} GiB "
                f"(budget {budget / 2**30:.1f} GiB)"
            )
        if device.type == "cpu" and T > CPU_MAX_T_JACOBIAN:
            flops = 2 * T * T * B * C
            return f"time: the Jacobian route's Gram alone is {flops / 1e12:.1f} TFLOP per step"
    return None


def make_step(case: Case, device: torch.device, seed: int = 0) -> Callable[[], Tensor]:
    """One training step of ``case`` on a fresh model (same initial weights for a given seed)."""
    T, B, C = case.T, case.B, case.C
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Linear(IN_FEATURES, 512), nn.ReLU(), nn.Linear(512, C), nn.ReLU()
    ).to(device)
    method = mf.EqualWeighting(T) if case.route == "equal" else _method(case.method, T)
    method = method.to(device)
    head = MultiTaskLinear(C, T, method=method).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, IN_FEATURES, generator=gen).to(device)
    y = (torch.rand(B, T, generator=gen) < 0.3).float().to(device)
    params = [*encoder.parameters(), *head.parameters(), *method.parameters()]
    opt = torch.optim.SGD(params, lr=wl.TRAIN_LR)
    W, b = head.weight, head.bias

    def step() -> Tensor:
        opt.zero_grad(set_to_none=False)  # .grad buffers persist: the peak is the step's own
        z = encoder(x)
        if case.route == "jacobian":
            zs = method.split(z, num_tasks=T)
            logits = torch.cat([F.linear(zs[t], W[t : t + 1], b[t : t + 1]) for t in range(T)], 1)
        else:
            logits = head(z)
        losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(0)
        total = method.loss(losses)
        total.backward()
        opt.step()
        return total.detach()

    return step


# --------------------------------------------------------------------------- pytest-benchmark


def _cases(tier_name: str) -> list[Case]:
    Ts, B, C = SIZES[tier_name]
    return [Case(m, r, T, B, C) for T in Ts for m in METHODS for r in ROUTES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "structured_case" in metafunc.fixturenames:
        cases = _cases(metafunc.config.getoption("--bench-tier"))
        metafunc.parametrize(
            "structured_case", cases, ids=[f"T{c.T}-{c.method}-{c.route}" for c in cases]
        )


def test_structured_step(benchmark, structured_case: Case, device: torch.device) -> None:
    from conftest import synced

    case = structured_case
    reason = skip_reason(case, device)
    if reason:
        pytest.skip(reason)
    try:
        step = make_step(case, device)
    except LookupError as exc:
        pytest.skip(str(exc))
    step()  # warm-up (lazy initialisations, Triton JIT)
    benchmark.group = f"structured T={case.T} {case.method}"
    benchmark.extra_info.update(asdict(case))
    benchmark.extra_info["peak_extra_bytes"] = runner.peak_extra_bytes(step, device)
    out = benchmark(synced(step, device))
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- side-by-side table


def time_routes(
    steps: dict[str, Callable[[], Tensor]],
    device: torch.device,
    *,
    warmup: int,
    min_repeats: int,
    max_repeats: int,
    budget_s: float,
    max_s: float | None = None,
) -> dict[str, dict[str, float]]:
    """Interleaved rounds (one call of each route per round) after ``warmup`` calls each, until
    ``min_repeats`` rounds and the budget (``budget_s`` per route) are spent, at most
    ``max_repeats`` (3 rounds when a call takes over 2 s). Per route the median wall time and,
    on the CPU, the median process CPU time — robust to a loaded machine when torch runs one
    thread (``--threads 1``): time spent preempted is not counted.

    On CUDA the rounds are :func:`benchmarks.harness.runner.time_interleaved`'s (CUDA events, one
    synchronisation per round; ``max_s`` bounds a measurement's planned rounds); the wall time
    is the device time between the events."""
    if runner.uses_events(device):
        timings = runner.time_interleaved(
            steps,
            device,
            warmup=warmup,
            min_repeats=min_repeats,
            max_repeats=max_repeats,
            budget_s=budget_s,
            max_s=max_s,
        )
        return {
            n: {"wall_s": tm.median_s, "cpu_s": None, "repeats": tm.repeats}
            for n, tm in timings.items()
        }
    first: dict[str, float] = {}
    for name, fn in steps.items():
        for _ in range(max(1, warmup)):
            runner.synchronize(device)
            t0 = time.perf_counter()
            fn()
            runner.synchronize(device)
            first.setdefault(name, time.perf_counter() - t0)
    floor = min(3, min_repeats) if max(first.values(), default=0) > 2.0 else min_repeats
    wall: dict[str, list[float]] = {n: [] for n in steps}
    cpu: dict[str, list[float]] = {n: [] for n in steps}
    start, rounds = time.perf_counter(), 0
    while rounds < max_repeats and (
        rounds < floor or time.perf_counter() - start < budget_s * len(steps)
    ):
        for name, fn in steps.items():
            runner.synchronize(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            runner.synchronize(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        rounds += 1
    return {
        n: {
            "wall_s": statistics.median(wall[n]),
            "cpu_s": statistics.median(cpu[n]) if device.type == "cpu" else None,
            "repeats": len(wall[n]),
        }
        for n in steps
    }


def run(
    tier_name: str,
    device: torch.device,
    progress: Callable[[str], None] = print,
    time_limit_s: float | None = None,
    sizes: tuple[tuple[int, ...], int, int] | None = None,
) -> dict:
    """Every case of the tier, timed in interleaved rounds per (T, method); the records.

    ``time_limit_s``: (T, method) cells not started within it are skipped (default:
    :data:`TIME_LIMIT_S` of the tier). ``sizes``: (T values, B, C) instead of the tier's."""
    tier = wl.get_tier(tier_name)
    Ts, B, C = sizes or SIZES[tier_name]
    limit = TIME_LIMIT_S.get(tier_name) if time_limit_s is None else time_limit_s
    deadline = None if limit is None else time.perf_counter() + limit
    budget = wl.memory_budget(device, tier.memory_cap_bytes)
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for T in Ts:
        for name in METHODS:
            if deadline is not None and time.perf_counter() > deadline:
                for route in ROUTES:
                    skipped.append(
                        {**asdict(Case(name, route, T, B, C)), "reason": "time limit of the run"}
                    )
                continue
            steps: dict[str, Callable[[], Tensor]] = {}
            for route in ROUTES:
                case = Case(name, route, T, B, C)
                reason = skip_reason(case, device, budget)
                if reason:
                    skipped.append({**asdict(case), "reason": reason})
                    continue
                try:
                    steps[route] = make_step(case, device)
                except LookupError as exc:
                    skipped.append({**asdict(case), "reason": str(exc)})
            timings = time_routes(
                steps,
                device,
                warmup=max(1, tier.warmup),
                min_repeats=tier.min_repeats,
                max_repeats=tier.max_repeats,
                budget_s=tier.budget_s,
                max_s=tier.cell_time_s,
            )
            peaks = {r: runner.peak_extra_bytes(steps[r], device) for r in steps}
            for route, tm in timings.items():
                records.append({**asdict(Case(name, route, T, B, C)), **tm, "peak": peaks[route]})
            progress(
                f"T={T} {name}: "
                + ", ".join(
                    f"{r} {tm['wall_s'] * 1e3:.3g} ms wall"
                    + (f" {tm['cpu_s'] * 1e3:.3g} ms cpu" if tm["cpu_s"] is not None else "")
                    + f" / {(peaks[r] or 0) / 2**20:.2f} MiB"
                    for r, tm in timings.items()
                )
            )
    return {
        "suite": "structured",
        "tier": tier_name,
        "date": datetime.date.today().isoformat(),
        "machine": runner.machine_info(device),
        "time_limit_s": limit,
        "memory_budget_bytes": budget,
        "records": records,
        "skipped": skipped,
    }


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "–"
    if b <= 0:
        return "∞ (no extra)" if a > 0 else "–"
    return f"{a / b:.3g}×"


def markdown(results: dict) -> str:
    """Two tables per run: step time (median; CPU time where measured) with the ratios
    jacobian/structured and structured/equal, and peak memory with the extra memory of each
    balanced route over equal weighting (peak − equal's peak) and their ratio."""
    m = results["machine"]
    clock = "cpu_s" if any(r.get("cpu_s") for r in results["records"]) else "wall_s"
    by: dict[tuple, dict[str, dict]] = {}
    for r in results["records"]:
        by.setdefault((r["T"], r["method"]), {})[r["route"]] = r
    lines = [
        f"# Structured multi-task head — tier {results['tier']}, {results['date']}",
        "",
        f"{m.get('gpu') or m.get('cpu')} ({m.get('cores')} cores, {m.get('torch_threads')} torch "
        f"threads), torch {m.get('torch')}, triton {m.get('triton')}, commit "
        f"{m.get('git_commit')}. Medians of interleaved rounds; time = "
        + ("process CPU time (robust to a loaded machine)" if clock == "cpu_s" else "wall time")
        + ", wall time in parentheses. A shared machine: noisy.",
        "",
        "| T | method | structured ms | jacobian ms | equal ms | jacobian / structured "
        "| structured / equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for (T, name), rs in sorted(by.items()):
        t = {k: v[clock] for k, v in rs.items()}

        def ms(k: str, rs: dict = rs) -> str:
            if k not in rs:
                return "–"
            v = rs[k]
            return f"{v[clock] * 1e3:.3g} ({v['wall_s'] * 1e3:.3g})"

        lines.append(
            f"| {T} | {name} | {ms('structured')} | {ms('jacobian')} | {ms('equal')} | "
            f"{_ratio(t.get('jacobian'), t.get('structured'))} | "
            f"{_ratio(t.get('structured'), t.get('equal'))} |"
        )
    lines += [
        "",
        "| T | method | structured MiB | jacobian MiB | equal MiB | structured extra MiB "
        "| jacobian extra MiB | jacobian extra / structured extra | jacobian / structured peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (T, name), rs in sorted(by.items()):
        p = {k: v.get("peak") for k, v in rs.items()}
        eq = p.get("equal")
        ex = {k: (p[k] - eq if p.get(k) is not None and eq is not None else None) for k in p}

        def mib(v: float | None) -> str:
            return f"{v / 2**20:.2f}" if v is not None else "–"

        lines.append(
            f"| {T} | {name} | {mib(p.get('structured'))} | {mib(p.get('jacobian'))} | "
            f"{mib(eq)} | {mib(ex.get('structured'))} | {mib(ex.get('jacobian'))} | "
            f"{_ratio(ex.get('jacobian'), ex.get('structured'))} | "
            f"{_ratio(p.get('jacobian'), p.get('structured'))} |"
        )
    if results["skipped"]:
        lines += ["", "Skipped:", ""]
        lines += [
            f"- T={s['T']} {s['method']} {s['route']}: {s['reason']}" for s in results["skipped"]
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", choices=sorted(SIZES), default="quick")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip the cells not started within this time (default: 75 s on the gpu tier)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("device 'cuda' requested but torch.cuda.is_available() is False")
    results = run(args.tier, device, time_limit_s=args.time_limit)
    md = markdown(results)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"structured-{runner.machine_slug(results['machine'])}-{args.tier}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(md + "\n")
    print(f"wrote {out / stem}.json/.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
