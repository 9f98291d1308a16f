/* gates_avx512.c - the fused LSTM forward row (default activations: sigmoid gates, tanh) on 512-bit
 * registers, for CPUs with AVX-512F (fr_simd_level() == 2; gates.c picks it, and keeps gates_avx2.c's
 * rows for every other row and activation).  Compiled on its own with -mavx512f -mfma (setup.py).
 *
 * Why only this row: it is the gate math the big LSTM rows spend their time in (perf, 1 thread: 11%
 * of lstm t100-b128-h256 inference, 23% of lstm t28-b64-h64), and on a CPU with two 512-bit FMA
 * pipes sixteen lanes an instruction do the same work in half the instructions (bench/NOTES.md 34).
 *
 * The arithmetic is gates_avx2.c's, operation for operation (the same exp: Cephes-style reduction,
 * degree-5 polynomial by Estrin's scheme, 2^n in the exponent bits; sigmoid = 1/(1+e^-x), tanh from
 * e^(-2|x|)), so both builds give the same bits for the same inputs; a tail of H % 16 units runs on
 * masked loads and stores instead of a zero-padded copy.
 */
#include <immintrin.h>
#include "gates.h"

static inline __m512 exp512(__m512 x)
{
    const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-87.3365478515625f);
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f), shifter = _mm512_set1_ps(12582912.0f);
    const __m512 c1 = _mm512_set1_ps(0.693359375f), c2 = _mm512_set1_ps(-2.12194440e-4f);
    __m512 t, n, r, r2, p01, p23, p45, p;
    __m512i e;
    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x)); /* operand order keeps NaN, as exp256 */
    t = _mm512_fmadd_ps(x, log2e, shifter);
    n = _mm512_sub_ps(t, shifter);
    r = _mm512_fnmadd_ps(n, c1, x);
    r = _mm512_fnmadd_ps(n, c2, r);
    r2 = _mm512_mul_ps(r, r);
    p01 = _mm512_fmadd_ps(_mm512_set1_ps(1.6666665459e-1f), r, _mm512_set1_ps(5.0000001201e-1f));
    p23 = _mm512_fmadd_ps(_mm512_set1_ps(8.3334519073e-3f), r, _mm512_set1_ps(4.1665795894e-2f));
    p45 = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(_mm512_fmadd_ps(p45, r2, p23), r2, p01);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    e = _mm512_add_epi32(_mm512_slli_epi32(_mm512_castps_si512(t), 23), _mm512_set1_epi32(127 << 23));
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

static inline __m512 sigmoid512(__m512 x)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

static inline __m512 tanh512(__m512 x)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(x)));
    __m512 e = exp512(_mm512_mul_ps(ax, _mm512_set1_ps(-2.0f)));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t),
                                               _mm512_and_si512(sign, _mm512_castps_si512(x))));
}

/* 16 units (m: the live lanes) of the LSTM row: gates, c and h, one load and one store each */
static inline __attribute__((always_inline)) void
fr_lstm_fwd_units512(float *restrict g, const float *restrict bias, const float *restrict c_prev,
                     float *restrict c, float *restrict h, int H, int j, __mmask16 m)
{
    float *gi = g + j, *gf = g + H + j, *gc = g + 2 * H + j, *go = g + 3 * H + j;
    __m512 vi = _mm512_maskz_loadu_ps(m, gi), vf = _mm512_maskz_loadu_ps(m, gf);
    __m512 vc = _mm512_maskz_loadu_ps(m, gc), vo = _mm512_maskz_loadu_ps(m, go), cn;
    if (bias) {
        vi = _mm512_add_ps(vi, _mm512_maskz_loadu_ps(m, bias + j));
        vf = _mm512_add_ps(vf, _mm512_maskz_loadu_ps(m, bias + H + j));
        vc = _mm512_add_ps(vc, _mm512_maskz_loadu_ps(m, bias + 2 * H + j));
        vo = _mm512_add_ps(vo, _mm512_maskz_loadu_ps(m, bias + 3 * H + j));
    }
    vi = sigmoid512(vi);
    vf = sigmoid512(vf);
    vc = tanh512(vc);
    vo = sigmoid512(vo);
    cn = _mm512_fmadd_ps(vf, _mm512_maskz_loadu_ps(m, c_prev + j), _mm512_mul_ps(vi, vc));
    _mm512_mask_storeu_ps(gi, m, vi);
    _mm512_mask_storeu_ps(gf, m, vf);
    _mm512_mask_storeu_ps(gc, m, vc);
    _mm512_mask_storeu_ps(go, m, vo);
    _mm512_mask_storeu_ps(c + j, m, cn);
    _mm512_mask_storeu_ps(h + j, m, _mm512_mul_ps(vo, tanh512(cn)));
}

/* Same contract as fr_lstm_fwd_row_f32 (gates.h) for act == FR_TANH, ract == FR_SIGMOID only. */
void fr_lstm_fwd_row_default_f32_avx512(float *restrict g, const float *restrict bias, const float *restrict c_prev,
                                        float *restrict c, float *restrict h, int H)
{
    int j = 0;
    for (; j + 16 <= H; j += 16) fr_lstm_fwd_units512(g, bias, c_prev, c, h, H, j, (__mmask16)0xFFFF);
    if (j < H) fr_lstm_fwd_units512(g, bias, c_prev, c, h, H, j, (__mmask16)((1u << (H - j)) - 1u));
}
