"""Weighting methods: one small module per method (or family)."""

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
    "NashMTL",
    "PCGrad",
    "SDMGrad",
    "StaticWeighting",
    "UPGrad",
    "UncertaintyWeighting",
]
