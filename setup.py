"""Build logic only: the compiled CPU kernels of fastrnn.

* Cython 3 extensions in fastrnn/_kernels, compiled with -O3 but never -march=native: the AVX2/FMA gate
  math lives in gates_avx2.c, compiled with -mavx2 -mfma on its own and chosen at run time
  (__builtin_cpu_supports), with a portable scalar twin in gates.c; the AVX-512 packed products and
  fused cell rows in gemm_avx512.c, vecmat_proj_avx512.c and gates_avx512.c, compiled with -mavx512f -mfma
  on their own, likewise.
* BLAS is scipy-openblas32 from PyPI (CBLAS API, symbols prefixed scipy_); fastrnn/__init__ loads the
  library with RTLD_GLOBAL before importing the extension (no rpath: an isolated build environment's
  copy of the library is gone after the build).
"""
import sys

import numpy
import scipy_openblas32
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = "fastrnn/_kernels"
BLAS_INC = scipy_openblas32.get_include_dir()
BLAS_LIB = scipy_openblas32.get_lib_dir()
BLAS_NAME = scipy_openblas32.get_library()

class BuildExt(build_ext):
    """Compile gates_avx2.c (and only it) with AVX2/FMA enabled, gates_avx512.c, gemm_avx512.c and
    vecmat_proj_avx512.c (only they) with AVX-512F; these SIMD files' functions start on 64-byte lines:
    the microkernel's speed moved 15-20% with its loops' placement alone (bench/NOTES.md 52), and the
    objects before them in the link (_engine.c first) would move it with every unrelated edit."""

    def build_extensions(self):
        original = self.compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            extra = list(extra_postargs)
            if src.endswith("gates_avx2.c") and sys.platform != "win32":
                extra += ["-mavx2", "-mfma", "-falign-functions=64"]
            avx512 = ("gemm_avx512.c", "gates_avx512.c", "vecmat_proj_avx512.c")
            if src.endswith(avx512) and sys.platform != "win32":
                extra += ["-mavx512f", "-mfma", "-falign-functions=64"]
            return original(obj, src, ext, cc_args, extra, pp_opts)

        self.compiler._compile = _compile
        super().build_extensions()


def kernel_extension(name, sources=()):
    return Extension(
        f"fastrnn._kernels.{name}",
        sources=[f"{KERNELS}/{name}.pyx", *[f"{KERNELS}/{s}" for s in sources]],
        include_dirs=[KERNELS, BLAS_INC, numpy.get_include()],
        library_dirs=[BLAS_LIB],
        libraries=[BLAS_NAME],
        extra_compile_args=["-O3", "-fno-math-errno", "-pthread"] if sys.platform != "win32" else ["/O2"],
        extra_link_args=["-pthread"] if sys.platform != "win32" else [],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    )


extensions = [
    kernel_extension("_engine", sources=["gates.c", "gates_avx2.c", "gates_avx512.c", "gemm_avx512.c",
                                         "vecmat_proj_avx512.c", "pool.c"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
