r"""Results of ``mtl-fast bench``: the targets (pass / miss), JSON, Markdown and PNG.

Files: ``<out>/<machine>-<date>[-<tier>].json``, ``.md`` and ``.png`` (the tier suffix is left
out for the full tier, so a quick or gpu run never overwrites the day's full results; a CUDA
run's machine is its GPU, e.g. ``nvidia-h200-<date>-gpu.json``).

Targets (the performance claims of the README; they are checked against what was measured, never
tuned for). Each has a status: ``pass``, ``miss``, or ``n/a`` when the run has no data for it
(another device, a section not run, a peer not installed, a size not in the tier).
Ratios are "peer time / mtl_fast time" (> 1: mtl_fast faster) and "method time / equal
weighting time" for the training step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

Record = dict[str, Any]

#: O(T²) allowance of the memory target: eight float64 T×T matrices.
MEMORY_T2_BYTES = 64
#: Training-step targets at T = 10: the main gradient methods, and the loss-based ones.
TRAIN_GRADIENT_TARGET = {"IMTLG": 1.05, "IMTL": 1.05, "MGDA": 1.05}
TRAIN_LOSS_TARGET = 1.02
#: GPU training-step targets of the gradient methods: {T: bound on step / equal weighting}.
GPU_TRAIN_TARGET = {10: 1.03, 128: 1.15}
GPU_TRAIN_METHODS = ("IMTLG", "IMTL", "MGDA")
#: GPU bandwidth targets: at T ≤ 16 and D ≥ 10⁷, time / (floor bytes / copy bandwidth).
GPU_GRAM_FLOOR = 1.3
GPU_STEP_FLOOR = 1.6


# --------------------------------------------------------------------------- targets


def _select(records: list[Record], **want: Any) -> list[Record]:
    out = []
    for r in records:
        ok = True
        for k, v in want.items():
            if callable(v):
                ok = ok and r.get(k) is not None and v(r[k])
            else:
                ok = ok and r.get(k) == v
        if ok:
            out.append(r)
    return out


def _pairs(records: list[Record], peer: str, **want: Any) -> list[tuple[Record, Record]]:
    """(mtl_fast record, peer record) on the same cell."""
    mine = _select(records, impl="mtl_fast", **want)
    theirs = {
        (r["section"], r["op"], r["T"], r["D"], r["dtype"], r["device"]): r
        for r in _select(records, impl=peer, **want)
    }
    out = []
    for r in mine:
        key = (r["section"], r["op"], r["T"], r["D"], r["dtype"], r["device"])
        if key in theirs:
            out.append((r, theirs[key]))
    return out


def _cell(r: Record) -> str:
    parts = [f"T={r['T']}"]
    if r.get("D"):
        parts.append(f"D={_num(r['D'])}")
    if r.get("dtype"):
        parts.append(r["dtype"])
    return " ".join(parts)


def _at_most(limit: float) -> Callable[[float], bool]:
    """The test ``value ≤ limit`` of a target."""
    return lambda value: value <= limit


def _target(
    tid: str,
    description: str,
    values: list[tuple[float, str]],
    ok: Callable[[float], bool],
    fmt: Callable[[float], str],
    worst: Callable[[list[float]], float] = min,
) -> Record:
    """A target row from (value, cell) pairs: pass when every value is ok."""
    if not values:
        return {"id": tid, "target": description, "status": "n/a", "measured": "no data"}
    w = worst([v for v, _ in values])
    where = next(c for v, c in values if v == w)
    failing = [c for v, c in values if not ok(v)]
    measured = f"worst {fmt(w)} ({where}); {len(values)} cells"
    if failing:
        measured += f"; missed at {', '.join(failing[:6])}" + (" …" if len(failing) > 6 else "")
    return {
        "id": tid,
        "target": description,
        "status": "miss" if failing else "pass",
        "measured": measured,
        "worst": w,
        "cells": len(values),
    }


def _x(v: float) -> str:
    return f"{v:.2f}×"


def evaluate_targets(results: dict[str, Any]) -> list[Record]:
    """Check every performance target against the records of one run."""
    recs = results.get("records", [])
    out: list[Record] = []

    # CPU, full IMTL-G step vs LibMTL-style (T ≥ 8, D = 1e6).
    pairs = _pairs(recs, "libmtl_style", section="ops", op="step_imtlg", device="cpu", D=10**6)
    vals = [(p.get("median_s") / m["median_s"], _cell(m)) for m, p in pairs if m["T"] >= 8]
    out.append(
        _target(
            "cpu_imtlg_vs_libmtl",
            "CPU full IMTL-G step ≥ 5× faster than LibMTL-style, T ≥ 8, D = 10⁶",
            vals,
            lambda v: v >= 5,
            _x,
        )
    )
    # CPU, full IMTL-G step vs torchjd.
    pairs = _pairs(recs, "torchjd", section="ops", op="step_imtlg", device="cpu")
    big = [(p["median_s"] / m["median_s"], _cell(m)) for m, p in pairs if m["T"] >= 32]
    small = [(p["median_s"] / m["median_s"], _cell(m)) for m, p in pairs if m["T"] < 32]
    out.append(
        _target(
            "cpu_imtlg_vs_torchjd_large",
            "CPU full IMTL-G step ≥ 1.3× faster than torchjd IMTLG, T ≥ 32",
            big,
            lambda v: v >= 1.3,
            _x,
        )
    )
    out.append(
        _target(
            "cpu_imtlg_vs_torchjd_small",
            "CPU full IMTL-G step never slower than torchjd IMTLG, T < 32",
            small,
            lambda v: v >= 1.0,
            _x,
        )
    )
    # CPU, MGDA weights: exact and faster than torchjd.
    exact = [
        (r["rel_objective"], _cell(r))
        for r in _select(recs, section="ops", op="mgda_weights", impl="mtl_fast", device="cpu")
        if r.get("rel_objective") is not None
    ]
    out.append(
        _target(
            "cpu_mgda_exact",
            "CPU MGDA weights exact: relative objective ≤ 1e-6, every T",
            exact,
            lambda v: v <= 1e-6,
            lambda v: f"{v:.1e}",
            worst=max,
        )
    )
    pairs = _pairs(recs, "torchjd", section="ops", op="mgda_weights", device="cpu")
    out.append(
        _target(
            "cpu_mgda_vs_torchjd",
            "CPU MGDA weights faster than torchjd MGDA, every T",
            [(p["median_s"] / m["median_s"], _cell(m)) for m, p in pairs],
            lambda v: v > 1.0,
            _x,
        )
    )
    # CPU, training step at T = 10.
    train = _select(recs, section="train", T=10, device="cpu")
    for name, limit in TRAIN_GRADIENT_TARGET.items():
        vals = [(r["vs_equal"], f"T={r['T']}") for r in train if r["method"] == name]
        vals = [(v, c) for v, c in vals if v is not None]
        out.append(
            _target(
                f"cpu_train_{name}",
                f"CPU training step {name} ≤ {limit}× equal weighting, T = 10",
                vals,
                _at_most(limit),
                _x,
                worst=max,
            )
        )
    loss_based = [
        (r["vs_equal"], f"{r['method']}")
        for r in train
        if r["family"] == "loss"
        and r["method"] != "EqualWeighting"
        and not r["method"].startswith("LibMTL")
        and r["vs_equal"] is not None
    ]
    out.append(
        _target(
            "cpu_train_loss_based",
            f"CPU training step of every loss-based method ≤ {TRAIN_LOSS_TARGET}× equal "
            "weighting, T = 10",
            loss_based,
            lambda v: v <= TRAIN_LOSS_TARGET,
            _x,
            worst=max,
        )
    )
    out += _gpu_targets(recs)
    for peer, label in (("torchjd", "torchjd"), ("libmtl_style", "LibMTL-style")):
        vals = []
        for op in ("step_imtlg", "step_mgda"):
            for m, p in _pairs(recs, peer, section="ops", op=op, device="cuda"):
                if m["T"] <= 16 and m["D"] >= 10**6:
                    vals.append((p["median_s"] / m["median_s"], f"{op} {_cell(m)}"))
        out.append(
            _target(
                f"gpu_vs_{peer}",
                f"GPU full steps ≥ 10× faster than {label}, T ≤ 16, D ≥ 10⁶",
                vals,
                lambda v: v >= 10,
                _x,
            )
        )
    caps = [r for r in recs if r.get("op", "").startswith("capture_") and r.get("device") == "cuda"]
    out.append(
        _target(
            "gpu_no_host_sync",
            "GPU step has no host sync (captured in a CUDA graph)",
            [(1.0 if r["capturable"] else 0.0, r["op"][8:]) for r in caps],
            lambda v: v == 1.0,
            lambda v: "captured" if v == 1.0 else "capture failed",
        )
    )
    # Memory of the gradient methods' steps.
    mem = []
    for r in _select(recs, impl="mtl_fast", section="ops"):
        if r.get("op") in ("step_imtlg", "step_mgda") and r.get("peak_extra_bytes") is not None:
            esize = 2 if r["dtype"] == "bf16" else 4
            bound = 1.1 * r["T"] * r["D"] * esize + MEMORY_T2_BYTES * r["T"] ** 2
            mem.append((r["peak_extra_bytes"] / bound, f"{r['op']} {_cell(r)}"))
    out.append(
        _target(
            "memory_step",
            "Peak extra memory of a gradient step ≤ 1.1·T·D·bytes + O(T²) "
            f"({MEMORY_T2_BYTES}·T² bytes); shown as a fraction of that bound",
            mem,
            lambda v: v <= 1.0,
            lambda v: f"{v:.2f} of bound",
            worst=max,
        )
    )
    return out


def _gpu_targets(recs: list[Record]) -> list[Record]:
    """The targets read on CUDA records: bandwidth floors, speed-up over the reference, the
    training step against equal weighting (``n/a`` without CUDA records)."""
    out: list[Record] = []

    def floor_cells(ops: tuple[str, ...]) -> list[tuple[float, str]]:
        # Device time (CUDA-graph replay) when measured: the kernels against the memory floor;
        # the eager time, which adds the host's launch overhead, is in the tables beside it.
        return [
            (r.get("device_vs_floor") or r["vs_floor"], f"{r['op']} {_cell(r)}")
            for op in ops
            for r in _select(recs, section="ops", op=op, impl="mtl_fast", device="cuda")
            if r["T"] <= 16 and r["D"] >= 10**7 and r.get("vs_floor") is not None
        ]

    out.append(
        _target(
            "gpu_gram_floor",
            f"GPU gram within {GPU_GRAM_FLOOR}× of the bandwidth floor (one read of J at the "
            "copy bandwidth; device time), T ≤ 16, D ≥ 10⁷",
            floor_cells(("gram",)),
            lambda v: v <= GPU_GRAM_FLOOR,
            _x,
            worst=max,
        )
    )
    out.append(
        _target(
            "gpu_step_floor",
            f"GPU full IMTL-G / MGDA step within {GPU_STEP_FLOOR}× of the bandwidth floor (two "
            "reads of J and one write of g at the copy bandwidth; device time), T ≤ 16, D ≥ 10⁷",
            floor_cells(("step_imtlg", "step_mgda")),
            lambda v: v <= GPU_STEP_FLOOR,
            _x,
            worst=max,
        )
    )
    vals = [
        (p["median_s"] / m["median_s"], f"{op} {_cell(m)}")
        for op in ("step_imtlg", "step_mgda")
        for m, p in _pairs(recs, "reference", section="ops", op=op, device="cuda")
        if m["T"] <= 16 and m["D"] >= 10**6
    ]
    out.append(
        _target(
            "gpu_step_vs_reference",
            "GPU full IMTL-G / MGDA step ≥ 2× faster than mtl_fast.reference (backend='torch'), "
            "T ≤ 16, D ≥ 10⁶",
            vals,
            lambda v: v >= 2,
            _x,
        )
    )
    for T, limit in GPU_TRAIN_TARGET.items():
        vals = [
            (r["vs_equal"], r["method"])
            for r in _select(recs, section="train", T=T, device="cuda")
            if r["method"] in GPU_TRAIN_METHODS and r.get("vs_equal") is not None
        ]
        out.append(
            _target(
                f"gpu_train_T{T}",
                f"GPU training step {' / '.join(GPU_TRAIN_METHODS)} ≤ {limit}× equal weighting, "
                f"T = {T}",
                vals,
                _at_most(limit),
                _x,
                worst=max,
            )
        )
    return out


# --------------------------------------------------------------------------- formatting


def _num(n: float) -> str:
    """10⁵-style D labels: 100000 → 1e5, 4000000 → 4e6."""
    if n >= 10_000:
        e = math.floor(math.log10(n))
        m = n / 10**e
        return f"{m:g}e{e}" if m != 1 else f"1e{e}"
    return str(n)


def _ms(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _mib(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1024**2:.1f} MiB"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else _mib(n)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _index(records: list[Record], section: str, op: str) -> dict[tuple, dict[str, Record]]:
    """{(dtype, T, D): {impl: record}}."""
    out: dict[tuple, dict[str, Record]] = {}
    for r in records:
        if r.get("section") == section and r.get("op") == op:
            out.setdefault((r["dtype"], r["T"], r["D"]), {})[r["impl"]] = r
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)))


PEERS = ("reference", "libmtl_style", "torchjd")
PEER_HEAD = {"reference": "reference", "libmtl_style": "LibMTL-style", "torchjd": "torchjd"}


def _op_table(records: list[Record], section: str, op: str, copy_gbps: float) -> list[str]:
    idx = _index(records, section, op)
    if not idx:
        return []
    header = ["dtype", "T", "D", "mtl_fast", "GB/s (of copy)", "× floor", "peak extra"]
    device_times = any(by.get("mtl_fast", {}).get("device_s") for by in idx.values())
    if device_times:
        header[4:4] = ["device time", "× floor (device)"]
    header += [f"× vs {PEER_HEAD[p]}" for p in PEERS]
    rows = []
    for (dtype, T, D), by in idx.items():
        m = by.get("mtl_fast")
        if m is None:
            continue
        extra = m.get("peak_extra_bytes")
        extra_s = _mib(extra)
        if m.get("extra_per_TD") is not None:
            extra_s += f" ({m['extra_per_TD']:.2f}·TD)"
        gb = (
            f"{m['gbps']:.1f} ({100 * m['gbps'] / copy_gbps:.0f}%)"
            if m.get("gbps") is not None
            else "—"
        )
        row = [dtype, str(T), _num(D), _ms(m["median_s"]), gb, _ratio(m.get("vs_floor")), extra_s]
        if device_times:
            dev = m.get("device_s")
            row[4:4] = [_ms(dev) if dev else "—", _ratio(m.get("device_vs_floor"))]
        for p in PEERS:
            r = by.get(p)
            row.append(_ratio(r["median_s"] / m["median_s"]) if r else "—")
        rows.append(row)
    return _table(header, rows)


def _peer_memory_table(records: list[Record], section: str, op: str) -> list[str]:
    idx = _index(records, section, op)
    rows = []
    for (dtype, T, D), by in idx.items():
        if not any(r.get("peak_extra_bytes") is not None for r in by.values()):
            continue
        row = [dtype, str(T), _num(D)]
        for impl in ("mtl_fast", *PEERS):
            r = by.get(impl)
            if r is None or r.get("peak_extra_bytes") is None:
                row.append("—")
            else:
                row.append(f"{r['extra_per_TD']:.2f}")
        rows.append(row)
    if not rows:
        return []
    return _table(["dtype", "T", "D", "mtl_fast", *[PEER_HEAD[p] for p in PEERS]], rows)


def _solve_table(records: list[Record]) -> list[str]:
    lines: list[str] = []
    for op, title in (("imtlg_weights", "IMTL-G weights"), ("mgda_weights", "MGDA weights")):
        idx = _index(records, "ops", op)
        if not idx:
            continue
        header = ["T", "mtl_fast"] + [f"× vs {PEER_HEAD[p]}" for p in PEERS]
        if op == "mgda_weights":
            header += ["rel. objective: " + n for n in ("mtl_fast", "LibMTL-style", "torchjd")]
        rows = []
        for (_, T, _), by in idx.items():
            m = by.get("mtl_fast")
            if m is None:
                continue
            row = [str(T), _ms(m["median_s"])]
            for p in PEERS:
                r = by.get(p)
                row.append(_ratio(r["median_s"] / m["median_s"]) if r else "—")
            if op == "mgda_weights":
                for impl in ("mtl_fast", "libmtl_style", "torchjd"):
                    r = by.get(impl)
                    v = r.get("rel_objective") if r else None
                    row.append("—" if v is None else f"{v:.1e}")
            rows.append(row)
        lines += [f"**{title}** (G → α, T×T)", "", *_table(header, rows), ""]
    return lines


def _precision_table(records: list[Record]) -> list[str]:
    by: dict[int, dict[str, Record]] = {}
    for r in records:
        if r.get("op") == "imtlg_error":
            by.setdefault(r["T"], {})[r["impl"]] = r
    if not by:
        return []
    rows = []
    for T, d in sorted(by.items()):
        m = d.get("mtl_fast")
        row = [str(T), str(m["D"]) if m else "—"]
        for impl in ("mtl_fast", "libmtl_style", "torchjd"):
            row.append(f"{d[impl]['rel_error']:.1e}" if impl in d else "—")
        ok = m is not None and all(
            m["rel_error"] <= d[i]["rel_error"] for i in d if i != "mtl_fast"
        )
        row.append("yes" if ok else "**no**")
        rows.append(row)
    return _table(
        ["T", "D", "mtl_fast", "LibMTL-style fp32", "torchjd fp32", "mtl_fast never worse"],
        rows,
    )


def _train_table(records: list[Record], section: str) -> list[str]:
    by_T: dict[int, list[Record]] = {}
    for r in records:
        if r.get("section") == section:
            by_T.setdefault(r["T"], []).append(r)
    lines: list[str] = []
    for T, rs in sorted(by_T.items()):
        rows = []
        for r in rs:
            if r.get("device") == "cuda":
                on = r["method"] in GPU_TRAIN_METHODS and section == "train"
                limit = GPU_TRAIN_TARGET.get(T) if on else None
            else:
                limit = TRAIN_GRADIENT_TARGET.get(r["method"])
                if limit is None and r["family"] == "loss" and r["method"] != "EqualWeighting":
                    limit = TRAIN_LOSS_TARGET
                if T != 10:
                    limit = None
            mark = "—"
            if limit is not None and r["vs_equal"] is not None:
                mark = f"≤ {limit}×: " + ("pass" if r["vs_equal"] <= limit else "**miss**")
            rows.append([r["method"], r["family"], _ms(r["median_s"]), _ratio(r["vs_equal"]), mark])
        params = rs[0].get("params") or {}
        desc = f"T = {T}"
        if params:
            desc += (
                f" (batch {rs[0].get('batch')} of {rs[0].get('image')}×{rs[0].get('image')} "
                f"images, encoder {params.get('encoder', 0) / 1e6:.2f} M parameters, heads "
                f"{params.get('heads', 0) / 1e6:.2f} M, split D = {rs[0].get('feature_numel')})"
            )
        lines += [
            f"**{desc}**",
            "",
            *_table(["method", "family", "step", "× equal", "target"], rows),
            "",
        ]
    return lines


def _stats_table(records: list[Record]) -> list[str]:
    by_T: dict[int, dict[str, Record]] = {}
    for r in records:
        if r.get("section") == "stats":
            by_T.setdefault(r["T"], {})[r["impl"]] = r
    if not by_T:
        return []
    impls = ("mtl_fast C++ accumulator", "mtl_fast torch accumulator", "pure PyTorch")
    rows = []
    for T, d in sorted(by_T.items()):
        row = [str(T)] + [_ms(d[i]["median_s"]) if i in d else "—" for i in impls]
        cpp, pure = d.get(impls[0]), d.get(impls[2])
        row.append(_ratio(pure["median_s"] / cpp["median_s"]) if cpp and pure else "—")
        rows.append(row)
    return _table(["T", *impls, "C++ speed-up over pure PyTorch"], rows)


def _compile_table(records: list[Record]) -> list[str]:
    rows = []
    recs = [r for r in records if r.get("section") == "compile"]
    for r in sorted(recs, key=lambda r: (r["T"], r["method"])):
        first = r.get("first_call_s")
        rows.append(
            [
                str(r["T"]),
                r["method"],
                r["mode"],
                _ms(r["median_s"]),
                _ratio(r["vs_eager"]),
                "—" if first is None else f"{first:.1f} s",
            ]
        )
    if not rows:
        return []
    return _table(["T", "method", "mode", "step", "× eager", "first call (compiles)"], rows)


def _scaling_table(records: list[Record]) -> list[str]:
    idx = _index(records, "scaling", "step_imtlg")
    if not idx:
        return []
    rows = []
    for (_, T, D), by in idx.items():
        m = by.get("mtl_fast")
        row = [str(T), _num(D), _ms(m["median_s"]) if m else "—"]
        for p in PEERS:
            r = by.get(p)
            cell = _ms(r["median_s"]) if r else "—"
            if r and m:
                cell += f" ({r['median_s'] / m['median_s']:.2f}×)"
            row.append(cell)
        rows.append(row)
    header = ["T", "D", "mtl_fast", *[f"{PEER_HEAD[p]} (× mtl_fast)" for p in PEERS]]
    return _table(header, rows)


def machine_line(results: dict[str, Any]) -> str:
    """One line naming the machine and the software measured."""
    m = results["machine"]
    parts = [m.get("gpu") or m["cpu"], f"{m['cores']} cores, {m['torch_threads']} torch threads"]
    if m.get("memory_gib"):
        parts.append(f"{m['memory_gib']} GiB RAM")
    parts.append(f"torch {m['torch']}")
    if m.get("triton"):
        parts.append(f"triton {m['triton']}")
    if m.get("torchjd"):
        parts.append(f"torchjd {m['torchjd']}")
    parts.append(f"mtl_fast {m['mtl_fast']}")
    if m.get("git_commit"):
        parts.append(f"commit {m['git_commit'][:12]}{'+dirty' * m['git_commit'].endswith('dirty')}")
    return " · ".join(parts)


def targets_table(results: dict[str, Any]) -> list[str]:
    """The targets as a Markdown table (pass / **miss** / n/a)."""
    rows = []
    for t in results.get("targets", []):
        status = {"pass": "pass", "miss": "**miss**"}.get(t["status"], "n/a")
        rows.append([t["target"], status, t["measured"]])
    return _table(["target", "status", "measured"], rows)


def _run_notes(results: dict[str, Any]) -> list[str]:
    """Paragraphs on how a CUDA run was timed, its time limits, and an interruption."""
    L: list[str] = []
    if results["machine"].get("device", "").startswith("cuda"):
        L += [
            "CUDA timing: each call of a round between two CUDA events, one synchronisation per "
            "round (host synchronisation and launch latency are not timed); calls under 200 µs "
            "run k times (k ≤ 100, a block of about 1 ms) between the events, the time divided "
            "by k; D-sized ops rotate over copies of J (≥ 256 MiB in all) so that J is read from "
            f"memory, not from L2. The physical floor of an op is its floor bytes at the copy "
            f"bandwidth of this run ({results['copy_gbps']:.0f} GB/s, a device-to-device copy "
            f"of {_size(results.get('tier_config', {}).get('copy_bytes'))}).",
            "",
        ]
    limits = results.get("time_limits_s") or {}
    if limits:
        L += [
            "Time limits per section: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in limits.items())
            + " (cells not started in time are listed under Skipped); took "
            + ", ".join(f"{k} {v:.0f} s" for k, v in results.get("section_durations_s", {}).items())
            + ".",
            "",
        ]
    if results.get("interrupted"):
        L += [
            f"**Interrupted** during section {results['interrupted']}: what follows is what "
            "was measured before the interruption.",
            "",
        ]
    return L


def markdown(results: dict[str, Any], png_name: str | None = None) -> str:
    """The Markdown report of one run."""
    recs = results["records"]
    gbps = results["copy_gbps"]
    L: list[str] = [
        f"# mtl_fast benchmarks — {results['machine_slug']} — {results['date']}",
        "",
        f"Tier **{results['tier']}** on **{results['machine']['device']}**, "
        f"{results['duration_s']:.0f} s, copy bandwidth {gbps:.1f} GB/s (read + write, measured "
        "in the same run). Command: `" + results.get("command", "mtl-fast bench") + "`.",
        "",
        f"Machine: {machine_line(results)}.",
        "",
        "Ratios are peer time / mtl_fast time (> 1: mtl_fast is faster), medians of interleaved "
        "rounds of the same run. GB/s: the op's floor bytes (gram: one read of J; combine: one "
        "read of J and one write of g; full step: two reads of J and one write) over its "
        "time; × floor: time over floor bytes / copy bandwidth. Peak extra: bytes allocated "
        "beyond the inputs during one call (CPU: profiler allocation events; CUDA: "
        "max_memory_allocated), and as a multiple of T·D·(bytes per element). Device time "
        "(CUDA): the same call replayed from a CUDA graph (10 calls per graph, median of 5 "
        "replays), i.e. without the host's launch overhead; the floor targets read it.",
        "",
        *_run_notes(results),
        "## Targets",
        "",
        *targets_table(results),
        "",
    ]
    if png_name:
        L += [f"![benchmarks]({png_name})", ""]
    sections = [
        ("step_imtlg", "Full IMTL-G step (J → G → α → Σ α_t g_t)"),
        ("step_mgda", "Full MGDA step (J → G → α → Σ α_t g_t)"),
        ("gram", "Gram matrix G = J Jᵀ"),
        ("combine", "Combine Σ α_t g_t"),
    ]
    if any(r.get("section") == "ops" for r in recs):
        L += ["## Ops", ""]
        for op, title in sections:
            table = _op_table(recs, "ops", op, gbps)
            if table:
                L += [f"### {title}", "", *table, ""]
        mem = _peer_memory_table(recs, "ops", "step_imtlg")
        if mem:
            L += [
                "### Peak extra memory of the full IMTL-G step, × T·D·(bytes per element)",
                "",
                *mem,
                "",
            ]
        solves = _solve_table(recs)
        if solves:
            L += ["### Weight solves", "", *solves]
        prec = _precision_table(recs)
        if prec:
            L += [
                "### IMTL-G weights: relative error against a float64 oracle",
                "",
                "Rows with norms spread over e^±3 and a shared component (cosine 0.5); oracle: "
                "Algorithm 1 in float64; worst over the seeds.",
                "",
                *prec,
                "",
            ]
    train = _train_table(recs, "train")
    if train:
        L += [
            "## Training step (relative to equal weighting)",
            "",
            "Conv encoder (six conv-BN-ReLU blocks), random images, T light heads (alternately "
            "regression and 10-way classification), task losses scaled over 10^±3; one step = "
            "forward, split, losses, method.loss(...).backward(), SGD step (method parameters "
            "included). LibMTL-style: one backward per task with retained graphs, gradients "
            "stacked, the weighted gradient back-propagated.",
            "",
            *train,
        ]
    stats = _stats_table(recs)
    if stats:
        L += ["## Loss statistics: one CV-Weighting step", "", *stats, ""]
    scaling = _scaling_table(recs)
    if scaling:
        L += ["## Scaling in T: full IMTL-G step", "", *scaling, ""]
    strain = _train_table(recs, "scaling_train")
    if strain:
        L += ["## Scaling in T: training step", "", *strain]
    compiled = _compile_table(recs)
    if compiled:
        L += [
            "## torch.compile: training step compiled vs eager",
            "",
            "The training step above, eager; with the forward (encoder, split, heads, losses) "
            "compiled with fullgraph=True (loss, backward, optimizer eager): mode `model`; with "
            "the whole step compiled: mode `step` (inductor). × eager: step time over the same "
            "method's eager step (< 1: the compiled step is faster).",
            "",
            *compiled,
            "",
        ]
    if results.get("skipped"):
        L += ["## Skipped", ""]
        L += _table(
            ["section", "what", "reason"],
            [[s["section"], s["what"], s["reason"].replace("|", "/")] for s in results["skipped"]],
        )
        L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------- plots


def plot(results: dict[str, Any], path: Path) -> Path:
    """A 2×2 figure: full IMTL-G step vs T, training step vs equal weighting, scaling in T,
    and the training step's scaling in T (or the loss-statistics step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = results["records"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    styles = {
        "mtl_fast": dict(color="C0", marker="o"),
        "reference": dict(color="C1", marker="s"),
        "libmtl_style": dict(color="C3", marker="^"),
        "torchjd": dict(color="C2", marker="D"),
    }

    def by_impl(rs: list[Record], key: str = "T") -> dict[str, tuple[list, list]]:
        out: dict[str, tuple[list, list]] = {}
        for r in sorted(rs, key=lambda r: r[key]):
            xs, ys = out.setdefault(r["impl"], ([], []))
            xs.append(r[key])
            ys.append(r["median_s"] * 1e3)
        return out

    def impl_lines(ax: Any, rows: list[Record], title: str) -> None:
        """Median time against T, one line per implementation, log-log."""
        for impl, (xs, ys) in by_impl(rows).items():
            ax.plot(xs, ys, label=impl, **styles.get(impl, {}))
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (tasks)")
        ax.set_ylabel("ms (median)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)

    # (a) full IMTL-G step vs T at the largest D ≤ 1e6, fp32.
    ax = axes[0, 0]
    steps = [r for r in recs if r.get("section") == "ops" and r.get("op") == "step_imtlg"]
    steps = [r for r in steps if r["dtype"] == "fp32"]
    Ds = sorted({r["D"] for r in steps if r["D"] <= 10**6}) or sorted({r["D"] for r in steps})
    if Ds:
        D = Ds[-1]
        title = f"Full IMTL-G step, D = {_num(D)}, fp32 ({results['machine']['device']})"
        impl_lines(ax, [r for r in steps if r["D"] == D], title)
    else:
        ax.set_axis_off()

    # (b) training step relative to equal weighting.
    ax = axes[0, 1]
    train = [r for r in recs if r.get("section") == "train" and r.get("vs_equal") is not None]
    if train:
        Ts = sorted({r["T"] for r in train})
        T = 10 if 10 in Ts else Ts[-1]
        rs = [r for r in train if r["T"] == T]
        names = [r["method"] for r in rs]
        vals = [r["vs_equal"] for r in rs]
        colors = ["C3" if n.startswith("LibMTL") else "C0" for n in names]
        ax.barh(range(len(rs)), vals, color=colors)
        ax.set_yticks(range(len(rs)), names)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(1.05, color="k", lw=0.8, ls="--")
        ax.set_title(f"Training step / equal weighting, T = {T}")
        ax.set_xlabel("× equal weighting (dashed: 1.05)")
    else:
        ax.set_axis_off()

    # (c) scaling of the full IMTL-G step in T.
    ax = axes[1, 0]
    scal = [r for r in recs if r.get("section") == "scaling"]
    if scal:
        impl_lines(ax, scal, f"Scaling in T: full IMTL-G step, D = {_num(scal[0]['D'])}")
    else:
        ax.set_axis_off()

    # (d) training-step scaling, or the loss-statistics step.
    ax = axes[1, 1]
    strain = [r for r in recs if r.get("section") == "scaling_train"]
    stats = [r for r in recs if r.get("section") == "stats"]
    if strain:
        series: dict[str, tuple[list, list]] = {}
        for r in sorted(strain, key=lambda r: r["T"]):
            xs, ys = series.setdefault(r["method"], ([], []))
            xs.append(r["T"])
            ys.append(r["median_s"] * 1e3)
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=name, ls="--" if name.startswith("LibMTL") else "-")
        ax.set_title("Scaling in T: training step")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (tasks)")
        ax.set_ylabel("ms per step (median)")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    elif stats:
        series = {}
        for r in sorted(stats, key=lambda r: r["T"]):
            xs, ys = series.setdefault(r["impl"], ([], []))
            xs.append(r["T"])
            ys.append(r["median_s"] * 1e6)
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_title("One CV-Weighting step")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (tasks)")
        ax.set_ylabel("µs per step (median)")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    else:
        ax.set_axis_off()

    fig.suptitle(f"mtl_fast benchmarks — {machine_line(results)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- files


def stem(results: dict[str, Any]) -> str:
    """``<machine>-<date>`` (``-<tier>`` appended unless the tier is ``full``)."""
    base = f"{results['machine_slug']}-{results['date']}"
    return base if results["tier"] == "full" else f"{base}-{results['tier']}"


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/Inf become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write(results: dict[str, Any], out_dir: str | Path, *, png: bool = True) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = stem(results)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(_clean(results), indent=1, allow_nan=False) + "\n")
    png_name = None
    if png:
        paths["png"] = plot(results, out / f"{name}.png")
        png_name = paths["png"].name
    paths["md"].write_text(markdown(results, png_name) + "\n")
    return paths


def load(path: str | Path) -> dict[str, Any]:
    """Read a results JSON written by :func:`write`."""
    return json.loads(Path(path).read_text())
