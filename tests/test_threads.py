"""Threads: fastrnn.set_num_threads / get_num_threads / threads(n), results independent of the thread
count, concurrent calls from several Python threads (the kernels release the GIL and hold no state),
and OMP_NUM_THREADS respected at import.
"""
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F


@pytest.fixture(autouse=True)
def restore_thread_count():
    before = fastrnn.get_num_threads()
    yield
    fastrnn.set_num_threads(before)


def make_problem(cell, T, B, I, H, dtype, seed):  # noqa: E741
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    W = (rng.standard_normal((I, G * H)) / np.sqrt(I)).astype(dtype)
    R = (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype)
    b = (rng.standard_normal((2, G * H) if cell == "gru" else (G * H,)) * 0.1).astype(dtype)
    mask = rng.random((B, T)) > 0.2
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in range(2 if cell == "lstm" else 1)]
    return x, W, R, b, dict(mask=mask, initial_state=states)


def run(cell, problem, training):
    """Outputs, final states and (training) every gradient, as one flat list of arrays."""
    x, W, R, b, opts = problem
    fn = getattr(F, cell + ("_vjp" if training else ""))
    result = fn(x, W, R, b, engine="compiled", **opts)
    arrays = [result[0], *result[1]]
    if training:
        grads = result[2](np.ones_like(result[0]), [np.ones_like(s) for s in result[1]])
        arrays += [grads[k] for k in ("x", "kernel", "recurrent_kernel", "bias")] + grads["initial_state"]
    return arrays


# ---------------------------------------------------------------------------------------- the API

@pytest.mark.parametrize("n", [1, 2, 1])
def test_set_get_round_trip(n):
    fastrnn.set_num_threads(n)
    assert fastrnn.get_num_threads() == n


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, False, "2", None])
def test_invalid_counts(bad):
    before = fastrnn.get_num_threads()
    with pytest.raises(ValueError, match=rf"set_num_threads: expected an int >= 1, got {bad!r}"):
        fastrnn.set_num_threads(bad)
    assert fastrnn.get_num_threads() == before


@pytest.mark.parametrize("start, inner", [(1, 2), (2, 1), (2, 2)])
def test_context_manager_restores(start, inner):
    fastrnn.set_num_threads(start)
    with fastrnn.threads(inner):
        assert fastrnn.get_num_threads() == inner
    assert fastrnn.get_num_threads() == start
    with pytest.raises(RuntimeError, match="boom"):
        with fastrnn.threads(inner):
            raise RuntimeError("boom")
    assert fastrnn.get_num_threads() == start


def test_context_manager_rejects_bad_count_and_keeps_the_count():
    fastrnn.set_num_threads(1)
    with pytest.raises(ValueError, match="expected an int >= 1, got 0"):
        with fastrnn.threads(0):
            pass  # pragma: no cover
    assert fastrnn.get_num_threads() == 1


# -------------------------------------------------------------------------- results vs. threads

@pytest.mark.parametrize("training", [False, True], ids=["forward", "training"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_same_results_at_1_and_2_threads(cell, dtype, training):
    problem = make_problem(cell, T=8, B=16, I=96, H=128, dtype=dtype, seed=1)
    with fastrnn.threads(1):
        one = run(cell, problem, training)
    with fastrnn.threads(2):
        two = run(cell, problem, training)
    for a, b in zip(one, two):
        if dtype == np.float64:
            # A 2-thread plan splits the batch, so each part's per-step dgemm has half the rows, and
            # OpenBLAS's AVX-512 (SKYLAKEX) build picks its small-matrix kernel, another summation
            # order, by size: measured 1.6e-15 here (the AVX2 builds sum alike at any size).
            assert np.abs(a - b).max() <= 1e-13 * np.abs(b).max()
        else:
            # OpenBLAS's sgemm picks another kernel (another summation order) with 2 threads: measured
            # up to 1.3e-6 of the array's largest magnitude here (a few float32 ulps after T steps)
            assert np.abs(a - b).max() <= 4e-6 * np.abs(b).max()


# --------------------------------------------------------------------------- concurrent callers

@pytest.mark.parametrize("threads_per_call", [1, 2])
def test_concurrent_python_threads_match_serial_runs(threads_per_call):
    """Two Python threads, each running its own LSTM / GRU (forward and BPTT) many times at once,
    get exactly the serial results: no shared state in the kernels, the workspaces are per call."""
    fastrnn.set_num_threads(threads_per_call)
    jobs = [("lstm", make_problem("lstm", T=200, B=8, I=32, H=64, dtype=np.float32, seed=2), True),
            ("gru", make_problem("gru", T=200, B=8, I=32, H=64, dtype=np.float32, seed=3), True),
            ("lstm", make_problem("lstm", T=200, B=8, I=32, H=64, dtype=np.float64, seed=4), False),
            ("gru", make_problem("gru", T=200, B=8, I=32, H=64, dtype=np.float64, seed=5), False)]
    serial = [run(*job) for job in jobs]
    repeats = 4
    barrier = threading.Barrier(2)

    def worker(k):
        barrier.wait()  # start together
        results = []
        for r in range(repeats):
            j = (2 * r + k) % len(jobs)  # the two threads run different problems at any time
            results.append((j, run(*jobs[j])))
        return results

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(worker, k) for k in range(2)]
        outcomes = [f.result(timeout=120) for f in futures]
    for results in outcomes:
        assert len(results) == repeats
        for j, arrays in results:
            assert len(arrays) == len(serial[j])
            for got, want in zip(arrays, serial[j]):
                np.testing.assert_array_equal(got, want)


def test_kernels_release_the_gil():
    """While a long forward runs in another thread, this thread keeps running Python code: the
    longest pause it sees is a small part of the call (holding the GIL would pause it throughout)."""
    fastrnn.set_num_threads(1)
    x, W, R, b, _ = make_problem("lstm", T=4000, B=1, I=64, H=256, dtype=np.float32, seed=6)
    done = threading.Event()
    duration = []

    def long_call():
        t0 = time.perf_counter()
        F.lstm(x, W, R, b, engine="compiled")
        duration.append(time.perf_counter() - t0)
        done.set()

    worker = threading.Thread(target=long_call)
    last = time.perf_counter()
    longest_pause = 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        longest_pause = max(longest_pause, now - last)
        last = now
    worker.join()
    if duration[0] < 0.05:
        pytest.skip(f"the call took only {duration[0]:.3f} s: too short to tell")
    assert longest_pause < 0.5 * duration[0], (longest_pause, duration[0])


# -------------------------------------------------------------------------------- environment

@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"])
@pytest.mark.parametrize("value, expected", [("1", 1), ("2", 2)])
def test_omp_num_threads_is_respected_at_import(var, value, expected):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")}
    env[var] = value
    if expected > (os.cpu_count() or 1):
        pytest.skip("OpenBLAS caps the count at the number of CPUs")
    out = subprocess.run([sys.executable, "-c", "import fastrnn; print(fastrnn.get_num_threads())"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert int(out.stdout.strip()) == expected


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_import_starts_no_openblas_workers_and_leaves_the_environment():
    """fastrnn._native loads OpenBLAS with one thread (its workers would spin ~70 ms at load for nothing),
    restores the environment, and still starts with the count OpenBLAS would pick (every CPU here);
    numpy's own BLAS keeps its default even when fastrnn is imported first."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")}

    def run(code):
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=60, check=True).stdout.split()

    blas = ("','.join(str(i['num_threads']) for i in threadpoolctl.threadpool_info() "
            "if 'scipy_openblas32' not in i['filepath'])")
    n0, numpy_alone = run(f"import os, numpy, threadpoolctl; print(len(os.listdir('/proc/self/task')), {blas})")
    n1, leftover, threads, ours, numpy_after, cpus = run(
        "import os, fastrnn, threadpoolctl; print(len(os.listdir('/proc/self/task')), "
        "os.environ.get('OPENBLAS_NUM_THREADS'), fastrnn.get_num_threads(), fastrnn._engine.get_blas_threads(), "
        f"{blas}, len(os.sched_getaffinity(0)))")
    assert n1 == n0                        # no OpenBLAS worker threads of ours
    assert leftover == "None"              # the environment as it was
    assert int(threads) == int(cpus)       # the default count: every CPU the process may use
    assert int(ours) == 1
    assert numpy_after == numpy_alone      # numpy's OpenBLAS as without fastrnn
