"""Benchmarks of mtl_fast: the workloads, the LibMTL-style and torchjd peers, the runner and the
report behind ``mtl-fast bench`` and the pytest-benchmark suites in ``benchmarks/``.

* :mod:`mtl_fast.bench.workloads` — size tiers, synthetic Jacobians, the op implementations side
  by side, the training model and tasks, the method registry, the loss-statistics steps;
* :mod:`mtl_fast.bench.libmtl_style` — a LibMTL-style IMTL-G / MGDA written from Liu et al. 2021's
  Algorithm 1 and the MGDA paper's solver the way published code computes them;
* :mod:`mtl_fast.bench.runner` — timing (warm-up, interleaved rounds, median), copy bandwidth,
  peak extra memory, machine record, and the four sections (ops, train, stats, scaling);
* :mod:`mtl_fast.bench.report` — targets (pass / miss), JSON, Markdown and PNG;
* :mod:`mtl_fast.bench.cli` — the ``mtl-fast bench`` subcommand.

Both entry points build their work from :mod:`~mtl_fast.bench.workloads`, so the pytest suites
and the command measure the same callables.
"""

TIER_ENV = "MTL_FAST_BENCH_TIER"

__all__ = ["TIER_ENV"]
