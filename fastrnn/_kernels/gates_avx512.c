/* gates_avx512.c - the fused LSTM forward row (default activations: sigmoid gates, tanh) on 512-bit
 * registers, for CPUs with AVX-512F (fr_simd_level() == 2; gates.c picks it, and keeps gates_avx2.c's
 * rows for every other row and activation).  Compiled on its own with -mavx512f -mfma (setup.py).
 *
 * Why only this row: it is the gate math the big LSTM rows spend their time in (perf, 1 thread: 11%
 * of lstm t100-b128-h256 inference, 23% of lstm t28-b64-h64), and on a CPU with two 512-bit FMA
 * pipes sixteen lanes an instruction do the same work in half the instructions (bench/NOTES.md 34).
 *
 * The arithmetic is gates_avx2.c's, operation for operation (exp and sigmoid come from the same
 * exp_simd.inc.h; tanh from e^(-2|x|) as tanh256), so both builds give the same bits for the same
 * inputs; a tail of H % 16 units runs on masked loads and stores instead of a zero-padded copy.
 */
#include <immintrin.h>
#include "gates.h"

#define FR_V __m512
#define FR_OP(op) _mm512_##op
#define FR_CAST_PS_SI _mm512_castps_si512
#define FR_CAST_SI_PS _mm512_castsi512_ps
#define FR_EXP exp512
#define FR_SIGMOID sigmoid512
#include "exp_simd.inc.h" /* exp512, sigmoid512: gates_avx2.c's, on 16 lanes */

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
