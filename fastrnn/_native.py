"""Loads the compiled engine: first the BLAS (scipy-openblas32, RTLD_GLOBAL), then fastrnn._kernels._engine.

The extension links against libscipy_openblas without an rpath (a build environment's copy is gone after
the build), so the library must be in the process before the extension is imported.  Anything that goes
wrong here becomes one ImportError that says what is missing and how to get it.
"""
import ctypes
import os

_HOW_TO_FIX = (
    "fastrnn's compiled CPU engine could not be loaded ({what}). Install fastrnn with its build, e.g. "
    "`pip install .` (or `pip install -e .`) from a source checkout; it needs a C compiler, Cython>=3, "
    "numpy and scipy-openblas32 from PyPI."
)


def _load_blas():
    try:
        import scipy_openblas32
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError(_HOW_TO_FIX.format(what="the package scipy-openblas32 is not installed")) from exc
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    try:
        return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:  # pragma: no cover
        raise ImportError(_HOW_TO_FIX.format(what=f"cannot load {path}: {exc}")) from exc


_blas = _load_blas()
try:
    from fastrnn._kernels import _engine as engine
except ImportError as exc:
    raise ImportError(_HOW_TO_FIX.format(what=f"fastrnn._kernels._engine: {exc}")) from exc

__all__ = ["engine"]
