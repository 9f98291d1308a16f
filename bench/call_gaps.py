"""Where a fastrnn training call's time goes outside its kernels: each compiled-engine call (forward,
backward, the hoisted GEMMs) timed, and the Python between them, for one functional `*_vjp` call and
its backward: behind bench/NOTES.md 45.

    python bench/call_gaps.py CELL T B I H [--threads N] [--calls C]

Why: the Python of a call runs cold (the kernels have just evicted its code and data from the caches),
so it costs 2-6x what the same lines cost in a warm microbenchmark, and at small sizes it is a
sizeable share of the call.  Medians over C calls (the first tenth dropped); the machine is noisy, so
compare gaps within one run, not totals across runs.
"""
import statistics
import time

from fastrnn import _compiled
from training_call import parse_args, training_step


class _Timed:
    """fastrnn._compiled's engine module, each call stamped (start, end) into `marks`."""

    def __init__(self, real, marks):
        self._real, self._marks = real, marks

    def __getattr__(self, name):
        f = getattr(self._real, name)
        if not callable(f):
            return f

        def timed(*args, **kwargs):
            self._marks.append((name, time.perf_counter(), None))
            try:
                return f(*args, **kwargs)
            finally:
                self._marks[-1] = (name, self._marks[-1][1], time.perf_counter())
        return timed


def main():
    args = parse_args(__doc__, calls=500)
    T, B, I, H = args.sizes  # noqa: E741
    step = training_step(args.cell, T, B, I, H)
    marks = []
    real = _compiled.engine
    _compiled.engine = _Timed(real, marks)
    rows = []   # per call: [("forward", us), ("python", us), ...]
    totals = []
    try:
        for _ in range(args.calls):
            marks.clear()
            t0 = time.perf_counter()
            step()
            t1 = time.perf_counter()
            row, prev = [], t0
            for name, start, end in marks:
                row += [("python", start - prev), (name, end - start)]
                prev = end
            rows.append(row + [("python", t1 - prev)])
            totals.append(t1 - t0)
    finally:
        _compiled.engine = real
    rows, totals = rows[args.calls // 10:], totals[args.calls // 10:]
    print(f"{args.cell} T={T} B={B} I={I} H={H}, {args.threads} thread(s): median call "
          f"{1e6 * statistics.median(totals):.0f} us")
    python = 0.0
    for j, (name, _) in enumerate(rows[0]):
        us = 1e6 * statistics.median(row[j][1] for row in rows)
        python += us if name == "python" else 0.0
        print(f"  {name:10s} {us:8.0f} us")
    print(f"  python, all gaps: {python:.0f} us")


if __name__ == "__main__":
    main()
