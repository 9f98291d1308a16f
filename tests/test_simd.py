"""The float32 gate math: the AVX2 build and the portable build against float64 NumPy.

A SimpleRNN with kernel = identity, recurrent kernel = 0 and no bias computes act(x) elementwise, which
exposes each activation of the compiled gate math through the public API (lengths that are not a
multiple of 8 exercise the vector tails)."""
import numpy as np
import pytest

from fastrnn import functional as F
from fastrnn._native import engine
from fastrnn.reference import activations

NAMES = ["tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "softsign"]


def apply_activation(name, x):
    n = x.shape[-1]
    out, _ = F.simple_rnn(x[:, None, :], np.eye(n, dtype=x.dtype), np.zeros((n, n), x.dtype), activation=name)
    return out[:, 0, :]


@pytest.fixture(params=["avx2", "portable"])
def simd_path(request):
    if request.param == "avx2" and engine.simd_level() == 0:
        pytest.skip("this CPU has no AVX2/FMA: the portable path is the only one")
    engine.force_scalar(request.param == "portable")
    yield request.param
    engine.force_scalar(False)


@pytest.mark.parametrize("name", NAMES)
def test_activation_accuracy(name, simd_path):
    x64 = np.concatenate([np.linspace(-30, 30, 40001), [0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 100.0, -100.0]])
    x64 = np.pad(x64, (0, (-len(x64)) % 37)).reshape(-1, 37)  # rows of 37: vector body and tail
    x32 = x64.astype(np.float32)
    expected = activations.activate(name, x32.astype(np.float64))  # exact activation of the float32 input
    got = apply_activation(name, x32)
    err = np.max(np.abs(got - expected))
    # 4e-7: act_simd.inc.h's tanh peaks at ~3.3e-7 (near |x| = 4.9), the dense-grid test's bound too
    assert err <= 4e-7, f"{name} on {simd_path}: max abs error {err:.2e}"


def _float32_grid(lo, hi, every):
    """every `every`-th float32 in [lo, hi] (0 < lo < hi), both signs: every exponent and mantissa region"""
    bits = np.arange(np.float32(lo).view(np.int32), np.float32(hi).view(np.int32), every, dtype=np.int32)
    x = bits.view(np.float32)
    x = np.concatenate([x, -x])
    return np.pad(x, (0, (-len(x)) % 37)).reshape(-1, 37)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_tanh_and_sigmoid_on_a_dense_float32_grid(name, simd_path):
    """tanh and sigmoid (act_simd.inc.h's rational tanh on the SIMD builds) on 1 in 97 of all float32
    values from 1e-3 to 20: within 4e-7 of the exact function of the float32 input (the rational's
    float32 rounding peaks ~3.3e-7, about five ulps of 1, near |x| = 5)."""
    x32 = _float32_grid(1e-3, 20.0, 97)
    err = np.max(np.abs(apply_activation(name, x32) - activations.activate(name, x32.astype(np.float64))))
    assert err <= 4e-7, f"{name} on {simd_path}: max abs error {err:.2e}"


def test_tanh_keeps_its_relative_accuracy_near_zero(simd_path):
    """tanh(x) ~ x: below |x| = 1 the error is relative (P(0) = Q(0) = 1 in act_simd.inc.h), down to
    subnormal inputs; a tanh built on 1 - e^(-2|x|) loses it all there (tanh(1e-30) = 0)."""
    x32 = np.concatenate([_float32_grid(1e-38, 1.0, 9973).ravel(), [1e-45, -1e-45, 1e-30, 3e-8]]).astype(np.float32)
    x32 = np.pad(x32, (0, (-len(x32)) % 37)).reshape(-1, 37)
    want = np.tanh(x32.astype(np.float64))
    got = apply_activation("tanh", x32)
    nonzero = want != 0
    rel = np.max(np.abs(got[nonzero] - want[nonzero]) / np.abs(want[nonzero]))
    assert rel <= 4e-7, f"tanh on {simd_path}: max relative error {rel:.2e} below |x| = 1"


def test_nan_propagates(simd_path):
    x = np.full((1, 9), np.nan, np.float32)
    for name in ("tanh", "sigmoid", "softsign", "linear"):
        assert np.isnan(apply_activation(name, x)).all(), name


def test_compiled_and_reference_know_the_same_activations():
    from fastrnn._spec import ACTIVATION_CODES

    assert set(ACTIVATION_CODES) == set(activations.ACTIVATIONS)


@pytest.mark.parametrize("H", [5, 16, 17, 34, 64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_avx512_fused_rows_give_the_avx2_bits(cell, H, bias):
    """gates_avx512.c's fused rows (fused_rows.inc.h on 16 lanes: LSTM and GRU reset_after forward and
    backward, SimpleRNN tanh) repeat gates_avx2.c's (the same file on 8 lanes) operation for operation,
    tails on masked lanes: with the products on one thread's sgemm (the same at both levels),
    outputs, states and the BPTT gradients are bit for bit those of the AVX2 rows, and close to the
    float64 reference."""
    import fastrnn
    from fastrnn import _dispatch, reference

    if engine.simd_level() < 2:
        pytest.skip("needs AVX-512F")
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    rng = np.random.default_rng(H)
    x = rng.standard_normal((3, 6, 7)).astype(np.float32) * 2
    W = (rng.standard_normal((7, G * H)) * 0.7).astype(np.float32)
    R = (rng.standard_normal((H, G * H)) * 0.7).astype(np.float32)
    b = None
    if bias:
        b = (rng.standard_normal((2, G * H) if cell == "gru" else G * H) * 0.5).astype(np.float32)
    d = rng.standard_normal((3, 6, H)).astype(np.float32)
    vjp = getattr(F, cell + "_vjp")
    got = {}
    _dispatch.packed_gemm(False)
    engine.packed_gemm(False)      # the hoisted GEMMs (dx := dG @ W^T ...) on sgemm at both levels too
    try:
        with fastrnn.threads(1):   # B = 3 rows in one sgemm a step (a 1-row batch part would take fr_vecmat,
            for level in (1, 2):   # whose AVX-512 build sums in another order)
                engine.limit_simd(level)
                out, states, backward = vjp(x, W, R, b)
                got[level] = [out, *states] + [v for v in backward(d).values() if isinstance(v, np.ndarray)]
    finally:
        engine.limit_simd(2)
        engine.packed_gemm(True)
        _dispatch.packed_gemm(True)
    assert len(got[1]) == len(got[2])
    for a1, a2 in zip(got[1], got[2]):
        np.testing.assert_array_equal(a1, a2)
    ref, _ = getattr(reference, cell)(x.astype(np.float64), W, R, b)
    # SimpleRNN at H = 64 with these weights is near chaotic: float32 rounding grows to ~1e-5 over 6 steps
    np.testing.assert_allclose(got[2][0], ref, rtol=0, atol=3e-5 if cell == "simple_rnn" else 1e-5)
