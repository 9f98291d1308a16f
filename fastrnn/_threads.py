"""Thread control: one pool at a time (DESIGN section 4).

The compiled engine's parallelism today is OpenBLAS's own pool (the GEMMs/GEMVs); the gate math runs on
the calling thread.  OpenBLAS reads OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when it loads, so the default
respects them; `set_num_threads` changes it for the process.  The kernels release the GIL, so several
Python threads may run RNNs at once (each BLAS call is thread-safe).
"""
import contextlib
import operator

from fastrnn._native import engine


def set_num_threads(n):
    """Use `n` threads (>= 1) in fastrnn's kernels."""
    try:
        count = operator.index(n)  # any integer type (numpy ints too), never a float or bool
    except TypeError:
        count = None
    if isinstance(n, bool) or count is None or count < 1:
        raise ValueError(f"set_num_threads: expected an int >= 1, got {n!r}")
    engine.set_blas_threads(count)


def get_num_threads():
    """The number of threads fastrnn's kernels use."""
    return engine.get_blas_threads()


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with `n` threads, then restore the previous count."""
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)
