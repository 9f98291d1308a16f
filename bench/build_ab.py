"""Two or more builds of the engine extension alternating in one process: the packed microkernel
alone, or whole fastrnn.functional calls: behind bench/NOTES.md 52.

    python bench/build_ab.py kernel M K N [--steps T] [--threads N] [--rounds R] SO [SO ...]
    python bench/build_ab.py call CELL T B I H MODE [--threads N] [--rounds R] SO [SO ...]

Each SO is a built `_engine*.so` (copy the other build's out of a git worktree first: two loaded
copies need two paths).  kernel: R is packed once into panels; each round times every build for T
steps of C[t] := A @ R + C[t], M rows a thread on `--threads` Python threads (ctypes drops the GIL), on
one shared R, as the batch split's threads run.  call: the bench's fastrnn engine (bench/engines.py) on
the bench's data, each build swapped in as fastrnn's engine module in turn (its own thread pool), ~0.4 s
a build a round.  Prints each build's median (us a step, or ms a call) and its ratio to the first.  Why: a change to gates_avx2.c moves its loops, and the microkernel's speed moved 15-20% with
the loops' placement alone (the same source built with -falign-loops=64 or without), so a kernel
change is compared against the old build in one process, not only by its own on/off switch.
"""
import argparse
import ctypes
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import threading
import time

import numpy as np
import scipy_openblas32

FLOATS = ctypes.POINTER(ctypes.c_float)


def _ptr(a):
    return a.ctypes.data_as(FLOATS)


def load(path):
    """The build at `path` as a ctypes library, its gemm's argument types set."""
    lib = ctypes.CDLL(os.path.abspath(path), mode=ctypes.RTLD_LOCAL)
    lib.fr_gemm_packed_f32_avx2.argtypes = [ctypes.c_int] * 3 + [FLOATS, ctypes.c_int, FLOATS, ctypes.c_float,
                                                                 FLOATS, ctypes.c_int, FLOATS]
    lib.fr_pack_panels_f32_avx2.argtypes = [FLOATS, ctypes.c_int, ctypes.c_int, ctypes.c_int, FLOATS]
    return lib


def kernel(args):
    M, K, N = args.shape
    # the extension links scipy-openblas; load it first so the builds' dependency resolves
    ctypes.CDLL(os.path.join(os.path.dirname(scipy_openblas32.__file__), "lib", "libscipy_openblas.so"),
                mode=ctypes.RTLD_GLOBAL)
    libs = [load(p) for p in args.builds]
    rng = np.random.default_rng(0)
    R = (0.1 * rng.standard_normal((K, N))).astype(np.float32)
    P = np.zeros(K * -(-N // 16) * 16 + 64, np.float32)
    libs[0].fr_pack_panels_f32_avx2(_ptr(R), K, N, N, _ptr(P))
    T = args.steps
    bufs = [(rng.standard_normal((M, K)).astype(np.float32), np.zeros((T, M, N), np.float32),
             np.zeros(K * (M + 8) + 64, np.float32)) for _ in range(args.threads)]

    def steps(lib, i, took):
        A, C, work = bufs[i]
        gemm, a, p, w = lib.fr_gemm_packed_f32_avx2, _ptr(A), _ptr(P), _ptr(work)
        cs = [_ptr(C[t]) for t in range(T)]
        t0 = time.perf_counter()
        for c in cs:
            gemm(M, N, K, a, K, p, 1.0, c, N, w)
        took[i] = time.perf_counter() - t0

    per_step = [[] for _ in libs]
    for _ in range(args.rounds):
        for lib, times in zip(libs, per_step):
            took = [0.0] * args.threads
            team = [threading.Thread(target=steps, args=(lib, i, took)) for i in range(args.threads)]
            for t in team:
                t.start()
            for t in team:
                t.join()
            times.append(max(took) / T)
    med = [statistics.median(t) for t in per_step]
    print(f"M={M} K={K} N={N}, {args.threads} thread(s), us a step, medians of {args.rounds} rounds:")
    for path, m in zip(args.builds, med):
        print(f"  {1e6 * m:9.1f}  ({m / med[0]:.3f})  {path}")


def _engine_module(path):
    """The extension at `path` as a module object (not entered in sys.modules: the installed one stays)."""
    name = "fastrnn._kernels._engine"
    loader = importlib.machinery.ExtensionFileLoader(name, os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(name, loader.path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _use_engine(module):
    """Make `module` the engine every fastrnn module calls (those that hold it as a global)."""
    import fastrnn
    from fastrnn import _compiled, _dispatch, _native, _threads

    from fastrnn import _scratch

    for holder, attr in ((_native, "engine"), (_compiled, "engine"), (_threads, "engine"), (_dispatch, "_ENGINE"),
                         (fastrnn, "_engine")):
        setattr(holder, attr, module)
    _scratch.clear()   # buffers pooled under the other build start afresh


def call(args):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.join(here, "..", "tests")]
    import cases
    from engines import ENGINES
    from problems import Problem

    import fastrnn  # noqa: F401  loads the BLAS and the installed engine first

    modules = [_engine_module(p) for p in args.builds]
    cases.apply_threads(args.threads)
    problem = Problem(args.cell, *args.sizes)
    data = cases.problem_data(problem)
    runs = []
    for module in modules:
        _use_engine(module)
        module.set_num_threads(args.threads)
        runs.append(ENGINES["fastrnn"].prepare(problem, data, args.mode)[0])   # packs under this build
    medians = [[] for _ in modules]
    for _ in range(args.rounds):
        for module, run, ms in zip(modules, runs, medians):
            _use_engine(module)
            run()
            times, t_end = [], time.perf_counter() + 0.4
            while time.perf_counter() < t_end or len(times) < 3:
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            ms.append(1e3 * statistics.median(times))
    med = [statistics.median(m) for m in medians]
    print(f"{problem.id} {args.mode}, {args.threads} thread(s), ms a call, medians of {args.rounds} rounds:")
    for path, m, ms in zip(args.builds, med, medians):
        print(f"  {m:9.3f}  ({m / med[0]:.3f})  {path}   rounds: " + " ".join(f"{x:.3f}" for x in ms))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernel")
    k.add_argument("shape", nargs=3, type=int, metavar="M K N")
    k.add_argument("--steps", type=int, default=25)
    c = sub.add_parser("call")
    c.add_argument("cell", choices=["lstm", "gru", "simple_rnn"])
    c.add_argument("sizes", nargs=4, type=int, metavar="T B I H")
    c.add_argument("mode", choices=["forward", "training"])
    for p in (k, c):
        p.add_argument("builds", nargs="+", metavar="SO")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--rounds", type=int, default=21 if p is k else 7)
    args = ap.parse_args()
    if args.what == "kernel":
        kernel(args)
    else:
        call(args)


if __name__ == "__main__":
    main()
