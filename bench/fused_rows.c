/* fused_rows.c - the AVX2 fused gate rows (fastrnn/_kernels/fused_rows.inc.h) timed on one core, ns a
 * unit, over `rows` rows of H units a step as the batch loop runs them (bench/NOTES.md 50):
 *
 *   gru_bwd   fr_gru_reset_after_bwd_row: the fused row against the generic rows it replaces (zh, r,
 *             drec; gates_avx2.c's build, so the same bits: the harness checks and prints the max
 *             difference)
 *   lstm_bwd  fr_lstm_bwd_row_default_f32_avx2
 *   lstm_fwd  fr_lstm_fwd_row_default_f32_avx2
 *   gru_fwd   fr_gru_reset_after_fwd_row_default_f32_avx2
 *
 * Each figure is the minimum over 31 rounds, the variants alternating within each round, so a phase of
 * the machine (NOTES 49 (a)) falls on all of them.  SHIFT moves array k's base by k*SHIFT floats: 0
 * leaves them as large mallocs come (alike modulo 4 KiB, as the scratch pool's buffers are), 80 spreads
 * them over L1 sets; at H = 512 and 1024 the difference is the L1-set cliff of NOTES 50 (f), (g).
 *
 * It includes gates_avx2.c itself for the generic GRU row, which is static there.  Build and run (AVX2
 * CPU), from the repository root:
 *   cc -O3 -mavx2 -mfma -fno-math-errno -Ifastrnn/_kernels bench/fused_rows.c -lm -o /tmp/fused_rows
 *   taskset -c 1 /tmp/fused_rows H ROWS REPS [SHIFT]     e.g. 64 32 5000 (B = 64 on two threads)
 */
#include "gates_avx2.c"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "harness.h"

enum { VARIANTS = 5, ROUNDS = 31 };
static const char *const names[VARIANTS] = {"gru_bwd generic", "gru_bwd fused", "lstm_bwd", "lstm_fwd",
                                            "gru_fwd"};

static int shift;

/* n floats, uniform in [lo, lo + 1), array number k (its base moved by k*shift floats) */
static float *array(long n, int k, float lo)
{
    float *p = (float *)malloc((n + 4096) * sizeof(float)) + (long)k * shift;
    long i;
    for (i = 0; i < n; i++) p[i] = lo + (float)rand() / RAND_MAX;
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s H ROWS REPS [SHIFT]\n", argv[0]);
        return 2;
    }
    const int H = atoi(argv[1]), rows = atoi(argv[2]);
    const long reps = atol(argv[3]), n = (long)rows * H;
    shift = argc > 4 ? atoi(argv[4]) : 0;
    srand(1);
    /* GRU backward: gates in [0, 1) (post-activation), the rest centred */
    float *g3 = array(3 * n, 0, 0.0f), *hp = array(n, 1, -0.5f), *rh = array(n, 2, -0.5f);
    float *dh = array(n, 3, -0.5f), *dg3 = array(3 * n, 4, 0.0f), *dhd = array(n, 5, 0.0f);
    float *drec = array(3 * n, 6, 0.0f), *dg3b = array(3 * n, 4, 0.0f), *dhdb = array(n, 5, 0.0f);
    float *drecb = array(3 * n, 6, 0.0f);
    /* LSTM: the backward reads g4 and writes dg4; the forward rewrites gf4 in place every call (the
     * activations of activations stay in range: the time per unit does not depend on the values) */
    float *g4 = array(4 * n, 7, 0.0f), *cp = array(n, 8, -0.5f), *c = array(n, 9, -0.5f);
    float *dc = array(n, 10, -0.5f), *dg4 = array(4 * n, 11, 0.0f), *gf4 = array(4 * n, 12, -0.5f);
    float *bias = array(4 * H, 13, -0.5f), *cf = array(n, 14, 0.0f), *hf = array(n, 15, 0.0f);
    float *gf3 = array(3 * n, 16, -0.5f), *rec = array(3 * n, 17, -0.5f), *rhf = array(n, 18, 0.0f);
    double best[VARIANTS], maxdiff = 0;
    long i;
    int v, r, round;
    for (v = 0; v < VARIANTS; v++) best[v] = 1e30;

    for (r = 0; r < rows; r++) {
        const long o = (long)r * H, o3 = 3 * o;
        fr_gru_reset_after_bwd_row_generic_f32_avx2(g3 + o3, hp + o, rh + o, dh + o, dg3 + o3, dhd + o, drec + o3,
                                                    H, FR_TANH, FR_SIGMOID);
        fr_gru_reset_after_bwd_row_default_f32_avx2(g3 + o3, hp + o, rh + o, dh + o, dg3b + o3, dhdb + o,
                                                    drecb + o3, H);
    }
    for (i = 0; i < 3 * n; i++) {
        maxdiff = fmax(maxdiff, fabs(dg3[i] - dg3b[i]));
        maxdiff = fmax(maxdiff, fabs(drec[i] - drecb[i]));
    }
    for (i = 0; i < n; i++) maxdiff = fmax(maxdiff, fabs(dhd[i] - dhdb[i]));

    for (round = 0; round < ROUNDS; round++)
        for (v = 0; v < VARIANTS; v++) {
            const double t0 = now();
            long k;
            for (k = 0; k < reps; k++)
                for (r = 0; r < rows; r++) {
                    const long o = (long)r * H, o3 = 3 * o, o4 = 4 * o;
                    switch (v) {
                    case 0:
                        fr_gru_reset_after_bwd_row_generic_f32_avx2(g3 + o3, hp + o, rh + o, dh + o, dg3 + o3,
                                                                    dhd + o, drec + o3, H, FR_TANH, FR_SIGMOID);
                        break;
                    case 1:
                        fr_gru_reset_after_bwd_row_default_f32_avx2(g3 + o3, hp + o, rh + o, dh + o, dg3b + o3,
                                                                    dhdb + o, drecb + o3, H);
                        break;
                    case 2:
                        fr_lstm_bwd_row_default_f32_avx2(g4 + o4, cp + o, c + o, dh + o, dc + o, dg4 + o4, H);
                        break;
                    case 3:
                        fr_lstm_fwd_row_default_f32_avx2(gf4 + o4, bias, cp + o, cf + o, hf + o, H);
                        break;
                    default:
                        fr_gru_reset_after_fwd_row_default_f32_avx2(gf3 + o3, rec + o3, bias, bias, rhf + o,
                                                                    hp + o, hf + o, H);
                    }
                }
            best[v] = fmin(best[v], (now() - t0) / reps / n * 1e9);
        }

    printf("H = %d, %d rows, shift %d floats: ns a unit (min of %d rounds)\n", H, rows, shift, ROUNDS);
    for (v = 0; v < VARIANTS; v++) printf("  %-16s %.3f\n", names[v], best[v]);
    printf("  gru_bwd fused vs generic: max difference %.3g\n", maxdiff);
    return 0;
}
