"""Weighting methods: one small module per method (or family)."""

from mtl_fast.methods.amtl import AMTL
from mtl_fast.methods.baselines import DWA, GLS, RLW, EqualWeighting, StaticWeighting
from mtl_fast.methods.cv import CVWeighting
from mtl_fast.methods.dtp import DTP
from mtl_fast.methods.imtl import IMTLG
from mtl_fast.methods.lsb import LSB
from mtl_fast.methods.uncertainty import UncertaintyWeighting

__all__ = [
    "AMTL",
    "DTP",
    "DWA",
    "GLS",
    "IMTLG",
    "LSB",
    "RLW",
    "CVWeighting",
    "EqualWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
]
