"""Page faults and time per call of a fastrnn training step in a fresh process, as a user's script runs
it (fastrnn alone, one shape, the results dropped each step): behind bench/NOTES.md 42.

    python bench/page_faults.py CELL T B I H [--threads N] [--calls C]

Why a fresh process: whether glibc hands a call's 128 KiB - 32 MiB buffers back to the OS (so the next
call faults them in again, ~3 us a 4 KiB page on this VM) depends on what the process freed before; a
whole bench in one process raises glibc's mmap threshold early and hides it.  Compare two checkouts
by running this with PYTHONPATH pointing at each, alternately.
"""
import resource
import statistics
import time

import fastrnn
from training_call import parse_args, training_step


def main():
    args = parse_args(__doc__, calls=300)
    T, B, I, H = args.sizes  # noqa: E741
    step = training_step(args.cell, T, B, I, H)
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
