/* exp_simd.inc.h - the float32 exp and sigmoid of the SIMD builds, written once for every vector width,
 * so gates_avx2.c (256-bit) and gates_avx512.c (512-bit) run the same operations on the same constants
 * and give the same bits (tests compare the rows of the two builds).  The method is described at the top of
 * gates_avx2.c.  Include after defining:
 *   FR_V           the float vector type (__m256, __m512)
 *   FR_OP(op)      the intrinsic of that width for op (_mm256_##op, _mm512_##op)
 *   FR_CAST_PS_SI  float -> integer vector bit cast;  FR_CAST_SI_PS  integer -> float
 *   FR_EXP, FR_SIGMOID  the names of the two functions this file defines (static inline)
 * It #undefs all six at its end (FR_SIGMOID is also gates.h's activation code once undefined).
 */
static inline FR_V FR_EXP(FR_V x)
{
    const FR_V hi = FR_OP(set1_ps)(88.3762626647949f), lo = FR_OP(set1_ps)(-87.3365478515625f);
    const FR_V log2e = FR_OP(set1_ps)(1.44269504088896341f), shifter = FR_OP(set1_ps)(12582912.0f);
    const FR_V c1 = FR_OP(set1_ps)(0.693359375f), c2 = FR_OP(set1_ps)(-2.12194440e-4f);
    FR_V t, n, r, r2, p01, p23, p45, p;
    x = FR_OP(min_ps)(hi, FR_OP(max_ps)(lo, x)); /* operand order keeps NaN */
    t = FR_OP(fmadd_ps)(x, log2e, shifter);     /* 1.5*2^23 + round(x*log2e): n in the low bits */
    n = FR_OP(sub_ps)(t, shifter);
    r = FR_OP(fnmadd_ps)(n, c1, x);
    r = FR_OP(fnmadd_ps)(n, c2, r);
    r2 = FR_OP(mul_ps)(r, r);
    /* e^r = 1 + r + r^2 * (p01 + r^2 * (p23 + r^2 * p45)) */
    p01 = FR_OP(fmadd_ps)(FR_OP(set1_ps)(1.6666665459e-1f), r, FR_OP(set1_ps)(5.0000001201e-1f));
    p23 = FR_OP(fmadd_ps)(FR_OP(set1_ps)(8.3334519073e-3f), r, FR_OP(set1_ps)(4.1665795894e-2f));
    p45 = FR_OP(fmadd_ps)(FR_OP(set1_ps)(1.9875691500e-4f), r, FR_OP(set1_ps)(1.3981999507e-3f));
    p = FR_OP(fmadd_ps)(FR_OP(fmadd_ps)(p45, r2, p23), r2, p01);
    p = FR_OP(fmadd_ps)(p, r2, FR_OP(add_ps)(r, FR_OP(set1_ps)(1.0f)));
    /* 2^n: n's two's-complement bits shifted into the exponent field, plus the bias */
    return FR_OP(mul_ps)(p, FR_CAST_SI_PS(FR_OP(add_epi32)(FR_OP(slli_epi32)(FR_CAST_PS_SI(t), 23),
                                                           FR_OP(set1_epi32)(127 << 23))));
}

static inline FR_V FR_SIGMOID(FR_V x)
{
    const FR_V one = FR_OP(set1_ps)(1.0f);
    return FR_OP(div_ps)(one, FR_OP(add_ps)(one, FR_EXP(FR_OP(sub_ps)(FR_OP(setzero_ps)(), x))));
}

/* the parameters end with this file: the next include (another width) defines them afresh */
#undef FR_V
#undef FR_OP
#undef FR_CAST_PS_SI
#undef FR_CAST_SI_PS
#undef FR_EXP
#undef FR_SIGMOID
