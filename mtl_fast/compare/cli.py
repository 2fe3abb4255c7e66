"""``mtl-fast compare``: train one small model per weighting method and compare them.

Examples::

    mtl-fast compare --quick --out compare-quick            # the default problems, minutes on a CPU
    mtl-fast compare --problem digits --methods equal,IMTLG,LSB --epochs 20 --out out/
    mtl-fast compare --problem synthetic --tasks 100 --out out/
    mtl-fast compare --problem qm9,qm9-raw --methods equal,IMTL,MGDA --out out/   # mtl_fast[qm9]
    mtl-fast compare --problem examples/custom_problem.py:make_problem --out out/
    mtl-fast compare --list-methods

Prints, per problem, the table of per-task test metrics, Δ_MTL, Acc_MTL, average rank and time
per step, and writes ``report.md``, ``results.json`` and the figures to ``--out``.
"""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
import time
from typing import Any

from mtl_fast.weighting import Weighting

__all__ = ["register", "run"]

#: ``--quick``: T for synthetic unless --tasks is given.
QUICK_TASKS = 5

#: figure resolution (``--dpi``)
DEFAULT_DPI = 150


def register(subparsers: Any) -> None:
    """Add the ``compare`` subcommand to the ``mtl-fast`` parser."""
    p = subparsers.add_parser(
        "compare",
        help="compare weighting methods on small problems (metrics, figures, report)",
        description=(
            "Train one small model per weighting method on a problem (digits, denoise, "
            "synthetic, scale), print per-task test metrics, Δ_MTL, Acc_MTL, average rank and "
            "time per step, and write a Markdown report with figures to --out. Runs are "
            "seeded and deterministic."
        ),
    )
    p.add_argument(
        "--problem",
        default="all",
        help=(
            "digits, denoise, synthetic, scale, multimnist, qm9, qm9-raw (needs the "
            "mtl_fast[qm9] extra), nyuv2, cityscapes, celeba (need --data-root), all (the "
            "first five), or your own problem as "
            "module:factory or file.py:factory (docs/compare.md); several comma-separated "
            "(default all)"
        ),
    )
    p.add_argument(
        "--methods",
        default="all",
        help=(
            "comma-separated method names, aliases or groups: 'all' = every registered method "
            "plus SI (default), 'loss', 'gradient', 'published' = the methods of the published "
            "QM9 tables (see --list-methods)"
        ),
    )
    p.add_argument(
        "--protocol",
        choices=("reduced", "full"),
        default=None,
        help="qm9 size: reduced (default; CPU minutes per method) or full (the papers' split)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        metavar="PATH",
        help=(
            "nyuv2 / cityscapes: the folder with train/ and val/ in the MTAN/LibMTL .npy layout; "
            "celeba: the folder with list_attr_celeba.txt, list_eval_partition.txt and "
            "img_align_celeba/ (docs/compare.md, 'Local data')"
        ),
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="with --data-root: at most this many samples per split (a quick look on a CPU)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default per problem)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds, averaged (default 1)")
    p.add_argument(
        "--seeds-of",
        action="append",
        default=[],
        metavar="PROBLEM=N",
        help=(
            "fewer seeds for one problem, e.g. qm9-raw=1 beside --seeds 3 (its first N seeds; "
            "repeatable)"
        ),
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where models train: cpu (default), cuda, cuda:1, ... (same code, same seeds)",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument(
        "--tasks",
        default=None,
        help="T for synthetic, or several comma-separated, e.g. 10,100 (default 10; --quick 5)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default per problem")
    p.add_argument(
        "--lr", type=float, default=None, help="Adam learning rate (default per problem)"
    )
    p.add_argument(
        "--method-lr",
        type=float,
        default=Weighting.default_lr,
        help=f"Adam learning rate of the methods' own parameters (default {Weighting.default_lr})",
    )
    p.add_argument("--out", default="compare-out", help="output directory (default compare-out)")
    p.add_argument(
        "--dpi", type=int, default=DEFAULT_DPI, help=f"figure resolution (default {DEFAULT_DPI})"
    )
    p.add_argument(
        "--all-figures",
        action="store_true",
        help=argparse.SUPPRESS,  # kept for old scripts: every method is always drawn now
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the quick tier: the default problems on a reduced budget (minutes); indicative only",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-methods", action="store_true", help="list methods and availability")
    # Hidden, for tests: a tiny data set and model, and a cap on steps per epoch.
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _problems(spec: str, quick: bool) -> list[str]:
    """The registered problem names ``spec`` asks for, in registry order, with the problems
    they reuse as a reference (``scale`` needs ``digits``)."""
    from mtl_fast.compare.problems import DEFAULT_PROBLEMS, PROBLEMS
    from mtl_fast.compare.problems.user import is_user_spec

    names = [s.strip() for s in spec.split(",") if s.strip()]
    names = [n if is_user_spec(n) else n.lower() for n in names]
    if "all" in names:
        names = [n for n in names if n != "all"] + list(DEFAULT_PROBLEMS)
    user = [n for n in names if is_user_spec(n)]
    names = [n for n in names if not is_user_spec(n)]
    for n in names:
        if n not in PROBLEMS:
            raise SystemExit(
                f"mtl-fast compare: unknown problem {n!r}; choose from {tuple(PROBLEMS)}"
            )
    for n in list(names):
        ref = PROBLEMS[n].reference_problem
        if ref is not None and ref not in names:
            names.insert(0, ref)  # compared against the reference problem's run
    order = list(PROBLEMS)
    return sorted(dict.fromkeys(names), key=order.index) + list(dict.fromkeys(user))


def _build(name: str, args: argparse.Namespace, num_tasks: int | None) -> Any:
    """The problem ``name`` (registered, or the user's ``module:factory``) as ``args`` ask."""
    from mtl_fast.compare.problems import PROBLEMS, get_problem
    from mtl_fast.compare.problems.user import is_user_spec, load_user_problem

    try:
        if is_user_spec(name):
            return load_user_problem(name)
        options: dict[str, Any] = {}
        params = inspect.signature(PROBLEMS[name]).parameters
        if "data_root" in params:
            options["data_root"] = args.data_root
            if args.limit is not None:
                options["limit"] = args.limit
        if args.protocol is not None:
            if "protocol" not in inspect.signature(PROBLEMS[name]).parameters:
                raise ValueError(f"--protocol applies to qm9 and qm9-raw, not {name!r}")
            options["protocol"] = args.protocol
        return get_problem(name, tiny=args.tiny, num_tasks=num_tasks, **options)
    except (ImportError, ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"mtl-fast compare: {exc}") from None


def _list_methods() -> int:
    from mtl_fast.compare import registry

    for name in registry.METHODS:
        cls, where = registry.resolve(name)
        state = "available: " + where if cls is not None else "UNAVAILABLE: " + where
        tags = [registry.family(name)] + (
            ["published QM9"] if name in registry.GROUPS["published"] else []
        )
        print(f"{name:<22} {', '.join(tags):<24} {state}")
    print("\ngroups for --methods: " + ", ".join(registry.GROUPS))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the comparison described by the parsed ``args``; return the exit status."""
    if args.list_methods:
        return _list_methods()
    from mtl_fast.compare import registry, report
    from mtl_fast.compare.problems import PROBLEMS
    from mtl_fast.compare.problems.user import is_user_spec
    from mtl_fast.compare.train import CompareConfig, ProblemResult, compare_problem, resolve_device

    start = time.perf_counter()
    names = _problems(args.problem, args.quick)
    try:
        methods = registry.expand(args.methods.split(","))
    except ValueError as exc:
        raise SystemExit(f"mtl-fast compare: {exc}") from None
    _, missing = registry.resolve_all(methods)
    if missing:
        print("Unavailable methods (skipped):", file=sys.stderr)
        for n, why in missing.items():
            print(f"  {n}: {why}", file=sys.stderr)
    if args.seeds < 1:
        raise SystemExit("mtl-fast compare: --seeds must be >= 1")
    seeds_of = _seeds_of(args.seeds_of, args.seeds)
    if args.data_root is not None and not any(
        n in PROBLEMS and "data_root" in inspect.signature(PROBLEMS[n]).parameters for n in names
    ):
        raise SystemExit(
            "mtl-fast compare: --data-root applies to nyuv2, cityscapes and celeba, none of "
            f"which is in --problem {args.problem!r}"
        )
    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"mtl-fast compare: {exc}") from None
    if args.tasks is not None:
        try:
            task_counts = [int(t) for t in str(args.tasks).split(",") if t.strip()]
        except ValueError:
            raise SystemExit(
                f"mtl-fast compare: --tasks must be integers; got {args.tasks!r}"
            ) from None
    else:
        task_counts = [QUICK_TASKS if args.quick else 10]
    results: list[ProblemResult] = []
    by_name: dict[str, ProblemResult] = {}
    for name in names:
        cls = type(_build(name, args, None)) if is_user_spec(name) else PROBLEMS[name]
        for T in task_counts if cls.variable_tasks else [None]:
            problem = _build(name, args, T)
            epochs = (
                args.epochs
                if args.epochs is not None
                else (problem.quick_epochs if args.quick else None)
            )
            n_seeds = seeds_of.get(name, args.seeds)
            config = CompareConfig(
                epochs=epochs,
                seeds=tuple(range(args.seed, args.seed + n_seeds)),
                batch_size=args.batch_size,
                lr=args.lr,
                max_steps=args.steps,
                method_lr=args.method_lr,
                progress=not args.no_progress,
                timing_rounds=6 if args.quick else 20,
                device=args.device,
                quick=args.quick,
            )
            ref = by_name.get(cls.reference_problem) if cls.reference_problem else None
            result = compare_problem(problem, methods, config, reference=ref)
            by_name.setdefault(name, result)
            results.append(result)
            _print_result(result)
            if len(results) < len(names) * len(task_counts):
                # a partial report after each problem: a long campaign keeps what it finished
                _write(results, args, time.perf_counter() - start, final=False)
    seconds = time.perf_counter() - start
    path = _write(results, args, seconds, final=True)
    if args.quick:
        print(f"\n{report.QUICK_NOTE}")
    print(f"\nReport: {path}  ({seconds:.1f} s in total)")
    return 0


def _write(results: list[Any], args: argparse.Namespace, seconds: float, *, final: bool) -> Any:
    from mtl_fast.compare import report

    command = "mtl-fast compare " + " ".join(shlex.quote(a) for a in _argv_for_report(args))
    return report.write_report(
        results,
        args.out,
        command=command,
        seconds=seconds,
        dpi=args.dpi,
        figures=final,
        partial=not final,
    )


def _seeds_of(specs: list[str], default: int) -> dict[str, int]:
    """``--seeds-of qm9-raw=1`` → ``{"qm9-raw": 1}``, checked against ``--seeds``."""
    out: dict[str, int] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            n = int(value)
        except ValueError:
            n = 0
        if not sep or not name.strip() or n < 1:
            raise SystemExit(
                f"mtl-fast compare: --seeds-of wants PROBLEM=N with N >= 1; got {spec!r}"
            )
        if n > default:
            raise SystemExit(
                f"mtl-fast compare: --seeds-of {spec}: more seeds than --seeds {default} (a "
                "problem's seeds are the first N of the run's)"
            )
        out[name.strip().lower()] = n
    return out


def _print_result(result: Any) -> None:
    from mtl_fast.compare import report

    p = result.problem
    print(f"\n== {p.title} [{p.key}] ({result.seconds:.1f} s)")
    print(f"Δ_MTL baseline: {p.baseline_label()}")
    if result.reference is not None:
        print(f"\nChange from the {result.reference.problem.key!r} run of the same method:")
        print(report.scale_table(result))
    print()
    print(report.problem_table(result))
    if result.unavailable:
        print("Unavailable: " + "; ".join(f"{n} ({w})" for n, w in result.unavailable.items()))
    sys.stdout.flush()


def _argv_for_report(args: argparse.Namespace) -> list[str]:
    out = ["--problem", args.problem, "--methods", args.methods]
    if args.quick:
        out.append("--quick")
    for spec in args.seeds_of:
        out += ["--seeds-of", spec]
    if args.device != "cpu":
        out += ["--device", args.device]
    for flag, value in (
        ("--epochs", args.epochs),
        ("--tasks", args.tasks),
        ("--batch-size", args.batch_size),
        ("--lr", args.lr),
        ("--steps", args.steps),
        ("--protocol", args.protocol),
        ("--data-root", args.data_root),
        ("--limit", args.limit),
    ):
        if value is not None:
            out += [flag, str(value)]
    if args.seeds != 1:
        out += ["--seeds", str(args.seeds)]
    if args.seed != 0:
        out += ["--seed", str(args.seed)]
    if args.method_lr != Weighting.default_lr:
        out += ["--method-lr", str(args.method_lr)]
    if args.tiny:
        out.append("--tiny")
    if args.dpi != DEFAULT_DPI:
        out += ["--dpi", str(args.dpi)]
    out += ["--out", args.out]
    return out
