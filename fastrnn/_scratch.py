"""Large buffers kept between calls: the inference forward's input projection xp, the backward's gate
gradients (dxp, drec) and a training forward's saved sequences (the gates, hp, cp, hd, aux its backward
closure reads), none of which leave fastrnn; and, through `take_result`, the results handed to the
caller (outputs, weight and input gradients, the torch bridge's residuals), which come back by
themselves once the caller drops them.

Why: glibc serves an allocation this big (above its mmap threshold, at most 32 MiB) with fresh pages
from the OS, and the kernel zeroes every page on first touch.  For lstm t100-b128-h256 xp alone is
52 MB, and a perf profile of the 1-thread inference call showed the kernel's clear_page at 6% of it
(bench/NOTES.md 33).  A buffer taken from here is already mapped.

Contract: `take(shape, dtype)` returns ``(array, token)``; the array is uninitialised, like np.empty,
and belongs to the caller until it hands the token back with `give(token)` (it must not use the array
afterwards).  `take_result(shape, dtype)` returns an uninitialised array alone, whose memory returns to
the pool when the array and every view of it are gone (a finalizer on the array all views name as
their base).  Thread-safe: two calls in flight never get the same buffer.  Holds at most KEEP idle
buffers, each at most MAX_BYTES and MAX_IDLE_BYTES in all (the largest stay); smaller requests than
MIN_BYTES are plain np.empty.  A request takes the smallest idle buffer that fits and is at most
MAX_SLACK times its size (a small one never holds a big one, which the next big request would then
map afresh).  KEEP covers one training call's buffers (up to eleven: a forward's five sequences and
its outputs, its backward's two gate gradients and three results) with room to spare.

Why MIN_BYTES is glibc's default mmap threshold (128 KiB) and not 1 MiB: buffers of 128 KiB - 1 MiB
come from mmap or from the top of the heap, which glibc trims when they are freed, so a call that makes
several of them faults them in afresh every time.  On this kind of VM a page fault costs ~3 us (a
process's first 4 KiB touch: 3.1 us a page, timed); gru T1000 B1 H64 training (a fresh process) took
~890 faults a call, ~2.7 ms of a 4-7 ms call, and none with these buffers pooled (bench/NOTES.md 42).
Whether they fault depends on the process's history (glibc raises its threshold after freeing a big
mapping), so a whole bench in one process hid it.
"""
import bisect
import collections
import math
import threading
import weakref

import numpy as np

MIN_BYTES = 128 << 10
MAX_SLACK = 2
MAX_BYTES = 256 << 20
MAX_IDLE_BYTES = 512 << 20
KEEP = 16
ALIGN = 64   # every pooled buffer starts on a cache line (so take_result needs no offset of its own)

# Why the bookkeeping below is lean: a training call takes and gives back about ten buffers, and a
# first version (a list sorted at every give, weakref.finalize on every result, ctypes.data for the
# offset) cost 7-11 us an operation, ~100 us of a 0.8 ms gru T100 B1 H128 training call (NOTES 45).
_lock = threading.Lock()
_idle = []    # raw uint8 buffers, free to take, in ascending size ...
_sizes = []   # ... and their sizes (for bisect)
_idle_total = 0
# Buffers handed back by a finalizer (give_all, a result's weakref callback), which may run inside the
# cyclic garbage collector, so while this thread holds _lock: they only append here (atomic), and the
# next locked call moves them.
_returned = collections.deque()
_leases = {}   # id(weakref to a result) -> (that weakref, its raw buffer)


def _settle():
    """Under _lock: move the returned buffers into _idle, then keep the largest within KEEP and
    MAX_IDLE_BYTES (dropping the smallest first leaves the largest prefix that fits)."""
    global _idle_total
    while _returned:
        raw = _returned.popleft()
        i = bisect.bisect_right(_sizes, raw.nbytes)
        _sizes.insert(i, raw.nbytes)
        _idle.insert(i, raw)
        _idle_total += raw.nbytes
    while _idle and (len(_idle) > KEEP or _idle_total > MAX_IDLE_BYTES):
        _idle_total -= _sizes.pop(0)
        del _idle[0]


def take(shape, dtype):
    """An uninitialised array of `shape`/`dtype` and the token to give back (None: nothing to give)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize   # Python ints (np.prod costs microseconds a call)
    if not MIN_BYTES <= nbytes <= MAX_BYTES:
        return np.empty(shape, dtype), None
    raw = _take_raw(nbytes)
    return np.ndarray(shape, dtype, raw), raw


def _take_raw(nbytes):
    """An idle buffer of nbytes to MAX_SLACK * nbytes bytes (the smallest), or a fresh one; ALIGN-aligned."""
    global _idle_total
    with _lock:
        _settle()
        i = bisect.bisect_left(_sizes, nbytes)
        if i < len(_sizes) and _sizes[i] <= MAX_SLACK * nbytes:
            _idle_total -= _sizes.pop(i)
            return _idle.pop(i)
    return _aligned_empty(nbytes, ALIGN)


def _aligned_empty(nbytes, align):
    """np.empty(nbytes, uint8) starting on an `align`-byte boundary (NumPy's own alignment is 16)."""
    raw = np.empty(nbytes + align, np.uint8)
    off = -raw.ctypes.data % align   # (Python's % is never negative)
    return raw[off:off + nbytes]


def _lease_ended(ref, _pop=_leases.pop, _append=_returned.append, _id=id):
    # a result's last view is gone (any thread, or the garbage collector): its buffer goes back lock-free;
    # the defaults keep working while the interpreter tears the module's globals down
    _append(_pop(_id(ref))[1])


def take_result(shape, dtype, align=16):
    """An uninitialised array of `shape`/`dtype` (like np.empty) for a result that leaves fastrnn, starting
    on an `align`-byte boundary (a power of two up to 64); from MIN_BYTES its memory comes back to the
    pool by itself once the array and every view of it are gone.

    How: the memory is viewed through np.frombuffer over a memoryview of a pool buffer, so the frombuffer
    array is the base every later view (reshape, slice, a torch tensor made from it) names and keeps
    alive (NumPy stops collapsing bases at an array whose own base is not an array; np.ndarray(buffer=a
    memoryview) would not do: it puts an array of its own in between); a weakref callback on it hands the
    buffer back (lock-free: it may run inside the garbage collector)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if not MIN_BYTES <= nbytes <= MAX_BYTES:
        if align <= 16:
            return np.empty(shape, dtype)
        return _aligned_empty(nbytes, align).view(dtype).reshape(shape)
    raw = _take_raw(nbytes)
    base = np.frombuffer(memoryview(raw), dtype, math.prod(shape))
    ref = weakref.ref(base, _lease_ended)
    _leases[id(ref)] = (ref, raw)
    return base.reshape(shape)


def give(token):
    """Return a buffer from `take` (None is ignored); the largest idle buffers within KEEP and
    MAX_IDLE_BYTES stay."""
    if token is None:
        return
    with _lock:
        _returned.append(token)
        _settle()


def give_all(tokens):
    """`give` each token of a list (None ignored), without taking the lock: safe in a finalizer that the
    garbage collector runs while this thread is inside take or give; the next call settles them."""
    _returned.extend(token for token in tokens if token is not None)


def idle_bytes():
    """Bytes held idle now (tests)."""
    with _lock:
        _settle()
        return _idle_total


def clear():
    """Drop every idle buffer (tests, or a caller that wants the memory back)."""
    global _idle_total
    with _lock:
        _returned.clear()
        _idle.clear()
        _sizes.clear()
        _idle_total = 0
