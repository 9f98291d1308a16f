/* gates.c - portable gate math (libm activations) and the run-time SIMD choice; see gates.h.
 *
 * The one-row cell updates are generated from cell_rows.inc.h for float and double.  Only the float
 * activation has a faster twin (gates_avx2.c); the switch happens here, per call, on a flag set once.
 */
#include <math.h>
#include "gates.h"

static int fr_use_avx2 = 0;
static int fr_scalar_forced = 0;

int fr_init_simd(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    fr_use_avx2 = !fr_scalar_forced && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    fr_use_avx2 = 0;
#endif
    return fr_use_avx2;
}

void fr_force_scalar(int on)
{
    fr_scalar_forced = on;
    fr_init_simd();
}

int fr_simd_level(void) { return fr_use_avx2; }

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
                y[j] = v < (T)0 ? (T)0 : (v > (T)1 ? (T)1 : v);                                       \
            }                                                                                          \
            break;                                                                                     \
        case FR_RELU:                                                                                  \
            for (j = 0; j < n; j++) y[j] = x[j] > (T)0 ? x[j] : (T)0;                                  \
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

void fr_act_f32(int kind, float *y, const float *x, int n)
{
    if (fr_use_avx2)
        fr_act_f32_avx2(kind, y, x, n);
    else
        fr_act_scalar_f32(kind, y, x, n);
}

void fr_act_f64(int kind, double *y, const double *x, int n) { fr_act_scalar_f64(kind, y, x, n); }

#define T float
#define SFX f32
#include "cell_rows.inc.h"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "cell_rows.inc.h"
#undef T
#undef SFX
