"""fastrnn calls with and without a threadpoolctl limit on "blas" around them, alternating in one
process: the limit also reaches fastrnn's own OpenBLAS (scipy-openblas32), which must stay on one
thread inside fastrnn's pool (bench/NOTES.md 28).  With the engine's pin the two columns agree.

    python bench/blas_limit.py            # 2 threads, a limit of 2
    python bench/blas_limit.py --limit 1

Prints, per problem, min and median ms of fastrnn.functional's forward in each mode, and OpenBLAS's
thread count after the calls (1: pinned).
"""
import argparse
import time

import numpy as np
import threadpoolctl

import fastrnn
from fastrnn._native import engine

PROBLEMS = [("lstm", 100, 16, 256, 256), ("lstm", 25, 32, 1024, 1024), ("lstm", 50, 1, 512, 512)]


def problem_arrays(cell, T, B, I, H, seed=0):
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I), np.float32)
    kernel = (rng.standard_normal((I, G * H), np.float32) / np.sqrt(I)).astype(np.float32)
    recurrent = (rng.standard_normal((H, G * H), np.float32) / np.sqrt(H)).astype(np.float32)
    bias = np.zeros((2, G * H) if cell == "gru" else G * H, np.float32)
    return x, kernel, recurrent, bias


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    for cell, T, B, I, H in PROBLEMS:
        arrays = problem_arrays(cell, T, B, I, H)
        fn = getattr(fastrnn.functional, cell)
        times = {"no limit": [], f"limit {args.limit}": []}
        for _ in range(args.rounds):
            for mode, got in times.items():
                limiter = threadpoolctl.threadpool_limits(args.limit, user_api="blas") if mode != "no limit" else None
                fn(*arrays)
                for _ in range(5):
                    t = time.perf_counter()
                    fn(*arrays)
                    got.append(time.perf_counter() - t)
                if limiter is not None:
                    limiter.restore_original_limits()
                time.sleep(0.1)   # OpenBLAS workers woken by the limit stop spinning
        cells = "  ".join(f"{m}: min {min(v) * 1e3:.2f} med {np.median(v) * 1e3:.2f}" for m, v in times.items())
        print(f"{cell} t{T}-b{B}-i{I}-h{H}  {cells}  (OpenBLAS threads now {engine.get_blas_threads()})")


if __name__ == "__main__":
    main()
