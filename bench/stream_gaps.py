"""Streaming steps with idle gaps between them: what one `stream.step(x_t)` costs when the caller does
other work between steps (a real-time loop), not only back to back as pytest-benchmark times it.

    python bench/stream_gaps.py                      # LSTM, H=128 and 512, 2 threads
    python bench/stream_gaps.py --cell gru --threads 1 --gaps 0 300 1000

For each gap (microseconds of busy-waiting in Python between two steps, so the core stays awake) it
prints the median time of one step and the pool's counters (fastrnn._native.engine.pool_stats()):
`asleep_calls` counts steps that found every worker asleep and ran on the caller alone (pool.h).
Medians only; run it twice and compare within a run (bench/NOTES.md 29).
"""
import argparse
import time

import numpy as np

import fastrnn
from fastrnn import layers
from fastrnn._native import engine


def gapped_steps(step, x, gap_us, n):
    """Median seconds of `step(x)` over n calls, each after `gap_us` microseconds of busy waiting."""
    times = []
    for _ in range(n):
        if gap_us:
            end = time.perf_counter() + gap_us * 1e-6
            while time.perf_counter() < end:
                pass
        t = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", choices=("lstm", "gru", "simple_rnn"), default="lstm")
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gaps", type=int, nargs="+", default=[0, 100, 300, 1000, 5000])
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    cls = {"lstm": layers.LSTM, "gru": layers.GRU, "simple_rnn": layers.SimpleRNN}[args.cell]
    rng = np.random.default_rng(0)
    for H in args.hidden:
        layer = cls(H)
        layer(rng.standard_normal((1, 2, H)).astype(np.float32))
        stream = layer.stream(1)
        x = rng.standard_normal((1, H)).astype(np.float32)
        end = time.perf_counter() + 0.3   # past start-up effects (page faults, first wake-ups)
        while time.perf_counter() < end:
            stream.step(x)
        cells = []
        for gap in args.gaps:
            n = args.steps if gap < 1000 else max(100, args.steps // 5)
            cells.append(f"gap {gap} us: {gapped_steps(stream.step, x, gap, n) * 1e6:.2f}")
        print(f"{args.cell} H={H} threads={args.threads}  " + "  ".join(cells) + f"  {engine.pool_stats()}")


if __name__ == "__main__":
    main()
