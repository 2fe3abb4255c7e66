"""Where the time of one training step goes, per method: eager vs CUDA-graph replay, and the
host-side operators of the eager step.

For each method, on the benchmark's training model (``benchmarks.harness.workloads``, the tier's
width, image size and batch):

* ``eager``: median wall time of a step (synchronised), the way a user's loop runs it;
* ``graph``: the same step captured in a CUDA graph and replayed (CUDA only, methods whose
  class says ``cuda_graph_capturable``): the device time of the step without host overhead, so
  ``eager − graph`` is what the host adds;
* the operators with the most host (self CPU) time in an eager step, from ``torch.profiler``,
  for the methods named by ``--profile``.

Equal weighting is always measured: every other method's overhead is read against it.

    python benchmarks/profile_step.py --device cuda --T 10 --out benchmarks/results
    python benchmarks/profile_step.py --device cpu --tier smoke        # dry run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

# Run as a script (`python benchmarks/x.py`): the repository root, so `benchmarks.harness` imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.harness import runner
from benchmarks.harness import workloads as wl
from mtl_fast.methods import registry

DEFAULT_METHODS = ("EqualWeighting", "IMTLG", "IMTL", "MGDA", "CVWeighting", "IMTLL")


def _median(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median seconds per call of ``fn`` over ``reps`` rounds
    (:func:`benchmarks.harness.runner.time_interleaved`: host clock on the CPU, CUDA events on a
    GPU, where the host's gaps between launches are part of an eager step's time)."""
    t = runner.time_interleaved(
        {"step": fn}, device, warmup=1, min_repeats=reps, max_repeats=reps, budget_s=0.0
    )
    return t["step"].median_s


def _graph(step: Callable[[], Any], device: torch.device, reps: int) -> float | None:
    """Median seconds of a replay of the step captured in a CUDA graph (``None`` if the capture
    fails: the reason is printed)."""
    try:
        graph = runner.capture_graph(step, device, warmup=2)
    except Exception as exc:
        print(f"    capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        torch.cuda.synchronize(device)
        return None
    return _median(graph.replay, device, reps)


def _host_ops(step: Callable[[], Any], device: torch.device, top: int) -> list[dict[str, Any]]:
    """The ``top`` operators by self CPU time over 5 profiled steps (µs per step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(5):
            step()
        runner.synchronize(device)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "calls_per_step": e.count / 5, "self_cpu_us": e.self_cpu_time_total / 5}
        for e in rows[:top]
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tier", default="gpu", choices=sorted(wl.TIERS))
    p.add_argument("--T", type=int, default=10)
    p.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS))
    p.add_argument("--profile", nargs="*", default=["EqualWeighting", "IMTLG"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", default=None, help="directory for profile-step-<device>.json")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    tier = wl.TIERS[args.tier]
    names = ["EqualWeighting"] + [m for m in args.methods if m != "EqualWeighting"]
    results: dict[str, Any] = {"device": str(device), "tier": tier.name, "T": args.T, "rows": []}
    print(f"profile_step: T={args.T}, tier {tier.name}, {device}")
    base = None
    for name in names:
        step = wl.make_method_step(name, args.T, tier, device).step
        for _ in range(3):  # warm-up: compiles kernels, fills caches
            step()
        eager = _median(step, device, args.reps)
        graph = None
        if device.type == "cuda" and registry.get(name).capturable:
            graph = _graph(step, device, args.reps)
        base = eager if base is None else base
        row: dict[str, Any] = {"method": name, "eager_s": eager, "graph_s": graph}
        row["vs_equal"] = eager / base
        if name in args.profile:
            row["host_ops"] = _host_ops(step, device, args.top)
        results["rows"].append(row)
        g = ""
        if graph is not None:
            g = f", graph {graph * 1e3:.2f} ms (host adds {(eager - graph) * 1e3:.2f} ms)"
        print(f"  {name:<22} eager {eager * 1e3:.2f} ms ({eager / base:.3f}× equal){g}")
    for row in results["rows"]:
        if "host_ops" in row:
            print(f"--- {row['method']}: operators by self CPU time per step")
            for op in row["host_ops"]:
                print(
                    f"    {op['self_cpu_us']:>9.1f} µs  {op['calls_per_step']:>6.1f}×  {op['op']}"
                )
    if args.out:
        path = Path(args.out) / f"profile-step-{device.type}-T{args.T}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(f"json: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
