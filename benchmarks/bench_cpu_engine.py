"""CPU engine benchmark: the native Gram and combine passes against this machine's floor and the
reference, measured side by side (interleaved rounds, medians) in one run.

    python benchmarks/bench_cpu_engine.py [--quick]

prints a table and writes benchmarks/results/cpu-engine-<date>.{md,json} with the commit and the
machine. Ratios survive a loaded machine better than absolute times: report those.

Floor of one pass over J (T rows of D fp32 values): the read time T·D·4 / bandwidth (bandwidth
from ``x.sum()`` over a large buffer) or the compute time (T²·D/2 FMAs at the SGEMM rate),
whichever is larger.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mtl_fast import _native_passes
from mtl_fast._validation import as_task_rows
from mtl_fast.reference.combine import combine_rows as ref_combine_rows
from mtl_fast.reference.gram import gram_rows as ref_gram_rows

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each function, the functions timed in turn within every round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def machine_floor(quick: bool) -> dict[str, float]:
    """Read bandwidth (bytes/s, ``x.sum()``) and SGEMM rate (FLOP/s, n×n fp32)."""
    x = torch.ones((1 << 26) if quick else (1 << 28))
    n = 1024 if quick else 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = interleaved({"sum": lambda: x.sum(), "gemm": lambda: a @ b}, 5)
    return {"bandwidth": x.numel() * 4 / t["sum"], "gemm_flops": 2 * n**3 / t["gemm"]}


def gram_combine_cells(quick: bool) -> list[tuple[int, int]]:
    if quick:
        return [(2, 100_000), (10, 16_384), (32, 100_000)]
    return [(T, D) for D in (100_000, 1_000_000) for T in (2, 4, 8, 32, 128)]


def bench_passes(T: int, D: int, floor: dict[str, float], rounds: int) -> dict[str, float]:
    """Gram and combine: native vs the reference (chunked batched GEMMs) vs one stacked GEMM."""
    grads = [torch.randn(D) for _ in range(T)]
    rows = as_task_rows(grads)
    w = torch.rand(T)
    J = torch.stack(grads)
    t = interleaved(
        {
            "gram_native": lambda: _native_passes.gram_rows(rows, check_finite=False),
            "gram_reference": lambda: ref_gram_rows(rows),
            "gram_torch_mm": lambda: J @ J.T,
            "combine_native": lambda: _native_passes.combine_rows(rows, w, None),
            "combine_reference": lambda: ref_combine_rows(rows, w, None),
            "combine_torch_mv": lambda: w @ J,
        },
        rounds,
    )
    read = T * D * 4 / floor["bandwidth"]
    gram_floor = max(read, T * T * D / floor["gemm_flops"])
    return {
        "T": T,
        "D": D,
        **{k: v * 1e6 for k, v in t.items()},
        "gram_floor": gram_floor * 1e6,
        "combine_floor": read * 1e6,
    }


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run(quick: bool = False, write: bool = True) -> dict:
    import mtl_fast._C as C

    floor = machine_floor(quick)
    rows = [bench_passes(T, D, floor, 5 if quick else 15) for T, D in gram_combine_cells(quick)]
    result = {
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "isa": C.cpu_isa(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "floor": floor,
        "passes_us": rows,
        "note": "interleaved rounds, medians; the machine may be shared (read the ratios)",
    }
    gb, gf = floor["bandwidth"] / 1e9, floor["gemm_flops"] / 1e9
    head = ["T", "D", "gram µs", "×floor", "ref/native", "mm/native"]
    head += ["combine µs", "×floor", "ref/native", "mv/native"]
    lines = [
        f"# CPU engine ({result['commit']}, {result['date']}, isa {C.cpu_isa()})",
        "",
        f"bandwidth {gb:.1f} GB/s, SGEMM {gf:.1f} GFLOP/s",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        g, c = r["gram_native"], r["combine_native"]
        cells = [r["T"], r["D"], f"{g:.0f}", f"{g / r['gram_floor']:.2f}"]
        cells += [f"{r['gram_reference'] / g:.2f}", f"{r['gram_torch_mm'] / g:.2f}"]
        cells += [f"{c:.0f}", f"{c / r['combine_floor']:.2f}"]
        cells += [f"{r['combine_reference'] / c:.2f}", f"{r['combine_torch_mv'] / c:.2f}"]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        RESULTS.mkdir(exist_ok=True)
        stem = RESULTS / f"cpu-engine-{datetime.date.today().isoformat()}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    result["table"] = text
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cells, few rounds")
    run(quick=parser.parse_args().quick)


def test_quick_run_reports_every_cell() -> None:
    """Smoke test (``pytest benchmarks``): the quick cells run once and nothing is written."""
    import pytest

    if not _native_passes.available():
        pytest.skip("mtl_fast._C without the CPU passes")
    result = run(quick=True, write=False)
    cells = gram_combine_cells(True)
    assert [(r["T"], r["D"]) for r in result["passes_us"]] == cells
    assert result["floor"]["bandwidth"] > 0 and result["floor"]["gemm_flops"] > 0
    assert all(r["gram_native"] > 0 and r["combine_native"] > 0 for r in result["passes_us"])
    assert result["table"].count("\n|") == len(cells) + 2


if __name__ == "__main__":
    main()
