"""Build script: the Python package, the Triton kernels and the C++ extension ``mtl_fast._C``.

``kernels/`` is installed as the subpackage ``mtl_fast.kernels`` (a ``package_dir`` mapping), so
``import mtl_fast.kernels`` works after installation and a top-level ``import kernels`` does not.

``csrc/`` is compiled with pybind11 into ``mtl_fast._C``. It is deliberately *not* linked against
libtorch: buffers cross the boundary through the buffer protocol (NumPy arrays, CPU tensors via
``.numpy()``), so one build serves every torch version.
"""

from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

# Compile the C++ sources in parallel (one job per core unless $MTL_FAST_BUILD_JOBS says).
ParallelCompile("MTL_FAST_BUILD_JOBS", default=0).install()

ext_modules = [
    Pybind11Extension(
        "mtl_fast._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        # No fused multiply-add contraction: the C++ statistics stay bit-identical to the torch
        # twin (TorchRunningStats) on every CPU.
        extra_compile_args=["-O3", "-ffp-contract=off"],
    )
]

setup(
    packages=[
        "mtl_fast",
        "mtl_fast.reference",
        "mtl_fast.methods",
        "mtl_fast.kernels",
        "mtl_fast.bench",
        "mtl_fast.compare",
    ],
    package_dir={"mtl_fast.kernels": "kernels"},
    package_data={"mtl_fast": ["py.typed"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
