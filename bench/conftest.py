"""pytest configuration for the fastrnn benchmark suite (run explicitly: ``pytest bench``).

Options
  --threads N      threads for every engine (fastrnn, torch, onnxruntime, numpy's BLAS); default 2
                   (env FASTRNN_BENCH_THREADS)
  --quick          a few small shapes and short timing, for a smoke test (env FASTRNN_BENCH_QUICK=1)
  --ref-budget S   skip timing the numpy reference where one call takes longer than S seconds (default 2)
  --interleave R   time each problem's engines in R interleaved rounds of --benchmark-max-time / R
                   seconds each (default 3; 1 with --quick; env FASTRNN_BENCH_INTERLEAVE): same-phase
                   ratios on a machine whose speed drifts over seconds (bench/NOTES.md 49)
"""
from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, os.path.join(ROOT, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import cases as _cases  # noqa: E402  (bench/cases.py)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def pytest_addoption(parser):
    group = parser.getgroup("fastrnn-bench", "fastrnn benchmark suite")
    group.addoption("--threads", type=int, default=int(os.environ.get("FASTRNN_BENCH_THREADS", "2")),
                    help="threads for every engine (fastrnn, torch, onnxruntime, numpy BLAS); default 2")
    group.addoption("--quick", action="store_true", default=_env_flag("FASTRNN_BENCH_QUICK"),
                    help="smoke test: a few small shapes, 3 timed rounds each")
    group.addoption("--ref-budget", type=float, default=2.0,
                    help="seconds per call above which the numpy reference is not timed (default 2)")
    group.addoption("--interleave", type=int, default=None,
                    help="interleaved timing rounds per problem and mode (default 3, or 1 with --quick; "
                         "env FASTRNN_BENCH_INTERLEAVE)")


def _interleave(config):
    """The interleaved rounds: --interleave, else FASTRNN_BENCH_INTERLEAVE, else 3 (1 with --quick)."""
    r = config.getoption("interleave")
    if r is None:
        env = os.environ.get("FASTRNN_BENCH_INTERLEAVE", "").strip()
        if not env:
            return 1 if config.getoption("quick") else 3
        try:
            r = int(env)
        except ValueError:
            raise pytest.UsageError(f"FASTRNN_BENCH_INTERLEAVE must be an integer >= 1, got {env!r}") from None
    if r < 1:
        raise pytest.UsageError(f"--interleave must be >= 1, got {r}")
    return r


def pytest_generate_tests(metafunc):
    quick = metafunc.config.getoption("quick")
    if "case" in metafunc.fixturenames:
        cs = _cases.build_cases(quick=quick, rounds=_interleave(metafunc.config))
        metafunc.parametrize("case", cs, ids=[c.id for c in cs])
    if "sgemm_impl" in metafunc.fixturenames:
        # fastrnn: its own gemm_into (the packed AVX-512 microkernel where the CPU has it), because numpy's
        # OpenBLAS runs whatever OPENBLAS_CORETYPE says (Haswell's AVX2 kernels in this project's
        # environment: half of an AVX-512 core's peak), and the peak is the best sgemm of the session
        metafunc.parametrize("sgemm_impl", ["numpy", "torch", "fastrnn"])


@pytest.fixture(scope="session")
def bench_options(pytestconfig):
    """Session settings; applying them sets the thread count of every engine once."""
    threads = pytestconfig.getoption("threads")
    if threads < 1:
        raise pytest.UsageError(f"--threads must be >= 1, got {threads}")
    opts = _cases.BenchOptions(threads=threads, quick=pytestconfig.getoption("quick"),
                               ref_budget=pytestconfig.getoption("ref_budget"),
                               max_time=float(getattr(pytestconfig.option, "benchmark_max_time", 1.0) or 1.0),
                               min_rounds=int(getattr(pytestconfig.option, "benchmark_min_rounds", 5) or 5))
    limiter = _cases.apply_threads(threads)
    yield opts
    del limiter


def pytest_report_header(config):
    threads = config.getoption("threads")
    lines = [f"fastrnn bench: threads={threads} quick={config.getoption('quick')} "
             f"ref-budget={config.getoption('ref_budget')}s interleave={_interleave(config)}"]
    lines.append("engines: " + ", ".join(
        f"{name}={'ok' if not reason else 'missing'}" for name, reason in _cases.engine_status()))
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pytest-benchmark does not create the folder of --benchmark-json (bench/results/ is git-ignored)
    path = getattr(config.option, "benchmark_json", None)
    if isinstance(path, (str, os.PathLike)) and os.path.dirname(os.fspath(path)):
        os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
