r"""Measurement: timing, copy bandwidth, peak extra memory, the machine record, and the four
sections of ``mtl-fast bench`` (ops, train, stats, scaling).

Timing (:func:`time_interleaved`): the implementations compared in one table cell are timed in
interleaved rounds (one call of each per round), after warm-up calls; the median of the rounds
is reported and every ratio is formed from medians of the same run, so slow drift of a shared
machine hits all of them alike. On the CPU a host timer brackets each call. On CUDA each call
of a round is bracketed by a pair of CUDA events (one synchronisation at the end of the round,
none between the calls), so neither the host's synchronisation nor its launch latency is timed;
a callable faster than 200 µs runs k times between its events (a block of about 1 ms, k ≤ 100)
and the time is divided by k. The ops section also rotates each D-sized callable over copies
of its inputs on CUDA (at least 256 MiB in all), so that repeated calls do not read J from L2.

Time limits: a tier may bound each section's time (``Tier.section_time_s``, rescaled by
``time_limit_s``); cells not started within the limit are listed as skipped. An interrupt
(SIGINT, e.g. from ``timeout``) ends the run early with what was measured so far.

Bandwidth: :func:`copy_bandwidth` times a large tensor copy in the same run; an op's achieved
GB/s is its floor bytes (:func:`benchmarks.harness.workloads.floor_bytes`) over its median time.

Peak extra memory (:func:`peak_extra_bytes`): on CUDA ``torch.cuda.max_memory_allocated`` around
one call minus what was allocated before; on the CPU the running sum of the allocation events
recorded by ``torch.profiler.profile(profile_memory=True)`` — the bytes of the temporaries (and
the output) of one call, the inputs excluded.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import workloads as wl

Progress = Callable[[str], None]
#: Sections run when none is named; ``compile`` (inductor compiles for minutes on a CPU) runs
#: only when named (``--only compile``).
DEFAULT_SECTIONS = ("ops", "train", "stats", "scaling")
SECTIONS = (*DEFAULT_SECTIONS, "compile")
#: Calls slower than this (seconds) are repeated at most 3 times (and warmed up once).
SLOW_CALL_S = 2.0
#: CUDA event timing: a callable faster than this (seconds) is called k times per timed block,
#: k making the block about ``BLOCK_TARGET_S`` long, at most ``MAX_CALLS_PER_BLOCK``.
SHORT_CALL_S = 200e-6
BLOCK_TARGET_S = 1e-3
MAX_CALLS_PER_BLOCK = 100
#: CUDA: bytes of input copies a D-sized op rotates over (several times a large L2 cache).
ROTATE_BYTES = 256 * 1024**2
MAX_INPUT_COPIES = 32


class BenchError(ValueError):
    """A request the benchmarks cannot serve (unknown section, no such device)."""


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


#: Environment variable that names the commit when the checkout has no usable git history (a
#: copy of the tree on another machine, as ``benchmarks/gpu_check.sh`` runs on a lent GPU).
COMMIT_ENV = "MTL_FAST_GIT_COMMIT"


def git_commit() -> str | None:
    """The mtl_fast checkout's commit (``+dirty`` when the tree has changes), if any;
    ``$MTL_FAST_GIT_COMMIT`` when set."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, GPU, versions, git commit."""
    import mtl_fast
    from mtl_fast import _backend

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "triton": None,
        "torchjd": wl.torchjd_version(),
        "mtl_fast": mtl_fast.__version__,
        "native_extension": _backend.native_available(),
        "triton_kernels": _backend.triton_available(),
        "git_commit": git_commit(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
        info["memory_gib"] = round(total_kb / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def machine_slug(info: dict[str, Any]) -> str:
    """A file-name-safe name of the machine: the GPU, else the CPU model and core count."""
    if info.get("gpu"):
        base = info["gpu"]
    else:
        base = f"{info['cpu']}-{info['cores']}c"
    base = re.sub(r"\((r|tm)\)|cpu|processor|@.*?ghz|\d+-core", "", base, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return re.sub(r"-+", "-", slug) or "machine"


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` followed by ``torch.cuda.synchronize()`` on a GPU, so that a timer around the
    returned callable measures the work (used by the pytest-benchmark suites)."""
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


@dataclass
class Timing:
    """Summary of the per-call times of one implementation (seconds); ``calls_per_sample``:
    calls timed together in each sample (CUDA events, short calls), the times are per call."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    repeats: int
    calls_per_sample: int = 1


def _summary(times: list[float], calls: int = 1) -> Timing:
    ts = sorted(times)
    if len(ts) >= 4:
        q1, _, q3 = statistics.quantiles(ts, n=4)
    else:
        q1, q3 = ts[0], ts[-1]
    return Timing(statistics.median(ts), q1, q3, ts[0], len(ts), calls)


def uses_events(device: torch.device) -> bool:
    """Whether :func:`time_interleaved` times with device events (CUDA) rather than the host
    clock."""
    return device.type == "cuda"


def new_event(device: torch.device) -> Any:
    """A timing event of the device (``torch.cuda.Event(enable_timing=True)``)."""
    return torch.cuda.Event(enable_timing=True)


def _calls_per_block(t: float) -> int:
    """k for a call of t seconds: a block of k calls lasts about ``BLOCK_TARGET_S``."""
    if t >= SHORT_CALL_S:
        return 1
    return max(1, min(MAX_CALLS_PER_BLOCK, math.ceil(BLOCK_TARGET_S / max(t, 1e-7))))


def _event_seconds(fn: Callable[[], Any], device: torch.device, calls: int = 1) -> float:
    """Seconds per call of ``calls`` back-to-back calls of ``fn``, between two device events."""
    start, end = new_event(device), new_event(device)
    synchronize(device)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    synchronize(device)
    return start.elapsed_time(end) / 1e3 / calls


def rotating(fns: list[Callable[[], Any]]) -> Callable[[], Any]:
    """A callable calling ``fns`` in turn, one per call (the same op on copies of its inputs)."""
    if len(fns) == 1:
        return fns[0]
    turn = itertools.cycle(fns)

    def call() -> Any:
        return next(turn)()

    return call


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 0.5,
    errors: dict[str, str] | None = None,
    max_s: float | None = None,
    stop_at: float | None = None,
) -> dict[str, Timing]:
    """Time several callables in interleaved rounds (the order rotated each round); the median
    per callable.

    Each callable gets ``warmup`` untimed calls (at least one: it also measures the call's
    cost; a call slower than 1 s gets no second warm-up), then rounds of one timed call each,
    until ``min_repeats`` rounds are done and the time budget (``budget_s`` per callable) is
    spent, or ``max_repeats`` rounds. When the slowest call takes over 2 s, ``min(3,
    min_repeats)`` rounds are done; with ``max_s``, fewer than ``min_repeats`` rounds (never
    fewer than 3) when the planned rounds would take longer than ``max_s`` seconds; past
    ``stop_at`` (a ``time.perf_counter()`` value: a section's time limit) no round starts once
    ``min(3, min_repeats)`` are done. A callable that raises is dropped and its error stored in
    ``errors``.

    On CUDA (:func:`uses_events`): at least two warm-up calls (the first may compile kernels;
    the cost is the last one's), then one block per callable and round between two CUDA
    events, one synchronisation per round; a callable faster than ``SHORT_CALL_S`` runs k
    times per block (:func:`_calls_per_block`, from a calibration block of 3 calls) and each
    sample is the block's time / k.
    """
    events = uses_events(device)
    live: dict[str, Callable[[], Any]] = {}
    cost: dict[str, float] = {}
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        try:
            for i in range(max(2 if events else 1, warmup)):
                synchronize(device)
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                t = time.perf_counter() - t0
                if events:
                    cost[name] = t  # the latest call: the first one may compile kernels
                    if i >= 1 and t > SLOW_CALL_S / 2:
                        break
                elif i == 0:
                    cost[name] = t
                    if t > SLOW_CALL_S / 2:
                        break  # one warm-up call is plenty for a call this long
            calls[name] = 1
            if events and cost[name] < 10 * SHORT_CALL_S:
                calls[name] = _calls_per_block(_event_seconds(fn, device, 3))
            live[name] = fn
        except Exception as exc:
            if errors is not None:
                errors[name] = f"{type(exc).__name__}: {exc}"
    if not live:
        return {}
    slowest = max(cost[n] for n in live)
    floor = min(3, min_repeats) if slowest > SLOW_CALL_S else min_repeats
    if max_s is not None:
        per_round = sum(cost[n] * calls[n] for n in live)
        if per_round > 0:
            floor = max(min(3, min_repeats), min(floor, int(max_s / per_round)))
    times: dict[str, list[float]] = {n: [] for n in live}
    budget = budget_s * len(live)
    start = time.perf_counter()
    rounds = 0
    order = list(live.items())
    least = min(3, min_repeats)
    while rounds < max_repeats and (rounds < floor or time.perf_counter() - start < budget):
        if stop_at is not None and rounds >= least and time.perf_counter() > stop_at:
            break
        # Rotate the order every round: no callable always runs first (or after the same one).
        k = rounds % len(order)
        if events:
            marks = []
            for name, fn in order[k:] + order[:k]:
                begin, end = new_event(device), new_event(device)
                begin.record()
                for _ in range(calls[name]):
                    fn()
                end.record()
                marks.append((name, begin, end))
            synchronize(device)
            for name, begin, end in marks:
                times[name].append(begin.elapsed_time(end) / 1e3 / calls[name])
        else:
            for name, fn in order[k:] + order[:k]:
                synchronize(device)
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {n: _summary(ts, calls[n]) for n, ts in times.items()}


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 5) -> float:
    """The machine's copy bandwidth in GB/s: (bytes read + bytes written) / median time of
    ``dst.copy_(src)`` on a ``nbytes`` float32 tensor."""
    n = max(1, nbytes // 4)
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    timing = time_interleaved(
        {"copy": lambda: dst.copy_(src)},
        device,
        warmup=1,
        min_repeats=repeats,
        max_repeats=repeats,
        budget_s=0.0,
    )["copy"]
    return 2 * n * 4 / timing.median_s / 1e9


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the block."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the profiler's allocation events
    (``profile_memory=True``), summed in time order, the maximum of the running sum. ``None``
    when the profiler records no memory events here.
    """
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return int(peak)


# --------------------------------------------------------------------------- sections


@dataclass
class Context:
    """Run-wide settings shared by the sections, the current section's deadline and every
    record produced so far (kept when the run is interrupted)."""

    tier: wl.Tier
    device: torch.device
    progress: Progress
    copy_gbps: float
    budget_bytes: int
    #: ``time.perf_counter()`` value after which the section starts no new cell (``None``: none).
    deadline: float | None = None
    produced: list[dict[str, Any]] = field(default_factory=list)

    def timing_kwargs(self) -> dict[str, Any]:
        t = self.tier
        return {
            "warmup": t.warmup,
            "min_repeats": t.min_repeats,
            "max_repeats": t.max_repeats,
            "budget_s": t.budget_s,
            "max_s": t.cell_time_s,
            "stop_at": self.deadline,
        }

    def out_of_time(self, skipped: list[dict[str, Any]], section: str, what: str) -> bool:
        """True (and ``what`` listed as skipped) when the section's time limit has passed."""
        if self.deadline is None or time.perf_counter() < self.deadline:
            return False
        skipped.append({"section": section, "what": what, "reason": "time limit of the section"})
        return True

    def keep(self, record: dict[str, Any]) -> dict[str, Any]:
        """Register a new record (so an interrupted run still reports it); returns it."""
        self.produced.append(record)
        return record


def section_limits(
    tier: wl.Tier, sections: tuple[str, ...], total_s: float | None = None
) -> dict[str, float]:
    """Seconds allotted to each of ``sections``: the tier's ``section_time_s``, or with
    ``total_s`` those shares rescaled to ``total_s`` in all (sections the tier gives no limit
    share equally when it has none at all, else get the mean of the others)."""
    limits = {s: v for s, v in tier.section_time_s if s in sections}
    if total_s is None:
        return limits
    mean = sum(limits.values()) / len(limits) if limits else 1.0
    weights = {s: limits.get(s, mean) for s in sections}
    scale = total_s / sum(weights.values())
    return {s: w * scale for s, w in weights.items()}


def _fits(ctx: Context, op: str, impl: str, T: int, D: int, esize: int) -> int | None:
    """``None`` when (op, impl) at this size fits the memory budget, else the bytes it needs."""
    need = T * D * esize + wl.estimated_extra_bytes(op, impl, T, D, esize)
    return None if need <= ctx.budget_bytes else need


def _fmt_bytes(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def _op_records(
    ctx: Context,
    section: str,
    ops: tuple[str, ...],
    T: int,
    D: int,
    dtype: str,
    skipped: list[dict[str, Any]],
    impls: tuple[str, ...] = wl.IMPLS,
) -> list[dict[str, Any]]:
    """Time ``ops`` × ``impls`` on one (T, D, dtype) input; one record per measured pair.

    On CUDA the D-sized ops rotate over copies of the input (:data:`ROTATE_BYTES` in all) so
    that the timed calls read J from memory, not from L2; memory and quality are measured on
    the first copy.
    """
    esize = wl.element_size(dtype)
    if ctx.out_of_time(skipped, section, f"T={T} D={D} {dtype}"):
        return []
    if _fits(ctx, "gram", "mtl_fast", T, D, esize) is not None:
        skipped.append(
            {
                "section": section,
                "what": f"T={T} D={D} {dtype}",
                "reason": f"memory: J alone needs {_fmt_bytes(T * D * esize)} "
                f"(budget {_fmt_bytes(ctx.budget_bytes)})",
            }
        )
        return []
    inp = wl.OpInputs.make(T, D, dtype, ctx.device)
    copies = [inp]
    if uses_events(ctx.device) and any(op in wl.D_OPS for op in ops):
        n = min(MAX_INPUT_COPIES, math.ceil(ROTATE_BYTES / (T * D * esize)))
        copies += [wl.OpInputs(inp.J.clone(), inp.G, inp.alpha) for _ in range(n - 1)]
    records = []
    fns: dict[str, Callable[[], Any]] = {}
    timed: dict[str, Callable[[], Any]] = {}
    for i, op in enumerate(ops):
        if i > 0 and ctx.out_of_time(skipped, section, f"{op} T={T} D={D} {dtype}"):
            continue
        fns, timed = {}, {}
        for impl in impls:
            what = f"{op} {impl} T={T} D={D} {dtype}"
            need = _fits(ctx, op, impl, T, D, esize) if op in wl.D_OPS else None
            if need is not None:
                skipped.append(
                    {
                        "section": section,
                        "what": what,
                        "reason": f"memory: needs ~{_fmt_bytes(need)} "
                        f"(budget {_fmt_bytes(ctx.budget_bytes)})",
                    }
                )
                continue
            try:
                fns[impl] = wl.build_op(op, impl, inp)
                rest = copies[1:] if op in wl.D_OPS else []
                timed[impl] = rotating([fns[impl]] + [wl.build_op(op, impl, c) for c in rest])
            except wl.NotApplicable:
                continue
            except wl.Unsupported as exc:
                skipped.append({"section": section, "what": what, "reason": str(exc)})
        errors: dict[str, str] = {}
        timings = time_interleaved(timed, ctx.device, errors=errors, **ctx.timing_kwargs())
        for impl, msg in errors.items():
            skipped.append(
                {"section": section, "what": f"{op} {impl} T={T} D={D} {dtype}", "reason": msg}
            )
        base = timings.get("mtl_fast")
        floor = wl.floor_bytes(op, T, D, esize)
        for impl, tm in timings.items():
            rec: dict[str, Any] = {
                "section": section,
                "op": op,
                "impl": impl,
                "T": T,
                "D": D if op in wl.D_OPS else None,
                "dtype": dtype,
                "device": ctx.device.type,
                **asdict(tm),
                "vs_mtl_fast": tm.median_s / base.median_s if base else None,
            }
            if floor is not None:
                rec["floor_bytes"] = floor
                rec["gbps"] = floor / tm.median_s / 1e9
                rec["floor_s"] = floor / (ctx.copy_gbps * 1e9)
                rec["vs_floor"] = tm.median_s / rec["floor_s"]
            if impl == "mtl_fast" and op in wl.D_OPS and ctx.device.type == "cuda":
                device_s = graph_device_seconds(timed[impl], ctx.device)
                rec["device_s"] = device_s
                if device_s is not None and floor is not None:
                    rec["device_vs_floor"] = device_s / rec["floor_s"]
            if op == "mgda_weights":
                rec.update(_mgda_quality(inp.G, fns[impl]))
            if ctx.tier.memory and op in wl.D_OPS:
                try:
                    extra = peak_extra_bytes(fns[impl], ctx.device)
                except Exception:
                    extra = None
                rec["peak_extra_bytes"] = extra
                if extra is not None:
                    rec["extra_per_TD"] = extra / (T * D * esize)
            records.append(ctx.keep(rec))
        ctx.progress(
            f"  {section} {op:<14} T={T:<5} D={D:<9} {dtype}: "
            + ", ".join(f"{k} {v.median_s * 1e3:.3g} ms" for k, v in timings.items())
        )
    del inp, copies, fns, timed
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()  # the next cell's J may need one large free block
    return records


def _mgda_quality(G: torch.Tensor, fn: Callable[[], Any]) -> dict[str, Any]:
    """Relative objective (vs the best of quadprog and every solver here) and KKT gap."""
    G64 = G.detach().to(torch.float64).cpu()
    alpha = fn().detach().to(torch.float64).cpu()
    f = wl.mgda_objective(G64, alpha)
    w = G64 @ alpha
    gap = float(f - w.min())  # Frank-Wolfe gap: an upper bound on f − f*
    oracle = wl.mgda_oracle(G)
    out: dict[str, Any] = {"objective": f, "fw_gap_rel": gap / f if f > 0 else None}
    if oracle is not None:
        out["oracle_objective"] = wl.mgda_objective(G64, oracle)
    return out


def _finish_mgda(records: list[dict[str, Any]]) -> None:
    """rel_objective = (f − f_best) / f_best, f_best the smallest objective of the oracle and
    every solver on the same G (the oracle alone can be a little off by its ridge)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("op") == "mgda_weights" and "objective" in r:
            groups.setdefault((r["section"], r["T"], r["dtype"], r["device"]), []).append(r)
    for rs in groups.values():
        cands = [r["objective"] for r in rs] + [
            r["oracle_objective"] for r in rs if r.get("oracle_objective") is not None
        ]
        best = min(cands)
        for r in rs:
            r["rel_objective"] = (r["objective"] - best) / best if best > 0 else 0.0


def run_ops(ctx: Context, skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 1: gram, the two solves, combine and both full steps, side by side.

    Order (what a time limit cuts comes last): the T×T solves, the D-sized ops over the grid
    by increasing T (every dtype and D of a T before the next T), the precision comparison
    (when the tier has it), and on CUDA the CUDA-graph capture checks (last, so that a failed
    capture cannot disturb the timings; they run whatever the time limit: about a second).
    """
    tier = ctx.tier
    records: list[dict[str, Any]] = []
    # The T×T solves do not depend on D or on the gradients' dtype (G is float32).
    D_solve = min(tier.ops_D)
    for T in tier.ops_T:
        records += _op_records(ctx, "ops", wl.SOLVE_OPS, T, D_solve, "fp32", skipped)
    _finish_mgda(records)
    for T in tier.ops_T:
        for dtype in tier.ops_dtypes:
            for D in tier.ops_Ds(T, ctx.device.type):
                records += _op_records(ctx, "ops", wl.D_OPS, T, D, dtype, skipped)
    if tier.precision:
        records += run_precision(ctx, skipped)
    if ctx.device.type == "cuda":
        records += run_capture_checks(ctx)
    return records


def run_precision(
    ctx: Context, skipped: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """IMTL-G weights' error against a float64 oracle (worst over the tier's seeds)."""
    tier = ctx.tier
    records = []
    for T in tier.precision_T:
        if skipped is not None and ctx.out_of_time(skipped, "ops", f"precision T={T}"):
            continue
        worst: dict[str, float] = {}
        for seed in range(tier.precision_seeds):
            for impl, e in wl.imtlg_errors(T, tier.precision_D, seed).items():
                worst[impl] = max(worst.get(impl, 0.0), e)
        for impl, e in worst.items():
            records.append(
                {
                    "section": "ops",
                    "op": "imtlg_error",
                    "impl": impl,
                    "T": T,
                    "D": tier.precision_D,
                    "dtype": "fp32",
                    "device": "cpu",
                    "rel_error": e,
                    "seeds": tier.precision_seeds,
                }
            )
            ctx.keep(records[-1])
        ctx.progress(f"  precision T={T}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    return records


def run_capture_checks(ctx: Context) -> list[dict[str, Any]]:
    """CUDA only: can the full mtl_fast steps be captured in a CUDA graph (no host sync)?"""
    records = []
    T, D = 8, 1_000_000
    inp = wl.OpInputs.make(T, D, "fp32", ctx.device)
    for op in ("step_imtlg", "step_mgda"):
        fn = wl.build_op(op, "mtl_fast", inp)
        ok, detail = cuda_graph_capturable(fn)
        records.append(
            {
                "section": "ops",
                "op": f"capture_{op}",
                "impl": "mtl_fast",
                "T": T,
                "D": D,
                "dtype": "fp32",
                "device": "cuda",
                "capturable": ok,
                "detail": detail,
            }
        )
        ctx.keep(records[-1])
        ctx.progress(f"  CUDA-graph capture of {op}: {'ok' if ok else 'FAILED ' + detail}")
    return records


def capture_graph(
    fn: Callable[[], Any], device: torch.device | None = None, *, calls: int = 1, warmup: int = 1
) -> torch.cuda.CUDAGraph:
    """``calls`` calls of ``fn`` captured in a CUDA graph, after ``warmup`` calls on a side
    stream (Triton compiles, allocator and optimizer state settle outside the capture). A host
    synchronisation inside ``fn`` (``.item()``, ``bool(tensor)``, a host copy) makes it raise."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def graph_device_seconds(
    fn: Callable[[], Any], device: torch.device, calls: int = 10, replays: int = 5
) -> float | None:
    """Device time of one call of ``fn`` without the host's launch overhead: ``calls`` calls
    captured in a CUDA graph, the median over ``replays`` replays timed with events, divided by
    ``calls``. ``None`` when the call cannot be captured (a host synchronisation inside)."""
    try:
        graph = capture_graph(fn, device, calls=calls)
        graph.replay()
        torch.cuda.synchronize(device)
        samples = []
        for _ in range(replays):
            start, end = new_event(device), new_event(device)
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end) / 1e3 / calls)
        del graph
        return statistics.median(samples)
    except Exception:
        torch.cuda.synchronize(device)
        return None


def cuda_graph_capturable(fn: Callable[[], Any]) -> tuple[bool, str]:
    """Capture one call of ``fn`` in a CUDA graph and replay it: a host sync (``.item()``,
    ``bool(tensor)``, a host copy) inside makes the capture fail."""
    try:
        graph = capture_graph(fn, warmup=2)
        graph.replay()
        torch.cuda.synchronize()
        return True, "captured and replayed"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _time_train_steps(
    ctx: Context,
    steps: dict[str, wl.TrainStep],
    skipped: list[dict[str, Any]],
    section: str,
    T: int,
) -> dict[str, Timing]:
    """Training steps timed interleaved with the tier's training-step repeats; a step that
    fails is recorded in ``skipped`` (as ``"<name> T=<T>"`` of ``section``) and left out."""
    kw = ctx.timing_kwargs()
    kw["warmup"] = ctx.tier.train_warmup
    kw["min_repeats"] = ctx.tier.train_min_repeats
    kw["max_repeats"] = max(kw["max_repeats"], kw["min_repeats"])
    kw["max_s"] = None  # the training step keeps its repeats (the section has a time limit)
    errors: dict[str, str] = {}
    timings = time_interleaved(
        {n: s.step for n, s in steps.items()}, ctx.device, errors=errors, **kw
    )
    for name, msg in errors.items():
        skipped.append({"section": section, "what": f"{name} T={T}", "reason": msg})
    return timings


def _train_records(
    ctx: Context,
    section: str,
    names: tuple[str, ...],
    Ts: tuple[int, ...],
    skipped: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    records = []
    for T in Ts:
        if ctx.out_of_time(skipped, section, f"T={T}"):
            continue
        steps: dict[str, wl.TrainStep] = {}
        for name in names:
            try:
                steps[name] = wl.make_method_step(name, T, ctx.tier, ctx.device)
            except (LookupError, TypeError, ValueError, wl.Unsupported) as exc:
                skipped.append({"section": section, "what": f"{name} T={T}", "reason": str(exc)})
        timings = _time_train_steps(ctx, steps, skipped, section, T)
        base = timings.get("EqualWeighting")
        any_setup = next(iter(steps.values()), None)
        for name, tm in timings.items():
            rec = {
                "section": section,
                "method": name,
                "family": steps[name].family,
                "T": T,
                "device": ctx.device.type,
                **asdict(tm),
                "vs_equal": tm.median_s / base.median_s if base else None,
            }
            if any_setup is not None:
                rec["params"] = any_setup.setup.num_parameters()
                rec["feature_numel"] = any_setup.setup.feature_numel()
                rec["batch"], _, rec["image"], _ = any_setup.setup.x.shape
            records.append(ctx.keep(rec))
        ctx.progress(
            f"  {section} T={T}: "
            + ", ".join(f"{k} {v.median_s * 1e3:.3g} ms" for k, v in timings.items())
        )
    return records


def run_train(ctx: Context, skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 2: the step time of every method relative to equal weighting."""
    names = ctx.tier.train_methods or wl.METHOD_NAMES + tuple(wl.LIBMTL_METHODS)
    return _train_records(ctx, "train", names, ctx.tier.train_T, skipped)


def run_stats(ctx: Context, skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 3: one CV-Weighting step, C++ accumulator vs the torch one vs pure PyTorch (on
    the CPU: the C++ accumulator is a host accumulator)."""
    device = torch.device("cpu")
    k = ctx.tier.stats_steps
    records = []
    for T in ctx.tier.stats_T:
        if ctx.out_of_time(skipped, "stats", f"T={T}"):
            continue
        fns: dict[str, Callable[[], Any]] = {}
        for impl in wl.STATS_IMPLS:
            try:
                step = wl.make_stats_step(impl, T, device)
            except wl.Unsupported as exc:
                skipped.append({"section": "stats", "what": f"{impl} T={T}", "reason": str(exc)})
                continue

            def many(step: Callable[[], Any] = step) -> None:
                for _ in range(k):
                    step()

            fns[impl] = many
        errors: dict[str, str] = {}
        kw = ctx.timing_kwargs()
        kw["max_s"] = None
        timings = time_interleaved(fns, device, errors=errors, **kw)
        for impl, msg in errors.items():
            skipped.append({"section": "stats", "what": f"{impl} T={T}", "reason": msg})
        pure = timings.get("pure PyTorch")
        for impl, tm in timings.items():
            per = Timing(tm.median_s / k, tm.q1_s / k, tm.q3_s / k, tm.min_s / k, tm.repeats)
            records.append(
                {
                    "section": "stats",
                    "impl": impl,
                    "T": T,
                    "device": "cpu",
                    "steps_per_repeat": k,
                    **asdict(per),
                    "vs_pure": per.median_s / (pure.median_s / k) if pure else None,
                }
            )
            ctx.keep(records[-1])
        ctx.progress(
            f"  stats T={T}: "
            + ", ".join(f"{n} {v.median_s / k * 1e6:.3g} µs" for n, v in timings.items())
        )
    return records


def run_scaling(ctx: Context, skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 4: the full IMTL-G step over the tier's T at fixed D, and the training step.

    A cell the ops section measured in the same run (the IMTL-G step at T, D = scaling_D,
    fp32) is reused, not measured again. Under a time limit the op part may use 60% of the
    section's time when the training step follows (it gets the rest, and what the op part
    leaves).
    """
    records: list[dict[str, Any]] = []
    D = ctx.tier.scaling_D
    measured: dict[int, list[dict[str, Any]]] = {}
    for r in ctx.produced:
        if (r["section"], r.get("op"), r.get("D"), r.get("dtype")) == (
            "ops",
            "step_imtlg",
            D,
            "fp32",
        ):
            measured.setdefault(r["T"], []).append(r)
    deadline = ctx.deadline
    if deadline is not None and ctx.tier.scaling_train_T:
        ctx.deadline = time.perf_counter() + 0.6 * max(0.0, deadline - time.perf_counter())
    for T in ctx.tier.scaling_T:
        if T in measured:
            records += [
                ctx.keep({**r, "section": "scaling", "reused_from": "ops"}) for r in measured[T]
            ]
            continue
        records += _op_records(ctx, "scaling", ("step_imtlg",), T, D, "fp32", skipped)
    ctx.deadline = deadline
    if ctx.tier.scaling_train_T:
        records += _train_records(
            ctx, "scaling_train", wl.SCALING_METHODS, ctx.tier.scaling_train_T, skipped
        )
    return records


def run_compile(ctx: Context, skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 5: the training step of :data:`~benchmarks.harness.workloads.COMPILE_METHODS`
    eager, with the model compiled (``fullgraph=True``) and with the whole step compiled
    (inductor), timed interleaved; each relative to the same method's eager step. The first
    (compiling) call of each is made before the timing and reported as ``first_call_s``."""
    records = []
    for T in ctx.tier.train_T:
        steps: dict[str, wl.TrainStep] = {}
        for name in wl.COMPILE_METHODS:
            for mode in wl.COMPILE_MODES:
                if ctx.out_of_time(skipped, "compile", f"{name} {mode} T={T}"):
                    continue
                torch._dynamo.reset()
                try:
                    steps[f"{name} {mode}"] = wl.make_compiled_step(
                        name, T, ctx.tier, ctx.device, mode
                    )
                except Exception as exc:  # a compiler failure is a result, not a crash
                    msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    skipped.append({"section": "compile", "what": f"{name} {mode}", "reason": msg})
        timings = _time_train_steps(ctx, steps, skipped, "compile", T)
        for key, tm in timings.items():
            name, mode = key.rsplit(" ", 1)
            eager = timings.get(f"{name} eager")
            rec = {
                "section": "compile",
                "method": name,
                "mode": mode,
                "family": steps[key].family,
                "T": T,
                "device": ctx.device.type,
                **asdict(tm),
                "vs_eager": tm.median_s / eager.median_s if eager else None,
                "first_call_s": steps[key].setup.extras.get("first_call_s"),
                "params": steps[key].setup.num_parameters(),
                "batch": steps[key].setup.x.shape[0],
                "image": steps[key].setup.x.shape[-1],
            }
            records.append(ctx.keep(rec))
        ctx.progress(
            f"  compile T={T}: "
            + ", ".join(f"{k} {v.median_s * 1e3:.3g} ms" for k, v in timings.items())
        )
    torch._dynamo.reset()
    return records


RUNNERS: dict[str, Callable[[Context, list[dict[str, Any]]], list[dict[str, Any]]]] = {
    "ops": run_ops,
    "train": run_train,
    "stats": run_stats,
    "scaling": run_scaling,
    "compile": run_compile,
}


def run(
    tier: wl.Tier | str | None = None,
    sections: tuple[str, ...] | list[str] | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """Run the benchmark sections and return the results (the JSON document).

    Args:
        tier: a :class:`~benchmarks.harness.workloads.Tier` or its name (default: the environment
            variable, else ``smoke``).
        sections: a subset of :data:`SECTIONS` (default: the tier's ``default_sections``, else
            :data:`DEFAULT_SECTIONS`).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        progress: called with one line per measured cell (default: silent).
        time_limit_s: total seconds for the sections (:func:`section_limits`; default: the
            tier's own limits, if any).

    An interrupt (``KeyboardInterrupt``, e.g. SIGINT from ``timeout``) during a section ends
    the run: the results hold what was measured and ``"interrupted"`` names the section. A
    section that raises keeps what it measured, is listed as skipped with the error, and the
    next section runs.
    """
    if not isinstance(tier, wl.Tier):
        tier = wl.get_tier(tier)
    sections = tuple(sections or tier.default_sections or DEFAULT_SECTIONS)
    for s in sections:
        if s not in SECTIONS:
            raise BenchError(f"unknown section {s!r}; expected some of {SECTIONS}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("device 'cuda' requested but torch.cuda.is_available() is False")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    progress = progress or _quiet
    started = time.time()
    info = machine_info(device)
    progress(f"mtl-fast bench: tier {tier.name}, device {device}, {info['cpu']}")
    copy_gbps = copy_bandwidth(device, tier.copy_bytes, repeats=max(5, min(tier.min_repeats, 20)))
    progress(f"  copy bandwidth {copy_gbps:.1f} GB/s")
    budget = wl.memory_budget(device, tier.memory_cap_bytes)
    ctx = Context(tier, device, progress, copy_gbps, budget)
    limits = section_limits(tier, sections, time_limit_s)
    skipped: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    durations: dict[str, float] = {}
    interrupted = None
    carry = 0.0  # time a section left unused, passed on to the next one
    for s in sections:
        t0 = time.perf_counter()
        limit = limits.get(s)
        ctx.deadline = None if limit is None else t0 + limit + carry
        progress(f"[{s}]" + ("" if limit is None else f" (time limit {limit + carry:.0f} s)"))
        mark = len(ctx.produced)
        try:
            records += RUNNERS[s](ctx, skipped)
        except KeyboardInterrupt:
            records += ctx.produced[mark:]
            interrupted = s
            progress(f"interrupted during section {s}: reporting what was measured")
        except Exception as exc:  # one section's failure must not lose the others' numbers
            records += ctx.produced[mark:]
            reason = f"the section failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            skipped.append({"section": s, "what": "rest of the section", "reason": reason})
            progress(f"  {reason}\n" + traceback.format_exc())
        durations[s] = time.perf_counter() - t0
        if ctx.deadline is not None:
            carry = max(0.0, ctx.deadline - time.perf_counter())
        if interrupted:
            break
    results = {
        "schema": 1,
        "tier": tier.name,
        "sections": list(sections),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "started_utc": datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "duration_s": time.time() - started,
        "section_durations_s": durations,
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        "machine": info,
        "machine_slug": machine_slug(info),
        "copy_gbps": copy_gbps,
        "memory_budget_bytes": ctx.budget_bytes,
        "time_limits_s": limits,
        "interrupted": interrupted,
        "tier_config": asdict(tier),
        "records": records,
        "skipped": skipped,
    }
    from .report import evaluate_targets

    results["targets"] = evaluate_targets(results)
    return results
