"""Triton kernels of mtl_fast, installed as ``mtl_fast.kernels``."""
