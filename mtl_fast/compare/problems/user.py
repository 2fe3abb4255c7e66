"""The user's own problem: ``mtl-fast compare --problem my_pkg.my_module:make_problem`` (or
``path/to/file.py:make_problem``) imports the module and calls the factory, which returns a
:class:`~mtl_fast.compare.problems.base.Problem` instance (the protocol: docs/compare.md, "Your
own problem"; a worked example: examples/custom_problem.py)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from mtl_fast.compare.problems.base import Problem

__all__ = ["is_user_spec", "load_user_problem"]

_REQUIRED = ("load", "build_model", "losses", "evaluate", "description")


def is_user_spec(spec: str) -> bool:
    """True for ``module:factory`` or ``file.py:factory`` (registered names have no colon)."""
    return ":" in spec


def _import(module: str):
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise ValueError(f"no such file {module!r}")
        name = f"_mtl_fast_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {module!r}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(module)


def load_user_problem(spec: str) -> Problem:
    """Import ``module:factory`` (or ``file.py:factory``), call ``factory()`` and check that it
    returns a :class:`Problem` subclass instance implementing the protocol.

    Raises:
        ValueError: malformed spec, missing factory, or a result that is not a usable Problem
            (the message says what is missing).
    """
    module, _, attr = spec.rpartition(":")
    if not module or not attr:
        raise ValueError(f"expected 'module:factory' or 'file.py:factory'; got {spec!r}")
    try:
        mod = _import(module)
    except ImportError as exc:
        raise ValueError(f"cannot import {module!r}: {exc}") from exc
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise ValueError(f"{module!r} has no callable {attr!r}")
    problem = factory()
    if not isinstance(problem, Problem):
        raise ValueError(
            f"{spec}() returned {type(problem).__name__}, not a "
            "mtl_fast.compare.problems.Problem subclass instance"
        )
    missing = [m for m in _REQUIRED if getattr(type(problem), m) is getattr(Problem, m)]
    attrs = [a for a in ("name", "task_names", "task_types", "higher_is_better")
             if not getattr(problem, a, None)]  # fmt: skip
    if missing or attrs:
        raise ValueError(
            f"{type(problem).__name__} does not implement the Problem protocol: "
            f"missing methods {missing}, missing attributes {attrs} (docs/compare.md)"
        )
    if len(problem.task_types) != problem.num_tasks:
        raise ValueError(
            f"{type(problem).__name__}: task_types has {len(problem.task_types)} entries for "
            f"{problem.num_tasks} task_names"
        )
    return problem
