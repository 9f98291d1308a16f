# _blas.pxd - the one door to BLAS: scipy-openblas32's CBLAS (row-major), over both float dtypes.
#
# gemm is fused over float/double so the time loops are written once.  `matmul` is what the loops call
# for one step: C := A @ op(B) + beta*C.  When A has one row (B == 1) it is a vector-matrix product, and
# neither OpenBLAS path fits: sgemm with M == 1 repacks B on every call (5-15x slower, DESIGN section 4)
# and sgemv wakes its thread pool for a few microseconds of work (measured 50x slower than one thread on
# a busy 2-core machine).  So one row goes to our own SIMD vecmat/matvec (gates.h), single-threaded;
# splitting the hidden units across threads for B == 1 is the job of the threaded kernels.
from cython cimport floating
from fastrnn._kernels._gates cimport fr_vecmat_f32, fr_vecmat_f64, fr_matvec_f32, fr_matvec_f64

cdef extern from "cblas.h" nogil:
    ctypedef int blasint
    cdef enum CBLAS_ORDER:
        CblasRowMajor
    cdef enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans
    void scipy_cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint M, blasint N, blasint K,
                           float alpha, const float *A, blasint lda, const float *B, blasint ldb,
                           float beta, float *C, blasint ldc)
    void scipy_cblas_dgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint M, blasint N, blasint K,
                           double alpha, const double *A, blasint lda, const double *B, blasint ldb,
                           double beta, double *C, blasint ldc)
    void scipy_cblas_sgemv(CBLAS_ORDER, CBLAS_TRANSPOSE, blasint M, blasint N, float alpha,
                           const float *A, blasint lda, const float *x, blasint incx, float beta,
                           float *y, blasint incy)
    void scipy_cblas_dgemv(CBLAS_ORDER, CBLAS_TRANSPOSE, blasint M, blasint N, double alpha,
                           const double *A, blasint lda, const double *x, blasint incx, double beta,
                           double *y, blasint incy)
    void scipy_openblas_set_num_threads(int)
    int scipy_openblas_get_num_threads()


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      const floating *A, int lda,   # IN  (M, K), or (K, M) when trans_a
                      const floating *B, int ldb,   # IN  (K, N), or (N, K) when trans_b
                      floating beta,
                      floating *C, int ldc          # IN/OUT (M, N): C := op(A) @ op(B) + beta*C
                      ) noexcept nogil:
    """C := op(A) @ op(B) + beta*C, row-major."""
    cdef CBLAS_TRANSPOSE ta = CblasTrans if trans_a else CblasNoTrans
    cdef CBLAS_TRANSPOSE tb = CblasTrans if trans_b else CblasNoTrans
    cdef int i, j
    if M == 0 or N == 0:
        return
    if K == 0:  # an empty sum: C := beta*C without reading garbage when beta == 0
        for i in range(M):
            for j in range(N):
                C[<Py_ssize_t>i * ldc + j] = beta * C[<Py_ssize_t>i * ldc + j] if beta != 0 else 0
        return
    if floating is float:
        scipy_cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc)
    else:
        scipy_cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc)


cdef inline void matmul(bint trans_b, int M, int N, int K,
                        const floating *A, int lda,  # IN  (M, K) rows lda apart
                        const floating *B, int ldb,  # IN  (K, N), or (N, K) when trans_b
                        floating beta,
                        floating *C, int ldc         # IN/OUT (M, N)
                        ) noexcept nogil:
    """C := A @ op(B) + beta*C; one row of A goes through fr_vecmat / fr_matvec."""
    if M == 1:
        if trans_b:   # y(N) := R(N, K) @ x(K)
            if floating is float: fr_matvec_f32(B, A, N, K, ldb, beta, C)
            else: fr_matvec_f64(B, A, N, K, ldb, beta, C)
        else:         # y(N) := x(K) @ R(K, N)
            if floating is float: fr_vecmat_f32(A, B, K, N, ldb, beta, C)
            else: fr_vecmat_f64(A, B, K, N, ldb, beta, C)
    else:
        gemm(False, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc)
