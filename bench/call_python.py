"""The Python around a repeated prepared inference call (`fastrnn.functional.prepare`'s handle, as the
bench times it): the whole call against its engine.forward, and the same process with the repeated
signature's kept plan and workspace switched on and off: behind bench/NOTES.md 55.

    python bench/call_python.py CELL T B I H [--threads N] [--calls C]

Why: after the time loop has evicted the interpreter's code and data, the Python of a call runs cold,
at 2-4x its warm cost: a T = 1 call's ~10 us of Python is ~40 us after a 0.4 ms loop.  Medians; the
machine is noisy, so compare within one run.
"""
import statistics
import time

import numpy as np

from fastrnn import _compiled, _dispatch, functional
from training_call import GATES, parse_args

ROUNDS = 7   # on / off alternations; each side times --calls / ROUNDS calls a round


class _Timed:
    """fastrnn._compiled's engine module with `forward` timed into `times`."""

    def __init__(self, real, times):
        self._real, self._times = real, times

    def __getattr__(self, name):
        return getattr(self._real, name)

    def forward(self, *args):
        t0 = time.perf_counter()
        try:
            return self._real.forward(*args)
        finally:
            self._times.append(time.perf_counter() - t0)


def _kept(prepared, on):
    """Repeated signatures keep their plan and workspace (on), or make them at every call (off)."""
    _compiled.REUSE_KEEP = 2 if on else 0
    if not on:
        for seen in prepared._specs._specs.values():
            seen.idle.clear()


def main():
    args = parse_args(__doc__, calls=2000)
    T, B, I, H = args.sizes   # noqa: E741
    G = GATES[args.cell]
    rng = np.random.default_rng(0)
    bias = np.zeros((2, G * H) if args.cell == "gru" else (G * H,), np.float32)
    prepared = functional.prepare(args.cell, rng.standard_normal((I, G * H), dtype=np.float32) * 0.1,
                                  rng.standard_normal((H, G * H), dtype=np.float32) * 0.1, bias)
    x = rng.standard_normal((B, T, I), dtype=np.float32)
    real, inner = _compiled.engine, []
    _compiled.engine = _Timed(real, inner)
    try:
        for _ in range(50):
            prepared(x)
        inner.clear()
        whole = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            prepared(x)
            whole.append(time.perf_counter() - t0)
        outside = statistics.median(w - i for w, i in zip(whole, inner))
        print(f"{args.cell} t{T}-b{B}-i{I}-h{H}, {args.threads} threads: call {1e6 * statistics.median(whole):.1f} us, "
              f"engine.forward {1e6 * statistics.median(inner):.1f} us, outside it {1e6 * outside:.1f} us")
    finally:
        _compiled.engine = real
    medians = {True: [], False: []}
    try:
        for _ in range(ROUNDS):
            for on in (True, False):
                _kept(prepared, on)
                prepared(x)
                times = []
                for _ in range(args.calls // ROUNDS + 3):
                    if not on:
                        _dispatch.plans_changed()   # (the plan made again, as before it was kept)
                    t0 = time.perf_counter()
                    prepared(x)
                    times.append(time.perf_counter() - t0)
                medians[on].append(statistics.median(times))
    finally:
        _kept(prepared, True)
    on, off = statistics.median(medians[True]), statistics.median(medians[False])
    print(f"  kept plan and workspace {1e6 * on:.1f} us, made at every call {1e6 * off:.1f} us: {on / off:.3f}")


if __name__ == "__main__":
    main()
