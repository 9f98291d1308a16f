/* gates.c - portable gate math (libm activations) and the run-time SIMD choice; see gates.h.
 *
 * The one-row cell updates are generated from cell_rows.inc.h for double and (portable) float; the
 * float32 entry points pick, per call, on a flag set once, this build or gates_avx2.c's; the packed
 * and one-row products may also pick gemm_avx512.c's, the rows fused for the default activations
 * gates_avx512.c's.
 */
#include <math.h>
#include <string.h>
#include "gates.h"

static int fr_use_avx2 = 0;
static int fr_level = 0;
static int fr_level_cap = 2;

int fr_init_simd(void)
{
    int level = 0;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    /* libgcc's checks include the OS's: avx512f only where XCR0 saves the zmm state */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        level = __builtin_cpu_supports("avx512f") ? 2 : 1;
#endif
    fr_level = level < fr_level_cap ? level : fr_level_cap;
    fr_use_avx2 = fr_level >= 1;
    return fr_level;
}

void fr_limit_simd(int max_level)
{
    fr_level_cap = max_level;
    fr_init_simd();
}

void fr_force_scalar(int on) { fr_limit_simd(on ? 0 : 2); }

int fr_simd_level(void) { return fr_level; }

#define FR_ACT_SCALAR(T, SFX, EXP, TANH)                                                               \
    static void fr_act_scalar_##SFX(int kind, T *y, const T *x, int n)                                 \
    {                                                                                                  \
        int j;                                                                                         \
        switch (kind) {                                                                                \
        case FR_TANH:                                                                                  \
            for (j = 0; j < n; j++) y[j] = TANH(x[j]);                                                 \
            break;                                                                                     \
        case FR_SIGMOID:                                                                               \
            for (j = 0; j < n; j++) y[j] = (T)1 / ((T)1 + EXP(-x[j]));                                 \
            break;                                                                                     \
        case FR_HARD_SIGMOID:                                                                          \
            for (j = 0; j < n; j++) {                                                                  \
                T v = x[j] / (T)6 + (T)0.5;                                                            \
                y[j] = v < (T)0 ? (T)0 : (v > (T)1 ? (T)1 : v); /* NaN falls through */              \
            }                                                                                          \
            break;                                                                                     \
        case FR_RELU:                                                                                  \
            for (j = 0; j < n; j++) y[j] = x[j] < (T)0 ? (T)0 : x[j]; /* keeps NaN */                  \
            break;                                                                                     \
        case FR_SOFTSIGN:                                                                              \
            for (j = 0; j < n; j++) y[j] = x[j] / ((T)1 + (x[j] < 0 ? -x[j] : x[j]));                  \
            break;                                                                                     \
        default: /* FR_LINEAR */                                                                       \
            if (y != x)                                                                                \
                for (j = 0; j < n; j++) y[j] = x[j];                                                   \
            break;                                                                                     \
        }                                                                                              \
    }

FR_ACT_SCALAR(float, f32, expf, tanhf)
FR_ACT_SCALAR(double, f64, exp, tanh)
#undef FR_ACT_SCALAR

void fr_act_f32_scalar(int kind, float *y, const float *x, int n) { fr_act_scalar_f32(kind, y, x, n); }
void fr_act_f64(int kind, double *y, const double *x, int n) { fr_act_scalar_f64(kind, y, x, n); }

#define T float
#define SFX f32_scalar
#include "cell_rows.inc.h"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "cell_rows.inc.h"
#undef T
#undef SFX

/* The float32 entry points: one flag test, then the AVX2 or the portable build of the same code. */
#define FR_PICK(name, params, args)                                                                    \
    void name##_f32 params                                                                             \
    {                                                                                                  \
        if (fr_use_avx2)                                                                               \
            name##_f32_avx2 args;                                                                      \
        else                                                                                           \
            name##_f32_scalar args;                                                                    \
    }
FR_PICK(fr_act, (int kind, float *y, const float *x, int n), (kind, y, x, n))
FR_PICK(fr_dact, (int kind, float *dx, const float *y, const float *dy, int n), (kind, dx, y, dy, n))
FR_PICK(fr_gru_zr_row, (float *g, const float *rec, const float *bx, const float *br, int H, int ract),
        (g, rec, bx, br, H, ract))
FR_PICK(fr_gru_reset_after_row, (float *g, const float *rec, const float *bx, const float *br, float *rh, int H),
        (g, rec, bx, br, rh, H))
FR_PICK(fr_gru_h_row, (float *g, const float *b_h, const float *h_prev, float *h, int H, int act),
        (g, b_h, h_prev, h, H, act))
FR_PICK(fr_gru_bwd_zh_row, (const float *g, const float *h_prev, const float *dh, float *dg, float *dh_direct, int H, int act, int ract),
        (g, h_prev, dh, dg, dh_direct, H, act, ract))
FR_PICK(fr_gru_bwd_r_row, (const float *g, const float *a, const float *b, float *dg, int H, int ract),
        (g, a, b, dg, H, ract))
FR_PICK(fr_matvec, (const float *R, const float *x, int M, int N, int ldr, float beta, float *y),
        (R, x, M, N, ldr, beta, y))
FR_PICK(fr_colsum_add, (float *acc, const float *x, int rows, int n, long ldx), (acc, x, rows, n, ldx))
FR_PICK(fr_bwd_dh_row, (float *dh_t, const float *dout, float *dacc, float *dh, int n), (dh_t, dout, dacc, dh, n))
#undef FR_PICK

/* The rows fused for the default activations: on AVX-512F, gates_avx512.c's 16-lane build (`fused`)
 * when the activations are the defaults (`is_default`), else as FR_PICK. */
#define FR_PICK_FUSED(name, fused, params, args, fused_args, is_default)                               \
    void name##_f32 params                                                                             \
    {                                                                                                  \
        if (fr_level >= 2 && (is_default))                                                             \
            fused fused_args;                                                                          \
        else if (fr_use_avx2)                                                                          \
            name##_f32_avx2 args;                                                                      \
        else                                                                                           \
            name##_f32_scalar args;                                                                    \
    }
FR_PICK_FUSED(fr_lstm_fwd_row, fr_lstm_fwd_row_default_f32_avx512,
              (float *g, const float *bias, const float *c_prev, float *c, float *h, int H, int act, int ract),
              (g, bias, c_prev, c, h, H, act, ract), (g, bias, c_prev, c, h, H),
              act == FR_TANH && ract == FR_SIGMOID)
FR_PICK_FUSED(fr_lstm_bwd_row, fr_lstm_bwd_row_default_f32_avx512,
              (const float *g, const float *c_prev, const float *c, const float *dh, float *dc, float *dg,
               float *tmp, int H, int act, int ract),
              (g, c_prev, c, dh, dc, dg, tmp, H, act, ract), (g, c_prev, c, dh, dc, dg, H),
              act == FR_TANH && ract == FR_SIGMOID)
FR_PICK_FUSED(fr_gru_reset_after_fwd_row, fr_gru_reset_after_fwd_row_default_f32_avx512,
              (float *g, const float *rec, const float *bx, const float *br, float *rh, const float *h_prev,
               float *h, int H, int act, int ract),
              (g, rec, bx, br, rh, h_prev, h, H, act, ract), (g, rec, bx, br, rh, h_prev, h, H),
              act == FR_TANH && ract == FR_SIGMOID)
FR_PICK_FUSED(fr_gru_reset_after_bwd_row, fr_gru_reset_after_bwd_row_default_f32_avx512,
              (const float *g, const float *h_prev, const float *rh, const float *dh, float *dg, float *dh_direct,
               float *drec, int H, int act, int ract),
              (g, h_prev, rh, dh, dg, dh_direct, drec, H, act, ract), (g, h_prev, rh, dh, dg, dh_direct, drec, H),
              act == FR_TANH && ract == FR_SIGMOID)
FR_PICK_FUSED(fr_simple_fwd_row, fr_simple_fwd_row_tanh_f32_avx512,
              (float *g, const float *bias, float *h, int H, int act), (g, bias, h, H, act),
              (g, bias, h, H), act == FR_TANH)
#undef FR_PICK_FUSED

/* The one-row product on R as it is: on AVX-512F, gemm_avx512.c's register-blocked build. */
void fr_vecmat_f32(const float *x, const float *R, int K, int N, int ldr, float beta, float *y)
{
    if (fr_level >= 2)
        fr_vecmat_f32_avx512(x, R, K, N, ldr, beta, y);
    else if (fr_use_avx2)
        fr_vecmat_f32_avx2(x, R, K, N, ldr, beta, y);
    else
        fr_vecmat_f32_scalar(x, R, K, N, ldr, beta, y);
}

/* The packed products exist only as SIMD builds (the plan keeps BLAS at level 0). */
void fr_gemm_packed_f32(int M, int N, int K, const float *A, int lda, const float *P, float beta, float *C,
                        int ldc, float *work)
{
    if (fr_level >= 2)
        fr_gemm_packed_f32_avx512(M, N, K, A, lda, P, beta, C, ldc, work);
    else
        fr_gemm_packed_f32_avx2(M, N, K, A, lda, P, beta, C, ldc, work);
}

void fr_vecmat_panels_f32(const float *x, const float *P, int K, int N, float beta, float *y, int reverse)
{
    if (fr_level >= 2)
        fr_vecmat_panels_f32_avx512(x, P, K, N, beta, y, reverse);
    else
        fr_vecmat_panels_f32_avx2(x, P, K, N, beta, y, reverse);
}

/* dst (N x M, rows ldd apart) := src (M x N, rows lds apart)^T.  The portable build walks 32 x 32 tiles
 * (a tile of src and of dst stay in L1 while it passes; a row-by-row strided copy touches a new cache line
 * of dst at every element); float32 takes gates_avx2.c's 8 x 8 register transposes on AVX2 and
 * gemm_avx512.c's 16 x 16 on AVX-512F. */
#define FR_TRANSPOSE_SCALAR(T, SFX)                                                                    \
    static void fr_transpose_scalar_##SFX(int M, int N, const T *src, long lds, T *dst, long ldd)      \
    {                                                                                                  \
        int i0, j0, i, j;                                                                              \
        for (i0 = 0; i0 < M; i0 += 32)                                                                 \
            for (j0 = 0; j0 < N; j0 += 32) {                                                           \
                const int i1 = M - i0 < 32 ? M : i0 + 32, j1 = N - j0 < 32 ? N : j0 + 32;              \
                for (i = i0; i < i1; i++)                                                              \
                    for (j = j0; j < j1; j++) dst[(long)j * ldd + i] = src[(long)i * lds + j];         \
            }                                                                                          \
    }
FR_TRANSPOSE_SCALAR(float, f32)
FR_TRANSPOSE_SCALAR(double, f64)
#undef FR_TRANSPOSE_SCALAR

void fr_transpose_f32(int M, int N, const float *src, long lds, float *dst, long ldd)
{
    if (fr_level >= 2)
        fr_transpose_f32_avx512(M, N, src, lds, dst, ldd);
    else if (fr_use_avx2)
        fr_transpose_f32_avx2(M, N, src, lds, dst, ldd);
    else
        fr_transpose_scalar_f32(M, N, src, lds, dst, ldd);
}

void fr_transpose_f64(int M, int N, const double *src, long lds, double *dst, long ldd)
{
    fr_transpose_scalar_f64(M, N, src, lds, dst, ldd);
}
