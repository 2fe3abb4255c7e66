"""Build script: the Python package, the Triton kernels and the C++ extension ``mtl_fast._C``.

The Triton kernels' modules live in the top-level ``kernels/`` folder and form the subpackage
``mtl_fast.kernels`` (whose ``__init__.py`` is ``mtl_fast/kernels/__init__.py``): a wheel gets the
modules copied into ``mtl_fast/kernels/`` (``build_py_with_kernels``), a source checkout or an
editable install finds them through the package's ``__path__``. ``kernels/`` has no
``__init__.py``, so it never shadows another distribution's ``kernels`` package.

``csrc/`` is compiled with pybind11 into ``mtl_fast._C``. It is deliberately *not* linked against
libtorch: buffers cross the boundary through the buffer protocol (NumPy arrays, CPU tensors via
``.numpy()``), so one build serves every torch version.
"""

from glob import glob
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

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


class build_py_with_kernels(build_py):
    """Also copy the kernel modules of ``kernels/`` into ``mtl_fast/kernels/`` of the build (a
    wheel then needs no path extension; see ``mtl_fast/kernels/__init__.py``)."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "mtl_fast" / "kernels"
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted(Path("kernels").glob("*.py")):
            self.copy_file(str(src), str(target / src.name))


setup(
    packages=[
        "mtl_fast",
        "mtl_fast.reference",
        "mtl_fast.methods",
        "mtl_fast.kernels",
        "mtl_fast.bench",
        "mtl_fast.compare",
    ],
    package_data={"mtl_fast": ["py.typed"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext, "build_py": build_py_with_kernels},
    zip_safe=False,
)
