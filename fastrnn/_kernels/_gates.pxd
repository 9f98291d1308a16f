# _gates.pxd - Cython view of gates.h (the SIMD/C one-row gate math), fused over float/double so the
# time loops call one name per operation.  See gates.h for each function's contract.
from cython cimport floating

cdef extern from "gates.h" nogil:
    int fr_init_simd()
    void fr_force_scalar(int on)
    void fr_limit_simd(int max_level)
    int fr_simd_level()
    void fr_act_f32(int kind, float *y, const float *x, int n)
    void fr_act_f64(int kind, double *y, const double *x, int n)
    void fr_dact_f32(int kind, float *dx, const float *y, const float *dy, int n)
    void fr_dact_f64(int kind, double *dx, const double *y, const double *dy, int n)
    void fr_lstm_fwd_row_f32(float *g, const float *bias, const float *c_prev, float *c, float *h, int H, int act, int ract)
    void fr_lstm_fwd_row_f64(double *g, const double *bias, const double *c_prev, double *c, double *h, int H, int act, int ract)
    void fr_lstm_bwd_row_f32(const float *g, const float *c_prev, const float *c, const float *dh, float *dc, float *dg, float *tmp, int H, int act, int ract)
    void fr_lstm_bwd_row_f64(const double *g, const double *c_prev, const double *c, const double *dh, double *dc, double *dg, double *tmp, int H, int act, int ract)
    void fr_gru_zr_row_f32(float *g, const float *rec, const float *bx, const float *br, int H, int ract)
    void fr_gru_zr_row_f64(double *g, const double *rec, const double *bx, const double *br, int H, int ract)
    void fr_gru_h_row_f32(float *g, const float *b_h, const float *h_prev, float *h, int H, int act)
    void fr_gru_h_row_f64(double *g, const double *b_h, const double *h_prev, double *h, int H, int act)
    void fr_gru_reset_after_fwd_row_f32(float *g, const float *rec, const float *bx, const float *br, float *rh, const float *h_prev, float *h, int H, int act, int ract)
    void fr_gru_reset_after_fwd_row_f64(double *g, const double *rec, const double *bx, const double *br, double *rh, const double *h_prev, double *h, int H, int act, int ract)
    void fr_gru_bwd_zh_row_f32(const float *g, const float *h_prev, const float *dh, float *dg, float *dh_direct, int H, int act, int ract)
    void fr_gru_bwd_zh_row_f64(const double *g, const double *h_prev, const double *dh, double *dg, double *dh_direct, int H, int act, int ract)
    void fr_gru_bwd_r_row_f32(const float *g, const float *a, const float *b, float *dg, int H, int ract)
    void fr_gru_bwd_r_row_f64(const double *g, const double *a, const double *b, double *dg, int H, int ract)
    void fr_vecmat_f32(const float *x, const float *R, int K, int N, int ldr, float beta, float *y)
    void fr_vecmat_f64(const double *x, const double *R, int K, int N, int ldr, double beta, double *y)
    void fr_matvec_f32(const float *R, const float *x, int M, int N, int ldr, float beta, float *y)
    void fr_matvec_f64(const double *R, const double *x, int M, int N, int ldr, double beta, double *y)
    void fr_simple_fwd_row_f32(float *g, const float *bias, float *h, int H, int act)
    void fr_simple_fwd_row_f64(double *g, const double *bias, double *h, int H, int act)
    void fr_colsum_add_f32(float *acc, const float *x, int rows, int n, long ldx)
    void fr_colsum_add_f64(double *acc, const double *x, int rows, int n, long ldx)
    void fr_bwd_dh_row_f32(float *dh_t, const float *dout, float *dacc, float *dh, int n)
    void fr_bwd_dh_row_f64(double *dh_t, const double *dout, double *dacc, double *dh, int n)
    void fr_gru_reset_after_bwd_row_f32(const float *g, const float *h_prev, const float *rh, const float *dh, float *dg, float *dh_direct, float *drec, int H, int act, int ract)
    void fr_gru_reset_after_bwd_row_f64(const double *g, const double *h_prev, const double *rh, const double *dh, double *dg, double *dh_direct, double *drec, int H, int act, int ract)
    void fr_transpose_f32(int M, int N, const float *src, long lds, float *dst, long ldd)
    void fr_transpose_f64(int M, int N, const double *src, long lds, double *dst, long ldd)
    void fr_pack_panels_f32_avx2(const float *R, int K, int N, int ldr, float *P)
    void fr_pack_panels_t_f32_avx2(const float *R, int K, int N, int ldr, float *P)
    void fr_gemm_packed_f32(int M, int N, int K, const float *A, int lda, const float *P, float beta,
                            float *C, int ldc, float *work)
    long FR_PACKED_A_SIZE(int M, int K)
    void fr_pack_a_f32_avx512(const float *A, int lda, int trans, int M, int K, float *work)
    void fr_gemm_prepacked_f32_avx512(int M, int N, int K, const float *work, const float *P, long ps, long ks,
                                      float beta, float *C, int ldc)
    void fr_pack_a_f32_avx2(const float *A, int lda, int trans, int M, int K, float *work)
    int fr_next_panel_prefetch
    void fr_gemm_prepacked_f32_avx2(int M, int N, int K, const float *work, const float *P, long ps, float beta,
                                    float *C, int ldc)
    long FR_VEC_PACKED_SIZE(int K, int N)
    void fr_pack_vec_panels_f32_avx2(const float *R, int K, int ldr, int nblk, int blk_stride, int blk_w, float *P)
    void fr_vecmat_panels_f32(const float *x, const float *P, int K, int N, float beta, float *y, int reverse)
    int FR_PROJ_ROWS
    void fr_proj_pack_a_f32(const float *x0, long ldx, int rows, int ni, float *A)
    void fr_vecmat_proj_panels_f32_avx512(const float *x, const float *P, int K, int N, float beta, float *y,
                                          int reverse, const float *A, const float *Wp, int ni, int piece,
                                          float *C, long ldc)
    void fr_proj_panels_f32_avx512(const float *A, const float *Wp, int ni, int N, float *C, long ldc)


cdef inline void dact(int kind, floating *dx, const floating *y, const floating *dy, int n) noexcept nogil:
    if floating is float: fr_dact_f32(kind, dx, y, dy, n)
    else: fr_dact_f64(kind, dx, y, dy, n)

cdef inline void lstm_fwd_row(floating *g, const floating *bias, const floating *c_prev, floating *c,
                              floating *h, int H, int act, int ract) noexcept nogil:
    if floating is float: fr_lstm_fwd_row_f32(g, bias, c_prev, c, h, H, act, ract)
    else: fr_lstm_fwd_row_f64(g, bias, c_prev, c, h, H, act, ract)

cdef inline void lstm_bwd_row(const floating *g, const floating *c_prev, const floating *c,
                              const floating *dh, floating *dc, floating *dg, floating *tmp, int H,
                              int act, int ract) noexcept nogil:
    if floating is float: fr_lstm_bwd_row_f32(g, c_prev, c, dh, dc, dg, tmp, H, act, ract)
    else: fr_lstm_bwd_row_f64(g, c_prev, c, dh, dc, dg, tmp, H, act, ract)

cdef inline void gru_zr_row(floating *g, const floating *rec, const floating *bx, const floating *br,
                            int H, int ract) noexcept nogil:
    if floating is float: fr_gru_zr_row_f32(g, rec, bx, br, H, ract)
    else: fr_gru_zr_row_f64(g, rec, bx, br, H, ract)

cdef inline void gru_h_row(floating *g, const floating *b_h, const floating *h_prev, floating *h, int H,
                           int act) noexcept nogil:
    if floating is float: fr_gru_h_row_f32(g, b_h, h_prev, h, H, act)
    else: fr_gru_h_row_f64(g, b_h, h_prev, h, H, act)

cdef inline void gru_reset_after_fwd_row(floating *g, const floating *rec, const floating *bx,
                                         const floating *br, floating *rh, const floating *h_prev,
                                         floating *h, int H, int act, int ract) noexcept nogil:
    if floating is float: fr_gru_reset_after_fwd_row_f32(g, rec, bx, br, rh, h_prev, h, H, act, ract)
    else: fr_gru_reset_after_fwd_row_f64(g, rec, bx, br, rh, h_prev, h, H, act, ract)

cdef inline void gru_bwd_zh_row(const floating *g, const floating *h_prev, const floating *dh,
                                floating *dg, floating *dh_direct, int H, int act, int ract) noexcept nogil:
    if floating is float: fr_gru_bwd_zh_row_f32(g, h_prev, dh, dg, dh_direct, H, act, ract)
    else: fr_gru_bwd_zh_row_f64(g, h_prev, dh, dg, dh_direct, H, act, ract)

cdef inline void gru_bwd_r_row(const floating *g, const floating *a, const floating *b, floating *dg,
                               int H, int ract) noexcept nogil:
    if floating is float: fr_gru_bwd_r_row_f32(g, a, b, dg, H, ract)
    else: fr_gru_bwd_r_row_f64(g, a, b, dg, H, ract)

cdef inline void simple_fwd_row(floating *g, const floating *bias, floating *h, int H, int act) noexcept nogil:
    if floating is float: fr_simple_fwd_row_f32(g, bias, h, H, act)
    else: fr_simple_fwd_row_f64(g, bias, h, H, act)

cdef inline void transpose(int M, int N, const floating *src, long lds, floating *dst, long ldd) noexcept nogil:
    if floating is float: fr_transpose_f32(M, N, src, lds, dst, ldd)
    else: fr_transpose_f64(M, N, src, lds, dst, ldd)

cdef inline void colsum_add(floating *acc, const floating *x, int rows, int n, long ldx) noexcept nogil:
    if floating is float: fr_colsum_add_f32(acc, x, rows, n, ldx)
    else: fr_colsum_add_f64(acc, x, rows, n, ldx)

cdef inline void bwd_dh_row(floating *dh_t, const floating *dout, floating *dacc, floating *dh, int n) noexcept nogil:
    if floating is float: fr_bwd_dh_row_f32(dh_t, dout, dacc, dh, n)
    else: fr_bwd_dh_row_f64(dh_t, dout, dacc, dh, n)

cdef inline void gru_reset_after_bwd_row(const floating *g, const floating *h_prev, const floating *rh,
                                         const floating *dh, floating *dg, floating *dh_direct,
                                         floating *drec, int H, int act, int ract) noexcept nogil:
    if floating is float: fr_gru_reset_after_bwd_row_f32(g, h_prev, rh, dh, dg, dh_direct, drec, H, act, ract)
    else: fr_gru_reset_after_bwd_row_f64(g, h_prev, rh, dh, dg, dh_direct, drec, H, act, ract)
