"""Page faults and time per call of a fastrnn training step in a fresh process, as a user's script runs
it (fastrnn alone, one shape, the results dropped each step): behind bench/NOTES.md 42.

    python bench/page_faults.py CELL T B I H [--threads N] [--calls C]

Why a fresh process: whether glibc hands a call's 128 KiB - 32 MiB buffers back to the OS (so the next
call faults them in again, ~3 us a 4 KiB page on this VM) depends on what the process freed before; a
whole bench in one process raises glibc's mmap threshold early and hides it.  Compare two checkouts
by running this with PYTHONPATH pointing at each, alternately.
"""
import argparse
import resource
import statistics
import time

import numpy as np

import fastrnn
from fastrnn import functional

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cell", choices=sorted(GATES))
    ap.add_argument("sizes", nargs=4, type=int, metavar="T B I H")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    T, B, I, H = args.sizes  # noqa: E741
    G = GATES[args.cell]
    fastrnn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I), dtype=np.float32)
    kernel = rng.standard_normal((I, G * H), dtype=np.float32) * 0.1
    recurrent = rng.standard_normal((H, G * H), dtype=np.float32) * 0.1
    bias = np.zeros((2, G * H) if args.cell == "gru" else (G * H,), np.float32)
    d_out = rng.standard_normal((B, T, H), dtype=np.float32)
    vjp = getattr(functional, args.cell + "_vjp")

    def step():
        _, _, backward = vjp(x, kernel, recurrent, bias)
        return backward(d_out)

    for _ in range(5):
        step()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.calls
    print(f"{args.cell} T{T} B{B} I{I} H{H}, {args.threads} thread(s): {faults:.0f} page faults a call, "
          f"median {statistics.median(times) * 1e3:.3f} ms ({fastrnn.__file__})")


if __name__ == "__main__":
    main()
