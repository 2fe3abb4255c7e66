"""Weighting methods: one small module per method (or family)."""

from mtl_fast.methods.baselines import EqualWeighting
from mtl_fast.methods.imtl import IMTLG

__all__ = ["IMTLG", "EqualWeighting"]
