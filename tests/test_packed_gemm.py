"""gemm_into on fastrnn's packed microkernel (float32: at simd_level() == 2 the hoisted GEMMs, input
projection and gradients; at level 1 the one-row forward's projection, asked for with `microkernel` or
b_panels), against float64 NumPy and against itself on other thread counts.  Every test runs on each
build this CPU has (conftest's packed_build: an AVX-512 CPU runs the AVX2 build too)."""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn._native import engine

pytestmark = pytest.mark.usefixtures("packed_build")


def gemm(A, B, C, trans_a=False, trans_b=False, beta=0.0, **kw):
    """gemm_into on the microkernel at either level (level 2 takes it anyway)."""
    engine.gemm_into(A, B, C, trans_a, trans_b, beta, microkernel=True, **kw)


def _case(rng, M, N, K, trans_a, trans_b, pad):
    """op(A) (M, K) and op(B) (K, N) as column blocks of wider arrays (row strides larger than rows), and
    a C with a border that must stay untouched."""
    a = rng.normal(size=(K, M + pad) if trans_a else (M, K + pad)).astype(np.float32)
    b = rng.normal(size=(N, K + pad) if trans_b else (K, N + pad)).astype(np.float32)
    A = a[:, :M] if trans_a else a[:, :K]
    B = b[:, :K] if trans_b else b[:, :N]
    c = rng.normal(size=(M, N + pad)).astype(np.float32)
    return A, B, c


def _want(A, B, C0, trans_a, trans_b, beta):
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    return (A64.T if trans_a else A64) @ (B64.T if trans_b else B64) + beta * C0.astype(np.float64)


@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("M,N,K", [(2, 1, 1), (7, 15, 5), (9, 17, 33), (33, 100, 64), (8, 48, 1024),
                                   (13, 40, 1025), (70, 33, 2100), (300, 37, 17)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_against_float64(trans_a, trans_b, M, N, K, beta):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    A, B, c = _case(rng, M, N, K, trans_a, trans_b, pad=3)
    C = c[:, :N]
    C0 = C.copy()
    if beta == 0.0:
        C[...] = np.nan   # beta 0 never reads C
    before = c[:, N:].copy()
    gemm(A, B, C, trans_a, trans_b, beta)
    want = _want(A, B, C0, trans_a, trans_b, beta)
    np.testing.assert_allclose(C, want, rtol=0, atol=2e-6 * np.abs(want).max() * max(1, K) ** 0.5)
    np.testing.assert_array_equal(c[:, N:], before)   # the columns right of C


@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("M,N,K", [(2000, 48, 70), (33, 500, 300), (40, 30, 3000), (700, 1000, 64)])
def test_every_split_gives_the_same_bits(trans_a, trans_b, M, N, K):
    """By rows or by column panels, on 1 or 2 threads: each element sums its K in the same order."""
    rng = np.random.default_rng(11)
    A, B, _ = _case(rng, M, N, K, trans_a, trans_b, pad=0)
    got = {}
    for n in (1, 2):
        with fastrnn.threads(n):
            C = np.empty((M, N), np.float32)
            gemm(A, B, C, trans_a, trans_b)
            got[n] = C
    np.testing.assert_array_equal(got[1], got[2])
    want = _want(A, B, np.zeros((M, N), np.float32), trans_a, trans_b, 0.0)
    np.testing.assert_allclose(got[1], want, rtol=0, atol=2e-6 * np.abs(want).max() * K ** 0.5)


def test_other_betas_and_dtypes_keep_blas():
    """beta outside {0, 1} and float64 go to BLAS (the microkernel's update is C := P or C += P)."""
    rng = np.random.default_rng(5)
    A = rng.normal(size=(40, 30)).astype(np.float32)
    B = rng.normal(size=(30, 20)).astype(np.float32)
    C0 = rng.normal(size=(40, 20)).astype(np.float32)
    C = C0.copy()
    gemm(A, B, C, beta=0.5)
    np.testing.assert_allclose(C, A.astype(np.float64) @ B + 0.5 * C0, rtol=0, atol=1e-4)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    C64 = np.empty((40, 20))
    gemm(A64, B64, C64)
    np.testing.assert_allclose(C64, A64 @ B64, rtol=1e-13)


def test_switch_off_matches_blas_closely():
    """packed_gemm(False) restores the OpenBLAS path; the two agree to float32 rounding."""
    rng = np.random.default_rng(9)
    A = rng.normal(size=(500, 256)).astype(np.float32)
    B = rng.normal(size=(256, 300)).astype(np.float32)
    C1, C2, C3 = (np.empty((500, 300), np.float32) for _ in range(3))
    gemm(A, B, C1)
    assert engine.packed_gemm() is True
    try:
        assert engine.packed_gemm(False) is False
        gemm(A, B, C2)
    finally:
        engine.packed_gemm(True)
    np.testing.assert_allclose(C1, C2, rtol=0, atol=1e-4)
    assert not np.array_equal(C1, C2)   # the microkernel ran: a few of its sums round otherwise (~5%)
    # AVX2 without `microkernel` or b_panels: OpenBLAS, as with the switch off
    engine.gemm_into(A, B, C3)
    if engine.simd_level() == 1:
        np.testing.assert_array_equal(C3, C2)
    else:
        np.testing.assert_array_equal(C3, C1)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("M,N,K", [(2, 16, 5), (9, 48, 33), (64, 1040, 70), (65, 64, 1025), (30, 96, 2100)])
def test_b_in_place_gives_the_packed_bits(trans_a, M, N, K):
    """With few rows of op(A) (gemm_unpacked_max_m) the AVX-512 microkernel reads B's rows in place (rows
    ldb apart, N a multiple of 16) instead of packing them: the same arithmetic, so the same bits (the
    AVX2 build always packs: the same bits trivially)."""
    rng = np.random.default_rng(M + N + K)
    A, B, _ = _case(rng, M, N, K, trans_a, False, pad=5)
    got = {}
    try:
        for max_m in (10 ** 6, 0):
            engine.gemm_unpacked_max_m(max_m)
            C = np.full((M, N), np.nan, np.float32)
            gemm(A, B, C, trans_a, False)
            got[max_m] = C
    finally:
        engine.gemm_unpacked_max_m(64)
    np.testing.assert_array_equal(got[10 ** 6], got[0])
    want = _want(A, B, np.zeros((M, N), np.float32), trans_a, False, 0.0)
    np.testing.assert_allclose(got[0], want, rtol=0, atol=2e-6 * np.abs(want).max() * K ** 0.5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("M,N,K", [(2, 16, 5), (9, 17, 33), (64, 1040, 70), (65, 37, 1025), (300, 96, 2100)])
def test_b_panels_packed_before_give_the_same_bits(threads, trans_a, M, N, K):
    """gemm_into(..., b_panels=pack_b_panels(B)) (a prepared call's projection: W packed once) reads
    the panels instead of packing B or reading it in place: the same bits, by rows or by columns, at
    several K blocks and with a panel's tail; a wrong panel array is refused."""
    rng = np.random.default_rng(M * N + K)
    A, B, _ = _case(rng, M, N, K, trans_a, False, pad=3)
    panels = engine.pack_b_panels(B)
    with fastrnn.threads(threads):
        C, Cp = np.full((M, N), np.nan, np.float32), np.full((M, N), np.nan, np.float32)
        gemm(A, B, C, trans_a, False)
        engine.gemm_into(A, B, Cp, trans_a, False, b_panels=panels)   # (the microkernel at either level)
        np.testing.assert_array_equal(Cp, C)
        want = _want(A, B, np.zeros((M, N), np.float32), trans_a, False, 0.0)
        np.testing.assert_allclose(Cp, want, rtol=0, atol=2e-6 * np.abs(want).max() * K ** 0.5)
        panels[...] = 0   # the panels are what runs
        engine.gemm_into(A, B, Cp, trans_a, False, b_panels=panels)
        assert not Cp.any()
        with pytest.raises(ValueError, match="b_panels of"):
            engine.gemm_into(A, B, Cp, trans_a, False, b_panels=panels[:-16])
    with pytest.raises(ValueError, match="pack_b_panels: expected a 2-D float32 array, got float64"):
        engine.pack_b_panels(B.astype(np.float64))
