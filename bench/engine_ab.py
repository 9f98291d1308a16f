"""Engines of the bench (bench/engines.py) alternating in one process on one problem: same-phase
medians, for comparisons the whole bench makes only minutes apart (bench/NOTES.md 46).

    python bench/engine_ab.py CELL T B I H MODE ENGINE [ENGINE ...] [--threads N] [--rounds R]

MODE is forward or training.  Each round times every engine for ~0.5 s (median per call); prints each
engine's median over the rounds, and every round's medians.
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]

import cases  # noqa: E402
from engines import ENGINES  # noqa: E402
from problems import Problem  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", choices=["lstm", "gru", "simple_rnn"])
    ap.add_argument("shape", nargs=4, type=int, metavar="T B I H")
    ap.add_argument("mode", choices=["forward", "training"])
    ap.add_argument("engines", nargs="+", choices=sorted(ENGINES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    cases.apply_threads(args.threads)
    problem = Problem(args.cell, *args.shape)
    data = cases.problem_data(problem)
    runs = {}
    for name in args.engines:
        reason = ENGINES[name].unavailable(args.mode)
        if reason:
            sys.exit(f"engine_ab: {name}: {reason}")
        runs[name] = ENGINES[name].prepare(problem, data, args.mode)[0]
    medians = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            run()
            times = []
            t_end = time.perf_counter() + 0.5
            while time.perf_counter() < t_end or len(times) < 3:
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            medians[name].append(1e3 * statistics.median(times))
    print(f"{problem.id} {args.mode} threads={args.threads}, {args.rounds} rounds:")
    for name, ms in medians.items():
        print(f"  {name:14s} {statistics.median(ms):8.3f} ms   rounds: " + " ".join(f"{m:.3f}" for m in ms))


if __name__ == "__main__":
    main()
