"""The comparison problems: one module per problem and a small registry.

=================  ===========================================================================
module             problem
=================  ===========================================================================
``base``           the interface: :class:`Problem`, :class:`Split`, :class:`Evaluation`,
                   :class:`MultiTaskNet` (shared encoder + heads)
``user``           loads the user's own problem from ``module:factory``
``common``         helpers shared by several problems (MLPs, clipped R², the 8×8 digits)
``digits``         ``digits``: five tasks with different losses and scales on the 8×8 digits
``denoise``        ``denoise``: one task, three losses (Groenendijk et al. 2021)
``synthetic``      ``synthetic``: GradNorm's regression benchmark (Chen et al. 2018, §5.1)
``scale``          ``scale``: ``digits`` with one loss ×10 (Liu et al. 2021, Table 1)
``multimnist``     ``multimnist``: Sener & Koltun 2018's MultiMNIST built from the 8×8 digits
``qm9``            ``qm9`` and ``qm9-raw``: QM9's 11 targets, message-passing network (needs
                   the ``mtl_fast[qm9]`` extra); ``qm9_data`` reads and caches the data
``scenes``         ``nyuv2`` and ``cityscapes`` from a local folder in the MTAN/LibMTL ``.npy``
                   layout (``dense``: their losses, metrics and encoder-decoder)
``celeba``         ``celeba``: 40 binary attributes from a local CelebA folder
=================  ===========================================================================

Every problem builds a :class:`MultiTaskNet` (a shared encoder and per-task heads; gradient-based
methods receive the encoder output through ``method.split``), computes T scalar task losses,
evaluates a metric tree ``{task: {metric: value}}`` with ``higher_is_better`` flags in the same
structure (the input of :func:`mtl_fast.metrics.delta_mtl`), and an accuracy-like KPI in [0, 1]
per loss (what AMTL and DTP receive through ``observe``).

The registry :data:`PROBLEMS` maps a name to its class, in report order; :func:`get_problem`
builds one; :func:`register_problem` adds a class under its ``name``. A problem of your own
needs no registration: ``mtl-fast compare --problem module:factory`` (:mod:`.user`).
"""

from __future__ import annotations

from typing import Any

from mtl_fast.compare.problems.base import (
    Evaluation,
    MetricTree,
    MultiTaskNet,
    Problem,
    ProblemData,
    SignTree,
    Split,
)
from mtl_fast.compare.problems.celeba import CelebAProblem
from mtl_fast.compare.problems.denoise import DenoiseProblem
from mtl_fast.compare.problems.digits import DigitsProblem
from mtl_fast.compare.problems.multimnist import MultiMNISTProblem
from mtl_fast.compare.problems.qm9 import QM9Problem, QM9RawProblem
from mtl_fast.compare.problems.scale import ScaleProblem
from mtl_fast.compare.problems.scenes import CityscapesProblem, NYUv2Problem
from mtl_fast.compare.problems.synthetic import SyntheticProblem

__all__ = [
    "DEFAULT_PROBLEMS",
    "LOCAL_DATA_PROBLEMS",
    "PROBLEMS",
    "CelebAProblem",
    "CityscapesProblem",
    "DenoiseProblem",
    "DigitsProblem",
    "Evaluation",
    "MetricTree",
    "MultiMNISTProblem",
    "MultiTaskNet",
    "NYUv2Problem",
    "Problem",
    "ProblemData",
    "QM9Problem",
    "QM9RawProblem",
    "ScaleProblem",
    "SignTree",
    "Split",
    "SyntheticProblem",
    "get_problem",
    "register_problem",
]

#: name → problem class, in report order.
PROBLEMS: dict[str, type[Problem]] = {}

#: the problems ``--problem all`` runs (those that need no optional extra).
DEFAULT_PROBLEMS: tuple[str, ...] = ("digits", "denoise", "synthetic", "scale", "multimnist")

#: the problems that read a local copy of their data (``--data-root``; nothing is downloaded)
LOCAL_DATA_PROBLEMS: tuple[str, ...] = ("nyuv2", "cityscapes", "celeba")


def register_problem(cls: type[Problem]) -> type[Problem]:
    """Add ``cls`` to :data:`PROBLEMS` under ``cls.name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    if cls.name in PROBLEMS and PROBLEMS[cls.name] is not cls:
        raise ValueError(f"problem name {cls.name!r} is already registered")
    PROBLEMS[cls.name] = cls
    return cls


for _cls in (
    DigitsProblem,
    DenoiseProblem,
    SyntheticProblem,
    ScaleProblem,
    MultiMNISTProblem,
    QM9Problem,
    QM9RawProblem,
    NYUv2Problem,
    CityscapesProblem,
    CelebAProblem,
):
    register_problem(_cls)


def get_problem(
    name: str, *, tiny: bool = False, num_tasks: int | None = None, **options: Any
) -> Problem:
    """Build a registered problem by name.

    Args:
        name: a key of :data:`PROBLEMS`.
        tiny: the problem's tiny variant (tests).
        num_tasks: T, for problems with a variable number of tasks (``synthetic``).
        options: further keyword arguments of the problem's constructor.
    """
    try:
        cls = PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}") from None
    if cls.variable_tasks:
        options.setdefault("num_tasks", num_tasks or cls.default_num_tasks)
    return cls(tiny=tiny, **options)
