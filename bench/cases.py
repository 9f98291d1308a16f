"""Benchmark cases, shared data, the float64 oracle and the correctness checks run before timing."""
from __future__ import annotations

import functools
import importlib
import time
from dataclasses import dataclass

import numpy as np

from engines import ENGINES, MODES, JaxEngine, OnnxRuntimeEngine, ReferenceEngine, TorchEngine
from problems import BENCH_SHAPES, CELLS, Problem, make_initial_state, make_inputs, make_weights

#: Shapes of the --quick smoke test, as (T, B, I, H).
QUICK_SHAPES = [(100, 1, 128, 128), (28, 64, 28, 64)]
#: Small problem on which the gradients of each engine are checked (training mode).
GRAD_CHECK_SHAPE = (7, 3, 17, 34)

FWD_RTOL = 1e-4   # max |got - ref| / max |ref| on outputs and final states
GRAD_RTOL = 1e-4  # same, per gradient, on the small grad-check problem
SEED = 1234


@dataclass(frozen=True)
class Case:
    """One engine's timing of one problem and mode: round `round` of `rounds` interleaved rounds."""
    problem: Problem
    mode: str
    engine: str
    round: int = 0
    rounds: int = 1

    @property
    def id(self):
        base = f"{self.problem.id}-{self.mode}-{self.engine}"
        return base if self.rounds == 1 else f"{base}-r{self.round}"

    @property
    def last_round(self):
        """This engine's last round of its group (the reference runs round 0 only)."""
        return self.engine == "reference" or self.round == self.rounds - 1


@dataclass(frozen=True)
class BenchOptions:
    threads: int = 2
    quick: bool = False
    ref_budget: float = 2.0
    max_time: float = 1.0    # pytest-benchmark's --benchmark-max-time: one engine's timing, all rounds
    min_rounds: int = 5      # ... and --benchmark-min-rounds: calls timed at least, all rounds


def build_cases(quick=False, rounds=1):
    """cell x shape x mode x round x engine: the engines of one problem and mode run back to back, in
    `rounds` interleaved rounds (each round rotates the engines' order by one), so every engine's time
    comes from the same stretch of the machine's phases (bench/NOTES.md 49).  The numpy reference, a
    baseline that takes seconds a call, is timed in round 0 only."""
    shapes = QUICK_SHAPES if quick else BENCH_SHAPES
    out = []
    for cell in CELLS:
        for shape in shapes:
            p = Problem(cell, *shape)
            for mode in MODES:
                names = [e for e in ENGINES if mode in ENGINES[e].modes]
                for r in range(rounds):
                    k = r % len(names)
                    for engine in names[k:] + names[:k]:
                        if engine != "reference" or r == 0:
                            out.append(Case(p, mode, engine, r, rounds))
    return out


def engine_status():
    return [(name, e.unavailable("forward")) for name, e in ENGINES.items()]


def apply_threads(n):
    """Give every engine ``n`` threads; returns an object to keep alive (threadpoolctl limiter)."""
    limiter = None
    try:  # numpy's BLAS (the reference and the numpy sgemm peak)
        import threadpoolctl

        limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    except Exception:
        pass
    try:
        import torch

        torch.set_num_threads(n)
    except Exception:
        pass
    try:
        fastrnn = importlib.import_module("fastrnn")
        if hasattr(fastrnn, "set_num_threads"):
            fastrnn.set_num_threads(n)
    except Exception:
        pass
    OnnxRuntimeEngine.threads = n
    if JaxEngine().unavailable("forward") is None:
        try:  # XLA's CPU pool is sized once, at backend start (see JaxEngine.set_threads)
            JaxEngine.set_threads(n)
        except Exception as exc:
            JaxEngine.threads_note = f"xla default (setting threads failed: {type(exc).__name__}: {exc})"
    return limiter


def get_threads_reported():
    """What each library says its thread count is (recorded in extra_info)."""
    out = {}
    try:
        import torch

        out["torch"] = torch.get_num_threads()
    except Exception:
        pass
    try:
        fastrnn = importlib.import_module("fastrnn")
        out["fastrnn"] = fastrnn.get_num_threads()
    except Exception:
        pass
    if JaxEngine().unavailable("forward") is None:
        out["jax"] = JaxEngine.threads_note
    return out


# --------------------------------------------------------------------------- data and oracle
@functools.lru_cache(maxsize=2)
def problem_data(problem: Problem) -> dict:
    """Seeded float32 inputs, weights, zero initial state and an output cotangent for ``problem``."""
    rng = np.random.default_rng([SEED, CELLS.index(problem.cell), *problem.shape])
    data = make_weights(problem, rng)
    data["x"] = make_inputs(problem, rng)
    data["initial_state"] = make_initial_state(problem)
    data["d_outputs"] = rng.standard_normal((problem.B, problem.T, problem.H)).astype(np.float32)
    for v in data.values():
        for a in (v if isinstance(v, list) else [v]):
            a.setflags(write=False)  # engines must not write their inputs
    return data


def oracle_name():
    mod = ReferenceEngine().unavailable("forward")
    return "fastrnn.reference float64" if mod is None else "torch float64 (fastrnn.reference unavailable)"


def _oracle_engine():
    if ReferenceEngine().unavailable("forward") is None:
        return ReferenceEngine(), np.float64
    import torch

    return TorchEngine(), torch.float64


@functools.lru_cache(maxsize=2)
def oracle(problem: Problem, mode: str = "forward"):
    """float64 result of the same float32 data: fastrnn.reference (torch float64 if it is missing)."""
    eng, dtype = _oracle_engine()
    run, to_result = eng.prepare(problem, problem_data(problem), mode, dtype=dtype)
    t0 = time.perf_counter()
    res = to_result(run())
    return res, time.perf_counter() - t0


# --------------------------------------------------------------------------- checks
def rel_err(got, ref):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape}, expected {ref.shape}")
    if got.size == 0:
        return 0.0
    if not np.all(np.isfinite(got)):
        return float("inf")
    scale = max(float(np.max(np.abs(ref))), 1e-12)
    return float(np.max(np.abs(got - ref))) / scale


def compare(got: dict, ref: dict, rtol: float, what: str, keys=("outputs", "states")):
    """Raise AssertionError naming every field whose relative error exceeds ``rtol``; return max error."""
    errors, worst = [], 0.0
    for key in keys:
        g, r = got[key], ref[key]
        if isinstance(r, dict):
            items = [(f"{key}.{k}", g.get(k), r[k]) for k in r]
        else:
            items = [(key, g, r)]
        for name, gv, rv in items:
            if gv is None:
                errors.append(f"{name}: missing")
                continue
            if isinstance(rv, list):
                if not isinstance(gv, list) or len(gv) != len(rv):
                    errors.append(f"{name}: {len(gv) if isinstance(gv, list) else type(gv)} items, "
                                  f"expected {len(rv)}")
                    continue
                pairs = [(f"{name}[{i}]", a, b) for i, (a, b) in enumerate(zip(gv, rv))]
            else:
                pairs = [(name, gv, rv)]
            for n, a, b in pairs:
                try:
                    e = rel_err(a, b)
                except AssertionError as exc:
                    errors.append(f"{n}: {exc}")
                    continue
                worst = max(worst, e)
                if not e <= rtol:
                    errors.append(f"{n}: max|err|/max|ref| = {e:.3g} > {rtol:g}")
    if errors:
        raise AssertionError(f"{what}: " + "; ".join(errors))
    return worst


_grad_checks: dict = {}


def grad_check(engine_name: str, cell: str):
    """Check ``engine``'s training gradients against the float64 oracle on a small problem (cached).

    Returns the max relative error; raises AssertionError on a mismatch.
    """
    key = (engine_name, cell)
    if key not in _grad_checks:
        p = Problem(cell, *GRAD_CHECK_SHAPE)
        try:
            run, to_result = ENGINES[engine_name].prepare(p, problem_data(p), "training")
            got = to_result(run())
            ref, _ = oracle(p, "training")
            _grad_checks[key] = compare(got, ref, GRAD_RTOL, f"{engine_name} grads on {p.id}",
                                        keys=("outputs", "states", "grads"))
        except AssertionError as exc:
            _grad_checks[key] = exc
    res = _grad_checks[key]
    if isinstance(res, Exception):
        raise res
    return res


def check_grads_sane(got: dict, problem: Problem):
    """On the timed problem: every gradient is present, finite and of its parameter's shape."""
    data = problem_data(problem)
    g = got["grads"]
    bad = []
    for name in ("x", "kernel", "recurrent_kernel", "bias"):
        if name not in g:
            bad.append(f"{name} missing")
        elif np.shape(g[name]) != np.shape(data[name]):
            bad.append(f"{name} shape {np.shape(g[name])} != {np.shape(data[name])}")
        elif not np.all(np.isfinite(g[name])):
            bad.append(f"{name} not finite")
    if bad:
        raise AssertionError(f"grads on {problem.id}: " + "; ".join(bad))
