"""Build script: the Python package, the Triton kernels and the C++ extension ``mtl_fast._C``.

The Triton kernels' modules live in the top-level ``kernels/`` folder and form the subpackage
``mtl_fast.kernels`` (whose ``__init__.py`` is ``mtl_fast/kernels/__init__.py``): a wheel gets the
modules copied into ``mtl_fast/kernels/`` (``build_py_with_kernels``), a source checkout or an
editable install finds them through the package's ``__path__``. ``kernels/`` has no
``__init__.py``, so it never shadows another distribution's ``kernels`` package.

``csrc/`` is compiled with pybind11 into ``mtl_fast._C``. On x86-64 with GCC or Clang the
instruction-set kernels ``csrc/cpu_passes_avx512.cpp`` and ``csrc/cpu_passes_avx2.cpp`` are compiled
with their own target flags (``ISA_FLAGS``) and chosen at run time, so a wheel built on one x86-64
machine runs on any other; everything else gets the baseline flags. OpenMP is used when the
compiler accepts ``-fopenmp`` (e.g. not Apple clang without libomp): without it the CPU passes run
on one thread. It is deliberately *not* linked against
libtorch: buffers cross the boundary through the buffer protocol (NumPy arrays, CPU tensors via
``.numpy()``), so one build serves every torch version.
"""

import os
import platform
import subprocess
import tempfile
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

# Compile the C++ sources in parallel (one job per core unless $MTL_FAST_BUILD_JOBS says).
ParallelCompile("MTL_FAST_BUILD_JOBS", default=0).install()

#: Extra compiler flags of the instruction-set translation units (x86-64, GCC/Clang only).
ISA_FLAGS = {
    "cpu_passes_avx512.cpp": ["-mavx512f", "-mavx2", "-mfma", "-mf16c"],
    "cpu_passes_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
}


def _x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _accepts(compiler: list[str], flags: list[str]) -> bool:
    """Whether ``compiler`` compiles and links a small OpenMP program with ``flags``."""
    code = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.cpp")
        Path(src).write_text(code)
        cmd = [*compiler, *flags, src, "-o", os.path.join(tmp, "t")]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


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


class build_ext_with_isa(build_ext):
    """pybind11's build_ext plus OpenMP where the compiler has it and per-file target flags for
    the instruction-set kernels (see ISA_FLAGS)."""

    def build_extensions(self) -> None:
        compiler = self.compiler
        if compiler.compiler_type == "unix":
            if _accepts(compiler.compiler_so[:1], ["-fopenmp"]):
                for ext in self.extensions:
                    ext.extra_compile_args.append("-fopenmp")
                    ext.extra_link_args.append("-fopenmp")
            else:
                print("mtl_fast: the compiler has no OpenMP; the CPU passes will use one thread")
            if _x86_64():
                original = compiler._compile

                def compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts):
                    extra = ISA_FLAGS.get(os.path.basename(src), [])
                    return original(obj, src, ext, cc_args, [*extra_postargs, *extra], pp_opts)

                compiler._compile = compile_one
        super().build_extensions()


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
        "mtl_fast.compare",
        "mtl_fast.compare.problems",
        "mtl_fast.integrations",
    ],
    package_data={"mtl_fast": ["py.typed"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext_with_isa, "build_py": build_py_with_kernels},
    zip_safe=False,
)
