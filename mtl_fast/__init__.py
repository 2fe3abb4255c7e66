"""mtl_fast: fast, correct multi-task loss weighting for PyTorch."""

from mtl_fast._version import __version__

__all__ = ["__version__"]
