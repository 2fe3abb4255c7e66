r"""Measurement: timing, copy bandwidth, peak extra memory, the machine record, and the four
sections of ``mtl-fast bench`` (ops, train, stats, scaling).

Timing (:func:`time_interleaved`): the implementations compared in one table cell are timed in
interleaved rounds (one call of each per round), after warm-up calls, with
``torch.cuda.synchronize()`` around every call on a GPU; the median of the rounds is reported
and every ratio is formed from medians of the same run, so slow drift of a shared machine hits
all of them alike.

Bandwidth: :func:`copy_bandwidth` times a large tensor copy in the same run; an op's achieved
GB/s is its floor bytes (:func:`mtl_fast.bench.workloads.floor_bytes`) over its median time.

Peak extra memory (:func:`peak_extra_bytes`): on CUDA ``torch.cuda.max_memory_allocated`` around
one call minus what was allocated before; on the CPU the running sum of the allocation events
recorded by ``torch.profiler.profile(profile_memory=True)`` — the bytes of the temporaries (and
the output) of one call, the inputs excluded.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mtl_fast.bench import workloads as wl

Progress = Callable[[str], None]
SECTIONS = ("ops", "train", "stats", "scaling")
#: Calls slower than this (seconds) are repeated at most 3 times (and warmed up once).
SLOW_CALL_S = 2.0


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


def git_commit() -> str | None:
    """The mtl_fast checkout's commit (``+dirty`` when the tree has changes), if any."""
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
    """Summary of the per-call times of one implementation (seconds)."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    repeats: int


def _summary(times: list[float]) -> Timing:
    ts = sorted(times)
    if len(ts) >= 4:
        q1, _, q3 = statistics.quantiles(ts, n=4)
    else:
        q1, q3 = ts[0], ts[-1]
    return Timing(statistics.median(ts), q1, q3, ts[0], len(ts))


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 0.5,
    errors: dict[str, str] | None = None,
) -> dict[str, Timing]:
    """Time several callables in interleaved rounds (the order rotated each round); the median
    per callable.

    Each callable gets ``warmup`` untimed calls (at least one: it also measures the call's
    cost; a call slower than 1 s gets no second warm-up), then rounds of one timed call each,
    until ``min_repeats`` rounds are done and the time budget (``budget_s`` per callable) is
    spent, or ``max_repeats`` rounds. When the slowest call takes over 2 s, ``min(3,
    min_repeats)`` rounds are done. A callable that raises is dropped and its error stored in
    ``errors``.
    """
    live: dict[str, Callable[[], Any]] = {}
    first: dict[str, float] = {}
    for name, fn in fns.items():
        try:
            for i in range(max(1, warmup)):
                synchronize(device)
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                if i == 0:
                    first[name] = time.perf_counter() - t0
                    if first[name] > SLOW_CALL_S / 2:
                        break  # one warm-up call is plenty for a call this long
            live[name] = fn
        except Exception as exc:
            if errors is not None:
                errors[name] = f"{type(exc).__name__}: {exc}"
    if not live:
        return {}
    slowest = max(first[n] for n in live)
    floor = min(3, min_repeats) if slowest > SLOW_CALL_S else min_repeats
    times: dict[str, list[float]] = {n: [] for n in live}
    budget = budget_s * len(live)
    start = time.perf_counter()
    rounds = 0
    order = list(live.items())
    while rounds < max_repeats and (rounds < floor or time.perf_counter() - start < budget):
        # Rotate the order every round: no callable always runs first (or after the same one).
        k = rounds % len(order)
        for name, fn in order[k:] + order[:k]:
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {n: _summary(ts) for n, ts in times.items()}


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
    """Run-wide settings shared by the sections."""

    tier: wl.Tier
    device: torch.device
    progress: Progress
    copy_gbps: float
    budget_bytes: int

    def timing_kwargs(self) -> dict[str, Any]:
        t = self.tier
        return {
            "warmup": t.warmup,
            "min_repeats": t.min_repeats,
            "max_repeats": t.max_repeats,
            "budget_s": t.budget_s,
        }


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
    """Time ``ops`` × ``impls`` on one (T, D, dtype) input; one record per measured pair."""
    esize = wl.element_size(dtype)
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
    records = []
    for op in ops:
        fns: dict[str, Callable[[], Any]] = {}
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
            except wl.NotApplicable:
                continue
            except wl.Unsupported as exc:
                skipped.append({"section": section, "what": what, "reason": str(exc)})
        errors: dict[str, str] = {}
        timings = time_interleaved(fns, ctx.device, errors=errors, **ctx.timing_kwargs())
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
            records.append(rec)
        ctx.progress(
            f"  {section} {op:<14} T={T:<5} D={D:<9} {dtype}: "
            + ", ".join(f"{k} {v.median_s * 1e3:.3g} ms" for k, v in timings.items())
        )
    del inp
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
    """Section 1: gram, the two solves, combine and both full steps, side by side."""
    tier = ctx.tier
    Ds = tier.ops_D + (tier.gpu_extra_D if ctx.device.type == "cuda" else ())
    records: list[dict[str, Any]] = []
    for dtype in tier.ops_dtypes:
        for T in tier.ops_T:
            for D in Ds:
                records += _op_records(ctx, "ops", wl.D_OPS, T, D, dtype, skipped)
    # The T×T solves do not depend on D or on the gradients' dtype (G is float32).
    D_solve = min(tier.ops_D)
    for T in tier.ops_T:
        records += _op_records(ctx, "ops", wl.SOLVE_OPS, T, D_solve, "fp32", skipped)
    _finish_mgda(records)
    records += run_precision(ctx)
    if ctx.device.type == "cuda":
        records += run_capture_checks(ctx)
    return records


def run_precision(ctx: Context) -> list[dict[str, Any]]:
    """IMTL-G weights' error against a float64 oracle (worst over the tier's seeds)."""
    tier = ctx.tier
    records = []
    for T in tier.precision_T:
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
        ctx.progress(f"  CUDA-graph capture of {op}: {'ok' if ok else 'FAILED ' + detail}")
    return records


def cuda_graph_capturable(fn: Callable[[], Any]) -> tuple[bool, str]:
    """Capture one call of ``fn`` in a CUDA graph and replay it: a host sync (``.item()``,
    ``bool(tensor)``, a host copy) inside makes the capture fail."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        return True, "captured and replayed"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _train_records(
    ctx: Context,
    section: str,
    names: tuple[str, ...],
    Ts: tuple[int, ...],
    skipped: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    records = []
    for T in Ts:
        steps: dict[str, wl.TrainStep] = {}
        for name in names:
            try:
                steps[name] = wl.make_method_step(name, T, ctx.tier, ctx.device)
            except (LookupError, TypeError, ValueError, wl.Unsupported) as exc:
                skipped.append({"section": section, "what": f"{name} T={T}", "reason": str(exc)})
        errors: dict[str, str] = {}
        kw = ctx.timing_kwargs()
        kw["warmup"] = ctx.tier.train_warmup
        kw["min_repeats"] = ctx.tier.train_min_repeats
        kw["max_repeats"] = max(kw["max_repeats"], kw["min_repeats"])
        timings = time_interleaved(
            {n: s.step for n, s in steps.items()}, ctx.device, errors=errors, **kw
        )
        for name, msg in errors.items():
            skipped.append({"section": section, "what": f"{name} T={T}", "reason": msg})
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
            records.append(rec)
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
        timings = time_interleaved(fns, device, errors=errors, **ctx.timing_kwargs())
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
        ctx.progress(
            f"  stats T={T}: "
            + ", ".join(f"{n} {v.median_s / k * 1e6:.3g} µs" for n, v in timings.items())
        )
    return records


def run_scaling(ctx: Context, skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Section 4: the full IMTL-G step for T up to 1024 at fixed D, and the training step."""
    records: list[dict[str, Any]] = []
    for T in ctx.tier.scaling_T:
        records += _op_records(
            ctx, "scaling", ("step_imtlg",), T, ctx.tier.scaling_D, "fp32", skipped
        )
    if ctx.tier.scaling_train_T:
        records += _train_records(
            ctx, "scaling_train", wl.SCALING_METHODS, ctx.tier.scaling_train_T, skipped
        )
    return records


RUNNERS: dict[str, Callable[[Context, list[dict[str, Any]]], list[dict[str, Any]]]] = {
    "ops": run_ops,
    "train": run_train,
    "stats": run_stats,
    "scaling": run_scaling,
}


def run(
    tier: wl.Tier | str | None = None,
    sections: tuple[str, ...] | list[str] | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the benchmark sections and return the results (the JSON document).

    Args:
        tier: a :class:`~mtl_fast.bench.workloads.Tier` or its name (default: the environment
            variable, else ``smoke``).
        sections: a subset of ``("ops", "train", "stats", "scaling")`` (default: all).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        progress: called with one line per measured cell (default: silent).
    """
    if not isinstance(tier, wl.Tier):
        tier = wl.get_tier(tier)
    sections = tuple(sections or SECTIONS)
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
    copy_gbps = copy_bandwidth(device, tier.copy_bytes)
    progress(f"  copy bandwidth {copy_gbps:.1f} GB/s")
    ctx = Context(tier, device, progress, copy_gbps, wl.memory_budget(device))
    skipped: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    durations: dict[str, float] = {}
    for s in sections:
        t0 = time.perf_counter()
        progress(f"[{s}]")
        records += RUNNERS[s](ctx, skipped)
        durations[s] = time.perf_counter() - t0
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
        "tier_config": asdict(tier),
        "records": records,
        "skipped": skipped,
    }
    from mtl_fast.bench.report import evaluate_targets

    results["targets"] = evaluate_targets(results)
    return results
