"""The one-call Python API of the comparison: :func:`run` (``mtl_fast.compare.run``).

``mtl-fast compare`` on the command line does the same for several problems at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mtl_fast.compare import registry
from mtl_fast.compare.problems import Problem, get_problem
from mtl_fast.compare.problems.user import is_user_spec, load_user_problem
from mtl_fast.compare.train import CompareConfig, ProblemResult, compare_problem

__all__ = ["run"]


def _problem(problem: str | Problem, options: dict[str, Any]) -> Problem:
    if isinstance(problem, Problem):
        if options:
            raise ValueError(
                f"problem options {sorted(options)} apply to a problem given by name, not to "
                f"the instance {type(problem).__name__} (construct it with them instead)"
            )
        return problem
    if not isinstance(problem, str):
        raise TypeError(
            f"problem must be a registered name, 'module:factory' or a Problem instance; got "
            f"{type(problem).__name__}"
        )
    if is_user_spec(problem):
        return load_user_problem(problem)
    return get_problem(problem.lower(), **options)


def _methods(methods: str | Sequence[str]) -> list[str]:
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    return registry.expand(names)


def run(
    problem: str | Problem,
    methods: str | Sequence[str] = "all",
    *,
    seeds: int | Sequence[int] = 1,
    epochs: int | None = None,
    quick: bool = False,
    device: str = "cpu",
    reference: ProblemResult | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> ProblemResult:
    """Compare weighting methods on one problem: train the single-task baselines and one model
    per method and seed, and aggregate metrics, Δ_MTL, Acc_MTL, average rank and time per step.

    Args:
        problem: a registered name (``"digits"``, ``"qm9"``, ``"nyuv2"``, ... see
            :data:`mtl_fast.compare.PROBLEMS`), ``"module:factory"`` / ``"file.py:factory"``
            (your own problem, docs/compare.md), or a
            :class:`~mtl_fast.compare.problems.Problem` instance.
        methods: method names, aliases or groups (``"all"``, ``"loss"``, ``"gradient"``,
            ``"published"``), as a list or one comma-separated string.
        seeds: the number of seeds (``0 .. n − 1``) or the seeds themselves.
        epochs: epochs per run (default: the problem's; with ``quick``: its ``quick_epochs``).
        quick: the quick tier (indicative only; the report says so).
        device: ``"cpu"``, ``"cuda"``, ... (model, method and batches; the same seeds give the
            same initialisation on every device).
        reference: for problems that reuse another's baselines (``scale`` → ``digits``,
            ``qm9-raw`` → ``qm9``): that problem's result; when None it is run first with the
            same settings.
        out: a directory to write ``report.md``, ``results.json`` and the figures to.
        progress: show a progress bar.
        options: keyword arguments of the problem's constructor (``tiny=True``,
            ``num_tasks=100`` for ``synthetic``, ``protocol="full"`` for ``qm9``,
            ``data_root=...`` for ``nyuv2`` / ``cityscapes`` / ``celeba``).

    Returns:
        The :class:`~mtl_fast.compare.train.ProblemResult` (``result.methods[name]`` holds each
        method's metrics, ``delta_mtl``, ``rank``, ``ms_per_step``, per-seed runs).

    Example::

        import mtl_fast as mf

        result = mf.compare.run("digits", methods=["equal", "IMTLG", "GLS"], seeds=3)
        print({n: round(o.delta_mtl, 1) for n, o in result.methods.items()})
    """
    prob = _problem(problem, options)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be a positive count or a non-empty list of seeds")
    names = _methods(methods)
    config = CompareConfig(
        epochs=epochs if epochs is not None else (prob.quick_epochs if quick else None),
        seeds=tuple(seed_list),
        progress=progress,
        timing_rounds=6 if quick else 20,
        device=device,
        quick=quick,
    )
    results: list[ProblemResult] = []
    ref_name = type(prob).reference_problem
    if ref_name is not None and reference is None:
        ref_options = {k: v for k, v in options.items() if k != "loss_multipliers"}
        ref_problem = get_problem(ref_name, **ref_options)
        reference = compare_problem(ref_problem, names, config)
        results.append(reference)
    result = compare_problem(prob, names, config, reference=reference)
    results.append(result)
    if out is not None:
        from mtl_fast.compare import report

        report.write_report(results, out, command=f"mtl_fast.compare.run({prob.key!r}, ...)")
    return result
