"""The method registry: every weighting method of mtl_fast, with what a caller needs to use it.

One :class:`MethodSpec` per method: the class, its family (loss-based or gradient-based), a
constructor for T tasks with sensible arguments, and, as the class declares them, the lifecycle
calls a training loop must make and whether a training step can be captured in a CUDA graph.
The benchmarks, the comparison and the tests read this table instead of keeping lists of their
own, so a method added here is benchmarked and held to the conformance suite
(``tests/test_conformance.py``) without another list to edit.

Adding a method: write its module in ``mtl_fast/methods/``, export the class from
``mtl_fast.methods`` and add one ``MethodSpec`` to :data:`REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from mtl_fast.methods.aligned_mtl import AlignedMTL
from mtl_fast.methods.amtl import AMTL
from mtl_fast.methods.baselines import DWA, GLS, RLW, EqualWeighting, StaticWeighting
from mtl_fast.methods.cagrad import CAGrad
from mtl_fast.methods.compose import Compose
from mtl_fast.methods.config import ConFIG
from mtl_fast.methods.cv import CVWeighting
from mtl_fast.methods.dbmtl import DBMTL
from mtl_fast.methods.dtp import DTP
from mtl_fast.methods.excess_mtl import ExcessMTL
from mtl_fast.methods.fairgrad import FairGrad
from mtl_fast.methods.famo import FAMO
from mtl_fast.methods.graddrop import GradDrop
from mtl_fast.methods.gradnorm import GradNorm
from mtl_fast.methods.gradvac import GradVac
from mtl_fast.methods.imtl import IMTL, IMTLG, IMTLL
from mtl_fast.methods.lsb import LSB
from mtl_fast.methods.mgda import MGDA
from mtl_fast.methods.moco import MoCo
from mtl_fast.methods.nash_mtl import NashMTL
from mtl_fast.methods.pcgrad import PCGrad
from mtl_fast.methods.sdmgrad import SDMGrad
from mtl_fast.methods.stch import STCH
from mtl_fast.methods.uncertainty import UncertaintyWeighting
from mtl_fast.methods.upgrad import DualProj, UPGrad
from mtl_fast.weighting import Weighting


def _potentials(T: int) -> list[float]:
    """AMTL's single-task potentials for T tasks, spread over [0.5, 0.95]."""
    return [0.5 + 0.45 * t / max(T - 1, 1) for t in range(T)]


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Attributes:
        cls: the :class:`~mtl_fast.Weighting` subclass.
        make: ``make(T, **options)``, a constructor for T tasks with sensible default arguments
            (``options`` go to the class, e.g. ``nonfinite="absent"``); ``None``: the class
            itself takes T first, ``cls(T, **options)``.
    """

    cls: type[Weighting]
    make: Callable[..., Weighting] | None = None

    @property
    def name(self) -> str:
        """The class name, also the name used on the command line and in reports."""
        return self.cls.__name__

    @property
    def lifecycle(self) -> tuple[str, ...]:
        """The lifecycle calls the method needs (:attr:`mtl_fast.Weighting.lifecycle`)."""
        return self.cls.lifecycle

    @property
    def family(self) -> Literal["loss", "gradient"]:
        """``"gradient"`` when the weights act on the shared gradient (inside ``split``)."""
        return "gradient" if self.cls.gradient_based else "loss"

    @property
    def capturable(self) -> bool:
        """A training step with the method can be captured in a CUDA graph (the class flag)."""
        return self.cls.cuda_graph_capturable

    def build(self, num_tasks: int, **options: Any) -> Weighting:
        """A fresh instance for ``num_tasks`` tasks (``options``: keyword arguments of the
        class, such as ``nonfinite=`` or ``backend=``)."""
        if self.make is None:
            return self.cls(num_tasks, **options)
        return self.make(num_tasks, **options)


#: Every method, loss-based first, in the order of the README's table.
REGISTRY: tuple[MethodSpec, ...] = (
    MethodSpec(EqualWeighting),
    MethodSpec(StaticWeighting, lambda T, **kw: StaticWeighting([1.0] * T, **kw)),
    MethodSpec(UncertaintyWeighting),
    MethodSpec(CVWeighting),
    MethodSpec(LSB),
    MethodSpec(AMTL, lambda T, **kw: AMTL(_potentials(T), **kw)),
    MethodSpec(IMTLL),
    MethodSpec(GLS),
    MethodSpec(DWA),
    MethodSpec(RLW),
    MethodSpec(DTP),
    MethodSpec(STCH),
    MethodSpec(FAMO),
    MethodSpec(IMTLG),
    MethodSpec(IMTL),
    MethodSpec(MGDA),
    MethodSpec(GradNorm),
    MethodSpec(PCGrad),
    MethodSpec(CAGrad),
    MethodSpec(NashMTL),
    MethodSpec(UPGrad),
    MethodSpec(DualProj),
    MethodSpec(AlignedMTL),
    MethodSpec(GradVac),
    MethodSpec(DBMTL),
    MethodSpec(FairGrad),
    MethodSpec(ConFIG),
    MethodSpec(SDMGrad),
    MethodSpec(ExcessMTL),
    MethodSpec(MoCo),
    MethodSpec(GradDrop),
    # A representative composition (IMTL-L ∘ IMTL-G = IMTL), so the contract covers Compose.
    MethodSpec(Compose, lambda T, **kw: Compose(IMTLL(T), IMTLG(), **kw)),
)

_BY_NAME = {spec.name: spec for spec in REGISTRY}


def names() -> tuple[str, ...]:
    """The registered method names, in :data:`REGISTRY` order."""
    return tuple(spec.name for spec in REGISTRY)


def get(name: str) -> MethodSpec:
    """The spec of method ``name``.

    Raises:
        KeyError: no such method (the message lists the registered ones).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no method {name!r}; registered: {', '.join(names())}") from None
