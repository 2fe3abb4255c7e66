"""The ``mtl-fast`` command line: ``info`` (environment report), ``bench`` (a thin entry point to
the benchmark harness of a source checkout, ``benchmarks/harness/``), and the subcommands other
modules register (``compare``)."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path
from typing import Callable, Sequence

Subcommand = Callable[[argparse._SubParsersAction], None]


def environment() -> dict:
    """Versions, available backends and devices, as a JSON-friendly dict."""
    import numpy
    import torch

    from mtl_fast import __version__, _backend

    info: dict = {
        "mtl_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "triton_interpret": _backend.triton_interpret(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:
        info["triton"] = None
        info["triton_error"] = f"{type(exc).__name__}: {exc}"
    info["kernels_available"] = _backend.triton_available()
    if not info["kernels_available"]:
        info["kernels_error"] = _backend.triton_import_error()
    info["native_extension"] = _backend.native_available()
    if not info["native_extension"]:
        info["native_error"] = _backend.native_import_error()
    else:
        import mtl_fast._C as C

        info["native_build"] = dict(C.__build_info__)
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["auto_backend"] = {
        "cpu": "reference (pure PyTorch) + native solves"
        if info["native_extension"]
        else "reference",
        "cuda": "triton" if info["kernels_available"] else "reference",
    }
    return info


def _has_native_solves() -> bool:
    import mtl_fast._C as C

    return hasattr(C, "imtl_g_solve") and hasattr(C, "mgda_solve")


def _cmd_info(args: argparse.Namespace) -> int:
    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-fast", description="mtl_fast: fast, correct multi-task loss weighting"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, backends, native extension, GPU")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_info.set_defaults(func=_cmd_info)
    # The harness parses its own options (``add_help=False``: ``--help`` goes to it as well).
    p_bench = sub.add_parser(
        "bench",
        add_help=False,
        help="benchmarks: ops, training step, loss statistics, scaling in T (source checkout)",
    )
    p_bench.set_defaults(func=_cmd_bench)
    for register in _registered():
        register(sub)
    return parser


#: Where the benchmark harness lives in a source checkout, relative to the repository root.
HARNESS = Path("benchmarks") / "harness"


def harness_root() -> Path | None:
    """The repository root whose ``benchmarks/harness/`` holds the benchmark harness: the folder
    above the ``mtl_fast`` package (a source checkout or an editable install), else the current
    directory (an installed wheel run from inside a checkout); ``None`` when neither has it."""
    import mtl_fast

    for root in (Path(mtl_fast.__file__).resolve().parents[1], Path.cwd().resolve()):
        if (root / HARNESS / "cli.py").is_file():
            return root
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    root = harness_root()
    if root is None:
        print(
            "mtl-fast bench: the benchmark harness is not installed with the package; it lives in "
            f"the source checkout under {HARNESS.as_posix()}/. Clone the repository and run "
            "`mtl-fast bench` from its root (or `python -m benchmarks.harness` there), with an "
            "editable install (`pip install -e '.[bench]'`) or the wheel installed.",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    harness = importlib.import_module("benchmarks.harness.cli")
    found = Path(harness.__file__).resolve().parent if harness.__file__ else None
    if found != root / HARNESS:
        print(
            f"mtl-fast bench: `benchmarks.harness` was imported from {found}, not from "
            f"{root / HARNESS}: an installed package named `benchmarks` shadows the checkout's "
            "folder (a package with an __init__.py wins over a folder without one). Uninstall "
            "it, or run from an environment without it.",
            file=sys.stderr,
        )
        return 2
    return int(harness.main(args.bench_args))


def _registered() -> list[Subcommand]:
    """Subcommands defined in other modules (imported lazily: they pull heavier deps)."""
    found: list[Subcommand] = []
    for module_name in ("mtl_fast.compare.cli",):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that subcommand is not part of this build
            raise
        found.append(module.register)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest  # every option after ``bench`` belongs to the harness
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
