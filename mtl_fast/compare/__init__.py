"""Compare weighting methods on small problems: ``mtl-fast compare``.

* :mod:`mtl_fast.compare.problems` — the problems (digits, denoise, synthetic, scale);
* :mod:`mtl_fast.compare.registry` — method names → constructors with sensible defaults;
* :mod:`mtl_fast.compare.train` — deterministic training and the comparison over methods/seeds;
* :mod:`mtl_fast.compare.report` — the Markdown report, figures and JSON;
* :mod:`mtl_fast.compare.cli` — the ``compare`` subcommand.

Programmatic use::

    from mtl_fast.compare import CompareConfig, compare_problem, get_problem, write_report

    result = compare_problem(get_problem("digits"), ["equal", "IMTLG"], CompareConfig(epochs=5))
    write_report([result], "out/")
"""

from mtl_fast.compare.problems import PROBLEMS, get_problem
from mtl_fast.compare.report import write_report
from mtl_fast.compare.train import CompareConfig, compare_problem

__all__ = ["PROBLEMS", "CompareConfig", "compare_problem", "get_problem", "write_report"]
