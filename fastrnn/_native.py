"""Loads the compiled engine: first the BLAS (scipy-openblas32, RTLD_GLOBAL), then fastrnn._kernels._engine.

The extension links against libscipy_openblas without an rpath (a build environment's copy is gone after
the build), so the library must be in the process before the extension is imported.  Anything that goes
wrong here becomes one ImportError that says what is missing and how to get it.
"""
import ctypes
import os

import numpy  # noqa: F401  first: numpy's own OpenBLAS must read the user's environment, not _load_blas's

_HOW_TO_FIX = (
    "fastrnn's compiled CPU engine could not be loaded ({what}). Install fastrnn with its build, e.g. "
    "`pip install .` (or `pip install -e .`) from a source checkout; it needs a C compiler, Cython>=3, "
    "numpy and scipy-openblas32 from PyPI."
)


def _load_blas():
    # OpenBLAS runs on one thread inside fastrnn's pool (fastrnn/_threads.py), so it is loaded with one:
    # with more it starts its workers at load, and they spin ~2^28 cycles (~70 ms of a core) for nothing.
    # (Importing scipy_openblas32 already loads the library.)
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        try:
            import scipy_openblas32
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ImportError(_HOW_TO_FIX.format(what="the package scipy-openblas32 is not installed")) from exc
        path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
        try:
            return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:  # pragma: no cover
            raise ImportError(_HOW_TO_FIX.format(what=f"cannot load {path}: {exc}")) from exc
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved


def default_threads():
    """The thread count fastrnn starts with, as OpenBLAS would pick its own: OPENBLAS_NUM_THREADS, else
    GOTO_NUM_THREADS, else OMP_NUM_THREADS (its first entry), capped at the CPUs this process may run
    on; without any of them, those CPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            n = int(os.environ.get(name, "").split(",")[0])
        except ValueError:
            continue
        if n > 0:
            return max(1, min(n, cpus))
    return max(1, cpus)


_blas = _load_blas()
try:
    from fastrnn._kernels import _engine as engine
except ImportError as exc:
    raise ImportError(_HOW_TO_FIX.format(what=f"fastrnn._kernels._engine: {exc}")) from exc
engine.set_num_threads(default_threads())

__all__ = ["engine"]
