/* vecmat_proj_avx512.c - the one-row recurrent product with the next time steps' input projection
 * riding along in the same loop (B == 1, float32, AVX-512F; level 2 only).
 *
 * Why (bench/NOTES.md 43e, 44).  At B == 1 a step's product h @ R streams R from L2 (or L3) with one
 * zmm FMA per 64 bytes loaded.  Zen 4's L2 delivers ~32 B a cycle, its FMA pipes one zmm FMA a cycle,
 * so half the FMA slots of every step are idle, while the input projection x @ W, hoisted before the
 * loop, is compute-bound on L1-resident tiles: 33-40% of a 1-thread lstm T=100 B=1 H=128 call.  Done
 * in one loop with the product, the projection's FMAs fill those slots; alternating the two a panel
 * at a time saved only 0-9% (bench/fused_overlap.c).  With I = H the fused loop has as many FMAs as
 * R's stream has cycles, so both units run full and about half the projection's time is hidden: this
 * kernel on one Zen 4 core (bench/fused_kernel.c), us a step, product alone / product then projection
 * / fused: K = 128, N = 512 (lstm H=128, one thread) 2.3 / 3.6 / 2.9-3.1; K = 128, N = 256 (its slice
 * on two) 1.2 / 1.9 / 1.45-1.5; K = 64, N = 256 0.5 / 0.9 / 0.71-0.77.  From L3 (R and W beyond L2) the
 * longer loop keeps fewer of R's loads in flight and the gain goes; the plan fuses only where they fit
 * (fastrnn/_dispatch.py, FUSED_MAX_SLICE_BYTES).
 *
 * Layout.  R (K x N) and W (ni x N) are in the 64-column vector panels of fr_pack_vec_panels_f32_avx2
 * (zero past column N).  Time runs in chunks of FR_PROJ_ROWS = 8 steps; a chunk's projection is, per
 * panel p, the 8 x 64 tile C[i, 64p + c] = sum_k A[8k + i] W_p[k, c], where A holds the chunk's input
 * rows k-major (fr_proj_pack_a_f32, zero rows past the sequence's end) and C's rows are ldc >= 64 * np
 * floats apart.  The eight steps of the chunk before compute it: step j of a chunk does piece j of
 * every panel's tile, columns 32 (j & 1) .. + 32 over the k quarter j >> 1 of W's ni rows, an 8 x 32
 * block of accumulators (16 zmm) next to the product's 8; quarter 0 stores C, the later ones add to it,
 * in order of k (so with ni < 4 the empty quarters before the first k store zeros).  The engine
 * (_engine.pyx, _hsplit_forward) computes the first chunk up front with fr_proj_panels_f32_avx512, and
 * hands each step the next chunk's A, W panels, C and piece.
 *
 * The recurrent product runs the same FMAs in the same order as gemm_avx512.c's fr_vecmat_acc (two k a
 * pass, eight accumulators), so its bits do not change; the projection's differ from gemm_into's only in
 * the order of its sums.
 */
#include <immintrin.h>

#include "gates.h"

#define FR_NV 64

/* A (ni x 8, k-major) := the input rows x0, x0 + ldx, ... (`rows` <= 8 of them; ldx < 0 walks back in
 * time, for go_backwards), zeros for the rows past `rows`.  IN x0; OUT A.  (Plain C, but compiled for
 * AVX-512F with the rest of this file: level 2 only.) */
void fr_proj_pack_a_f32(const float *x0, long ldx, int rows, int ni, float *A)
{
    int i, k;
    for (i = 0; i < FR_PROJ_ROWS; i++) {
        const float *x = x0 + (long)i * ldx;
        if (i < rows)
            for (k = 0; k < ni; k++) A[k * FR_PROJ_ROWS + i] = x[k];
        else
            for (k = 0; k < ni; k++) A[k * FR_PROJ_ROWS + i] = 0.0f;
    }
}

/* one k of a piece: c[i][0..1] += A[8k + i] * b[k, 0:32] (b's rows 64 apart) */
#define FR_TILE_K(k)                                                                                   \
    do {                                                                                               \
        const __m512 b0 = _mm512_loadu_ps(b + (long)(k) * FR_NV);                                      \
        const __m512 b1 = _mm512_loadu_ps(b + (long)(k) * FR_NV + 16);                                 \
        const float *a_ = A + (long)(k) * FR_PROJ_ROWS;                                                \
        c00 = _mm512_fmadd_ps(_mm512_set1_ps(a_[0]), b0, c00);                                         \
        c01 = _mm512_fmadd_ps(_mm512_set1_ps(a_[0]), b1, c01);                                         \
        c10 = _mm512_fmadd_ps(_mm512_set1_ps(a_[1]), b0, c10);                                         \
        c11 = _mm512_fmadd_ps(_mm512_set1_ps(a_[1]), b1, c11);                                         \
        c20 = _mm512_fmadd_ps(_mm512_set1_ps(a_[2]), b0, c20);                                         \
        c21 = _mm512_fmadd_ps(_mm512_set1_ps(a_[2]), b1, c21);                                         \
        c30 = _mm512_fmadd_ps(_mm512_set1_ps(a_[3]), b0, c30);                                         \
        c31 = _mm512_fmadd_ps(_mm512_set1_ps(a_[3]), b1, c31);                                         \
        c40 = _mm512_fmadd_ps(_mm512_set1_ps(a_[4]), b0, c40);                                         \
        c41 = _mm512_fmadd_ps(_mm512_set1_ps(a_[4]), b1, c41);                                         \
        c50 = _mm512_fmadd_ps(_mm512_set1_ps(a_[5]), b0, c50);                                         \
        c51 = _mm512_fmadd_ps(_mm512_set1_ps(a_[5]), b1, c51);                                         \
        c60 = _mm512_fmadd_ps(_mm512_set1_ps(a_[6]), b0, c60);                                         \
        c61 = _mm512_fmadd_ps(_mm512_set1_ps(a_[6]), b1, c61);                                         \
        c70 = _mm512_fmadd_ps(_mm512_set1_ps(a_[7]), b0, c70);                                         \
        c71 = _mm512_fmadd_ps(_mm512_set1_ps(a_[7]), b1, c71);                                         \
    } while (0)

/* the product's two k: as fr_vecmat_acc */
#define FR_VM_LOAD(j, p) (full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m[j], p))
#define FR_VM_PAIR()                                                                                   \
    do {                                                                                               \
        const __m512 x0 = _mm512_set1_ps(x[k]), x1 = _mm512_set1_ps(x[k + 1]);                         \
        const float *s = r + FR_NV;                                                                    \
        a0 = _mm512_fmadd_ps(x0, FR_VM_LOAD(0, r), a0);                                                \
        a1 = _mm512_fmadd_ps(x0, FR_VM_LOAD(1, r + 16), a1);                                           \
        a2 = _mm512_fmadd_ps(x0, FR_VM_LOAD(2, r + 32), a2);                                           \
        a3 = _mm512_fmadd_ps(x0, FR_VM_LOAD(3, r + 48), a3);                                           \
        e0 = _mm512_fmadd_ps(x1, FR_VM_LOAD(0, s), e0);                                                \
        e1 = _mm512_fmadd_ps(x1, FR_VM_LOAD(1, s + 16), e1);                                           \
        e2 = _mm512_fmadd_ps(x1, FR_VM_LOAD(2, s + 32), e2);                                           \
        e3 = _mm512_fmadd_ps(x1, FR_VM_LOAD(3, s + 48), e3);                                           \
        k += 2;                                                                                        \
        r += 2 * FR_NV;                                                                                \
    } while (0)

#define FR_C_ROW(i, v0, v1)                                                                            \
    do {                                                                                               \
        float *ci_ = c + (long)(i) * ldc;                                                              \
        if (!init) {                                                                                   \
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(ci_));                                              \
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(ci_ + 16));                                         \
        }                                                                                              \
        _mm512_storeu_ps(ci_, v0);                                                                     \
        _mm512_storeu_ps(ci_ + 16, v1);                                                                \
    } while (0)

/* One panel: (with_vecmat) y[0:w] := x @ r[0:K, 0:64] + beta*y, and the piece over W rows k0..k1 of
 * b (one half of the panel: 32 columns, rows 64 apart) into c (8 rows ldc apart; stored where init,
 * else added), its k spread evenly over the product's pairs: the FMAs of both then share every part of
 * the loop (C harness bench/fused_kernel.c: the piece's k all in the first pairs hid 39-46% of its
 * time at K = 128, spread 50-56%; whole eighths of k over both halves at once, two flushes of the
 * accumulators a step, 43-52%).  `full` (w == 64) and `with_vecmat` are constants at each call, so
 * each build has one kind. */
static inline __attribute__((always_inline)) void
fr_vp_panel(const float *restrict x, const float *restrict r, int K, int w, float beta, float *restrict y,
            const float *restrict A, const float *restrict b, int k0, int k1, int init, float *restrict c,
            long ldc, int with_vecmat, int full)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, e0 = a0, e1 = a0, e2 = a0, e3 = a0;
    __m512 c00 = a0, c01 = a0, c10 = a0, c11 = a0, c20 = a0, c21 = a0, c30 = a0, c31 = a0;
    __m512 c40 = a0, c41 = a0, c50 = a0, c51 = a0, c60 = a0, c61 = a0, c70 = a0, c71 = a0;
    __mmask16 m[4];
    const int pairs = K / 2, stride = k1 > k0 && pairs > k1 - k0 ? pairs / (k1 - k0) : 1;
    int j, q, k = 0, kk = k0;
    for (j = 0; j < 4; j++) {
        const int wj = w - 16 * j;
        m[j] = wj >= 16 ? (__mmask16)0xFFFF : wj > 0 ? (__mmask16)((1u << wj) - 1u) : (__mmask16)0;
    }
    if (with_vecmat) {
        for (; k + 1 < K && kk < k1; kk++) {   /* `stride` pairs of the product, then one k of the piece */
            for (q = 0; q < stride && k + 1 < K; q++) FR_VM_PAIR();
            FR_TILE_K(kk);
        }
        while (k + 1 < K) FR_VM_PAIR();
        if (k < K) {   /* odd K: the last row */
            const __m512 x0 = _mm512_set1_ps(x[k]);
            a0 = _mm512_fmadd_ps(x0, FR_VM_LOAD(0, r), a0);
            a1 = _mm512_fmadd_ps(x0, FR_VM_LOAD(1, r + 16), a1);
            a2 = _mm512_fmadd_ps(x0, FR_VM_LOAD(2, r + 32), a2);
            a3 = _mm512_fmadd_ps(x0, FR_VM_LOAD(3, r + 48), a3);
        }
    }
    for (; kk < k1; kk++) FR_TILE_K(kk);
    if (with_vecmat) {
        __m512 v[4];
        v[0] = _mm512_add_ps(a0, e0);
        v[1] = _mm512_add_ps(a1, e1);
        v[2] = _mm512_add_ps(a2, e2);
        v[3] = _mm512_add_ps(a3, e3);
        for (j = 0; j < 4 && m[j]; j++) {
            __m512 u = v[j];
            if (beta != 0.0f) u = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m[j], y + 16 * j), u);
            _mm512_mask_storeu_ps(y + 16 * j, m[j], u);
        }
    }
    FR_C_ROW(0, c00, c01);
    FR_C_ROW(1, c10, c11);
    FR_C_ROW(2, c20, c21);
    FR_C_ROW(3, c30, c31);
    FR_C_ROW(4, c40, c41);
    FR_C_ROW(5, c50, c51);
    FR_C_ROW(6, c60, c61);
    FR_C_ROW(7, c70, c71);
}
#undef FR_C_ROW
#undef FR_VM_PAIR
#undef FR_VM_LOAD
#undef FR_TILE_K

/* piece `piece` of panel p: its half of W's panel and of the tile, and its quarter of W's rows */
#define FR_PIECE(piece, ni, Wp, C, p, b, k0, k1, c)                                                     \
    const int half_ = (piece) & 1, q_ = (piece) >> 1;                                                 \
    const int k0 = q_ * (ni) / 4, k1 = (q_ + 1) * (ni) / 4;                                           \
    const float *b = (Wp) + (long)(p) * (ni) * FR_NV + 32 * half_;                                    \
    float *c = (C) + (long)(p) * FR_NV + 32 * half_

void fr_vecmat_proj_panels_f32_avx512(const float *restrict x, const float *restrict P, int K, int N,
                                      float beta, float *restrict y, int reverse, const float *restrict A,
                                      const float *restrict Wp, int ni, int piece, float *restrict C, long ldc)
{
    const int np = (N + FR_NV - 1) / FR_NV;
    int i, p;
    for (i = 0; i < np; i++) {
        p = reverse ? np - 1 - i : i;
        const int w = N - p * FR_NV < FR_NV ? N - p * FR_NV : FR_NV;
        FR_PIECE(piece, ni, Wp, C, p, b, k0, k1, c);
        if (w == FR_NV)
            fr_vp_panel(x, P + (long)p * K * FR_NV, K, w, beta, y + p * FR_NV, A, b, k0, k1, k0 == 0, c, ldc, 1,
                        1);
        else
            fr_vp_panel(x, P + (long)p * K * FR_NV, K, w, beta, y + p * FR_NV, A, b, k0, k1, k0 == 0, c, ldc, 1,
                        0);
    }
}

void fr_proj_panels_f32_avx512(const float *restrict A, const float *restrict Wp, int ni, int N, float *restrict C,
                               long ldc)
{
    const int np = (N + FR_NV - 1) / FR_NV;
    int p, piece;
    for (p = 0; p < np; p++)
        for (piece = 0; piece < FR_PROJ_ROWS; piece++) {
            FR_PIECE(piece, ni, Wp, C, p, b, k0, k1, c);
            fr_vp_panel(NULL, NULL, 0, FR_NV, 0.0f, NULL, A, b, k0, k1, k0 == 0, c, ldc, 0, 1);
        }
}
#undef FR_PIECE
