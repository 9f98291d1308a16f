"""The packed recurrent products (gates_avx2.c, gemm_avx512.c) against float64 NumPy, at every SIMD
level this CPU has, through the test hook `_packed_product` (the same pack and product calls the loops
make).  Shapes sweep every row-block remainder (M = 1..25: 6-row blocks with the 4 + 4 ending on AVX2,
8-row blocks with 1..8-row tails on AVX-512), column tails inside a panel and across panel groups, K
blocks (K > 1024) and strided A and C; beta 1 accumulates into C, and C's columns outside the product
stay untouched (masked and tile stores)."""
import numpy as np
import pytest

from fastrnn._native import engine

def _product(rng, M, N, K, beta, pad=3):
    A_full = rng.standard_normal((M, K + pad)).astype(np.float32)
    A = A_full[:, 1:K + 1]                       # rows lda = K + pad apart
    R = rng.standard_normal((K, N)).astype(np.float32)
    C_full = rng.standard_normal((M, N + 2 * pad)).astype(np.float32)
    before = C_full.copy()
    C = C_full[:, pad:pad + N]                   # rows ldc = N + 2*pad apart, columns on both sides
    expected = A.astype(np.float64) @ R.astype(np.float64) + beta * C.astype(np.float64)
    engine._packed_product(A, R, C, beta)
    scale = np.sqrt(K) + 1.0
    np.testing.assert_allclose(C, expected, rtol=0, atol=2e-6 * scale * 4)
    np.testing.assert_array_equal(C_full[:, :pad], before[:, :pad])
    np.testing.assert_array_equal(C_full[:, pad + N:], before[:, pad + N:])


@pytest.mark.parametrize("M", list(range(1, 26)))
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_every_row_remainder(packed_build, M, beta):
    rng = np.random.default_rng(M * 7 + int(beta))
    for N in (17, 100):   # a tail panel; 7 panels = a group of 6 and one more, with a tail
        _product(rng, M, N, 33, beta)


@pytest.mark.parametrize("N", [1, 15, 16, 31, 48, 64, 65, 96, 97, 112, 200, 300, 520])
def test_column_tails(packed_build, N):
    rng = np.random.default_rng(N)
    for M in (1, 3, 8, 13):
        _product(rng, M, N, 20, 1.0)


@pytest.mark.parametrize("K", [1, 2, 7, 1024, 1025, 2100])
def test_k_blocks(packed_build, K):
    rng = np.random.default_rng(K)
    for M in (1, 5, 16):
        _product(rng, M, 40, K, 1.0)


def test_levels_agree_closely():
    """The AVX2 and AVX-512 builds sum in different orders but must give nearly the same numbers."""
    if engine.simd_level() < 2:
        pytest.skip("needs AVX-512F to compare with AVX2")
    rng = np.random.default_rng(5)
    A = rng.standard_normal((19, 300)).astype(np.float32)
    R = rng.standard_normal((300, 130)).astype(np.float32)
    out = {}
    try:
        for lv in (1, 2):
            engine.limit_simd(lv)
            C = np.zeros((19, 130), np.float32)
            engine._packed_product(A, R, C, 0.0)
            out[lv] = C
    finally:
        engine.limit_simd(2)
    np.testing.assert_allclose(out[1], out[2], rtol=0, atol=1e-4)
    expected = A.astype(np.float64) @ R.astype(np.float64)
    for lv in (1, 2):
        np.testing.assert_allclose(out[lv], expected, rtol=0, atol=1e-4)


def test_hook_refuses_bad_input():
    A = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="do not chain"):
        engine._packed_product(A, np.zeros((5, 6), np.float32), np.zeros((3, 6), np.float32), 0.0)
    with pytest.raises(ValueError, match="float32"):
        engine._packed_product(A.astype(np.float64), np.zeros((4, 6)), np.zeros((3, 6)), 0.0)
    with pytest.raises(ValueError, match="level"):
        engine.limit_simd(3)


def test_vector_product_in_reverse_panel_order_is_identical(packed_build):
    """The serpentine order (odd steps walk the vector panels backwards) changes only the order of
    independent column blocks: the same bits, tails included."""
    rng = np.random.default_rng(11)
    A = rng.standard_normal((1, 70)).astype(np.float32)
    R = rng.standard_normal((70, 300)).astype(np.float32)   # 5 panels of 64, the last one partial
    fwd, rev = np.ones((1, 300), np.float32), np.ones((1, 300), np.float32)
    engine._packed_product(A, R, fwd, 1.0)
    engine._packed_product(A, R, rev, 1.0, reverse=True)
    np.testing.assert_array_equal(fwd, rev)
    np.testing.assert_allclose(fwd, A.astype(np.float64) @ R + 1.0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_serpentine_order_does_not_change_results(cell, threads):
    """B == 1 with R on vector panels (G*H >= 512), serial and hidden split, whole sequences and a
    stream: the same bits with the serpentine order on and off."""
    import fastrnn
    from fastrnn import functional as F
    from fastrnn import reference

    rng = np.random.default_rng(3)
    G, H, I, T = {"lstm": 4, "gru": 3}[cell], 176, 17, 9
    x = rng.standard_normal((1, T, I)).astype(np.float32)
    W = (rng.standard_normal((I, G * H)) * 0.2).astype(np.float32)
    R = (rng.standard_normal((H, G * H)) * 0.2).astype(np.float32)
    b = (rng.standard_normal((2, G * H) if cell == "gru" else (G * H,)) * 0.1).astype(np.float32)
    fn = getattr(F, cell)
    with fastrnn.threads(threads):
        assert "packed-vecmat" in F.explain(cell, x, W, R, b)
        assert engine.serpentine()
        on = fn(x, W, R, b)
        try:
            engine.serpentine(False)
            off = fn(x, W, R, b)
        finally:
            engine.serpentine(True)
    np.testing.assert_array_equal(on[0], off[0])
    for a, c in zip(on[1], off[1]):
        np.testing.assert_array_equal(a, c)
    ref, _ = getattr(reference, cell)(x.astype(np.float64), W, R, b)   # and both are right
    np.testing.assert_allclose(on[0], ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("N", [1, 15, 16, 17, 63, 64, 65, 130, 256])
@pytest.mark.parametrize("K", [1, 2, 7, 37, 64])
def test_one_row_product_on_unpacked_R(packed_build, N, K):
    """gemm_into with one row runs fr_vecmat (64-column blocks in registers for all of K while R is
    small, masked tails), on
    R as it is, rows ldr apart (a column block of a wider array), for beta 0, 1 and 0.5."""
    rng = np.random.default_rng(N * 100 + K)
    x = rng.standard_normal((1, K)).astype(np.float32)
    R = rng.standard_normal((K, N + 9)).astype(np.float32)[:, 4:4 + N]
    for beta in (0.0, 1.0, 0.5):
        y0 = rng.standard_normal((1, N)).astype(np.float32)
        y = np.full((1, N), np.nan, np.float32) if beta == 0 else y0.copy()   # beta 0 never reads y
        engine.gemm_into(x, R, y, beta=beta)
        expected = x.astype(np.float64) @ R + (beta * y0 if beta else 0)
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * (np.sqrt(K) + 1))


@pytest.mark.parametrize("K", [300, 301])
def test_one_row_product_on_a_large_unpacked_R(packed_build, K):
    """Above 256 KiB, fr_vecmat takes 16 rows of R at a time across every column block (a partial last
    block of rows here) and accumulates into y between passes: still x @ R + beta*y."""
    rng = np.random.default_rng(K)
    N = 700
    x = rng.standard_normal((1, K)).astype(np.float32)
    R = rng.standard_normal((K, N + 5)).astype(np.float32)[:, 2:2 + N]   # 840 KiB, rows N + 5 apart
    for beta in (0.0, 1.0):
        y0 = rng.standard_normal((1, N)).astype(np.float32)
        y = np.full((1, N), np.nan, np.float32) if beta == 0 else y0.copy()
        engine.gemm_into(x, R, y, beta=beta)
        np.testing.assert_allclose(y, x.astype(np.float64) @ R + beta * y0, rtol=0, atol=2e-4)
