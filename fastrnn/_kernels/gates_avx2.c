/* gates_avx2.c - the float32 gate math on AVX2/FMA: vector activations here, and the one-row cell
 * updates of cell_rows.inc.h compiled again in this file, so gcc vectorises them with 256-bit FMA.
 * Compiled with -mavx2 -mfma (setup.py) and called only after fr_init_simd() has seen both features,
 * so the rest of the library stays portable.
 *
 * exp: Cephes-style range reduction x = n*ln2 + r (ln2 split in two constants so r is exact), a
 * degree-5 polynomial for e^r on |r| <= ln2/2, and 2^n built in the exponent bits.  The input is
 * clamped to [-87.3, 88.3] so 2^n never leaves the normal range.
 * sigmoid(x) = 1 / (1 + e^-x)            (true division: the rcp estimate costs ~1e-4 of accuracy)
 * tanh(x)    = sign(x) * (1 - e) / (1 + e), e = e^(-2|x|)   (never overflows, max abs error ~2e-7)
 * A tail of n % 8 elements goes through the same vector code on a zero-padded copy, so every element
 * sees the same arithmetic whatever its position.
 */
#include <immintrin.h>
#include <string.h>
#include "gates.h"

static inline __m256 exp256(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365478515625f);
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 c1 = _mm256_set1_ps(0.693359375f), c2 = _mm256_set1_ps(-2.12194440e-4f);
    __m256 n, r, p;
    __m256i e;
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x)); /* operand order keeps NaN */
    n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_fnmadd_ps(n, c1, x);
    r = _mm256_fnmadd_ps(n, c2, r);
    p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 act256(int kind, __m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    switch (kind) {
    case FR_TANH: {
        __m256 ax = _mm256_andnot_ps(sign, x);
        __m256 e = exp256(_mm256_mul_ps(ax, _mm256_set1_ps(-2.0f)));
        __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
        return _mm256_or_ps(t, _mm256_and_ps(sign, x));
    }
    case FR_SIGMOID:
        return _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, x))));
    case FR_HARD_SIGMOID: {
        __m256 v = _mm256_fmadd_ps(x, _mm256_set1_ps(1.0f / 6.0f), _mm256_set1_ps(0.5f));
        return _mm256_min_ps(one, _mm256_max_ps(zero, v)); /* max/min return the 2nd operand on NaN */
    }
    case FR_RELU:
        return _mm256_max_ps(zero, x);
    case FR_SOFTSIGN:
        return _mm256_div_ps(x, _mm256_add_ps(one, _mm256_andnot_ps(sign, x)));
    default:
        return x;
    }
}

void fr_act_f32_avx2(int kind, float *y, const float *x, int n)
{
    int j = 0;
    if (kind == FR_LINEAR) {
        if (y != x) memmove(y, x, (size_t)n * sizeof(float));
        return;
    }
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, act256(kind, _mm256_loadu_ps(x + j)));
    if (j < n) {
        float buf[8] = {0};
        memcpy(buf, x + j, (size_t)(n - j) * sizeof(float));
        _mm256_storeu_ps(buf, act256(kind, _mm256_loadu_ps(buf)));
        memcpy(y + j, buf, (size_t)(n - j) * sizeof(float));
    }
}

#define T float
#define SFX f32_avx2
#include "cell_rows.inc.h"
#undef T
#undef SFX
