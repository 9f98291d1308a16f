"""CPU benchmarks: fastrnn vs torch.nn, onnxruntime, jax and the numpy reference on the shared problem ids.

Every case computes its result once and checks it against the float64 oracle (fastrnn.reference on the
same float32 data) before anything is timed; training cases also check the engine's gradients on a small
problem.  A missing peer is a skip with its reason.  Timing facts go into ``benchmark.extra_info`` for
``bench/report.py``; no timing is asserted.
"""
from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import cases
from engines import ENGINES

SGEMM_N = 2048
SGEMM_N_QUICK = 1024


def _load1():
    """1-minute load average when the case starts (the machines are shared: a high load flags noise)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _warm_up(fn, seconds=0.25, max_calls=50):
    """Untimed calls first: lets the previous engine's idle thread pool go to sleep, fills caches.
    Returns the last call's seconds."""
    t_end = time.perf_counter() + seconds
    for _ in range(max_calls):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        if t1 > t_end:
            break
    return t1 - t0


def _time_it(benchmark, opts, fn):
    _warm_up(fn, 0.1 if opts.quick else 0.25)
    if opts.quick:
        return benchmark.pedantic(fn, rounds=3, iterations=1)
    return benchmark(fn)


def test_sgemm_peak(benchmark, sgemm_impl, bench_options):
    """Large float32 matmul in the same session: the denominator of '% of peak' (also timed at the end)."""
    _sgemm(benchmark, sgemm_impl, bench_options, "start")


def _sgemm(benchmark, sgemm_impl, bench_options, when):
    n = SGEMM_N_QUICK if bench_options.quick else SGEMM_N
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if sgemm_impl == "numpy":
        def run():
            return a @ b
        to_np = np.asarray
    elif sgemm_impl == "fastrnn":
        from fastrnn._native import engine

        c_out = np.empty((n, n), np.float32)

        def run():
            engine.gemm_into(a, b, c_out)
            return c_out
        to_np = np.asarray
    else:
        torch = pytest.importorskip("torch", reason="torch not installed: no torch sgemm peak")
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def run():
            return torch.mm(ta, tb)
        to_np = lambda t: t.numpy()  # noqa: E731

    c = to_np(run())
    ref = a[:8].astype(np.float64) @ b.astype(np.float64)
    err = cases.rel_err(c[:8], ref)
    assert err < 1e-4, f"sgemm {sgemm_impl}: rel err {err:.3g}"

    benchmark.group = f"sgemm-n{n}"
    benchmark.extra_info.update({
        "engine": "sgemm-peak", "impl": sgemm_impl, "cell": "sgemm", "problem": f"sgemm-n{n}",
        "mode": "forward", "flops": 2 * n ** 3, "threads": bench_options.threads, "when": when,
        "quick": bench_options.quick, "threads_reported": cases.get_threads_reported(),
        "loadavg1": _load1(),
    })
    _time_it(benchmark, bench_options, run)


@pytest.fixture(autouse=True)
def _release_engines():
    """Free each case's engine (an ORT session keeps a thread pool) before the next case is timed."""
    yield
    gc.collect()


class _Prepared:
    """One engine prepared and checked on one problem and mode, kept over its interleaved rounds."""

    def __init__(self, case):
        p, mode, engine = case.problem, case.mode, ENGINES[case.engine]
        data = cases.problem_data(p)
        try:
            self.run, to_result = engine.prepare(p, data, mode)
        except Exception as exc:  # e.g. an onnxruntime build without this op
            pytest.skip(f"{case.engine} cannot prepare {p.id}: {type(exc).__name__}: {exc}")

        # one call, checked against the float64 oracle, before any timing
        t0 = time.perf_counter()
        got = to_result(self.run())
        self.first_call_s = time.perf_counter() - t0
        ref, _ = cases.oracle(p, "forward")
        self.fwd_err = cases.compare(got, ref, cases.FWD_RTOL,
                                     f"{case.engine} {mode} on {p.id} vs {cases.oracle_name()}")
        self.grad_err = None
        if mode == "training":
            cases.check_grads_sane(got, p)
            self.grad_err = cases.grad_check(case.engine, p.cell)


# The engines of the (problem, mode) group being timed, prepared once for all its rounds; a case of
# another group drops them (so a -k that skips a last round does not keep engines alive).
_group: dict = {}


def _prepared(case):
    key = (case.problem, case.mode)
    if _group.get("key") != key:
        _group.clear()
        _group["key"] = key
    if case.engine not in _group:
        try:
            _group[case.engine] = _Prepared(case)
        except BaseException as exc:   # a skip or a failed check: the same outcome in every round
            _group[case.engine] = exc
            raise
    got = _group[case.engine]
    if isinstance(got, BaseException):
        raise got
    return got


def _time_round(benchmark, opts, fn, rounds):
    """One of `rounds` interleaved rounds: warm up, then time single calls for max_time / rounds seconds,
    at least 3 calls and a share of --benchmark-min-rounds (so the rounds together time at least that)."""
    per_call = _warm_up(fn, 0.1 if opts.quick else 0.25)
    n = max(3, -(-opts.min_rounds // rounds), int(opts.max_time / rounds / max(per_call, 1e-6)))
    return benchmark.pedantic(fn, rounds=n, iterations=1)


def test_rnn(benchmark, case, bench_options):
    p, mode, engine = case.problem, case.mode, ENGINES[case.engine]
    reason = engine.unavailable(mode)
    if reason:
        pytest.skip(f"{case.engine}: {reason}")
    try:
        prep = _prepared(case)
    finally:
        if case.last_round:
            _group.pop(case.engine, None)

    # the numpy reference is a baseline, not a goal: time it only where it is affordable
    if case.engine == "reference" and prep.first_call_s > bench_options.ref_budget:
        pytest.skip(f"reference {mode} on {p.id}: one call took {prep.first_call_s:.1f} s "
                    f"> --ref-budget {bench_options.ref_budget:g} s (checked, not timed)")

    benchmark.group = f"{p.id}-{mode}"
    benchmark.extra_info.update({
        "engine": case.engine, "cell": p.cell, "problem": p.id, "mode": mode,
        "T": p.T, "B": p.B, "I": p.I, "H": p.H,
        "flops": p.flops(mode), "threads": bench_options.threads, "quick": bench_options.quick,
        "threads_reported": cases.get_threads_reported(),
        "oracle": cases.oracle_name(), "max_rel_err": prep.fwd_err, "grad_max_rel_err": prep.grad_err,
        "first_call_s": prep.first_call_s, "loadavg1": _load1(),
        "round": case.round, "rounds": 1 if case.engine == "reference" else case.rounds,
    })
    if case.rounds == 1:
        _time_it(benchmark, bench_options, prep.run)
    else:
        _time_round(benchmark, bench_options, prep.run, case.rounds)


def test_sgemm_peak_end(benchmark, sgemm_impl, bench_options):
    """The peak again after the RNN cases (last in this file): the report uses the best sgemm of the session,
    so a burst of load from other processes at the start does not inflate '% of peak'."""
    _sgemm(benchmark, sgemm_impl, bench_options, "end")
