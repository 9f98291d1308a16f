/* step_loop.c - one thread's SimpleRNN inference step loop on one core, taken apart: where a step of
 * B rows x H units goes (bench/NOTES.md 51).  xp is batch-major (row (b, t) at (b*T + t) * H), as the
 * engine's batch split leaves it, so a step's rows are T*H floats apart and come from L3 or memory.
 *
 *   sgemm, copy      OpenBLAS sgemm accumulates into the step's xp rows, the tanh row writes a state
 *                    slot, memcpy to the output row (the engine before NOTES 51 at > 32 rows a thread)
 *   packed, copy     the same on the packed-R microkernel (fr_gemm_packed_f32_avx2)
 *   packed, h in out the tanh row writes the output row, which is the next step's A (the engine since
 *                    NOTES 51: _engine.pyx, "Output rows as state")
 *   packed, product  the product alone (no rows): what the rows add is the difference
 *   packed, hot C    the product alone into one hot (B, H) buffer (beta 0): what xp's cold rows cost
 *
 * Medians of 21 rounds, the variants alternating within each round, so a phase of the machine falls on
 * all of them; GFLOP/s counts the product's 2*B*H*H.  Build and run (AVX2 CPU), from the repository
 * root, with the venv's scipy-openblas32 (OB=.venv/lib/python3.11/site-packages/scipy_openblas32):
 *   cc -O3 -mavx2 -mfma -fno-math-errno -Ifastrnn/_kernels -I$OB/include bench/step_loop.c \
 *      -L$OB/lib -lscipy_openblas -Wl,-rpath,$OB/lib -lm -o /tmp/step_loop
 *   taskset -c 1 /tmp/step_loop B T H      e.g. 64 100 256 (simple_rnn t100-b128-h256, 2 threads)
 */
#include "gates_avx2.c"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "harness.h"

void scipy_openblas_set_num_threads(int);

enum { SGEMM_COPY, PACKED_COPY, PACKED_H_IN_OUT, PRODUCT, PRODUCT_HOT, VARIANTS, ROUNDS = 21 };
static const char *const names[VARIANTS] = {"sgemm, copy", "packed, copy", "packed, h in out",
                                            "packed, product", "packed, hot C"};

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* one call's T steps of variant v; returns seconds a step */
static double run(int v, int B, int T, int H, float *xp, const float *R, const float *P, float *slots,
                  float *out, float *hot, float *work, const float *h0)
{
    const long ld = (long)T * H;
    double t0 = now();
    for (int t = 0; t < T; t++) {
        float *g = xp + (long)t * H;
        const float *hp = t == 0 ? h0 : v == PACKED_H_IN_OUT ? out + (long)(t - 1) * H : slots + (t & 1) * B * H;
        const int lda = t == 0 || v != PACKED_H_IN_OUT ? H : (int)ld;
        float *hn = slots + ((t + 1) & 1) * B * H;
        if (v == SGEMM_COPY)
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, H, H, 1.f, hp, lda, R, H, 1.f, g, ld);
        else if (v == PRODUCT_HOT)
            fr_gemm_packed_f32_avx2(B, H, H, hp, lda, P, 0.f, hot, H, work);
        else
            fr_gemm_packed_f32_avx2(B, H, H, hp, lda, P, 1.f, g, ld, work);
        if (v >= PRODUCT)
            continue;
        for (int b = 0; b < B; b++) {
            float *o = out + (long)b * ld + (long)t * H;
            if (v == PACKED_H_IN_OUT) {
                fr_simple_fwd_row_tanh_f32_avx2(g + b * ld, NULL, o, H);
            } else {
                fr_simple_fwd_row_tanh_f32_avx2(g + b * ld, NULL, hn + (long)b * H, H);
                memcpy(o, hn + (long)b * H, 4L * H);
            }
        }
    }
    return (now() - t0) / T;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s B T H\n", argv[0]);
        return 2;
    }
    const int B = atoi(argv[1]), T = atoi(argv[2]), H = atoi(argv[3]);
    scipy_openblas_set_num_threads(1);
    float *xp = floats((long)B * T * H, 1.f), *R = floats((long)H * H, 0.1f), *out = floats((long)B * T * H, 0.f);
    float *slots = floats(2L * B * H, 0.f), *hot = floats((long)B * H, 0.f), *h0 = floats((long)B * H, 0.f);
    float *P = floats((long)H * (H + FR_NR), 0.f), *work = floats(FR_PACKED_A_SIZE(B, H) + 64, 0.f);
    fr_pack_panels_f32_avx2(R, H, H, H, P);
    double times[VARIANTS][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int v = 0; v < VARIANTS; v++)
            times[v][r] = run(v, B, T, H, xp, R, P, slots, out, hot, work, h0);
    printf("B=%d T=%d H=%d, one core, us a step (median of %d rounds)\n", B, T, H, ROUNDS);
    for (int v = 0; v < VARIANTS; v++) {
        qsort(times[v], ROUNDS, sizeof(double), by_value);
        double m = times[v][ROUNDS / 2];
        printf("  %-18s %8.1f us  %5.1f GFLOP/s  (min %.1f)\n", names[v], 1e6 * m, 2.0 * B * H * H / m / 1e9,
               1e6 * times[v][0]);
    }
    return 0;
}
