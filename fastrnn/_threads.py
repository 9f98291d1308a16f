"""Thread control: one pool at a time (DESIGN section 4).

fastrnn's own pool (fastrnn/_kernels/pool.h) runs every parallel part: the time loops, split by batch
rows or hidden units, and the large GEMMs around them, split into 1-thread BLAS calls.  OpenBLAS is
loaded with one thread and kept there (each engine entry pins it back if threadpoolctl changed it), so
its pool never wakes.  The count starts from what OpenBLAS would pick (OPENBLAS_NUM_THREADS, then
OMP_NUM_THREADS, else the CPUs; fastrnn._native.default_threads); `set_num_threads` changes it
for the process (a Stream keeps the count it was made with).  The kernels release the GIL, so several
Python threads may run RNNs at once: the pool serves one call at a time, the others run on their own
thread, and results never depend on which.
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
    engine.set_num_threads(count)


def get_num_threads():
    """The number of threads fastrnn's kernels use."""
    return engine.get_num_threads()


@contextlib.contextmanager
def threads(n):
    """Context manager: run the block with `n` threads, then restore the previous count."""
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)
