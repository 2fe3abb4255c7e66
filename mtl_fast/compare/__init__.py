"""Compare weighting methods on small and real problems: ``mtl-fast compare`` and
``mtl_fast.compare.run``.

* :mod:`mtl_fast.compare.problems` — the problems (digits, denoise, synthetic, scale,
  multimnist, qm9, and the local-data nyuv2 / cityscapes / celeba);
* :mod:`mtl_fast.compare.registry` — method names → constructors (the method registry's
  methods, plus the comparison-side SI baseline of :mod:`mtl_fast.compare.transforms`);
* :mod:`mtl_fast.compare.train` — deterministic training and the comparison over methods/seeds;
* :mod:`mtl_fast.compare.report` — the Markdown report, figures and JSON
  (:mod:`mtl_fast.compare.published`: the published QM9 table beside ours);
* :mod:`mtl_fast.compare.api` — :func:`run`, the one-call Python API;
* :mod:`mtl_fast.compare.cli` — the ``compare`` subcommand.

Programmatic use::

    import mtl_fast as mf

    result = mf.compare.run("digits", methods=["equal", "IMTLG"], seeds=3, out="out/")
    print(result.methods["IMTLG"].delta_mtl)

Lower level: ``compare_problem(get_problem("digits"), ["equal", "IMTLG"], CompareConfig(...))``
then ``write_report([result], "out/")``.
"""

from mtl_fast.compare.api import run
from mtl_fast.compare.problems import PROBLEMS, get_problem
from mtl_fast.compare.report import write_report
from mtl_fast.compare.train import CompareConfig, compare_problem

__all__ = ["PROBLEMS", "CompareConfig", "compare_problem", "get_problem", "run", "write_report"]
