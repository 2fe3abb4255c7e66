"""Measure the Gram and combine kernels' launch configurations on this GPU and propose table rows.

For each case (op, dtype, T) every candidate configuration (path, BLOCK_D, warps, stages; the
D-split target afterwards) is timed on the device at a large D and the best few again at a small
D. The result is printed as a table and as rows in the format of :mod:`mtl_fast.kernels.tuned`,
and written to ``--out/tune-<gpu>-<date>.json`` with every measurement.

Compilation is what costs time (each candidate is a separate Triton compile), so the cases are
spread over worker processes that compile in parallel (phase 1, all at once, on the real sizes),
then wait at a barrier and take turns for the timed phase (phase 2, one worker at a time under a
lock, so timings never overlap). Timing: CUDA events around each launch, after warm-up, median
of ``--reps`` launches, rotating among copies of the input when one copy would fit in L2.
Each candidate's G is checked against a float64 reference before it is timed; a candidate that
fails to compile or is inaccurate is reported, not used.

    python benchmarks/tune_kernels.py --out benchmarks/results            # the whole sweep
    python benchmarks/tune_kernels.py --quick --device cpu               # dry run (interpreter)

On the CPU (``--device cpu``) the kernels run in the Triton interpreter: useful only as a dry
run of the script (tiny sizes, two candidates per case).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Run as a script (`python benchmarks/x.py`): the repository root, so `benchmarks.harness` imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 1024**3
#: Relative error of G (Frobenius) against float64 above which a candidate is rejected.
MAX_REL_ERROR = {"fp32": 1e-5, "bf16": 1e-5}
#: Copies of J rotated through when one copy is smaller than this (bytes): stay out of L2.
ROTATE_BYTES = 256 * 1024**2


def cases(quick: bool) -> list[dict[str, Any]]:
    """The (op, dtype, T, D_big, D_small) cases of the sweep."""
    out: list[dict[str, Any]] = []
    if quick:
        for dtype in ("fp32", "bf16"):
            out.append({"op": "gram", "dtype": dtype, "T": 3, "D": 4096, "D_small": 1024})
            out.append({"op": "combine", "dtype": dtype, "T": 3, "D": 4096, "D_small": 1024})
        return out
    for dtype in ("fp32", "bf16"):
        for T in (2, 4, 8, 16):
            out.append({"op": "gram", "dtype": dtype, "T": T, "D": 16_000_000, "D_small": 10**6})
        for T in (32, 64, 256):
            out.append({"op": "gram", "dtype": dtype, "T": T, "D": 4_000_000, "D_small": 10**6})
        for T in (2, 8, 64):
            out.append({"op": "combine", "dtype": dtype, "T": T, "D": 16_000_000, "D_small": 10**6})
    return out


def candidates(case: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Compile-time configurations to try for one case (the D-split target is tuned after).

    Gram, broadcast path (T ≤ 16): ``BLOCK_D`` around the register budget of the fp32 partial
    sums (``BLOCK_T² · BLOCK_D / threads`` ≈ 64 values per thread). Dot path (T > 4): three
    ``BLOCK_D`` per tile size, fp32 also with ``tf32x3`` products. Warps 4/8, 3 stages (the first
    sweep, with 2–4 stages, never preferred another count by more than a few percent).
    """
    T, wide = case["T"], case["dtype"] != "fp32"
    if case["op"] == "combine":
        blocks = (1024, 4096) if quick else (512, 1024, 2048, 4096)
        warps = (4,) if quick else (2, 4, 8)
        return [{"block_d": b, "num_warps": w} for b, w in itertools.product(blocks, warps)]
    out: list[dict[str, Any]] = []
    if T <= 16:
        block_t = max(2, 1 << (T - 1).bit_length())
        for w in (4,) if quick else (4, 8):
            limit = max(16, 64 * 32 * w // (block_t * block_t))
            blocks = (limit,) if quick else (limit // 2, limit, 2 * limit)
            for b, st in itertools.product(blocks, (3,)):
                if b >= 16:
                    out.append({"broadcast": True, "block_d": b, "num_warps": w, "num_stages": st})
    if T > 4:
        scale = 2 if wide else 1
        block_t = 16 if T <= 16 else 32 if T <= 32 else 64
        base = {16: (128, 256, 512), 32: (64, 128, 256), 64: (32, 64, 128)}[block_t]
        blocks = (base[1] * scale,) if quick else tuple(b * scale for b in base)
        precisions = ("ieee",) if wide or quick else ("ieee", "tf32x3")
        for b, w, st, pr in itertools.product(blocks, (4,) if quick else (4, 8), (3,), precisions):
            cand = {"broadcast": False, "block_d": b, "num_warps": w, "num_stages": st}
            if pr != "ieee":
                cand["precision"] = pr
            out.append(cand)
    return out


# --------------------------------------------------------------------------- worker side


def _make_inputs(case: dict[str, Any], D: int, device: Any) -> list[Any]:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[case["dtype"]]
    T = case["T"]
    gen = torch.Generator(device=device).manual_seed(T * 7919 + D)
    nbytes = T * D * torch.finfo(dtype).bits // 8
    copies = max(1, min(32, math.ceil(ROTATE_BYTES / nbytes))) if device.type == "cuda" else 1
    out = []
    for _ in range(copies):
        scale = torch.exp(torch.linspace(-3, 3, T, device=device))[:, None]
        J = torch.randn(T, D, generator=gen, device=device) * scale
        out.append(J.to(dtype))
    return out


def _runner(case: dict[str, Any], cand: dict[str, Any], J: Any, alpha: Any) -> Any:
    from mtl_fast._validation import as_task_rows
    from mtl_fast.kernels import combine as C
    from mtl_fast.kernels import gram as G

    rows = as_task_rows(J)
    if case["op"] == "gram":
        return lambda: G.gram_rows(rows, **cand)
    return lambda: C.combine_rows(rows, alpha, **cand)


#: Columns of the accuracy check input (a multiple of 16: the same compiled variants as the
#: timed sizes).
CHECK_D = 1 << 18


def _reference(case: dict[str, Any], J: Any, alpha: Any) -> Any:
    """The float64 result of the case's op on J (computed once per case)."""
    J64 = J.double()
    return J64 @ J64.T if case["op"] == "gram" else alpha.double() @ J64


def _check(fn: Any, ref: Any) -> float:
    """Relative error of one call against the float64 reference."""
    return float((fn().double() - ref).norm() / ref.norm())


def _time(fns: list[Any], device: Any, reps: int) -> float:
    """Median device seconds per call, rotating through ``fns`` (one per input copy).

    On CUDA the calls are captured in a CUDA graph (``reps`` calls) and the graph's replays are
    timed with events: device time alone, without the host's per-call launch overhead (which,
    for a 100 µs call, would otherwise be what gets measured). Falls back to events around eager
    calls when a call cannot be captured.
    """

    if device.type != "cuda":
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            fns[i % len(fns)]()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    from benchmarks.harness import runner

    for f in fns:  # every input copy once, outside the capture
        f()
    seconds = runner.graph_device_seconds(runner.rotating(fns), device, calls=reps)
    return seconds if seconds is not None else _time_eager(fns, device, reps)


def _time_eager(fns: list[Any], device: Any, reps: int) -> float:
    """Median seconds per call from events around eager calls (includes launch gaps)."""
    import torch

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        fns[i % len(fns)]()
        ends[i].record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3


def _prepare(case: dict[str, Any], device: Any, quick: bool) -> dict[str, Any]:
    """Phase 1: inputs, every candidate compiled and checked against float64 (on ``CHECK_D``
    columns; the timed sizes reuse the same compiled variants)."""
    import torch

    T = case["T"]
    state: dict[str, Any] = {"inputs": {}, "ok": [], "rejected": []}
    alpha = torch.rand(T, device=device) + 0.1
    for D in (case["D"], case["D_small"]):
        state["inputs"][D] = (_make_inputs(case, D, device), alpha)
    J_check = _make_inputs(case, min(CHECK_D, case["D_small"]), device)[0]
    ref = _reference(case, J_check, alpha)
    limit = MAX_REL_ERROR[case["dtype"]] if case["op"] == "gram" else 1e-2
    for cand in candidates(case, quick):
        try:
            err = _check(_runner(case, cand, J_check, alpha), ref)
            big = state["inputs"][case["D"]][0][0]
            _runner(case, cand, big, alpha)()  # compiles the timed size's variant too
        except Exception as exc:
            state["rejected"].append({**cand, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        if not err < limit:
            state["rejected"].append({**cand, "error": f"rel error {err:.2e}"})
            continue
        state["ok"].append((cand, err))
    # TF32 products must not cost accuracy: within 2× the worst fp32-product candidate.
    ieee = [e for c, e in state["ok"] if c.get("precision", "ieee") == "ieee"]
    if ieee:
        gate = 2 * max(ieee)
        for c, e in [x for x in state["ok"] if x[0].get("precision", "ieee") != "ieee"]:
            if e > gate:
                state["ok"].remove((c, e))
                state["rejected"].append({**c, "error": f"rel error {e:.2e} > 2× fp32's"})
    return state


def _measure(
    case: dict[str, Any], state: dict[str, Any], device: Any, reps: int, deadline: float
) -> dict:
    """Phase 2: time every accepted candidate at the large D; the 3 best again at the small D,
    and the D-split target (Gram) for the best at both."""
    D, D_small = case["D"], case["D_small"]
    rows: list[dict[str, Any]] = []

    def timed(cand: dict[str, Any], d: int) -> float:
        Js, alpha = state["inputs"][d]
        return _time([_runner(case, cand, J, alpha) for J in Js], device, reps)

    default = timed({}, D)
    Js, alpha = state["inputs"][D]
    # The same product through PyTorch (cuBLAS), for scale: J Jᵀ, or αᵀ J in J's dtype.
    if case["op"] == "gram":
        torch_fns = [lambda J=J: J @ J.T for J in Js]
    else:
        torch_fns = [lambda J=J: alpha.to(J.dtype) @ J for J in Js]
    torch_s = _time(torch_fns, device, reps)
    for cand, err in state["ok"]:
        rows.append({**cand, "D": D, "s": timed(cand, D), "rel_error": err})
    rows.sort(key=lambda r: r["s"])
    best = [{k: v for k, v in r.items() if k not in ("D", "s", "rel_error")} for r in rows[:3]]
    small = []
    for cand in best:
        small.append({**cand, "D": D_small, "s": timed(cand, D_small)})
    default_small = timed({}, D_small)
    splits = []
    if case["op"] == "gram" and best and device.type == "cuda" and time.time() < deadline:
        for d in (D, D_small):
            for per_sm in (1, 2, 4, 8, 16):
                cand = {**best[0], "programs_per_sm": per_sm}
                splits.append({**cand, "D": d, "s": timed(cand, d)})
    return {
        **case,
        "default_s": default,
        "torch_s": torch_s,
        "default_small_s": default_small,
        "large": rows,
        "small": small,
        "splits": splits,
        "rejected": state["rejected"],
    }


def _worker(
    my_cases: list[dict[str, Any]],
    device_name: str,
    quick: bool,
    reps: int,
    deadline: float,
    barrier: Any,
    lock: Any,
    queue: Any,
) -> None:
    import torch

    device = torch.device(device_name)
    states = []
    for case in my_cases:
        try:
            states.append((case, _prepare(case, device, quick)))
        except Exception:
            queue.put({**case, "failed": traceback.format_exc()[-2000:]})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    barrier.wait()
    for case, state in states:
        with lock:
            if time.time() > deadline:
                queue.put({**case, "failed": "not measured: over the time budget"})
                continue
            try:
                queue.put(_measure(case, state, device, reps, deadline))
            except Exception:
                queue.put({**case, "failed": traceback.format_exc()[-2000:]})
        del state
    queue.put(None)


# --------------------------------------------------------------------------- main side


def copy_gbps(device: Any) -> float:
    """Device copy bandwidth, (bytes read + written) / median time of a 2 GiB copy (64 MiB on
    the CPU): :func:`benchmarks.harness.runner.copy_bandwidth`."""
    from benchmarks.harness import runner

    return runner.copy_bandwidth(device, 2 * GiB if device.type == "cuda" else 64 * 1024**2, 10)


def floor_bytes(op: str, T: int, D: int, dtype: str) -> int:
    """Gram reads J once; combine reads J and writes one row
    (:func:`benchmarks.harness.workloads.floor_bytes`)."""
    from benchmarks.harness import workloads as wl

    return wl.floor_bytes(op, T, D, wl.element_size(dtype)) or 0


def summarise(results: list[dict[str, Any]], gbps: float) -> list[str]:
    """One line per case: default vs best, GB/s, ratio to the copy-bandwidth floor."""
    lines = [
        f"copy bandwidth {gbps:.0f} GB/s (read + write)",
        f"{'op':<8}{'dtype':<6}{'T':>5}{'D':>11}  {'torch':>10}{'default':>10}{'best':>10}"
        f"{'×dflt':>7}"
        f"{'GB/s':>8}{'×floor':>8}  best config",
    ]
    for r in results:
        if "failed" in r or not r.get("large"):
            lines.append(f"{r['op']:<8}{r['dtype']:<6}{r['T']:>5}  FAILED / no candidate")
            continue
        b = r["large"][0]
        if r.get("splits"):
            large_splits = [s for s in r["splits"] if s["D"] == r["D"]]
            sb = min(large_splits, key=lambda s: s["s"])
            if sb["s"] < b["s"]:
                b = sb
        fb = floor_bytes(r["op"], r["T"], r["D"], r["dtype"])
        cfg = {k: v for k, v in b.items() if k not in ("D", "s", "rel_error")}
        lines.append(
            f"{r['op']:<8}{r['dtype']:<6}{r['T']:>5}{r['D']:>11}  {r['torch_s'] * 1e6:>8.0f}µs"
            f"{r['default_s'] * 1e6:>8.0f}µs"
            f"{b['s'] * 1e6:>8.0f}µs{r['default_s'] / b['s']:>7.2f}{fb / b['s'] / 1e9:>8.0f}"
            f"{b['s'] / (fb / (gbps * 1e9)):>8.2f}  {cfg}"
        )
    return lines


def _best(r: dict[str, Any], D: int) -> dict[str, Any] | None:
    """The fastest measured configuration of case ``r`` at D (splits included)."""
    pool = [x for x in r.get("large", []) + r.get("small", []) + r.get("splits", []) if x["D"] == D]
    if not pool:
        return None
    best = min(pool, key=lambda x: x["s"])
    return {k: v for k, v in best.items() if k not in ("D", "s", "rel_error")}


def propose(results: list[dict[str, Any]], capability: list[int] | None) -> dict[str, Any]:
    """Table rows (:mod:`mtl_fast.kernels.tuned` format) from the measurements: per op and dtype
    class, one row per measured T (covering T up to it) and per D (the small D's row covers D up to
    the geometric mean of the two sizes; the large D's row any D)."""
    table: dict[str, Any] = {"capability": capability, "gram": [], "combine": []}
    for r in sorted(results, key=lambda r: (r["op"], r["dtype"], r["T"])):
        if "failed" in r:
            continue
        d_split = int(math.sqrt(r["D"] * r["D_small"]))
        dclass = "fp32" if r["dtype"] == "fp32" else "16bit"
        for D, d_max in ((r["D_small"], d_split), (r["D"], None)):
            cfg = _best(r, D)
            if cfg is None:
                continue
            row: dict[str, Any] = {"t_max": r["T"], "d_max": d_max, "dtype": dclass}
            if r["op"] == "gram":
                row.update(
                    precision=cfg.get("precision", "ieee"),
                    broadcast=cfg["broadcast"],
                    block_d=cfg["block_d"],
                    num_warps=cfg["num_warps"],
                    num_stages=cfg["num_stages"],
                    programs_per_sm=cfg.get("programs_per_sm", 4),
                )
            else:
                row.update(block_d=cfg["block_d"], num_warps=cfg["num_warps"])
            table[r["op"]].append(row)
    # The largest measured T also covers every larger T.
    for op in ("gram", "combine"):
        for dclass in ("fp32", "16bit"):
            rows = [x for x in table[op] if x["dtype"] == dclass]
            if rows:
                top = max(x["t_max"] for x in rows)
                for x in rows:
                    if x["t_max"] == top:
                        x["t_max"] = None
    # Rows are matched first-to-last: by T, then D.
    key = lambda x: (x["t_max"] is None, x["t_max"] or 0, x["d_max"] is None, x["d_max"] or 0)
    for op in ("gram", "combine"):
        table[op].sort(key=lambda x: (x["dtype"], *key(x)))
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="directory for tune-<gpu>-<date>.json")
    p.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 1))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument(
        "--budget", type=float, default=90.0, help="seconds after which no case is measured"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, two candidates (dry run)")
    p.add_argument("--only", choices=("gram", "combine"), default=None)
    p.add_argument("--table", default=None, help="write the proposed table rows to this JSON")
    args = p.parse_args(argv)

    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    device = torch.device(args.device)
    quick = args.quick or device.type != "cuda"
    todo = [c for c in cases(quick) if args.only in (None, c["op"])]
    started = time.time()
    gbps = copy_gbps(device)
    print(f"copy bandwidth {gbps:.0f} GB/s", file=sys.stderr, flush=True)
    # Largest cases first, spread round-robin so each worker gets a mix.
    todo.sort(key=lambda c: -c["T"] * c["D"])
    n = max(1, min(args.workers, len(todo)))
    deadline = started + args.budget
    ctx = mp.get_context("spawn")
    barrier, lock, queue = ctx.Barrier(n), ctx.Lock(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(todo[i::n], args.device, quick, args.reps, deadline, barrier, lock, queue),
        )
        for i in range(n)
    ]
    for pr in procs:
        pr.start()
    results: list[dict[str, Any]] = []
    # A time limit (timeout --signal=INT) ends the sweep: keep and write what was measured.
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    done = 0
    while done < n and not stop:
        try:
            item = queue.get(timeout=1)
        except Exception:  # queue.Empty: check that the workers are still alive
            if not any(pr.is_alive() for pr in procs):
                print("tune: every worker exited early", file=sys.stderr)
                break
            continue
        if item is None:
            done += 1
        else:
            results.append(item)
            print(
                f"  measured {item['op']} {item['dtype']} T={item['T']}"
                + (" FAILED" if "failed" in item else ""),
                file=sys.stderr,
                flush=True,
            )
    interrupted = bool(stop)
    if interrupted:
        print(f"tune: interrupted; writing the {len(results)} cases measured", file=sys.stderr)
    for pr in procs:
        pr.join(timeout=2 if interrupted else 30)
        if pr.is_alive():
            pr.terminate()
    results.sort(key=lambda r: (r["op"], r["dtype"], r["T"]))
    lines = summarise(results, gbps)
    print("\n".join(lines))
    for r in results:
        if "failed" in r:
            print(f"--- {r['op']} {r['dtype']} T={r['T']} failed:\n{r['failed']}")
        for rej in r.get("rejected", []):
            print(f"  rejected {r['op']} {r['dtype']} T={r['T']}: {rej}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    doc = {
        "date": datetime.date.today().isoformat(),
        "device": gpu,
        "capability": list(torch.cuda.get_device_capability(device))
        if device.type == "cuda"
        else None,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "copy_gbps": gbps,
        "duration_s": time.time() - started,
        "results": results,
    }
    table = propose(results, doc["capability"])
    doc["proposed_table"] = table
    print("proposed table:")
    for op in ("gram", "combine"):
        for row in table[op]:
            print(f"  {op}: {row}")
    if args.out:
        slug = "".join(ch if ch.isalnum() else "-" for ch in gpu.lower()).strip("-")
        path = Path(args.out) / f"tune-{slug}-{doc['date']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        print(f"json: {path}")
    if args.table:
        Path(args.table).write_text(json.dumps(table, indent=1))
        print(f"table: {args.table} (use with MTL_FAST_KERNEL_TABLE={args.table})")
    print(f"tuning: {doc['duration_s']:.0f} s, {len(results)} cases, {n} workers")
    if interrupted:
        return 130
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
