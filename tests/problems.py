"""Shared problem descriptions for tests and benchmarks.

A ``Problem`` names one RNN workload (cell, T, B, I, H) with an id such as
``lstm-t7-b3-i17-h34``; tests and ``bench/`` use the same ids so a failing test
and a slow benchmark can be matched up.  This module holds no tests.

* ``BENCH_SHAPES``: the benchmark problem list, as (T, B, I, H).
* ``CHECK_SHAPES``: awkward shapes for correctness tests (tails I=17/H=34, T=1,
  B=1, long T=300).
* ``make_weights`` / ``make_inputs``: seeded random data in the canonical Keras
  layout (see DESIGN.md section 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: cell name -> number of gates G (the kernel is (I, G*H)).
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
CELLS = tuple(GATES)

#: Benchmark problems as (T, B, I, H).
BENCH_SHAPES = [
    (100, 1, 128, 128),
    (50, 1, 512, 512),
    (100, 16, 256, 256),
    (50, 64, 512, 512),
    (25, 32, 1024, 1024),
    (100, 128, 256, 256),
    (1000, 1, 64, 64),
    (28, 64, 28, 64),
]

#: Awkward correctness shapes as (T, B, I, H): non-multiple-of-8 tails, T=1, B=1, long T.
CHECK_SHAPES = [
    (7, 3, 17, 34),
    (1, 4, 17, 34),
    (9, 1, 17, 34),
    (300, 2, 17, 34),
]


@dataclass(frozen=True)
class Problem:
    """One RNN workload: ``cell`` in {"lstm", "gru", "simple_rnn"}, x of shape (B, T, I), H units."""

    cell: str
    T: int
    B: int
    I: int  # noqa: E741 - the conventional name
    H: int

    def __post_init__(self):
        if self.cell not in GATES:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        for name in ("T", "B", "I", "H"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    @property
    def id(self) -> str:
        return f"{self.cell}-t{self.T}-b{self.B}-i{self.I}-h{self.H}"

    def __str__(self) -> str:
        return self.id

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def shape(self) -> tuple:
        """(T, B, I, H)."""
        return (self.T, self.B, self.I, self.H)

    def flops(self, mode: str = "forward") -> int:
        """Nominal GEMM flops: forward = 2*T*B*(I+H)*G*H; training (forward + backward) = 3x forward."""
        fwd = 2 * self.T * self.B * (self.I + self.H) * self.gates * self.H
        if mode == "forward":
            return fwd
        if mode == "training":
            return 3 * fwd
        raise ValueError(f"mode must be 'forward' or 'training', got {mode!r}")

    def weights(self, seed: int = 0, dtype=np.float32) -> dict:
        return make_weights(self, np.random.default_rng(seed), dtype=dtype)

    def inputs(self, seed: int = 0, dtype=np.float32) -> np.ndarray:
        return make_inputs(self, np.random.default_rng(seed), dtype=dtype)


def problems(shapes=BENCH_SHAPES, cells=CELLS) -> list:
    """All ``Problem``s for ``cells`` x ``shapes`` (shapes as (T, B, I, H))."""
    return [Problem(c, *s) for c in cells for s in shapes]


def bias_shape(cell: str, H: int, reset_after: bool = True) -> tuple:
    """Keras bias shape: GRU with reset_after=True has (2, 3H) (row 0 input, row 1 recurrent)."""
    G = GATES[cell]
    if cell == "gru" and reset_after:
        return (2, G * H)
    return (G * H,)


def make_weights(problem: Problem, rng: np.random.Generator, dtype=np.float32, reset_after: bool = True) -> dict:
    """Random Keras-layout weights, uniform in +-1/sqrt(H).

    Returns a dict with ``kernel`` (I, G*H), ``recurrent_kernel`` (H, G*H) and ``bias``
    ((G*H,), or (2, 3H) for GRU with reset_after=True).
    """
    G, H, I = problem.gates, problem.H, problem.I  # noqa: E741
    s = 1.0 / np.sqrt(H)
    kernel = rng.uniform(-s, s, size=(I, G * H)).astype(dtype)
    recurrent = rng.uniform(-s, s, size=(H, G * H)).astype(dtype)
    bias = rng.uniform(-s, s, size=bias_shape(problem.cell, H, reset_after)).astype(dtype)
    return {"kernel": kernel, "recurrent_kernel": recurrent, "bias": bias}


def make_inputs(problem: Problem, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """x of shape (B, T, I), standard normal."""
    return rng.standard_normal((problem.B, problem.T, problem.I)).astype(dtype)


def make_initial_state(problem: Problem, rng: np.random.Generator | None = None, dtype=np.float32) -> list:
    """Initial states as a list of (B, H) arrays ([h, c] for LSTM, [h] otherwise); zeros if ``rng`` is None."""
    n = 2 if problem.cell == "lstm" else 1
    shape = (problem.B, problem.H)
    if rng is None:
        return [np.zeros(shape, dtype) for _ in range(n)]
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]
