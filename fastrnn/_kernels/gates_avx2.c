/* gates_avx2.c - the float32 gate math on AVX2/FMA: vector activations here, and the one-row cell
 * updates of cell_rows.inc.h compiled again in this file, so gcc vectorises them with 256-bit FMA.
 * Compiled with -mavx2 -mfma (setup.py) and called only after fr_init_simd() has seen both features,
 * so the rest of the library stays portable.
 *
 * tanh and sigmoid: act_simd.inc.h (a rational tanh, sigmoid from tanh(x/2); shared with the 512-bit
 * build).  Other activations (hard_sigmoid, relu, softsign, linear) are a few operations each, below.
 * A tail of n % 8 elements goes through the same vector code on a zero-padded copy, so every element
 * sees the same arithmetic whatever its position.
 *
 * Contents, in order: the activations; the generic one-row cell updates (cell_rows.inc.h); the LSTM
 * forward and backward rows, the GRU reset_after forward and backward rows and the SimpleRNN row fused
 * for the default activations (fused_rows.inc.h: a pass over the row per activation chain), the
 * generic rows serving the other activations;
 * the packed-R microkernel (B >= 2); the vector-panel product (B == 1).
 */
#include <immintrin.h>
#include <string.h>
#include "gates.h"

#define FR_V __m256
#define FR_OP(op) _mm256_##op
#define FR_TANH_FN tanh256
#define FR_SIGMOID_FN sigmoid256
#include "act_simd.inc.h" /* tanh256, sigmoid256 */

static inline __m256 act256(int kind, __m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    switch (kind) {
    case FR_TANH:
        return tanh256(x);
    case FR_SIGMOID:
        return sigmoid256(x);
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
#define FR_OWN_VECMAT
#define FR_OWN_LSTM_FWD
#define FR_OWN_LSTM_BWD
#define FR_OWN_GRU_FWD
#define FR_OWN_GRU_BWD
#define FR_OWN_SIMPLE_FWD
#include "cell_rows.inc.h"
#undef FR_OWN_SIMPLE_FWD
#undef FR_OWN_GRU_BWD
#undef FR_OWN_GRU_FWD
#undef FR_OWN_LSTM_BWD
#undef FR_OWN_LSTM_FWD
#undef FR_OWN_VECMAT
#undef FR_OWN_MATVEC
#undef T
#undef SFX

/* The rows fused for the default activations (fused_rows.inc.h) on 8 lanes; the generic rows above
 * serve every other activation. */
#define FR_V __m256
#define FR_OP(op) _mm256_##op
#define FR_LANES 8
#define FR_MASK __m256i
#define FR_TAIL_MASK(n) _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define FR_LD(p) (tail ? _mm256_maskload_ps((p), m) : _mm256_loadu_ps(p))
#define FR_ST(p, v) (tail ? _mm256_maskstore_ps((p), m, (v)) : _mm256_storeu_ps((p), (v)))
#define FR_SIG sigmoid256
#define FR_TANH_V tanh256
#define FR_ROW(name) name##_avx2
#include "fused_rows.inc.h"

void fr_lstm_fwd_row_f32_avx2(float *restrict g, const float *restrict bias, const float *restrict c_prev,
                              float *restrict c, float *restrict h, int H, int act, int ract)
{
    if (act == FR_TANH && ract == FR_SIGMOID)
        fr_lstm_fwd_row_default_f32_avx2(g, bias, c_prev, c, h, H);
    else
        fr_lstm_fwd_row_generic_f32_avx2(g, bias, c_prev, c, h, H, act, ract);
}

void fr_lstm_bwd_row_f32_avx2(const float *restrict g, const float *restrict c_prev, const float *restrict c,
                              const float *restrict dh, float *restrict dc, float *restrict dg,
                              float *restrict tmp, int H, int act, int ract)
{
    if (act == FR_TANH && ract == FR_SIGMOID)   /* tmp is not used */
        fr_lstm_bwd_row_default_f32_avx2(g, c_prev, c, dh, dc, dg, H);
    else
        fr_lstm_bwd_row_generic_f32_avx2(g, c_prev, c, dh, dc, dg, tmp, H, act, ract);
}

void fr_gru_reset_after_fwd_row_f32_avx2(float *restrict g, const float *restrict rec, const float *restrict bx,
                                         const float *restrict br, float *restrict rh,
                                         const float *restrict h_prev, float *restrict h, int H, int act,
                                         int ract)
{
    if (act == FR_TANH && ract == FR_SIGMOID)
        fr_gru_reset_after_fwd_row_default_f32_avx2(g, rec, bx, br, rh, h_prev, h, H);
    else
        fr_gru_reset_after_fwd_row_generic_f32_avx2(g, rec, bx, br, rh, h_prev, h, H, act, ract);
}

void fr_gru_reset_after_bwd_row_f32_avx2(const float *restrict g, const float *restrict h_prev,
                                         const float *restrict rh, const float *restrict dh, float *restrict dg,
                                         float *restrict dh_direct, float *restrict drec, int H, int act,
                                         int ract)
{
    if (act == FR_TANH && ract == FR_SIGMOID)
        fr_gru_reset_after_bwd_row_default_f32_avx2(g, h_prev, rh, dh, dg, dh_direct, drec, H);
    else
        fr_gru_reset_after_bwd_row_generic_f32_avx2(g, h_prev, rh, dh, dg, dh_direct, drec, H, act, ract);
}

void fr_simple_fwd_row_f32_avx2(float *g, const float *bias, float *h, int H, int act)
{
    if (act == FR_TANH)
        fr_simple_fwd_row_tanh_f32_avx2(g, bias, h, H);
    else
        fr_simple_fwd_row_generic_f32_avx2(g, bias, h, H, act);
}

/* ---------------------------------------------------------------------------------------------------
 * Packed recurrent GEMM: C := A @ R + beta*C with R packed once per forward call (gates.h).
 *
 * Why: OpenBLAS sgemm has no pack-once API, so for the per-step product h (B x K) @ R (K x N) with a
 * small B it copies R into its own panels on every call (sgemm_itcopy: ~26% of an LSTM forward at
 * B = 16).  R does not change during the time loop, so we pack it once into FR_NR-column panels,
 * K-major (panel p = R[0:K, 16p:16p+16] contiguous, the last panel zero-padded), and run a
 * register-blocked 6 x 16 microkernel: 12 ymm accumulators; per k two panel loads, six broadcasts of
 * A, twelve FMAs.  Panels are the outer loop, so one panel (K*64 bytes) stays in L1/L2 while every
 * row block of A streams over it; A (B x K) is small and stays in cache across panels.
 * Each step also copies A into 6-row k-interleaved blocks (`work`: B*K floats, 1/N of the flops) so
 * the six broadcasts of a k hit one cache line.  K runs in blocks of FR_KC = 1024: blocking K at 256
 * (so a panel slice stays in L1) measured 5% slower at K = 512 than one block, which writes C once.
 * The rows of C are a step's rows of xp, far apart and cold (the input GEMM wrote them long before):
 * each tile prefetches its C rows before its K loop (M = 64: 55 -> 74 GFLOP/s, bench/NOTES.md 19).
 * Remainder rows (M % 6) go through the same code with fewer live accumulators (MR is a compile-time
 * constant per instantiation); remainder columns are computed on the zero padding and stored through
 * a stack tile.  beta is 0 (C is not read) or 1; A and C may be strided (lda, ldc).
 * The same kernel in two halves (fr_pack_a_f32_avx2 + fr_gemm_prepacked_f32_avx2) is gemm_into's packed
 * path at level 1, which the plan takes for the one-row forward's projection only (_engine.pyx,
 * ONE_ROW_MICROKERNEL_MAX_T; bench/NOTES.md 48).
 * ------------------------------------------------------------------------------------------------ */
#define FR_NR 16
#define FR_MR 6
#define FR_KC 1024
#define FR_PF 64 /* rows of a panel (64 B each) prefetched ahead: 4 KB, several L3 latencies of work */
/* Next-panel prefetch.  A few rows (M <= 16) against panels of K >= 1024 rows (64 KiB, past L1; R
 * itself 4-16 MiB, from L3 or memory: H = 1024, or the backward's K = G*H) make two or three passes a
 * panel, and the first one waits on L3 with FR_PF rows of lookahead.  There each pass asks instead for
 * the same row of the next panel, a whole panel (~10^4 cycles) ahead, and a request that the first pass
 * lost to full miss buffers is asked again by the next.  Not for 4 + 4 row blocks (FR_FOUR).  C harness
 * (each variant its own shared library; two cores, each its own rows on one shared R, medians of 21
 * alternations in one process; bench/build_ab.py kernel does the same for two engine builds),
 * next-panel / FR_PF-ahead: M x K x N = 16 x 1024 x 4096 0.82-0.97, 16 x 1024 x 1024 0.90-0.94,
 * 16 x 4096 x 1024 0.82, 4 x 1024 x 1024 0.79-0.83; but 8 x 1024 x 1024 (two 4-row passes, whose
 * loads already use most of L1's fill bandwidth) 1.03-1.21,
 * 12 and 24 x 1024 x 1024 1.00, 32 x 2048 x 512 1.04, 8 x 256 x 1024 1.12 (panels that fit L1 with
 * the next one evicting them).  bench/NOTES.md 52.  fr_next_panel_prefetch switches it (A/B runs).
 * The last panel's passes prefetch past the end of P: harmless, a prefetch never faults. */
#define FR_PF_NEXT_MIN_K 1024
#define FR_PF_NEXT_MAX_M 16
int fr_next_panel_prefetch = 1;

void fr_pack_panels_f32_avx2(const float *restrict R, int K, int N, int ldr, float *restrict P)
{
    int p, k, j, np = (N + FR_NR - 1) / FR_NR;
    for (p = 0; p < np; p++) {
        int n0 = p * FR_NR, w = N - n0 < FR_NR ? N - n0 : FR_NR;
        float *dst = P + (long)p * K * FR_NR;
        for (k = 0; k < K; k++) {
            const float *src = R + (long)k * ldr + n0;
            if (w == FR_NR) {
                _mm256_storeu_ps(dst + (long)k * FR_NR, _mm256_loadu_ps(src));
                _mm256_storeu_ps(dst + (long)k * FR_NR + 8, _mm256_loadu_ps(src + 8));
            } else {
                for (j = 0; j < w; j++) dst[(long)k * FR_NR + j] = src[j];
                for (; j < FR_NR; j++) dst[(long)k * FR_NR + j] = 0.0f;
            }
        }
    }
}

void fr_pack_panels_t_f32_avx2(const float *restrict R, int K, int N, int ldr, float *restrict P)
{
    /* the panels of R^T (K, N) from R (N, K) rows ldr apart: a strided gather, once per backward call */
    int p, k, j, np = (N + FR_NR - 1) / FR_NR;
    for (p = 0; p < np; p++) {
        int n0 = p * FR_NR, w = N - n0 < FR_NR ? N - n0 : FR_NR;
        float *dst = P + (long)p * K * FR_NR;
        for (j = 0; j < FR_NR; j++) {
            const float *src = R + (long)(n0 + j) * ldr;
            if (j < w)
                for (k = 0; k < K; k++) dst[(long)k * FR_NR + j] = src[k];
            else
                for (k = 0; k < K; k++) dst[(long)k * FR_NR + j] = 0.0f;
        }
    }
}

static inline __attribute__((always_inline)) void
fr_prefetch_row_f32(const float *c, int w)
{
    _mm_prefetch((const char *)c, _MM_HINT_T0);
    _mm_prefetch((const char *)(c + w - 1), _MM_HINT_T0);   /* the row's second line when unaligned */
}

static inline __attribute__((always_inline)) void
fr_store_row_f32(float *restrict c, __m256 v0, __m256 v1, float beta, int w)
{
    if (w == FR_NR) {
        if (beta != 0.0f) {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(c));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(c + 8));
        }
        _mm256_storeu_ps(c, v0);
        _mm256_storeu_ps(c + 8, v1);
    } else {
        float tile[FR_NR];
        int j;
        _mm256_storeu_ps(tile, v0);
        _mm256_storeu_ps(tile + 8, v1);
        for (j = 0; j < w; j++) c[j] = beta != 0.0f ? c[j] + tile[j] : tile[j];
    }
}

/* One MR x 16 tile: C[0:mr, 0:w] := A @ panel + beta*C, A a packed row block (FR_MR floats per k);
 * next (a constant at every call site, so each choice compiles to its own loop: a run-time choice in
 * the loop cost up to 1.3x at 8 rows): prefetch the same row of the next panel, ps floats on, instead
 * of FR_PF rows ahead in this one.  mr is a constant at every call site,
 * so the `i < mr` tests fold away; the accumulators are named scalars (arrays of __m256 make gcc keep
 * them in memory and store them on every k). */
#define FR_ROW_DO(X) X(0) X(1) X(2) X(3) X(4) X(5)
static inline __attribute__((always_inline)) void
fr_micro_f32(const int mr, int K, const float *restrict A, const float *restrict Pp, float beta,
             float *restrict C, int ldc, int w, const int next, long ps)
{
#define FR_DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps(); \

    FR_ROW_DO(FR_DECL)
#undef FR_DECL
    int k;
    /* C's rows are far apart (a step's rows of xp, T*G*H apart batch-major) and were last touched by the
     * input GEMM, so they come from L3 or DRAM: ask for them now, the K loop hides the wait */
#define FR_PF_C(i) if (i < mr && beta != 0.0f) fr_prefetch_row_f32(C + (long)i * ldc, w);
    FR_ROW_DO(FR_PF_C)
#undef FR_PF_C
    for (k = 0; k < K; k++) {
        const __m256 b0 = _mm256_loadu_ps(Pp + (long)k * FR_NR), b1 = _mm256_loadu_ps(Pp + (long)k * FR_NR + 8);
        /* the panel streams from L3 when R is larger than L2: ask for it FR_PF rows ahead, or for the
         * next panel (Next-panel prefetch above) */
        if (next)
            _mm_prefetch((const char *)(Pp + ps + (long)k * FR_NR), _MM_HINT_T0);
        else
            _mm_prefetch((const char *)(Pp + (long)(k + FR_PF) * FR_NR), _MM_HINT_T0);
#define FR_FMA(i) if (i < mr) { const __m256 av = _mm256_broadcast_ss(A + (long)k * FR_MR + i);                  \
            c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0); c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1); }
        FR_ROW_DO(FR_FMA)
#undef FR_FMA
    }
#define FR_STORE(i) if (i < mr) fr_store_row_f32(C + (long)i * ldc, c##i##0, c##i##1, beta, w);
    FR_ROW_DO(FR_STORE)
#undef FR_STORE
}

/* The remainder rows (mr <= 3) over npn panels at once (panel q at Pp + q*ps): with one panel, mr <= 3
 * rows have 2*mr <= 6 accumulators, fewer than the ~10 independent FMA chains that hide the FMA latency
 * on two pipes (a 2-row pass ran at the speed of a 6-row one: 8 rows per thread = 11 of 16 slots).
 * mr <= 2 takes 3 panels (up to 12 accumulators), mr = 3 takes 2 (12).  nleft: the columns left from
 * the first panel on, so the last panel of the matrix stores only its real columns. */
#define FR_WIDE_J(j, q, h)                                                                             \
    if (j < 2 * npn) {                                                                                 \
        const __m256 bj = _mm256_loadu_ps(Pp + (long)(q) * ps + (long)k * FR_NR + (h));               \
        c0##j = _mm256_fmadd_ps(a0, bj, c0##j);                                                        \
        if (mr > 1) c1##j = _mm256_fmadd_ps(a1, bj, c1##j);                                            \
        if (mr > 2) c2##j = _mm256_fmadd_ps(a2, bj, c2##j);                                            \
    }
static inline __attribute__((always_inline)) void
fr_micro_wide_f32(const int mr, const int npn, int K, const float *restrict A, const float *restrict Pp, long ps,
                  float beta, float *restrict C, int ldc, int nleft)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c04 = c00, c05 = c00;
    __m256 c10 = c00, c11 = c00, c12 = c00, c13 = c00, c14 = c00, c15 = c00;
    __m256 c20 = c00, c21 = c00, c22 = c00, c23 = c00, c24 = c00, c25 = c00;
    int k, q;
    if (beta != 0.0f)
        for (q = 0; q < npn; q++) {
            int w = nleft - q * FR_NR < FR_NR ? nleft - q * FR_NR : FR_NR;
            if (w <= 0) break;
            for (k = 0; k < mr; k++) fr_prefetch_row_f32(C + (long)k * ldc + q * FR_NR, w);
        }
    for (k = 0; k < K; k++) {
        const __m256 a0 = _mm256_broadcast_ss(A + (long)k * FR_MR);
        const __m256 a1 = mr > 1 ? _mm256_broadcast_ss(A + (long)k * FR_MR + 1) : a0;
        const __m256 a2 = mr > 2 ? _mm256_broadcast_ss(A + (long)k * FR_MR + 2) : a0;
        FR_WIDE_J(0, 0, 0) FR_WIDE_J(1, 0, 8) FR_WIDE_J(2, 1, 0) FR_WIDE_J(3, 1, 8) FR_WIDE_J(4, 2, 0) FR_WIDE_J(5, 2, 8)
    }
    for (q = 0; q < npn; q++) {
        int w = nleft - q * FR_NR < FR_NR ? nleft - q * FR_NR : FR_NR;
        float *cq = C + q * FR_NR;
        __m256 v[3][2];
        v[0][0] = q == 0 ? c00 : q == 1 ? c02 : c04;
        v[0][1] = q == 0 ? c01 : q == 1 ? c03 : c05;
        v[1][0] = q == 0 ? c10 : q == 1 ? c12 : c14;
        v[1][1] = q == 0 ? c11 : q == 1 ? c13 : c15;
        v[2][0] = q == 0 ? c20 : q == 1 ? c22 : c24;
        v[2][1] = q == 0 ? c21 : q == 1 ? c23 : c25;
        fr_store_row_f32(cq, v[0][0], v[0][1], beta, w);
        if (mr > 1) fr_store_row_f32(cq + ldc, v[1][0], v[1][1], beta, w);
        if (mr > 2) fr_store_row_f32(cq + 2L * ldc, v[2][0], v[2][1], beta, w);
    }
}
#undef FR_WIDE_J

/* r[0..7] := the columns of the 8 x 8 block whose rows r[0..7] hold (r[j] = column j, row i in lane i):
 * the standard unpack / shuffle / lane-swap transpose, in registers */
static inline __attribute__((always_inline)) void fr_transpose8x8_regs(__m256 r[8])
{
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    /* u_j: column j (j < 4) of rows 0-3 in the low lane, column j + 4 in the high lane; v_j rows 4-7 */
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 v0 = _mm256_shuffle_ps(t4, t6, 0x44), v1 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 v2 = _mm256_shuffle_ps(t5, t7, 0x44), v3 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, v0, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, v1, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, v2, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, v3, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, v0, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, v1, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, v2, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, v3, 0x31);
}

/* dst[j*ldd + i] = src[i*lda + j] for an 8 x 8 block */
static inline __attribute__((always_inline)) void fr_transpose8x8(const float *restrict src, long lda,
                                                                  float *restrict dst, long ldd)
{
    __m256 r[8];
    int i;
    for (i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * lda);
    fr_transpose8x8_regs(r);
    for (i = 0; i < 8; i++) _mm256_storeu_ps(dst + i * ldd, r[i]);
}

/* dst (N x M, rows ldd apart) := src (M x N, rows lds apart) transposed.  32 x 32 tiles (4 KiB of src
 * and of dst, in L1 while their sixteen 8 x 8 register transposes pass), the edges element by element.
 * Why: a strided copy reads or writes one float per cache line per step; torch's .contiguous() of a
 * transposed (2048, 512) weight took 0.95 ms against 0.10 for a plain copy (bench/NOTES.md 39). */
void fr_transpose_f32_avx2(int M, int N, const float *restrict src, long lds, float *restrict dst, long ldd)
{
    int i0, j0, i, j;
    for (i0 = 0; i0 < M; i0 += 32) {
        const int i1 = M - i0 < 32 ? M : i0 + 32, i8 = i0 + (i1 - i0) / 8 * 8;
        for (j0 = 0; j0 < N; j0 += 32) {
            const int j1 = N - j0 < 32 ? N : j0 + 32, j8 = j0 + (j1 - j0) / 8 * 8;
            for (i = i0; i < i8; i += 8)
                for (j = j0; j < j8; j += 8) fr_transpose8x8(src + (long)i * lds + j, lds, dst + (long)j * ldd + i, ldd);
            for (i = i0; i < i1; i++)   /* the tile's last N % 8 columns (all rows), then last M % 8 rows */
                for (j = j8; j < j1; j++) dst[(long)j * ldd + i] = src[(long)i * lds + j];
            for (i = i8; i < i1; i++)
                for (j = j0; j < j8; j++) dst[(long)j * ldd + i] = src[(long)i * lds + j];
        }
    }
}

void fr_pack_row_block_f32(const float *restrict A, int lda, int mr, int K, int stride, float *restrict dst)
{
    int i, k = 0;
    /* A full 8-row block (the AVX-512 microkernel's, every step): 8 x 8 transposes in registers, then
     * the last K % 8 columns one by one.  perf, lstm t100-b128-h256 forward on 2 threads: the
     * element-by-element copy was 4.7% of the call (bench/NOTES.md 35). */
    if (mr == 8 && stride == 8) {
        for (; k + 8 <= K; k += 8) fr_transpose8x8(A + k, lda, dst + (long)k * 8, 8);
        for (i = 0; i < 8; i++) {
            const float *src = A + (long)i * lda;
            int kk;
            for (kk = k; kk < K; kk++) dst[(long)kk * 8 + i] = src[kk];
        }
        return;
    }
    /* A block of the AVX2 microkernel (FR_MR = 6 rows or fewer, every step): 8 x 8 transposes with the
     * missing rows zero; column k goes to dst + 6k as a whole vector whose two extra lanes the next
     * column's store overwrites, and the 8th column of each group is stored masked to 6 lanes.  perf,
     * simple_rnn t50-b64-h512 training: the element-by-element copy below was 1.7% of the call. */
    if (stride == FR_MR && mr <= FR_MR) {
        const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
        for (; k + 8 <= K; k += 8) {
            __m256 r[8];
            for (i = 0; i < 8; i++)
                r[i] = i < mr ? _mm256_loadu_ps(A + (long)i * lda + k) : _mm256_setzero_ps();
            fr_transpose8x8_regs(r);
            for (i = 0; i < 7; i++) _mm256_storeu_ps(dst + (long)(k + i) * FR_MR, r[i]);
            _mm256_maskstore_ps(dst + (long)(k + 7) * FR_MR, six, r[7]);
        }
    }
    for (i = 0; i < mr; i++) {
        const float *src = A + (long)i * lda;
        int kk;
        for (kk = k; kk < K; kk++) dst[(long)kk * stride + i] = src[kk];
    }
}

/* Row blocks: 6 rows each, then the rest.  M = 6q + 2 (8, 14, ...) ends in two 4-row blocks instead of
 * 6 + 2: a 4-row pass keeps 8 FMA chains busy, the 2-row pass over 3 panels measured slower (M = 8:
 * 67 -> 84 GFLOP/s, bench/NOTES.md 19).  Block b (rows 6b..) sits at work + b*FR_MR*K, k-major
 * (block[k*FR_MR + i]), so each k's broadcasts come from one cache line whatever lda is (ld = T*H in
 * training). */
#define FR_FOUR(M) ((M) % FR_MR == 2 && (M) >= 8)
#define FR_M6(M) (FR_FOUR(M) ? (M) - 8 : (M) - (M) % FR_MR)   /* rows in 6-row blocks */

/* op(A) (M, K)'s rows i0..i0+mr into one row block: A's rows (trans 0) or A's columns (trans 1: A is
 * (K, M), a contiguous run of mr floats per k) */
static void fr_pack_block_f32(const float *restrict A, int lda, int trans, int i0, int mr, int K, float *restrict dst)
{
    int i, k;
    if (!trans) {
        fr_pack_row_block_f32(A + (long)i0 * lda, lda, mr, K, FR_MR, dst);
        return;
    }
    for (k = 0; k < K; k++) {
        const float *src = A + (long)k * lda + i0;
        for (i = 0; i < mr; i++) dst[(long)k * FR_MR + i] = src[i];
    }
}

void fr_pack_a_f32_avx2(const float *restrict A, int lda, int trans, int M, int K, float *restrict work)
{
    const int m6 = FR_M6(M);
    int m;
    for (m = 0; m < m6; m += FR_MR) fr_pack_block_f32(A, lda, trans, m, FR_MR, K, work + (long)m * K);
    if (FR_FOUR(M)) {
        fr_pack_block_f32(A, lda, trans, m6, 4, K, work + (long)m6 * K);
        fr_pack_block_f32(A, lda, trans, m6 + 4, 4, K, work + (long)(m6 + FR_MR) * K);
    } else if (M > m6) {
        fr_pack_block_f32(A, lda, trans, m6, M - m6, K, work + (long)m6 * K);
    }
}

/* One K block (kc <= FR_KC rows of the panels): C := A @ panels + b*C; next: fr_micro_f32's.  Row block r of A at
 * Aw + r*FR_MR*kst (kst: the packed K, of which this block is kc rows; Aw already offset to them), panel
 * p at P0 + p*ps (rows 16 floats apart; P0 already offset to the block's first row). */
static inline __attribute__((always_inline)) void
fr_gemm_kblock_f32_as(const int next, int M, int N, int kc, const float *restrict Aw, long kst,
                      const float *restrict P0, long ps, float b, float *restrict C, int ldc)
{
    const int four = FR_FOUR(M), m6 = FR_M6(M), np = (N + FR_NR - 1) / FR_NR;
    int p, m;
    for (p = 0; p < np; p++) {
        int n0 = p * FR_NR, w = N - n0 < FR_NR ? N - n0 : FR_NR;
        const float *Pp = P0 + (long)p * ps;
        const float *Ap;
        for (m = 0; m < m6; m += FR_MR) {
            Ap = Aw + (long)m * kst;
            fr_micro_f32(FR_MR, kc, Ap, Pp, b, C + (long)m * ldc + n0, ldc, w, next, ps);
        }
        Ap = Aw + (long)m6 * kst;
        if (four) {
            fr_micro_f32(4, kc, Ap, Pp, b, C + (long)m6 * ldc + n0, ldc, w, next, ps);
            fr_micro_f32(4, kc, Ap + (long)FR_MR * kst, Pp, b, C + (long)(m6 + 4) * ldc + n0, ldc, w, next, ps);
            continue;
        }
        switch (M - m6) {
        case 4: fr_micro_f32(4, kc, Ap, Pp, b, C + (long)m6 * ldc + n0, ldc, w, next, ps); break;
        case 5: fr_micro_f32(5, kc, Ap, Pp, b, C + (long)m6 * ldc + n0, ldc, w, next, ps); break;
        default: break; /* 1-3 rows: below, several panels at a time */
        }
    }
    m = m6;
    if (!four && M - m >= 1 && M - m <= 3) {
        const int r = M - m, group = r == 3 ? 2 : 3;
        const float *Ap = Aw + (long)m * kst;
        for (p = 0; p < np; p += group) {
            int n0 = p * FR_NR, left = np - p;
            const float *Pp = P0 + (long)p * ps;
            float *Cm = C + (long)m * ldc + n0;
            if (left >= group) {
                if (r == 1) fr_micro_wide_f32(1, 3, kc, Ap, Pp, ps, b, Cm, ldc, N - n0);
                else if (r == 2) fr_micro_wide_f32(2, 3, kc, Ap, Pp, ps, b, Cm, ldc, N - n0);
                else fr_micro_wide_f32(3, 2, kc, Ap, Pp, ps, b, Cm, ldc, N - n0);
            } else {
                for (; p < np; p++) {  /* the last one or two panels */
                    int n1 = p * FR_NR, w = N - n1 < FR_NR ? N - n1 : FR_NR;
                    const float *Pq = P0 + (long)p * ps;
                    if (r == 1) fr_micro_f32(1, kc, Ap, Pq, b, C + (long)m * ldc + n1, ldc, w, next, ps);
                    else if (r == 2) fr_micro_f32(2, kc, Ap, Pq, b, C + (long)m * ldc + n1, ldc, w, next, ps);
                    else fr_micro_f32(3, kc, Ap, Pq, b, C + (long)m * ldc + n1, ldc, w, next, ps);
                }
            }
        }
    }
}

/* The whole product, next (a constant) choosing the panel prefetch; its two builds are separate
 * functions, so each loop's code is its own (the other's does not move it). */
static inline __attribute__((always_inline)) void
fr_gemm_packed_f32_as(const int next, int M, int N, int K, const float *restrict A, int lda,
                      const float *restrict P, float beta, float *restrict C, int ldc, float *restrict work)
{
    int k0;
    fr_pack_a_f32_avx2(A, lda, 0, M, K, work);
    /* K in blocks of FR_KC (see the top: one block up to K = 1024) */
    for (k0 = 0; k0 < K || k0 == 0; k0 += FR_KC) {
        const int kc = K - k0 < FR_KC ? K - k0 : FR_KC;
        fr_gemm_kblock_f32_as(next, M, N, kc, work + (long)k0 * FR_MR, K, P + (long)k0 * FR_NR, (long)K * FR_NR,
                              k0 == 0 ? beta : 1.0f, C, ldc);
    }
}

static __attribute__((noinline)) void
fr_gemm_packed_ahead_f32(int M, int N, int K, const float *restrict A, int lda, const float *restrict P,
                         float beta, float *restrict C, int ldc, float *restrict work)
{
    fr_gemm_packed_f32_as(0, M, N, K, A, lda, P, beta, C, ldc, work);
}

static __attribute__((noinline)) void
fr_gemm_packed_next_f32(int M, int N, int K, const float *restrict A, int lda, const float *restrict P,
                        float beta, float *restrict C, int ldc, float *restrict work)
{
    fr_gemm_packed_f32_as(1, M, N, K, A, lda, P, beta, C, ldc, work);
}

void fr_gemm_packed_f32_avx2(int M, int N, int K, const float *restrict A, int lda, const float *restrict P,
                             float beta, float *restrict C, int ldc, float *restrict work)
{
    /* Next-panel prefetch (above); a K past one block takes it in its tail block too (short: K - 1024) */
    if (fr_next_panel_prefetch && K >= FR_PF_NEXT_MIN_K && M <= FR_PF_NEXT_MAX_M && !FR_FOUR(M))
        fr_gemm_packed_next_f32(M, N, K, A, lda, P, beta, C, ldc, work);
    else
        fr_gemm_packed_ahead_f32(M, N, K, A, lda, P, beta, C, ldc, work);
}

void fr_gemm_prepacked_f32_avx2(int M, int N, int K, const float *restrict work, const float *restrict P, long ps,
                                float beta, float *restrict C, int ldc)
{
    fr_gemm_kblock_f32_as(0, M, N, K, work, K, P, ps, beta, C, ldc);
}
#undef FR_M6
#undef FR_FOUR

/* ---------------------------------------------------------------------------------------------------
 * B == 1: y := x @ R + beta*y with R packed once per call in 64-column K-major panels.
 *
 * Why: the one-row product streams all of R every step and is bound by the cache it streams from.
 * fr_vecmat reads R row-major, four rows per pass over y, so each pass has four read streams plus y's
 * load and store; here each panel (K x 64, contiguous) is one sequential stream and its 64 outputs stay
 * in eight ymm accumulators for the whole K loop (no y traffic).  C harness, one core, best of 3 (us):
 * K x N = 512 x 2048 (4 MiB, from L3) 56-64 -> 43-49, 512 x 1024 24-25 -> 22-23, 128 x 512 (L2)
 * 2.3-2.6 -> 2.3, 64 x 256 0.57 -> 0.57.  (bench/NOTES.md 25; a register-blocked walk down the rows of
 * the unpacked R was slower, NOTES 22: the stride, not the blocking, was what hurt.)
 * The panels' columns may come from several blocks of R's columns (the hidden split's slice: the same
 * units of each gate block), packed side by side; the last panel is zero-padded.
 * ------------------------------------------------------------------------------------------------ */
#define FR_NV 64

void fr_pack_vec_panels_f32_avx2(const float *restrict R, int K, int ldr, int nblk, int blk_stride, int blk_w,
                                 float *restrict P)
{
    /* Panel by panel, so the writes are one sequential stream (row by row, every panel took a write
     * stream of its own: 32 at once for a 512 x 2048 R), with each panel's runs of columns from one
     * source block worked out once, not per row, and a whole 64-float run as eight ymm moves, not a
     * memcpy call: perf, lstm t50-b1-h512 on 2 threads (the hidden split packs its slices per call),
     * memmove 11.8% + this 0.5% -> this 5.1% (bench/NOTES.md 35). */
    int N = nblk * blk_w, np = (N + FR_NV - 1) / FR_NV, p, k, r, j;
    int doff[FR_NV], soff[FR_NV], len[FR_NV];
    for (p = 0; p < np; p++) {
        const int c0 = p * FR_NV, end = N - c0 < FR_NV ? N : c0 + FR_NV;
        int c = c0, nr = 0;
        float *dst = P + (long)p * K * FR_NV;
        while (c < end) {   /* runs of columns within one block */
            const int b = c / blk_w, stop = (b + 1) * blk_w < end ? (b + 1) * blk_w : end;
            doff[nr] = c - c0;
            soff[nr] = b * blk_stride + (c - b * blk_w);
            len[nr++] = stop - c;
            c = stop;
        }
        if (nr == 1 && len[0] == FR_NV) {
            const float *src = R + soff[0];
            for (k = 0; k < K; k++, dst += FR_NV, src += ldr)
                for (j = 0; j < FR_NV; j += 8) _mm256_storeu_ps(dst + j, _mm256_loadu_ps(src + j));
            continue;
        }
        for (k = 0; k < K; k++, dst += FR_NV) {
            const float *row = R + (long)k * ldr;
            for (r = 0; r < nr; r++) memcpy(dst + doff[r], row + soff[r], (size_t)len[r] * sizeof(float));
            for (j = end - c0; j < FR_NV; j++) dst[j] = 0.0f;
        }
    }
}

/* y[0:w] := x @ r[0:K, 0:w] + beta*y, w <= 64 columns, r's rows ld apart, eight ymm accumulators for the
 * whole K loop.  A full block loads plainly; a tail block (w < 64) uses masked loads, so nothing past
 * column w is read (an unpacked R's last row may end there). */
#define FR_VM_STEP(LOAD)                                                                               \
    for (k = 0; k < K; k++, r += ld) {                                                                 \
        const __m256 xv = _mm256_broadcast_ss(x + k);                                                  \
        a0 = _mm256_fmadd_ps(xv, LOAD(0), a0); a1 = _mm256_fmadd_ps(xv, LOAD(1), a1);                  \
        a2 = _mm256_fmadd_ps(xv, LOAD(2), a2); a3 = _mm256_fmadd_ps(xv, LOAD(3), a3);                  \
        a4 = _mm256_fmadd_ps(xv, LOAD(4), a4); a5 = _mm256_fmadd_ps(xv, LOAD(5), a5);                  \
        a6 = _mm256_fmadd_ps(xv, LOAD(6), a6); a7 = _mm256_fmadd_ps(xv, LOAD(7), a7);                  \
    }
#define FR_VM_FULL(j) _mm256_loadu_ps(r + 8 * (j))
#define FR_VM_MASKED(j) _mm256_maskload_ps(r + 8 * (j), m[j])
static inline __attribute__((always_inline)) void
fr_vecmat_block256(const float *restrict x, const float *restrict r, int K, long ld, int w, float beta,
                   float *restrict y)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m256 a[8];
    __m256i m[8];
    int k, j;
    for (j = 0; j < 8; j++)
        m[j] = _mm256_cmpgt_epi32(_mm256_set1_epi32(w - 8 * j), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    if (w >= FR_NV) {
        FR_VM_STEP(FR_VM_FULL)
    } else {
        FR_VM_STEP(FR_VM_MASKED)
    }
    a[0] = a0; a[1] = a1; a[2] = a2; a[3] = a3; a[4] = a4; a[5] = a5; a[6] = a6; a[7] = a7;
    for (j = 0; j < 8 && 8 * j < w; j++) {
        __m256 v = a[j];
        if (beta != 0.0f) v = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_maskload_ps(y + 8 * j, m[j]), v);
        _mm256_maskstore_ps(y + 8 * j, m[j], v);
    }
}
#undef FR_VM_MASKED
#undef FR_VM_FULL
#undef FR_VM_STEP

void fr_vecmat_panels_f32_avx2(const float *restrict x, const float *restrict P, int K, int N, float beta,
                               float *restrict y, int reverse)
{
    int np = (N + FR_NV - 1) / FR_NV, i, p;
    for (i = 0; i < np; i++) {
        p = reverse ? np - 1 - i : i;
        fr_vecmat_block256(x, P + (long)p * K * FR_NV, K, FR_NV, N - p * FR_NV < FR_NV ? N - p * FR_NV : FR_NV,
                           beta, y + p * FR_NV);
    }
}

/* The one-row product on R as it is (rows ldr apart; the products the plan does not pack): 64 columns
 * of y in registers for all of K (16 rows at a time on a large R), where cell_rows.inc.h's fr_vecmat
 * passes through y in memory every four rows (gemm_avx512.c measures the difference). */
void fr_vecmat_f32_avx2(const float *restrict x, const float *restrict R, int K, int N, int ldr, float beta,
                        float *restrict y)
{
    /* an R beyond 256 KiB: 16 rows at a time across every block, sequential row streams (the same rule
     * as gemm_avx512.c's FR_VM_KB / FR_VM_WHOLE) */
    const int step = (long)K * ldr * (long)sizeof(float) <= (256L << 10) ? K : 16;
    int n0, k0 = 0;
    do {
        const int kb = K - k0 < step ? K - k0 : step;
        for (n0 = 0; n0 < N; n0 += FR_NV)
            fr_vecmat_block256(x + k0, R + (long)k0 * ldr + n0, kb, ldr, N - n0 < FR_NV ? N - n0 : FR_NV,
                               k0 == 0 ? beta : 1.0f, y + n0);
        k0 += kb;
    } while (k0 < K);
}
