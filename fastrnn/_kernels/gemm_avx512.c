/* gemm_avx512.c - the packed recurrent products of gates_avx2.c again, on 512-bit registers.
 *
 * Same contracts and the same packed layouts as fr_gemm_packed_f32_avx2 / fr_vecmat_panels_f32_avx2
 * (gates.h): R is packed by gates_avx2.c's functions whatever the build, and gates.c picks this file's
 * products at run time when the CPU has AVX-512F (fr_simd_level() == 2).  Compiled on its own with
 * -mavx512f -mfma (setup.py), as is gates_avx512.c (the fused cell rows); the rest of the library never
 * needs AVX-512.
 *
 * Why: a CPU with two 512-bit FMA pipes (Intel Xeon from Skylake-SP on) runs ymm FMAs at half its
 * peak.  On the Xeon these figures come from (2 cores, 2 GHz, AVX-512 and AMX), a register-only FMA
 * loop ran 57 GFLOP/s a core on ymm and 116 on zmm, and OpenBLAS, oneDNN and ONNX Runtime's MLAS all
 * use zmm kernels there.  AMD Zen 4 splits each 512-bit op over two 256-bit pipes: the same peak as
 * AVX2, and one instruction where AVX2 needs two (bench/NOTES.md 31).
 *
 * Microkernel (B >= 2).  A 16-column panel row (64 bytes, one cache line) is one zmm, so a tile is
 * mr rows x npn panels with mr*npn <= 24 accumulators (of 32 zmm registers); per k: npn panel loads,
 * mr broadcasts of A (one live at a time), mr*npn FMAs.  Full row blocks are 8 rows x 3 panels; fewer
 * rows take more panels (<= 4 rows: 6) so that a tile keeps >= 6 independent FMA chains against the
 * 4-cycle latency of two pipes.  A is copied each step into 8-row k-interleaved blocks (`work`,
 * FR_PACKED_A_SIZE floats), so a k's broadcasts read one cache line whatever lda is.  Panels are the
 * outer loop, six at a time (6*K*64 bytes, in L2, while every row block of A passes over them): R
 * streams from L3 once per step when it is larger than L2.  K runs in blocks of FR_KC = 1024 (as the
 * AVX2 build).  C's rows are a step's rows of xp, cold: each tile prefetches its C lines before its K
 * loop, and the panels are prefetched FR_PF rows ahead.  Tail columns use masked loads and stores.
 *
 * Hoisted GEMMs.  The same loops serve _engine.pyx's gemm_into (the input projection and the weight
 * and input gradients: OpenBLAS's kernels there are whatever OPENBLAS_CORETYPE says, AVX2 on this
 * project's machines): fr_pack_a_f32_avx512 copies op(A) into the 8-row blocks (A^T straight from A's
 * rows), fr_gemm_prepacked_f32_avx512 runs the tiles over them, on packed panels or on B as it is (a
 * k stride `ks` and panel stride `ps` say where panel j's row k lies).
 *
 * Vector product (B == 1).  64 columns a block, four zmm a k, on the vector panels or on an unpacked
 * R (the products the plan does not pack): see the end of the file.
 */
#include <immintrin.h>
#include "gates.h"

#define FR_NR 16   /* panel width: one zmm */
#define FR_MR 8    /* rows of a full block of A */
#define FR_KC 1024
#define FR_PF 64   /* panel rows prefetched ahead: 4 KB a panel */
#define FR_GROUP 6 /* panels per step of the outer loop */

/* C[0:w] (+)= v, w <= 16 columns (w <= 0: nothing) */
static inline __attribute__((always_inline)) void fr_store16(float *restrict c, __m512 v, float beta, int w)
{
    if (w >= FR_NR) {
        if (beta != 0.0f) v = _mm512_add_ps(v, _mm512_loadu_ps(c));
        _mm512_storeu_ps(c, v);
    } else if (w > 0) {
        const __mmask16 m = (__mmask16)((1u << w) - 1u);
        if (beta != 0.0f) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, c));
        _mm512_mask_storeu_ps(c, m, v);
    }
}

#define FR_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define FR_PANELS(X, i) X(i, 0) X(i, 1) X(i, 2) X(i, 3) X(i, 4) X(i, 5)

/* One mr x (16*npn) tile: C[0:mr, cols] := A_block @ panels + beta*C, panel q at P + q*ps.  mr and npn
 * are constants at every call site (fr_micro_call), so every `i < mr`, `q < npn` folds away; the
 * accumulators are named scalars (arrays of vectors make gcc keep them in memory).  nleft: the columns
 * of C left from this tile's first panel on (the matrix's last panel stores only its real columns). */
static inline __attribute__((always_inline)) void
fr_micro(const int mr, const int npn, int K, const float *restrict A, const float *restrict P, long ps, long ks,
         float beta, float *restrict C, int ldc, int nleft)
{
    int k;
#define FR_DECL(i, q) __m512 c##i##q = _mm512_setzero_ps();
#define FR_DECL_ROW(i) FR_PANELS(FR_DECL, i)
    FR_ROWS(FR_DECL_ROW)
#undef FR_DECL_ROW
#undef FR_DECL
    if (beta != 0.0f) {
#define FR_PF_C(i, q)                                                                                  \
    if (i < mr && q < npn && q * FR_NR < nleft) {                                                      \
        const float *cq = C + (long)(i) * ldc + (q) * FR_NR;                                           \
        int w = nleft - (q) * FR_NR < FR_NR ? nleft - (q) * FR_NR : FR_NR;                             \
        _mm_prefetch((const char *)cq, _MM_HINT_T0);                                                   \
        _mm_prefetch((const char *)(cq + w - 1), _MM_HINT_T0); /* the second line when unaligned */   \
    }
#define FR_PF_C_ROW(i) FR_PANELS(FR_PF_C, i)
        FR_ROWS(FR_PF_C_ROW)
#undef FR_PF_C_ROW
#undef FR_PF_C
    }
    for (k = 0; k < K; k++) {
        const float *pk = P + (long)k * ks;
#define FR_LOAD(q)                                                                                     \
    const __m512 b##q = q < npn ? _mm512_loadu_ps(pk + (q) * ps) : _mm512_setzero_ps();                \
    if (q < npn) _mm_prefetch((const char *)(pk + (q) * ps + FR_PF * ks), _MM_HINT_T0);
        FR_LOAD(0) FR_LOAD(1) FR_LOAD(2) FR_LOAD(3) FR_LOAD(4) FR_LOAD(5)
#undef FR_LOAD
#define FR_FMA(i, q) if (q < npn) c##i##q = _mm512_fmadd_ps(a, b##q, c##i##q);
#define FR_FMA_ROW(i)                                                                                  \
    if (i < mr) {                                                                                      \
        const __m512 a = _mm512_set1_ps(A[(long)k * FR_MR + (i)]);                                     \
        FR_PANELS(FR_FMA, i)                                                                           \
    }
        FR_ROWS(FR_FMA_ROW)
#undef FR_FMA_ROW
#undef FR_FMA
    }
#define FR_STORE(i, q) if (i < mr && q < npn) fr_store16(C + (long)(i) * ldc + (q) * FR_NR, c##i##q, beta, nleft - (q) * FR_NR);
#define FR_STORE_ROW(i) FR_PANELS(FR_STORE, i)
    FR_ROWS(FR_STORE_ROW)
#undef FR_STORE_ROW
#undef FR_STORE
}

/* The most panels one tile of mr rows takes: mr * npn <= 24 accumulators, and at most FR_GROUP. */
static inline int fr_max_panels(int mr) { return mr <= 4 ? 6 : mr <= 6 ? 4 : 3; }

/* fr_micro with run-time (mr, npn), 1 <= mr <= 8, 1 <= npn <= fr_max_panels(mr): one instantiation each */
static void fr_micro_call(int mr, int npn, int K, const float *restrict A, const float *restrict P, long ps,
                          long ks, float beta, float *restrict C, int ldc, int nleft)
{
#define FR_CASE(r, n) case (r) * 8 + (n): fr_micro(r, n, K, A, P, ps, ks, beta, C, ldc, nleft); return;
#define FR_CASES6(r) FR_CASE(r, 1) FR_CASE(r, 2) FR_CASE(r, 3) FR_CASE(r, 4) FR_CASE(r, 5) FR_CASE(r, 6)
    switch (mr * 8 + npn) {
    FR_CASES6(1) FR_CASES6(2) FR_CASES6(3) FR_CASES6(4)
    FR_CASE(5, 1) FR_CASE(5, 2) FR_CASE(5, 3) FR_CASE(5, 4)
    FR_CASE(6, 1) FR_CASE(6, 2) FR_CASE(6, 3) FR_CASE(6, 4)
    FR_CASE(7, 1) FR_CASE(7, 2) FR_CASE(7, 3)
    FR_CASE(8, 1) FR_CASE(8, 2) FR_CASE(8, 3)
    default: return; /* unreachable: the callers keep npn <= fr_max_panels(mr) */
    }
#undef FR_CASES6
#undef FR_CASE
}

void fr_gemm_prepacked_f32_avx512(int M, int N, int K, const float *restrict work, const float *restrict P,
                                  long ps, long ks, float beta, float *restrict C, int ldc)
{
    const int np = (N + FR_NR - 1) / FR_NR;
    int m, p, q, k0;
    for (k0 = 0; k0 < K || k0 == 0; k0 += FR_KC) {
        const int kc = K - k0 < FR_KC ? K - k0 : FR_KC;
        const float b = k0 == 0 ? beta : 1.0f;
        for (p = 0; p < np; p += FR_GROUP) {
            const int g = np - p < FR_GROUP ? np - p : FR_GROUP;
            for (m = 0; m < M; m += FR_MR) {
                const int mr = M - m < FR_MR ? M - m : FR_MR, most = fr_max_panels(mr);
                const float *Am = work + (long)m * K + (long)k0 * FR_MR;
                for (q = 0; q < g; q += most) {
                    const int n0 = (p + q) * FR_NR;
                    fr_micro_call(mr, g - q < most ? g - q : most, kc, Am, P + (long)(p + q) * ps + (long)k0 * ks,
                                  ps, ks, b, C + (long)m * ldc + n0, ldc, N - n0);
                }
            }
        }
    }
}

void fr_pack_a_f32_avx512(const float *restrict A, int lda, int trans, int M, int K, float *restrict work)
{
    int m, k;
    /* block m (its first row) at work + m*K, FR_MR floats a k: the last block ends before
     * work + (M + 7)*K <= FR_PACKED_A_SIZE(M, K) */
    if (!trans) {
        for (m = 0; m < M; m += FR_MR)
            fr_pack_row_block_f32(A + (long)m * lda, lda, M - m < FR_MR ? M - m : FR_MR, K, FR_MR, work + (long)m * K);
        return;
    }
    /* op(A) = A^T: a k's FR_MR values of a block are FR_MR consecutive floats of A's row k (masked
     * 512-bit moves of mr <= 8 lanes: AVX-512F alone, no VL; masked-off lanes are neither read nor written) */
    for (m = 0; m < M; m += FR_MR) {
        const int mr = M - m < FR_MR ? M - m : FR_MR;
        const __mmask16 lanes = (__mmask16)((1u << mr) - 1u);
        float *dst = work + (long)m * K;
        for (k = 0; k < K; k++)
            _mm512_mask_storeu_ps(dst + (long)k * FR_MR, lanes, _mm512_maskz_loadu_ps(lanes, A + (long)k * lda + m));
    }
}

void fr_gemm_packed_f32_avx512(int M, int N, int K, const float *restrict A, int lda, const float *restrict P,
                               float beta, float *restrict C, int ldc, float *restrict work)
{
    fr_pack_a_f32_avx512(A, lda, 0, M, K, work);
    fr_gemm_prepacked_f32_avx512(M, N, K, work, P, (long)K * FR_NR, FR_NR, beta, C, ldc);
}

/* ---------------------------------------------------------------------------------------------------
 * B == 1: y := x @ R + beta*y, 64 columns at a time, on gates_avx2.c's vector panels (each panel a
 * K x 64 block, rows 64 apart) or on R as it is (rows ldr apart: the products the plan does not pack,
 * G*H < 512 or the stream's T == 1).  A block of y lives in eight zmm accumulators (two k at a time:
 * four chains would wait on the FMA latency) for the whole K loop of a panel, or for 16 rows of an
 * unpacked R (FR_VM_KB, below), and is stored once per pass.  The portable fr_vecmat adds four rows of
 * R into y per pass instead, so y is loaded and stored K/4 times and each pass waits on the last one's
 * stores (perf, lstm t1000-b1-h64 on 1 thread: 49% of the call).
 * ------------------------------------------------------------------------------------------------ */
#define FR_NV 64

/* One 64-column vector of r's row, masked past w, or a plain load where `full` (a constant at each call
 * below, so each build of the loop has one kind): Zen 4 runs masked 512-bit loads at about two thirds of
 * the plain ones' rate, which is what bounds a panel already in L1 (C harness, K x N = 64 x 128, one
 * core: 121 -> 179 GB/s; from L2, 128 x 256, 110 -> 114: bandwidth-bound either way; bench/NOTES.md 42). */
#define FR_VM_LOAD(m, p) (full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p))

/* a[0..3] := x @ r[0:K, 0:64] (lanes past m[j] zero), r's rows ld apart */
static inline __attribute__((always_inline)) void
fr_vecmat_acc(const float *restrict x, const float *restrict r, int K, long ld, const __mmask16 *m, int full,
              __m512 *a)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, e0 = a0, e1 = a0, e2 = a0, e3 = a0;
    int k;
    for (k = 0; k + 1 < K; k += 2, r += 2 * ld) {
        const __m512 x0 = _mm512_set1_ps(x[k]), x1 = _mm512_set1_ps(x[k + 1]);
        const float *s = r + ld;
        a0 = _mm512_fmadd_ps(x0, FR_VM_LOAD(m[0], r), a0);
        a1 = _mm512_fmadd_ps(x0, FR_VM_LOAD(m[1], r + 16), a1);
        a2 = _mm512_fmadd_ps(x0, FR_VM_LOAD(m[2], r + 32), a2);
        a3 = _mm512_fmadd_ps(x0, FR_VM_LOAD(m[3], r + 48), a3);
        e0 = _mm512_fmadd_ps(x1, FR_VM_LOAD(m[0], s), e0);
        e1 = _mm512_fmadd_ps(x1, FR_VM_LOAD(m[1], s + 16), e1);
        e2 = _mm512_fmadd_ps(x1, FR_VM_LOAD(m[2], s + 32), e2);
        e3 = _mm512_fmadd_ps(x1, FR_VM_LOAD(m[3], s + 48), e3);
    }
    if (k < K) {   /* odd K: the last row */
        const __m512 x0 = _mm512_set1_ps(x[k]);
        a0 = _mm512_fmadd_ps(x0, FR_VM_LOAD(m[0], r), a0);
        a1 = _mm512_fmadd_ps(x0, FR_VM_LOAD(m[1], r + 16), a1);
        a2 = _mm512_fmadd_ps(x0, FR_VM_LOAD(m[2], r + 32), a2);
        a3 = _mm512_fmadd_ps(x0, FR_VM_LOAD(m[3], r + 48), a3);
    }
    a[0] = _mm512_add_ps(a0, e0);
    a[1] = _mm512_add_ps(a1, e1);
    a[2] = _mm512_add_ps(a2, e2);
    a[3] = _mm512_add_ps(a3, e3);
}
#undef FR_VM_LOAD

/* y[0:w] := x @ r[0:K, 0:w] + beta*y, w <= 64 columns, r's rows ld apart (masked past w) */
static inline __attribute__((always_inline)) void
fr_vecmat_block(const float *restrict x, const float *restrict r, int K, long ld, int w, float beta,
                float *restrict y)
{
    __m512 a[4];
    __mmask16 m[4];
    int j;
    for (j = 0; j < 4; j++) {
        const int wj = w - 16 * j;
        m[j] = wj >= 16 ? (__mmask16)0xFFFF : wj > 0 ? (__mmask16)((1u << wj) - 1u) : (__mmask16)0;
    }
    if (w == FR_NV)
        fr_vecmat_acc(x, r, K, ld, m, 1, a);
    else
        fr_vecmat_acc(x, r, K, ld, m, 0, a);
    for (j = 0; j < 4 && m[j]; j++) {
        __m512 v = a[j];
        if (beta != 0.0f) v = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m[j], y + 16 * j), v);
        _mm512_mask_storeu_ps(y + 16 * j, m[j], v);
    }
}

void fr_vecmat_panels_f32_avx512(const float *restrict x, const float *restrict P, int K, int N, float beta,
                                 float *restrict y, int reverse)
{
    const int np = (N + FR_NV - 1) / FR_NV;
    int i, p;
    for (i = 0; i < np; i++) {
        p = reverse ? np - 1 - i : i;
        fr_vecmat_block(x, P + (long)p * K * FR_NV, K, FR_NV, N - p * FR_NV < FR_NV ? N - p * FR_NV : FR_NV, beta,
                        y + p * FR_NV);
    }
}

/* Unpacked R larger than FR_VM_WHOLE bytes: FR_VM_KB rows at a time across every column block, so R is
 * read as FR_VM_KB sequential row streams (a block walking all K rows of a large unpacked R jumps ldr
 * floats a row, a new page every row: the H=512 stream step ran 1.4-5x slower), and y is loaded and
 * stored once per FR_VM_KB rows.  A smaller R (in L2) takes whole K at once: C harness, K x N = 64 x 256
 * and 128 x 512, 4-8% faster than 16 rows a pass; 1024 x 1024 13-30% slower (bench/NOTES.md 34f). */
#ifndef FR_VM_KB
#define FR_VM_KB 16
#endif
#define FR_VM_WHOLE (256L << 10)

void fr_vecmat_f32_avx512(const float *restrict x, const float *restrict R, int K, int N, int ldr, float beta,
                          float *restrict y)
{
    const int step = (long)K * ldr * (long)sizeof(float) <= FR_VM_WHOLE ? K : FR_VM_KB;
    int n0, k0 = 0;
    do {
        const int kb = K - k0 < step ? K - k0 : step;
        for (n0 = 0; n0 < N; n0 += FR_NV)
            fr_vecmat_block(x + k0, R + (long)k0 * ldr + n0, kb, ldr, N - n0 < FR_NV ? N - n0 : FR_NV,
                            k0 == 0 ? beta : 1.0f, y + n0);
        k0 += kb;
    } while (k0 < K);
}

/* Transpose (torch's weights and their gradients, fastrnn/_torch_autograd.py).  16 x 16 blocks in
 * registers: each of the 16 loads and 16 stores is a whole 64-byte line.  Why: the rows of a weight are
 * a power of two of bytes apart (8 KiB for (512, 2048)), so every row of a tile falls in the same L1
 * set; gates_avx2.c's 32 x 32 tiles of 8 x 8 blocks read each line twice, 32 B at a time, and its line
 * is gone before the second read.  C harness, (512, 2048) float32, one Zen 4 core, medians: 280 us
 * (32 x 32 tiles) -> 220 (16 x 16 blocks), a memcpy 86 (bench/NOTES.md 40).  Blocks walk strips of 16
 * rows of src; the last M % 16 rows and N % 16 columns go to the AVX2 build. */
static inline __attribute__((always_inline)) void fr_transpose16(const float *restrict src, long lds,
                                                                 float *restrict dst, long ldd)
{
    __m512 r[16], t[16];
    int k;
    for (k = 0; k < 16; k++) r[k] = _mm512_loadu_ps(src + k * lds);
    /* pairs of rows interleaved, then quads: lane L (128 bits) of t[4q + c] holds column 4L + c of rows
     * 4q..4q+3 */
    for (k = 0; k < 16; k += 2) {
        t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
    for (k = 0; k < 16; k += 4) {
        r[k] = _mm512_shuffle_ps(t[k], t[k + 2], 0x44);
        r[k + 1] = _mm512_shuffle_ps(t[k], t[k + 2], 0xEE);
        r[k + 2] = _mm512_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        r[k + 3] = _mm512_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
    }
    /* then the 128-bit lanes across quads: two rounds of shuffle_f32x4 */
    for (k = 0; k < 4; k++) {
        t[k] = _mm512_shuffle_f32x4(r[k], r[k + 4], 0x88);
        t[k + 4] = _mm512_shuffle_f32x4(r[k], r[k + 4], 0xDD);
        t[k + 8] = _mm512_shuffle_f32x4(r[k + 8], r[k + 12], 0x88);
        t[k + 12] = _mm512_shuffle_f32x4(r[k + 8], r[k + 12], 0xDD);
    }
    for (k = 0; k < 4; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
        r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xDD);
        r[k + 4] = _mm512_shuffle_f32x4(t[k + 4], t[k + 12], 0x88);
        r[k + 12] = _mm512_shuffle_f32x4(t[k + 4], t[k + 12], 0xDD);
    }
    for (k = 0; k < 16; k++) _mm512_storeu_ps(dst + k * ldd, r[k]);
}

void fr_transpose_f32_avx512(int M, int N, const float *restrict src, long lds, float *restrict dst, long ldd)
{
    const int M16 = M / 16 * 16, N16 = N / 16 * 16;
    int i, j;
    for (i = 0; i < M16; i += 16)
        for (j = 0; j < N16; j += 16) fr_transpose16(src + (long)i * lds + j, lds, dst + (long)j * ldd + i, ldd);
    if (N16 < N && M16 > 0)   /* the last columns of the full strips */
        fr_transpose_f32_avx2(M16, N - N16, src + N16, lds, dst + (long)N16 * ldd, ldd);
    if (M16 < M)              /* the last rows, every column */
        fr_transpose_f32_avx2(M - M16, N, src + (long)M16 * lds, lds, dst + M16, ldd);
}
