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

static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y := beta*y + R @ x, four rows of R per pass so each load of x feeds four FMAs. */
void fr_matvec_f32_avx2(const float *restrict R, const float *restrict x, int M, int N, int ldr, float beta,
                        float *restrict y)
{
    int j = 0, n, i;
    for (; j < M; j += 4) {
        int rows = M - j < 4 ? M - j : 4;
        const float *r[4];
        __m256 acc[4];
        float tail[4] = {0, 0, 0, 0};
        for (i = 0; i < 4; i++) {
            r[i] = R + (long)(j + (i < rows ? i : 0)) * ldr;
            acc[i] = _mm256_setzero_ps();
        }
        for (n = 0; n + 8 <= N; n += 8) {
            __m256 xv = _mm256_loadu_ps(x + n);
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(r[0] + n), xv, acc[0]);
            acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(r[1] + n), xv, acc[1]);
            acc[2] = _mm256_fmadd_ps(_mm256_loadu_ps(r[2] + n), xv, acc[2]);
            acc[3] = _mm256_fmadd_ps(_mm256_loadu_ps(r[3] + n), xv, acc[3]);
        }
        for (; n < N; n++)
            for (i = 0; i < 4; i++) tail[i] += r[i][n] * x[n];
        for (i = 0; i < rows; i++)
            y[j + i] = (beta == 0.0f ? 0.0f : beta * y[j + i]) + hsum256(acc[i]) + tail[i];
    }
}

#define T float
#define SFX f32_avx2
#define FR_OWN_MATVEC
#include "cell_rows.inc.h"
#undef FR_OWN_MATVEC
#undef T
#undef SFX
