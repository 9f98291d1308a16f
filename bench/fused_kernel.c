/* fused_kernel.c - the shipped fused-projection kernel (fastrnn/_kernels/vecmat_proj_avx512.c) timed
 * on one core, per step, against the product alone and the two in sequence (bench/NOTES.md 44).
 *
 *   plain     fr_vecmat_panels_f32_avx512 over R's vector panels (the product alone);
 *   sequence  the product every step, and every 8th step the 8-row projection of the next chunk with
 *             fr_proj_panels_f32_avx512 (the same FMAs as the fused kernel, not overlapped);
 *   fused     fr_vecmat_proj_panels_f32_avx512, piece s % 8 each step (what the engine runs).
 * "hidden" = (sequence - fused) / (sequence - plain): the share of the projection's time the product's
 * idle FMA slots absorb.
 *
 * Build and run (AVX-512 CPU), from the repository root:
 *   cc -O3 -mavx512f -mavx2 -mfma -Ifastrnn/_kernels bench/fused_kernel.c fastrnn/_kernels/gemm_avx512.c \
 *      fastrnn/_kernels/vecmat_proj_avx512.c fastrnn/_kernels/gates_avx2.c -lm -o /tmp/fused_kernel
 *   /tmp/fused_kernel K N NI      e.g. 128 512 128 (lstm H = 128 on one thread: K = H, N = 4H, NI = I)
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "harness.h"

#include "gates.h"

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s K N NI\n", argv[0]);
        return 2;
    }
    const int K = atoi(argv[1]), N = atoi(argv[2]), ni = atoi(argv[3]), steps = 8 * 512;
    if (K < 1 || N < 1 || ni < 1) {
        fprintf(stderr, "expected K, N, NI >= 1\n");
        return 2;
    }
    const long ldc = (N + 63) / 64 * 64;
    float *R = malloc(sizeof(float) * K * N), *W = malloc(sizeof(float) * ni * N);
    float *P = aligned_alloc(64, sizeof(float) * FR_VEC_PACKED_SIZE(K, N));
    float *Wp = aligned_alloc(64, sizeof(float) * FR_VEC_PACKED_SIZE(ni, N));
    float *x = aligned_alloc(64, sizeof(float) * (K + 16)), *y = aligned_alloc(64, sizeof(float) * ldc);
    float *A = aligned_alloc(64, sizeof(float) * ni * FR_PROJ_ROWS);
    float *C = aligned_alloc(64, sizeof(float) * 2 * FR_PROJ_ROWS * ldc);
    for (long i = 0; i < (long)K * N; i++) R[i] = (i % 7) * 0.01f;
    for (long i = 0; i < (long)ni * N; i++) W[i] = (i % 5) * 0.01f;
    for (int i = 0; i < K; i++) x[i] = 1.0f / (i + 1);
    for (int i = 0; i < ni * FR_PROJ_ROWS; i++) A[i] = 0.001f * i;
    fr_pack_vec_panels_f32_avx2(R, K, N, 1, 0, N, P);
    fr_pack_vec_panels_f32_avx2(W, ni, N, 1, 0, N, Wp);
    const char *names[] = {"plain", "sequence", "fused"};
    double best[3] = {1e9, 1e9, 1e9};
    for (int trial = 0; trial < 25; trial++) {   /* the modes alternate, so a noisy phase hits all three */
        for (int mode = 0; mode < 3; mode++) {
            const double t0 = now();
            for (int s = 0; s < steps; s++) {
                float *next = C + ((s / FR_PROJ_ROWS + 1) & 1) * FR_PROJ_ROWS * ldc;
                if (mode == 2) {
                    fr_vecmat_proj_panels_f32_avx512(x, P, K, N, 1.0f, y, s & 1, A, Wp, ni, s % FR_PROJ_ROWS, next,
                                                     ldc);
                } else {
                    fr_vecmat_panels_f32_avx512(x, P, K, N, 1.0f, y, s & 1);
                    if (mode == 1 && s % FR_PROJ_ROWS == 0) fr_proj_panels_f32_avx512(A, Wp, ni, N, next, ldc);
                }
                x[s % K] = y[s % N] * 1e-3f;   /* the next step depends on this one, as in a recurrence */
            }
            const double t = (now() - t0) / steps;
            if (t < best[mode]) best[mode] = t;
        }
    }
    printf("K=%d N=%d NI=%d (R %ld KiB, W %ld KiB): us a step  plain %.3f  sequence %.3f  fused %.3f  "
           "hidden %.0f%%\n",
           K, N, ni, (long)FR_VEC_PACKED_SIZE(K, N) * 4 / 1024, (long)FR_VEC_PACKED_SIZE(ni, N) * 4 / 1024,
           best[0] * 1e6, best[1] * 1e6, best[2] * 1e6, 100.0 * (best[1] - best[2]) / (best[1] - best[0]));
    printf("(%s checksum %g)\n", names[2], (double)(y[0] + C[0]));
    return 0;
}
