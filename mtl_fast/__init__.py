"""mtl_fast: fast, correct multi-task loss weighting for PyTorch.

Gram-space gradient balancing (IMTL-G, MGDA, ...) with fused Triton kernels, loss-based methods
(CV-Weighting, LSB, AMTL, Uncertainty, IMTL-L, ...) with a C++ Welford accumulator, one base class
(:class:`Weighting`) and one training loop for all of them.
"""

from mtl_fast import _compiled_ops, amp, diagnostics, history, metrics, reference  # noqa: F401 (_compiled_ops)
from mtl_fast._version import __version__
from mtl_fast.functional import backward
from mtl_fast.methods import (
    AMTL,
    DBMTL,
    DTP,
    DWA,
    FAMO,
    GLS,
    IMTL,
    IMTLG,
    IMTLL,
    LSB,
    MGDA,
    RLW,
    STCH,
    AlignedMTL,
    CAGrad,
    Compose,
    ConFIG,
    CVWeighting,
    DualProj,
    EqualWeighting,
    ExcessMTL,
    FairGrad,
    GradDrop,
    GradNorm,
    GradVac,
    MoCo,
    NashMTL,
    PCGrad,
    SDMGrad,
    StaticWeighting,
    UncertaintyWeighting,
    UPGrad,
)
from mtl_fast.multitask_linear import MultiTaskLinear
from mtl_fast.ops import combine, gram, imtl_g_weights, mgda_weights
from mtl_fast.running_stats import RunningStats, TorchRunningStats
from mtl_fast.weighting import Weighting

__all__ = [
    "AMTL",
    "DBMTL",
    "DTP",
    "DWA",
    "FAMO",
    "GLS",
    "IMTL",
    "IMTLG",
    "IMTLL",
    "LSB",
    "MGDA",
    "RLW",
    "STCH",
    "AlignedMTL",
    "CAGrad",
    "CVWeighting",
    "Compose",
    "ConFIG",
    "DualProj",
    "EqualWeighting",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "MoCo",
    "MultiTaskLinear",
    "NashMTL",
    "PCGrad",
    "RunningStats",
    "SDMGrad",
    "StaticWeighting",
    "TorchRunningStats",
    "UPGrad",
    "UncertaintyWeighting",
    "Weighting",
    "__version__",
    "amp",
    "backward",
    "combine",
    "diagnostics",
    "gram",
    "history",
    "imtl_g_weights",
    "metrics",
    "mgda_weights",
    "reference",
]
