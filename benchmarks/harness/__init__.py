"""Benchmarks of mtl_fast: the workloads, the LibMTL-style and torchjd peers, the runner and the
report behind ``mtl-fast bench`` and the pytest-benchmark suites in ``benchmarks/``.

Tooling of the source checkout, not part of the installed package (the wheel ships ``mtl_fast``
only): ``mtl-fast bench`` (:mod:`mtl_fast.cli`) finds this folder next to the package, and
``python -m benchmarks.harness`` runs it from the repository root. The modules import each other
relatively, so the folder works under either name.

* :mod:`~benchmarks.harness.workloads` — size tiers, synthetic Jacobians, the op implementations
  side by side, the training model and tasks, the method registry, the loss-statistics steps;
* :mod:`~benchmarks.harness.libmtl_style` — a LibMTL-style IMTL-G / MGDA written from Liu et al.
  2021's Algorithm 1 and the MGDA paper's solver the way published code computes them;
* :mod:`~benchmarks.harness.runner` — timing (warm-up, interleaved rounds, median), copy
  bandwidth, peak extra memory, machine record, and the four sections (ops, train, stats,
  scaling);
* :mod:`~benchmarks.harness.report` — targets (pass / miss), JSON, Markdown and PNG;
* :mod:`~benchmarks.harness.cli` — the ``mtl-fast bench`` command line (its options and run).

Both entry points build their work from :mod:`~benchmarks.harness.workloads`, so the pytest
suites and the command measure the same callables.
"""

TIER_ENV = "MTL_FAST_BENCH_TIER"

__all__ = ["TIER_ENV"]
