"""``mtl-fast bench``: run the benchmark sections and write JSON, Markdown and PNG.

:mod:`mtl_fast.cli` forwards ``mtl-fast bench ARGS`` to :func:`main` (``python -m
benchmarks.harness ARGS`` from the repository root is the same command). Nothing heavy is
imported at module level, so ``--help`` stays fast.

Examples::

    mtl-fast bench --quick                    # < 2 min on a 2-core CPU (the README's main job)
    mtl-fast bench                            # the full tier (long; see benchmarks/README.md)
    mtl-fast bench --only ops --tier smoke --out /tmp/bench
    mtl-fast bench --tier gpu --device cuda   # the CUDA sizes, about 4 minutes on an H200
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

SECTIONS = ("ops", "train", "stats", "scaling", "compile")
#: The names of :data:`benchmarks.harness.workloads.TIERS` (spelled out: importing workloads here
#: would import torch just to print ``--help``; a test keeps the two in step).
TIERS = ("smoke", "quick", "full", "gpu")


def build_parser(prog: str = "mtl-fast bench") -> argparse.ArgumentParser:
    """The options of ``mtl-fast bench``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Measure mtl_fast side by side with its reference, a LibMTL-style implementation "
            "and torchjd, and write <machine>-<date>[-<tier>].{json,md,png} into --out."
        ),
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="the quick tier (under 2 minutes on a CPU)"
    )
    size.add_argument(
        "--tier",
        choices=TIERS,
        default=None,
        help="size tier (default: full, or $MTL_FAST_BENCH_TIER when set); gpu: the CUDA sizes",
    )
    p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output directory")
    p.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        default=None,
        help="run only this section (repeatable; default: the tier's sections — every one, "
        "but stats on the gpu tier)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time for the sections in all (the tier's per-section limits rescaled; default: "
        "the tier's own, none but on the gpu tier); cells not started in time are skipped",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "mtl-fast bench") -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the sections and write the report."""
    args = build_parser(prog).parse_args(argv)
    import torch

    from . import TIER_ENV, report, runner

    if args.threads:
        torch.set_num_threads(args.threads)
    tier = "quick" if args.quick else (args.tier or os.environ.get(TIER_ENV) or "full")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        results = runner.run(
            tier,
            sections=args.only,
            device=args.device,
            progress=progress,
            time_limit_s=args.time_limit,
        )
    except runner.BenchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    paths = report.write(results, args.out, png=not args.no_plot)
    print("\n".join(report.targets_table(results)))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(f"tier {results['tier']}: {results['duration_s']:.1f} s")
    if results.get("interrupted"):
        print(f"interrupted during section {results['interrupted']}: partial results")
        return 130
    return 0
