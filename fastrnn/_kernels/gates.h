/* gates.h - the SIMD/C gate math of fastrnn: activations and one-row cell updates.
 *
 * Design
 * ------
 * The Cython time loop (_engine.pyx) owns memory, BLAS calls, masks and the step order; these functions
 * do the element-wise work of ONE batch row at ONE time step, after the GEMMs have written the
 * pre-activations.  Rows are contiguous vectors of H (or G*H) elements; nothing here allocates, and
 * every function is reentrant (no global state but the SIMD choice, made once in fr_init_simd()).
 *
 * Activations are identified by an int (enum fr_act) chosen outside the time loop.  Every derivative is
 * written in terms of the activation's OUTPUT y, so the backward pass needs only saved post-activation
 * gates: tanh' = 1-y^2, sigmoid' = y(1-y), hard_sigmoid' = 1/6 on 0<y<1, relu' = [y>0], linear' = 1,
 * softsign' = (1-|y|)^2.  hard_sigmoid is Keras 3's: clip(x/6 + 1/2, 0, 1).
 *
 * float32 runs on AVX2/FMA code when the CPU has it, chosen at run time: gates_avx2.c compiles the
 * whole row template (cell_rows.inc.h) with -mavx2 -mfma and its own tanh and sigmoid (act_simd.inc.h:
 * a rational tanh, max abs error ~3.3e-7, relative below |x| = 1); otherwise gates.c's build of the same
 * template on libm.  float64 always uses libm:
 * it is the accuracy dtype.  On a CPU with AVX-512F the packed and one-row recurrent products run on
 * gemm_avx512.c instead, and of the gate math the rows fused for the default activations (LSTM
 * forward and backward, GRU reset_after forward, SimpleRNN tanh: fused_rows.inc.h) on gates_avx512.c.
 *
 * Gate orders follow the Keras layout: LSTM i,f,c,o; GRU z,r,h.  `# IN` / `# OUT` in the comments below
 * mark argument roles; IN/OUT is read then overwritten.
 */
#ifndef FASTRNN_GATES_H
#define FASTRNN_GATES_H

enum fr_act {
    FR_TANH = 0,
    FR_SIGMOID = 1,
    FR_HARD_SIGMOID = 2,
    FR_RELU = 3,
    FR_LINEAR = 4,
    FR_SOFTSIGN = 5
};

/* Picks the float32 kernels the CPU can run: returns the level, 0 portable, 1 AVX2/FMA (gate math and
 * packed products), 2 AVX2/FMA gate math but the packed and one-row products on AVX-512F
 * (gemm_avx512.c), as are the rows fused for the default activations (gates_avx512.c).
 * Idempotent; called at module import.  fr_limit_simd(n) caps the level at n (tests compare the
 * builds); fr_force_scalar(1) is fr_limit_simd(0), fr_force_scalar(0) lifts the cap. */
int fr_init_simd(void);
void fr_force_scalar(int on);
void fr_limit_simd(int max_level);
int fr_simd_level(void);

#define FR_DECLARE(T, SFX)                                                                             \
    /* y := act(x); y may be x.                                     IN x; OUT y */                     \
    void fr_act_##SFX(int kind, T *y, const T *x, int n);                                              \
    /* dx := dy * act'(x), from y = act(x); dx may be dy.           IN y, dy; OUT dx */                \
    void fr_dact_##SFX(int kind, T *dx, const T *y, const T *dy, int n);                               \
    /* LSTM, one row.  g := act_gates(g + b); c := f*c_prev + i*cand; h := o*act(c).                  \
     * IN/OUT g (4H: x@W + h@R in, post-activation i,f,c,o out); IN bias (4H or NULL), c_prev;         \
     * OUT c, h */                                                                                     \
    void fr_lstm_fwd_row_##SFX(T *g, const T *bias, const T *c_prev, T *c, T *h, int H, int act,       \
                               int ract);                                                              \
    /* LSTM backward, one row.  IN g (post-act), c_prev, c, dh (dL/dh_t, all paths);                   \
     * IN/OUT dc (dL/dc_t in, dL/dc_{t-1} out); OUT dg (4H pre-activation grads); tmp (2H scratch) */   \
    void fr_lstm_bwd_row_##SFX(const T *g, const T *c_prev, const T *c, const T *dh, T *dc, T *dg,     \
                               T *tmp, int H, int act, int ract);                                      \
    /* GRU z and r gates: g[0:2H] := ract(g[0:2H] + rec[0:2H] + bx + br) (rec, bx, br may be NULL).    \
     * IN/OUT g; IN rec, bx, br */                                                                     \
    void fr_gru_zr_row_##SFX(T *g, const T *rec, const T *bx, const T *br, int H, int ract);            \
    /* GRU reset_after=True candidate input: rh := rec_h + br_h; g_h += bx_h + r*rh.                   \
     * IN/OUT g (3H); IN rec (3H), bx, br (3H or NULL); OUT rh (H, saved for backward) */              \
    void fr_gru_reset_after_row_##SFX(T *g, const T *rec, const T *bx, const T *br, T *rh, int H);     \
    /* GRU state: hh := act(g_h + b_h); h := z*h_prev + (1-z)*hh.                                     \
     * IN/OUT g (3H); IN b_h (H or NULL), h_prev; OUT h */                                             \
    void fr_gru_h_row_##SFX(T *g, const T *b_h, const T *h_prev, T *h, int H, int act);                \
    /* GRU reset_after=True, a whole row: zr_row, reset_after_row, then h_row with no b_h (the biases \
     * are bx and br).  IN/OUT g (3H); IN rec (3H), bx, br (3H or NULL), h_prev; OUT rh (H), h */       \
    void fr_gru_reset_after_fwd_row_##SFX(T *g, const T *rec, const T *bx, const T *br, T *rh,           \
                                          const T *h_prev, T *h, int H, int act, int ract);             \
    /* GRU backward of the z and candidate paths.  IN g (post-act z,r,hh), h_prev, dh;                 \
     * OUT dg_z, dg_h (in dg, 3H layout; dg_r untouched), dh_direct := z*dh */                         \
    void fr_gru_bwd_zh_row_##SFX(const T *g, const T *h_prev, const T *dh, T *dg, T *dh_direct, int H, \
                                 int act, int ract);                                                   \
    /* GRU backward of r: dg_r := ract'(r) * a * b.  IN g, a, b; OUT dg (only the r block) */           \
    void fr_gru_bwd_r_row_##SFX(const T *g, const T *a, const T *b, T *dg, int H, int ract);           \
    /* GRU reset_after=True backward, a whole row: bwd_zh_row, bwd_r_row (a := dg_h, b := rh), then    \
     * the recurrent side's gate gradients drec := [dg_z, dg_r, dg_h * r] (d(h_d @ R + b_r): rec_h     \
     * enters the candidate times r).  IN g (post-act z, r, hh), h_prev, rh (H, the forward's          \
     * rec_h + br_h), dh; OUT dg (3H), dh_direct := z*dh, drec (3H) */                                 \
    void fr_gru_reset_after_bwd_row_##SFX(const T *g, const T *h_prev, const T *rh, const T *dh, T *dg, \
                                          T *dh_direct, T *drec, int H, int act, int ract);           \
    /* One-row products for B == 1 (no BLAS threading for a few microseconds of work).                \
     * vecmat: y := beta*y + x @ R, R (K, N) rows ldr apart.  IN x, R; IN/OUT y */                    \
    void fr_vecmat_##SFX(const T *x, const T *R, int K, int N, int ldr, T beta, T *y);                 \
    /* matvec: y := beta*y + R @ x, R (M, N) rows ldr apart.  IN R, x; IN/OUT y */                    \
    void fr_matvec_##SFX(const T *R, const T *x, int M, int N, int ldr, T beta, T *y);                 \
    /* SimpleRNN: g := act(g + b); h := g.  IN/OUT g (H); IN bias; OUT h (may be g) */                        \
    void fr_simple_fwd_row_##SFX(T *g, const T *bias, T *h, int H, int act);                           \
    /* acc[j] += x[0][j] + ... + x[rows-1][j] for j < n, rows ldx apart, summed in row order (the     \
     * backward's bias gradient, one step's rows at a time).  IN x; IN/OUT acc */                     \
    void fr_colsum_add_##SFX(T *acc, const T *x, int rows, int n, long ldx);                           \
    /* Backward, one unmasked row of one step: dh_t := dout + dacc + dh (dL/d(output of the step),    \
     * from the layer's output, a masked later step's output and the later steps' recurrence), then   \
     * dacc := 0 and dh := 0 (dh becomes the next recurrence's accumulator).                          \
     * IN dout; IN/OUT dacc, dh; OUT dh_t */                                                          \
    void fr_bwd_dh_row_##SFX(T *dh_t, const T *dout, T *dacc, T *dh, int n);

FR_DECLARE(float, f32)
FR_DECLARE(double, f64)
/* The two float32 builds behind the fr_*_f32 entry points (same contracts): the portable one
 * (gates.c) and the AVX2/FMA one (gates_avx2.c, only called after fr_init_simd() saw both features). */
FR_DECLARE(float, f32_scalar)
FR_DECLARE(float, f32_avx2)
#undef FR_DECLARE

/* Packed recurrent GEMM, float32 (call only when fr_simd_level() >= 1, otherwise keep BLAS).  R (K, N)
 * rows ldr apart is packed once (gates_avx2.c) into ceil(N/16) panels of 16 columns, K-major, the last
 * zero-padded: P holds FR_PACKED_SIZE(K, N) floats.  Then per step C := A @ R + beta*C, beta 0 (C not
 * read) or 1, A (M, K) rows lda apart, C (M, N) rows ldc apart: fr_gemm_packed_f32 runs the AVX-512
 * build at level 2, the AVX2 one at level 1.  work holds FR_PACKED_A_SIZE(M, K) floats (A copied into
 * row blocks each step: 6-row blocks on AVX2, 8-row on AVX-512; M + 8 rows covers both).
 * pack:  IN R; OUT P.   gemm: IN A, P; IN/OUT C; OUT work (scratch) */
#define FR_PACKED_SIZE(K, N) ((long)(K) * (((N) + 15) / 16) * 16)
#define FR_PACKED_A_SIZE(M, K) ((long)(K) * ((M) + 8))
void fr_gemm_packed_f32(int M, int N, int K, const float *A, int lda, const float *P, float beta, float *C,
                        int ldc, float *work);
/* The microkernels' per-step copy of A: rows [0, mr) of A (K columns, rows lda apart) k-major into
 * dst[k*stride + i] (stride: the build's block height).  IN A; OUT dst */
void fr_pack_row_block_f32(const float *A, int lda, int mr, int K, int stride, float *dst);
void fr_gemm_packed_f32_avx512(int M, int N, int K, const float *A, int lda, const float *P, float beta,
                               float *C, int ldc, float *work);
/* fr_gemm_packed_f32_avx512 in its two halves (level 2 only), for the hoisted GEMMs (_engine.pyx,
 * gemm_into), which pack op(A) in row chunks and may take A transposed:
 * pack: op(A) (M, K) = A (trans 0: rows lda apart) or A^T (trans 1: A is (K, M), rows lda apart) into
 *       FR_PACKED_A_SIZE(M, K) floats of 8-row blocks.  IN A; OUT work
 * prepacked: C := op(A) @ B + beta*C from that, B's 16-column panel j at P + j*ps and row k of a panel
 *       ks floats after row k-1: packed panels (ps = K*16, ks = 16) or B as it is (ps = 16, ks = its
 *       row stride; its N a multiple of 16, as a panel's loads are whole).  IN work, P; IN/OUT C */
void fr_pack_a_f32_avx512(const float *A, int lda, int trans, int M, int K, float *work);
void fr_gemm_prepacked_f32_avx512(int M, int N, int K, const float *work, const float *P, long ps, long ks,
                                  float beta, float *C, int ldc);
/* dst (N x M, rows ldd apart) := src (M x N, rows lds apart) transposed (torch's (G*H, I) weights to the
 * Keras layout and gradients back, fastrnn/_torch_autograd.py).  IN src; OUT dst */
void fr_transpose_f32(int M, int N, const float *src, long lds, float *dst, long ldd);
void fr_transpose_f64(int M, int N, const double *src, long lds, double *dst, long ldd);
void fr_transpose_f32_avx2(int M, int N, const float *src, long lds, float *dst, long ldd);
void fr_transpose_f32_avx512(int M, int N, const float *src, long lds, float *dst, long ldd);
void fr_pack_panels_f32_avx2(const float *R, int K, int N, int ldr, float *P);
/* The same panels for R^T (K, N), read from R (N, K) rows ldr apart (backward: dG @ R^T).  IN R; OUT P */
void fr_pack_panels_t_f32_avx2(const float *R, int K, int N, int ldr, float *P);
void fr_gemm_packed_f32_avx2(int M, int N, int K, const float *A, int lda, const float *P, float beta,
                             float *C, int ldc, float *work);
/* 1 (the default): the AVX2 microkernel's few-row passes over long panels prefetch the next panel
 * (gates_avx2.c, Next-panel prefetch); 0: FR_PF rows ahead in their own panel everywhere (A/B runs). */
extern int fr_next_panel_prefetch;
/* fr_gemm_packed_f32_avx2 in its two halves (level 1), for the hoisted GEMMs as the AVX-512 pair above:
 * pack: op(A) (M, K) into FR_PACKED_A_SIZE(M, K) floats of 6-row blocks.  IN A; OUT work
 * prepacked: C := op(A) @ B + beta*C, K <= 1024, B's 16-column panel j at P + j*ps (packed panels only:
 *       rows 16 floats apart).  IN work, P; IN/OUT C */
void fr_pack_a_f32_avx2(const float *A, int lda, int trans, int M, int K, float *work);
void fr_gemm_prepacked_f32_avx2(int M, int N, int K, const float *work, const float *P, long ps, float beta,
                                float *C, int ldc);

/* fr_vecmat_f32 on AVX-512F (gemm_avx512.c; level 2 only): 64-column blocks of y in registers.
 * IN x, R; IN/OUT y */
void fr_vecmat_f32_avx512(const float *x, const float *R, int K, int N, int ldr, float beta, float *y);

/* The rows fused for the default activations (fused_rows.inc.h): the contracts of fr_lstm_fwd_row_f32,
 * fr_lstm_bwd_row_f32 (no tmp), fr_gru_reset_after_fwd_row_f32 and fr_gru_reset_after_bwd_row_f32 with
 * act == FR_TANH, ract == FR_SIGMOID, and of fr_simple_fwd_row_f32 with act == FR_TANH; on 8 lanes
 * (gates_avx2.c, level >= 1) and on 16 (gates_avx512.c, level 2 only), the same bits. */
#define FR_DECLARE_FUSED(SFX)                                                                          \
    void fr_lstm_fwd_row_default_f32_##SFX(float *g, const float *bias, const float *c_prev, float *c,  \
                                           float *h, int H);                                           \
    void fr_lstm_bwd_row_default_f32_##SFX(const float *g, const float *c_prev, const float *c,         \
                                           const float *dh, float *dc, float *dg, int H);              \
    void fr_gru_reset_after_fwd_row_default_f32_##SFX(float *g, const float *rec, const float *bx,      \
                                                      const float *br, float *rh, const float *h_prev,  \
                                                      float *h, int H);                                 \
    void fr_gru_reset_after_bwd_row_default_f32_##SFX(const float *g, const float *h_prev,              \
                                                      const float *rh, const float *dh, float *dg,      \
                                                      float *dh_direct, float *drec, int H);            \
    void fr_simple_fwd_row_tanh_f32_##SFX(float *g, const float *bias, float *h, int H);
FR_DECLARE_FUSED(avx2)
FR_DECLARE_FUSED(avx512)
#undef FR_DECLARE_FUSED

/* B == 1: R (K, N) packed once into ceil(N/64) panels of 64 columns, K-major, the last zero-padded
 * (FR_VEC_PACKED_SIZE(K, N) floats), then per step y := x @ R + beta*y (x (K,), y (N,)).  The panels'
 * N = nblk*blk_w columns are nblk blocks of blk_w columns of R, blk_stride columns apart (one block:
 * all of R; the hidden split: the same units of each gate block).  float32 on AVX2/FMA only, as above.
 * pack: IN R; OUT P.   vecmat: IN x, P; IN/OUT y */
#define FR_VEC_PACKED_SIZE(K, N) ((long)(K) * (((N) + 63) / 64) * 64)
void fr_pack_vec_panels_f32_avx2(const float *R, int K, int ldr, int nblk, int blk_stride, int blk_w, float *P);
void fr_vecmat_panels_f32_avx2(const float *x, const float *P, int K, int N, float beta, float *y, int reverse);
/* The run-time pick (level 2: gemm_avx512.c's build, 1: gates_avx2.c's), and the AVX-512 build */
void fr_vecmat_panels_f32(const float *x, const float *P, int K, int N, float beta, float *y, int reverse);
void fr_vecmat_panels_f32_avx512(const float *x, const float *P, int K, int N, float beta, float *y,
                                 int reverse);

/* B == 1 with the input projection of the next FR_PROJ_ROWS time steps riding along in the product's
 * loop (vecmat_proj_avx512.c, level 2 only; its header comment has the layouts).
 * pack_a: IN x0 (rows ldx apart); OUT A (I x 8).
 * vecmat_proj: y := x @ P + beta*y as fr_vecmat_panels_f32_avx512, and piece `piece` (0..7) of
 *   C (8, ldc) := A^T @ Wp (Wp: W's vector panels, I rows).  IN x, P, A, Wp; IN/OUT y, C.
 * proj: all eight pieces (the first chunk).  IN A, Wp; OUT C. */
#define FR_PROJ_ROWS 8
void fr_proj_pack_a_f32(const float *x0, long ldx, int rows, int ni, float *A);
void fr_vecmat_proj_panels_f32_avx512(const float *x, const float *P, int K, int N, float beta, float *y,
                                      int reverse, const float *A, const float *Wp, int ni, int piece, float *C,
                                      long ldc);
void fr_proj_panels_f32_avx512(const float *A, const float *Wp, int ni, int N, float *C, long ldc);

#endif
