/* act_simd.inc.h - the float32 tanh and sigmoid of the SIMD builds, written once for every vector width,
 * so gates_avx2.c (256-bit) and gates_avx512.c (512-bit) run the same operations on the same constants
 * and give the same bits (tests compare the rows of the two builds).  Include after defining:
 *   FR_V           the float vector type (__m256, __m512)
 *   FR_OP(op)      the intrinsic of that width for op (_mm256_##op, _mm512_##op)
 *   FR_TANH_FN, FR_SIGMOID_FN  the names of the two functions this file defines (static inline)
 * It #undefs all four at its end.
 *
 * tanh(x) = t * P(t^2) / Q(t^2), t = x clamped to [-9, 9] (beyond it float32's tanh is +-1), P and Q of
 * degree 4 with P(0) = Q(0) = 1 (so tanh'(0) = 1 exactly and small inputs keep their relative
 * accuracy).  The coefficients are this project's own weighted least-squares fit (Lawson's reweighting
 * towards the minimax error; relative error below |x| = 1, absolute above): 4.6e-9 in exact
 * arithmetic; in float32 the rounding of P and Q dominates: C harness over every 5th float32 up to 30,
 * max abs error 3.3e-7 (five ulps of 1, near |x| = 4.9), max relative error below |x| = 1 3.2e-7
 * (degrees 5/4 and 5/5 measured no better: that is float32's floor for this form).  Each polynomial
 * runs as Estrin's scheme (the two halves and the two polynomials independent), so the chain from x
 * to tanh(x) is ~31 cycles (clamp, t^2, t^4, two FMAs, a multiply, the division) and 14 operations.
 * sigmoid(x) = 0.5 + 0.5 * tanh(x / 2): max abs error 1.8e-7; below ~3e-8 it returns coarse values
 * (0 under x ~ -18), an absolute error that a gate multiplying a state never sees.
 * Why not exp: the previous build (e^x by range reduction, a degree-5 polynomial and 2^n in the exponent
 * bits, then one division per gate: max abs error 9e-8, but tanh(x) = (1 - e^(-2|x|)) / (1 + ...) lost
 * all relative accuracy at small |x|) took ~56 cycles of dependent operations per gate, and the LSTM
 * row chains two (the gates, then tanh(c)): latency-bound, the out-of-order window holding under three
 * vectors of units in flight.  C harness, the LSTM forward row on one Zen 3 core, H = 64 x 64 rows:
 * 3.2 -> 1.8 ns a unit (bench/NOTES.md 47).
 * NaN: min/max with x second return x when it is NaN, and every later operation keeps it.
 */
static inline FR_V FR_TANH_FN(FR_V x)
{
    const FR_V one = FR_OP(set1_ps)(1.0f);
    const FR_V t = FR_OP(min_ps)(FR_OP(set1_ps)(9.0f), FR_OP(max_ps)(FR_OP(set1_ps)(-9.0f), x));
    const FR_V s = FR_OP(mul_ps)(t, t), s2 = FR_OP(mul_ps)(s, s);
    /* P(s) = (1 + p1 s) + (p2 + p3 s + p4 s^2) s^2, Q likewise */
    const FR_V p = FR_OP(fmadd_ps)(FR_OP(fmadd_ps)(FR_OP(set1_ps)(1.409146569e-08f), s2,
                                                   FR_OP(fmadd_ps)(FR_OP(set1_ps)(2.116502884e-05f), s,
                                                                   FR_OP(set1_ps)(3.530295899e-03f))),
                                   s2, FR_OP(fmadd_ps)(FR_OP(set1_ps)(1.341051685e-01f), s, one));
    const FR_V q = FR_OP(fmadd_ps)(FR_OP(fmadd_ps)(FR_OP(set1_ps)(8.085479784e-07f), s2,
                                                   FR_OP(fmadd_ps)(FR_OP(set1_ps)(3.341771924e-04f), s,
                                                                   FR_OP(set1_ps)(2.600987503e-02f))),
                                   s2, FR_OP(fmadd_ps)(FR_OP(set1_ps)(4.674384529e-01f), s, one));
    return FR_OP(div_ps)(FR_OP(mul_ps)(t, p), q);
}

static inline FR_V FR_SIGMOID_FN(FR_V x)
{
    const FR_V half = FR_OP(set1_ps)(0.5f);
    return FR_OP(fmadd_ps)(FR_TANH_FN(FR_OP(mul_ps)(x, half)), half, half);
}

/* the parameters end with this file: the next include (another width) defines them afresh */
#undef FR_V
#undef FR_OP
#undef FR_TANH_FN
#undef FR_SIGMOID_FN
