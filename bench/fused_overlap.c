/* fused_overlap.c - can the input projection ride along with the one-row recurrent product?
 *
 * Why (bench/NOTES.md 43).  At B == 1 a step's product h @ R streams R from L2 (L3 at H = 512) with one
 * zmm FMA per 64 bytes loaded: Zen 4's L2 delivers ~32 B a cycle and its FMA pipes take one zmm FMA a
 * cycle, so half the FMA slots of the step are idle.  The input projection x @ W, hoisted before the
 * loop today, is the opposite: compute-bound on L1-resident tiles.  This harness times, per "step"
 * (np vector panels of K rows x 64 columns, the layout of fr_vecmat_panels_f32), on one core:
 *   vecmat only       the recurrent product alone;
 *   micro only        the same number of projection multiply-adds as an 8-row x 32-column tile per
 *                     panel (A k-major, W panels cycling through 64 of them, in L2);
 *   vecmat then micro one after the other per panel (what the engine does, summed over a call);
 *   fused             the two interleaved in one loop: each k pair of the vecmat also runs one k of
 *                     the tile (8 + 16 accumulators, 29 of 32 zmm live).
 * "fused" below "vecmat then micro" is what an engine that computes the next chunk of time steps'
 * projection inside the recurrence would save.
 *
 * Build and run (AVX-512 CPU):
 *   cc -O3 -mavx512f -mfma bench/fused_overlap.c -o /tmp/fused_overlap
 *   /tmp/fused_overlap K NP MK      e.g. 128 8 32 (lstm H = 128, I = 128: 65536 MACs of each a step)
 * K: R's rows (H); NP: 64-column panels (G*H / 64); MK: tile k-steps a panel (MK*8*32*NP MACs a step).
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "harness.h"

#define NV 64 /* a vector panel's columns */
#define MR 8  /* the tile's rows */

/* IN x (K,), r (K x 64 panel, rows 64 apart); OUT y (64,) := x @ r.  Two k a pass, eight accumulators
 * (fr_vecmat_acc's loop) */
#define VM_PAIR(k)                                                                                     \
    do {                                                                                               \
        const __m512 x0 = _mm512_set1_ps(x[k]), x1 = _mm512_set1_ps(x[(k) + 1]);                       \
        a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r), a0);                                              \
        a1 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r + 16), a1);                                         \
        a2 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r + 32), a2);                                         \
        a3 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r + 48), a3);                                         \
        e0 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r + 64), e0);                                         \
        e1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r + 80), e1);                                         \
        e2 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r + 96), e2);                                         \
        e3 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r + 112), e3);                                        \
    } while (0)
#define VM_STORE()                                                                                     \
    do {                                                                                               \
        _mm512_storeu_ps(y, _mm512_add_ps(a0, e0));                                                    \
        _mm512_storeu_ps(y + 16, _mm512_add_ps(a1, e1));                                               \
        _mm512_storeu_ps(y + 32, _mm512_add_ps(a2, e2));                                               \
        _mm512_storeu_ps(y + 48, _mm512_add_ps(a3, e3));                                               \
    } while (0)
/* one k of the tile: c (8 x 32) += A[k, 0:8]^T (k-major) x B[k, 0:32] */
#define TILE_K(k)                                                                                      \
    do {                                                                                               \
        const __m512 b0 = _mm512_loadu_ps(B + (k) * 32), b1 = _mm512_loadu_ps(B + (k) * 32 + 16);      \
        for (int i = 0; i < MR; i++) {                                                                 \
            const __m512 a = _mm512_set1_ps(A[(k) * MR + i]);                                          \
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);                                                 \
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);                                                 \
        }                                                                                              \
    } while (0)

static inline void vecmat(const float *x, const float *r, int K, float *y)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, e0 = a0, e1 = a0, e2 = a0, e3 = a0;
    for (int k = 0; k + 1 < K; k += 2, r += 2 * NV) VM_PAIR(k);
    VM_STORE();
}

/* IN A (MK x 8, k-major), B (MK x 32); IN/OUT C (8 x 32) += A^T B */
static inline void tile(const float *A, const float *B, int MK, float *C)
{
    __m512 c[MR][2];
    for (int i = 0; i < MR; i++) c[i][0] = _mm512_loadu_ps(C + i * 32), c[i][1] = _mm512_loadu_ps(C + i * 32 + 16);
    for (int k = 0; k < MK; k++) TILE_K(k);
    for (int i = 0; i < MR; i++) _mm512_storeu_ps(C + i * 32, c[i][0]), _mm512_storeu_ps(C + i * 32 + 16, c[i][1]);
}

/* vecmat(x, r, K, y) and tile(A, B, MK, C) in one loop: k pair j of the vecmat runs tile k j */
static inline void fused(const float *x, const float *r, int K, float *y, const float *A, const float *B, int MK,
                         float *C)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, e0 = a0, e1 = a0, e2 = a0, e3 = a0;
    __m512 c[MR][2];
    int k, mk = 0;
    for (int i = 0; i < MR; i++) c[i][0] = _mm512_loadu_ps(C + i * 32), c[i][1] = _mm512_loadu_ps(C + i * 32 + 16);
    for (k = 0; k + 1 < K; k += 2, r += 2 * NV) {
        VM_PAIR(k);
        if (mk < MK) {
            TILE_K(mk);
            mk++;
        }
    }
    for (; mk < MK; mk++) TILE_K(mk);
    VM_STORE();
    for (int i = 0; i < MR; i++) _mm512_storeu_ps(C + i * 32, c[i][0]), _mm512_storeu_ps(C + i * 32 + 16, c[i][1]);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s K NP MK\n", argv[0]);
        return 2;
    }
    const int K = atoi(argv[1]), np = atoi(argv[2]), MK = atoi(argv[3]), nwp = 64, reps = 20000;
    if (K < 2 || K % 2 || np < 1 || MK < 1) {
        fprintf(stderr, "expected an even K >= 2, NP >= 1, MK >= 1\n");
        return 2;
    }
    float *P = aligned_alloc(64, (size_t)K * NV * np * 4), *x = aligned_alloc(64, (size_t)K * 4);
    float *y = aligned_alloc(64, (size_t)np * NV * 4), *W = aligned_alloc(64, (size_t)MK * 32 * nwp * 4);
    float *A = aligned_alloc(64, (size_t)MK * MR * 4), *C = aligned_alloc(64, (size_t)MR * 32 * nwp * 4);
    for (long i = 0; i < (long)K * NV * np; i++) P[i] = (i % 7) * 0.01f;
    for (int i = 0; i < K; i++) x[i] = 1.0f / (i + 1);
    for (long i = 0; i < (long)MK * 32 * nwp; i++) W[i] = (i % 5) * 0.01f;
    for (int i = 0; i < MK * MR; i++) A[i] = 0.001f * i;
    for (int i = 0; i < MR * 32 * nwp; i++) C[i] = 0;
    const char *names[] = {"vecmat only", "micro only", "vecmat then micro", "fused"};
    for (int mode = 0; mode < 4; mode++) {
        double best = 1e9;
        for (int trial = 0; trial < 5; trial++) {
            double t0 = now();
            int wq = 0;
            for (int s = 0; s < reps; s++)
                for (int p = 0; p < np; p++, wq++) {
                    const float *pan = P + (long)p * K * NV, *Bw = W + (long)(wq % nwp) * MK * 32;
                    float *Cw = C + (wq % nwp) * MR * 32;
                    if (mode == 0 || mode == 2) vecmat(x, pan, K, y + p * NV);
                    if (mode == 1 || mode == 2) tile(A, Bw, MK, Cw);
                    if (mode == 3) fused(x, pan, K, y + p * NV, A, Bw, MK, Cw);
                }
            const double t = (now() - t0) / reps;
            if (t < best) best = t;
        }
        printf("K=%d NP=%d (R %d KiB, %d projection MACs a step)  %-18s %.3f us a step\n", K, np,
               K * NV * np * 4 / 1024, MK * MR * 32 * np, names[mode], best * 1e6);
    }
    printf("(checksum %g)\n", (double)(y[0] + C[0]));
    return 0;
}
