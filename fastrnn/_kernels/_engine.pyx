# cython: language_level=3
"""_engine.pyx - the compiled time loops of fastrnn: forward and BPTT of LSTM, GRU and SimpleRNN.

Design
------
Three tiers (as scikit-learn's Cython): the one-row gate math is C (gates.h); the nogil loops over time
steps and batch rows are here, fused over float/double; the Python side (fastrnn.functional) validates,
allocates every buffer once and calls `forward` / `backward` with a `Workspace` of arrays.  Nothing in a
time loop allocates; the GIL is released for the whole loop; all state lives in the caller's arrays, so
calls are reentrant.

Rows.  Everything aligned with the input is stored as a 2-D (N = B*T, width) array whose rows follow
the input's own layout: row(b, t) = b*T + t (batch-major) or t*B + b (time_major).  So the B rows of
time step t are `rs` rows apart (rs = T or 1) and one step is a strided matrix with ld = rs*width; this
is the "ld = T*G*H" trick: no transposes, and the hoisted input projection xp = x @ W is one GEMM.

    xp   (N, G*H)  IN: x @ W (bias not added);  OUT: post-activation gates (kept for backward).
                   The recurrent GEMM accumulates into it in place (beta = 1) where the cell allows.
    out  (N, H)    outputs in PROCESSING order: row(b, s) holds step s (s = T-1-t with go_backwards).
    hp   (N, H)    training: the state h entering the step at time t.  Inference: two (B, H) slots.
    hd   (N, H)    hp * recurrent_dropout_mask (training, only with that mask; else hd is hp).
    cp   (N, H)    LSTM: the cell state entering the step at time t (like hp).
    aux  (N, H)    GRU: reset_after -> rh = h_d @ R_h + b_rh; otherwise r * h_d (the GEMM input).

State slots.  slot(s) is where the state entering step s lives: hp rows of time t(s) when training
(so the saved sequence IS the state chain: no copies), a ping-pong pair otherwise, and the caller's
final-state array for s = T.

Masks (Keras semantics).  A masked step copies the state through and outputs the previous output row
(zeros at s = 0, or always zeros with zero_output_for_mask).  Backward mirrors it: a masked step has
zero gate gradients, passes dh/dc straight through and hands its output gradient to the previous
output (`dacc`), or drops it when outputs are zeroed.

Sizes.  BLAS here takes 32-bit ints, so _spec refuses problems with B*T*G*H >= 2**31 elements; below
that every offset computed in int stays in range.

Packed R.  For float32 on AVX2 with 2 <= B <= PACK_MAX_B and H <= PACK_MAX_H, `forward` packs R once per call into
16-column panels (gates.h, fr_pack_panels_f32_avx2) before the loop, and the full per-step product
h @ R (LSTM, SimpleRNN, GRU reset_after) runs on our own 6 x 16 FMA microkernel instead of sgemm, which
repacks R on every call (OpenBLAS has no pack-once API).  Only when OpenBLAS runs one thread: the
microkernel is single-threaded.  Loop.Rp is NULL otherwise (float64, no AVX2, B == 1, StepKernel, GRU
reset_after=False) and matmul/BLAS runs as before.

Backward does only the dh/dc recursion per step (one GEMM against R^T, two for GRU reset_after=False);
dW, dR, dx and the bias gradient are single big GEMMs/reductions after the loop (`gemm_tn`, `gemm_nt`).
"""
import numpy as np
cimport numpy as cnp
from cython cimport floating
from libc.string cimport memcpy, memset

from fastrnn._kernels._blas cimport gemm, matmul, scipy_openblas_set_num_threads, scipy_openblas_get_num_threads
from fastrnn._kernels._gates cimport fr_pack_panels_f32_avx2, fr_gemm_packed_f32_avx2
from fastrnn._kernels._gates cimport (dact, lstm_fwd_row, lstm_bwd_row, gru_zr_row, gru_reset_after_row,
                                     gru_h_row, gru_bwd_zh_row, gru_bwd_r_row, simple_fwd_row,
                                     fr_init_simd, fr_force_scalar, fr_simd_level)

cnp.import_array()
fr_init_simd()

# Cell and activation codes shared with fastrnn/_spec.py (activations: gates.h enum fr_act).
cdef enum:
    CELL_LSTM = 0
    CELL_GRU = 1
    CELL_SIMPLE = 2
CELLS = {"lstm": CELL_LSTM, "gru": CELL_GRU, "simple_rnn": CELL_SIMPLE}
ACTIVATIONS = {"tanh": 0, "sigmoid": 1, "hard_sigmoid": 2, "relu": 3, "linear": 4, "softsign": 5}


ctypedef struct Loop:
    # the problem
    int cell, T, B, H, G, reset_after, act, ract
    bint go_backwards, zero_output, time_major, training
    # forward arrays (see the module docstring); NULL where absent
    void *xp
    void *R
    void *Rp           # float32 R packed in 16-column panels, or NULL (module docstring: Packed R)
    void *Ap           # with Rp: scratch for the step's h_d in 6-row blocks
    void *bx
    void *br
    void *h0
    void *c0
    const unsigned char *mask
    void *rdmask
    void *out
    void *hT
    void *cT
    void *hp
    void *hd
    void *cp
    void *aux
    void *rec
    void *tmp
    # backward arrays
    void *dout
    void *dxp
    void *drec
    void *dh
    void *dc
    void *dht
    void *dhd
    void *dacc


cdef inline void *_ptr(object a) except? NULL:
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _fill(Loop *L, object ws, object spec) except *:
    L.cell = spec.cell_code
    L.T, L.B, L.H, L.G = spec.T, spec.B, spec.H, spec.G
    L.reset_after = spec.reset_after
    L.act, L.ract = spec.act_code, spec.ract_code
    L.go_backwards, L.zero_output = spec.go_backwards, spec.zero_output_for_mask
    L.time_major, L.training = spec.time_major, ws.training
    L.xp, L.R, L.bx, L.br = _ptr(ws.xp), _ptr(ws.R), _ptr(ws.bx), _ptr(ws.br)
    L.Rp = L.Ap = NULL
    L.h0, L.c0 = _ptr(ws.h0), _ptr(ws.c0)
    L.mask = <const unsigned char *>_ptr(ws.mask)
    L.rdmask = _ptr(ws.rdmask)
    L.out, L.hT, L.cT = _ptr(ws.out), _ptr(ws.hT), _ptr(ws.cT)
    L.hp, L.hd, L.cp, L.aux = _ptr(ws.hp), _ptr(ws.hd), _ptr(ws.cp), _ptr(ws.aux)
    L.rec, L.tmp = _ptr(ws.rec), _ptr(ws.tmp)
    L.dout, L.dxp, L.drec = _ptr(ws.dout), _ptr(ws.dxp), _ptr(ws.drec)
    L.dh, L.dc, L.dht, L.dhd, L.dacc = _ptr(ws.dh), _ptr(ws.dc), _ptr(ws.dht), _ptr(ws.dhd), _ptr(ws.dacc)


# ---------------------------------------------------------------------------------------------------
# indexing helpers

cdef inline Py_ssize_t _row(const Loop *L, int b, int t) noexcept nogil:
    """Row of (batch b, time t) in an input-aligned (N, width) array."""
    return <Py_ssize_t>t * L.B + b if L.time_major else <Py_ssize_t>b * L.T + t

cdef inline int _rs(const Loop *L) noexcept nogil:
    """Distance in rows between batch rows of one time step."""
    return 1 if L.time_major else L.T

cdef inline int _time(const Loop *L, int s) noexcept nogil:
    """Input time read by processing step s."""
    return L.T - 1 - s if L.go_backwards else s

cdef inline floating *_slot(const Loop *L, floating *seq, floating *final, floating *pingpong, int s,
                            int *ld) noexcept nogil:
    """Where the state entering step s lives (s == T: the final state); its row stride goes to ld."""
    if s == L.T:
        ld[0] = L.H
        return final
    if L.training:
        ld[0] = _rs(L) * L.H
        return seq + _row(L, 0, _time(L, s)) * L.H
    ld[0] = L.H
    return pingpong + (s % 2) * <Py_ssize_t>L.B * L.H

cdef inline void _copy_rows(floating *dst, int ldd, const floating *src, int lds, int rows, int n) noexcept nogil:
    cdef int b
    for b in range(rows):
        memcpy(dst + <Py_ssize_t>b * ldd, src + <Py_ssize_t>b * lds, n * sizeof(floating))

cdef inline void _mul_rows(floating *dst, int ldd, const floating *a, int lda, const floating *m, int rows,
                           int n) noexcept nogil:
    """dst := a * m, row by row (m is (rows, n) contiguous)."""
    cdef int b, j
    cdef floating *d
    cdef const floating *x
    cdef const floating *y
    for b in range(rows):
        d = dst + <Py_ssize_t>b * ldd
        x = a + <Py_ssize_t>b * lda
        y = m + <Py_ssize_t>b * n
        for j in range(n):
            d[j] = x[j] * y[j]


# ---------------------------------------------------------------------------------------------------
# forward

# The packed path (module docstring: Packed R): on by default; tests switch it off to compare.
cdef bint _pack_enabled = True
# Measured against sgemm (1 thread, 2-core AVX2 box, LSTM H = 256 / 512): B = 2: 2.2x, 4: 1.6x,
# 8: 1.23-1.27x, 16: 1.10-1.23x, then even at B = 20-24 and 0.93x at B = 32 (sgemm's repack is amortised
# over more rows, and its kernel beats ours); H = 1024 (the packed R, 16 MB, streams from memory
# either way) measured 0.93x at B = 32.  So the packed path is for small batches only.
cdef int PACK_MAX_B = 16
cdef int PACK_MAX_H = 512

cdef inline void _rmatmul(const Loop *L, int M, int N, int K,
                          const floating *A, int lda,   # IN  (M, K) rows lda apart (the state h_d)
                          const floating *R, int ldr,   # IN  (K, N): the full recurrent kernel
                          floating beta,
                          floating *C, int ldc          # IN/OUT (M, N): C := A @ R + beta*C
                          ) noexcept nogil:
    """The full recurrent product of one step: on the packed R when forward packed it, else matmul."""
    if floating is float:
        if L.Rp != NULL:
            fr_gemm_packed_f32_avx2(M, N, K, A, lda, <const float *>L.Rp, beta, C, ldc, <float *>L.Ap)
            return
    matmul(False, M, N, K, A, lda, R, ldr, beta, C, ldc)


cdef void _forward(Loop *L, floating *xp) noexcept nogil:
    """outputs, states := RNN(xp, R, bias, h0, c0, mask, rdmask); xp := post-activation gates."""
    cdef int T = L.T, B = L.B, H = L.H, GH = L.G * L.H, rs = _rs(L)
    cdef int s, t, b, ldp, ldn, ldcp, ldcn, ldd, ldg = rs * GH
    cdef floating *R = <floating *>L.R
    cdef floating *bx = <floating *>L.bx
    cdef floating *br = <floating *>L.br
    cdef floating *rdm = <floating *>L.rdmask
    cdef floating *out = <floating *>L.out
    cdef floating *rec = <floating *>L.rec
    cdef floating *hpp
    cdef floating *hnp
    cdef floating *cpp = NULL
    cdef floating *cnp_ = NULL
    cdef floating *hdp
    cdef floating *auxp = NULL
    cdef floating *g
    cdef floating *gb
    cdef floating *ob
    cdef int lda = 0
    cdef bint m
    cdef bint is_lstm = L.cell == CELL_LSTM, is_gru = L.cell == CELL_GRU

    # the state entering step 0 is the initial state (copied into its slot so every step reads a slot)
    hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, <floating *>L.hp, 0, &ldp)
    _copy_rows(hpp, ldp, <floating *>L.h0, H, B, H)
    if is_lstm:
        cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, <floating *>L.cp, 0, &ldcp)
        _copy_rows(cpp, ldcp, <floating *>L.c0, H, B, H)

    for s in range(T):
        t = _time(L, s)
        hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, <floating *>L.hp, s, &ldp)
        hnp = _slot(L, <floating *>L.hp, <floating *>L.hT, <floating *>L.hp, s + 1, &ldn)
        if is_lstm:
            cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, <floating *>L.cp, s, &ldcp)
            cnp_ = _slot(L, <floating *>L.cp, <floating *>L.cT, <floating *>L.cp, s + 1, &ldcn)
        g = xp + _row(L, 0, t) * GH

        # h_d: the state as the recurrent matmul sees it
        if rdm != NULL:
            if L.training:
                hdp = <floating *>L.hd + _row(L, 0, t) * H
                ldd = rs * H
            else:
                hdp = <floating *>L.hd
                ldd = H
            _mul_rows(hdp, ldd, hpp, ldp, rdm, B, H)
        else:
            hdp = hpp
            ldd = ldp
        if is_gru and L.aux != NULL:
            if L.training:
                auxp = <floating *>L.aux + _row(L, 0, t) * H
                lda = rs * H
            else:
                auxp = <floating *>L.aux
                lda = H

        # recurrent GEMM(s) and the fused gate math, row by row
        if is_gru and L.reset_after:
            _rmatmul(L, B, GH, H, hdp, ldd, R, GH, 0, rec, GH)
        elif is_gru:
            matmul(False, B, 2 * H, H, hdp, ldd, R, GH, 1, g, ldg)
            for b in range(B):
                gru_zr_row(g + b * ldg, <floating *>NULL, bx, <floating *>NULL, H, L.ract)
                _mul_rows(auxp + b * lda, lda, g + b * ldg + H, ldg, hdp + b * ldd, 1, H)
            matmul(False, B, H, H, auxp, lda, R + 2 * H, GH, 1, g + 2 * H, ldg)
        else:
            _rmatmul(L, B, GH, H, hdp, ldd, R, GH, 1, g, ldg)

        for b in range(B):
            m = L.mask == NULL or L.mask[<Py_ssize_t>b * T + t] != 0
            ob = out + _row(L, b, s) * H
            if not m:
                memcpy(hnp + b * ldn, hpp + b * ldp, H * sizeof(floating))
                if is_lstm:
                    memcpy(cnp_ + b * ldcn, cpp + b * ldcp, H * sizeof(floating))
                if L.zero_output or s == 0:
                    memset(ob, 0, H * sizeof(floating))
                else:
                    memcpy(ob, out + _row(L, b, s - 1) * H, H * sizeof(floating))
                continue
            gb = g + b * ldg
            if is_lstm:
                lstm_fwd_row(gb, bx, cpp + b * ldcp, cnp_ + b * ldcn, hnp + b * ldn, H, L.act, L.ract)
            elif is_gru and L.reset_after:
                gru_zr_row(gb, rec + b * GH, bx, br, H, L.ract)
                gru_reset_after_row(gb, rec + b * GH, bx, br, auxp + b * lda, H)
                gru_h_row(gb, <floating *>NULL, hpp + b * ldp, hnp + b * ldn, H, L.act)
            elif is_gru:
                gru_h_row(gb, bx + 2 * H if bx != NULL else NULL, hpp + b * ldp, hnp + b * ldn, H, L.act)
            else:
                simple_fwd_row(gb, bx, hnp + b * ldn, H, L.act)
            memcpy(ob, hnp + b * ldn, H * sizeof(floating))


def forward(ws, spec):
    """Run the forward time loop over the Workspace `ws` (arrays prepared by fastrnn.functional).

    IN ws.xp (N, G*H) = x @ W, ws.R, ws.bx, ws.br, ws.h0, ws.c0, ws.mask (B, T) uint8, ws.rdmask (B, H);
    OUT ws.out (N, H), ws.hT, ws.cT, and when ws.training the saved gates (in ws.xp), hp, hd, cp, aux.
    """
    cdef Loop L
    cdef cnp.ndarray packed, ascratch
    _fill(&L, ws, spec)
    if ws.xp.dtype == np.float32:
        if (_pack_enabled and fr_simd_level() and 2 <= L.B <= PACK_MAX_B and L.H <= PACK_MAX_H and L.T >= 2
                and (L.cell != CELL_GRU or L.reset_after) and scipy_openblas_get_num_threads() == 1):
            # R never changes in the loop: pack it once (before the loop, so no allocation inside it)
            packed = np.empty(((L.G * L.H + 15) // 16 * 16) * L.H, np.float32)
            ascratch = np.empty(((L.B + 5) // 6 * 6) * L.H, np.float32)
            L.Rp, L.Ap = cnp.PyArray_DATA(packed), cnp.PyArray_DATA(ascratch)
            with nogil:
                fr_pack_panels_f32_avx2(<const float *>L.R, L.H, L.G * L.H, L.G * L.H, <float *>L.Rp)
        with nogil:
            _forward[float](&L, <float *>L.xp)
    else:
        with nogil:
            _forward[double](&L, <double *>L.xp)


# ---------------------------------------------------------------------------------------------------
# backward (BPTT): the dh/dc recursion only

cdef void _backward(Loop *L, floating *xp) noexcept nogil:
    """dxp, drec := dL/d(pre-activations); dh, dc := dL/d(initial state).  Needs a training forward."""
    cdef int T = L.T, B = L.B, H = L.H, GH = L.G * L.H, rs = _rs(L)
    cdef int s, t, b, j, ldp, ldn, ldcp, ldcn, ldd = 0, lda = 0, ldg = rs * GH
    cdef floating *R = <floating *>L.R
    cdef floating *rdm = <floating *>L.rdmask
    cdef floating *dout = <floating *>L.dout
    cdef floating *dh = <floating *>L.dh
    cdef floating *dc = <floating *>L.dc
    cdef floating *dht = <floating *>L.dht
    cdef floating *dhd = <floating *>L.dhd
    cdef floating *dacc = <floating *>L.dacc
    cdef floating *tmp = <floating *>L.tmp
    cdef floating *hpp
    cdef floating *cpp = NULL
    cdef floating *cnp_ = NULL
    cdef floating *hdp
    cdef floating *auxp = NULL
    cdef floating *g
    cdef floating *dg
    cdef floating *drec = NULL
    cdef floating *gb
    cdef floating *dgb
    cdef floating *db_
    cdef floating *pb
    cdef const floating *ob
    cdef bint m
    cdef bint is_lstm = L.cell == CELL_LSTM, is_gru = L.cell == CELL_GRU
    cdef floating *dsrc

    memset(dacc, 0, <Py_ssize_t>B * H * sizeof(floating))
    for s in range(T - 1, -1, -1):
        t = _time(L, s)
        hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, <floating *>L.hp, s, &ldp)
        if is_lstm:
            cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, <floating *>L.cp, s, &ldcp)
            cnp_ = _slot(L, <floating *>L.cp, <floating *>L.cT, <floating *>L.cp, s + 1, &ldcn)
        if rdm != NULL:
            hdp = <floating *>L.hd + _row(L, 0, t) * H
            ldd = rs * H
        else:
            hdp = hpp
            ldd = ldp
        if is_gru:
            auxp = <floating *>L.aux + _row(L, 0, t) * H
            lda = rs * H
        g = xp + _row(L, 0, t) * GH
        dg = <floating *>L.dxp + _row(L, 0, t) * GH
        if L.drec != NULL:
            drec = <floating *>L.drec + _row(L, 0, t) * GH

        # gate gradients, row by row; dh becomes the direct (non-GEMM) part of dL/dh_prev
        for b in range(B):
            m = L.mask == NULL or L.mask[<Py_ssize_t>b * T + t] != 0
            ob = dout + _row(L, b, s) * H
            dgb = dg + b * ldg
            db_ = dht + b * H
            for j in range(H):
                db_[j] = ob[j] + dacc[b * H + j]   # dL/d(output of step s), all paths
            if not m:
                memset(dgb, 0, GH * sizeof(floating))
                if drec != NULL:
                    memset(drec + b * ldg, 0, GH * sizeof(floating))
                if L.zero_output:
                    memset(dacc + b * H, 0, H * sizeof(floating))
                else:
                    memcpy(dacc + b * H, db_, H * sizeof(floating))
                continue
            memset(dacc + b * H, 0, H * sizeof(floating))
            for j in range(H):
                db_[j] += dh[b * H + j]
            gb = g + b * ldg
            if is_lstm:
                lstm_bwd_row(gb, cpp + b * ldcp, cnp_ + b * ldcn, db_, dc + b * H, dgb, tmp + b * 2 * H,
                             H, L.act, L.ract)
                memset(dh + b * H, 0, H * sizeof(floating))
            elif is_gru:
                gru_bwd_zh_row(gb, hpp + b * ldp, db_, dgb, dh + b * H, H, L.act, L.ract)
                if L.reset_after:
                    gru_bwd_r_row(gb, dgb + 2 * H, auxp + b * lda, dgb, H, L.ract)
                    pb = drec + b * ldg
                    memcpy(pb, dgb, 2 * H * sizeof(floating))
                    for j in range(H):
                        pb[2 * H + j] = dgb[2 * H + j] * gb[H + j]
            else:
                dact(L.act, dgb, gb, db_, H)
                memset(dh + b * H, 0, H * sizeof(floating))

        # dL/dh_prev += (gate grads) @ R^T, through the recurrent dropout mask
        if is_gru and not L.reset_after:
            # d(r*h_d) = dg_h @ R_h^T; then dr, and dh_d = d(r*h_d)*r + dg_zr @ R_zr^T
            matmul(True, B, H, H, dg + 2 * H, ldg, R + 2 * H, GH, 0, dhd, H)
            for b in range(B):
                if L.mask == NULL or L.mask[<Py_ssize_t>b * T + t] != 0:
                    gru_bwd_r_row(g + b * ldg, dhd + b * H, hdp + b * ldd, dg + b * ldg, H, L.ract)
                for j in range(H):
                    dhd[b * H + j] *= g[b * ldg + H + j]
            matmul(True, B, H, 2 * H, dg, ldg, R, GH, 1, dhd, H)
            dsrc = dhd
        else:
            dsrc = drec if (is_gru and L.reset_after) else dg
            if rdm == NULL:
                matmul(True, B, H, GH, dsrc, ldg, R, GH, 1, dh, H)
                continue
            matmul(True, B, H, GH, dsrc, ldg, R, GH, 0, dhd, H)
            dsrc = dhd
        for b in range(B):
            for j in range(H):
                dh[b * H + j] += dsrc[b * H + j] * (rdm[b * H + j] if rdm != NULL else <floating>1)


def backward(ws, spec):
    """Run BPTT over a Workspace filled by a training `forward`.

    IN ws.dout (N, H) (processing order, like ws.out); IN/OUT ws.dh, ws.dc (B, H): dL/d(final state) in,
    dL/d(initial state) out; OUT ws.dxp (N, G*H) pre-activation gradients (input side), ws.drec (GRU
    reset_after: recurrent side).
    """
    cdef Loop L
    _fill(&L, ws, spec)
    if ws.xp.dtype == np.float32:
        with nogil:
            _backward[float](&L, <float *>L.xp)
    else:
        with nogil:
            _backward[double](&L, <double *>L.xp)


# ---------------------------------------------------------------------------------------------------
# the big GEMMs around the loop, through the same BLAS

cdef int _ld(cnp.ndarray arr) except -1:
    """Leading dimension of a 2-D array whose rows are contiguous (BLAS's lda)."""
    cdef Py_ssize_t item = arr.itemsize
    if arr.shape[0] <= 1 or arr.shape[1] == 0:
        return max(arr.shape[1], 1)  # strides of a single or empty row carry no information
    if (arr.shape[1] > 1 and arr.strides[1] != item) or arr.strides[0] < item * arr.shape[1]:
        raise ValueError(f"gemm_into: expected rows of contiguous elements, got strides {(<object>arr).strides}")
    return arr.strides[0] // item


def gemm_into(cnp.ndarray A, cnp.ndarray B, cnp.ndarray C, bint trans_a=False, bint trans_b=False,
              double beta=0.0):
    """C := op(A) @ op(B) + beta*C for 2-D arrays of one float dtype whose rows are contiguous
    (row strides may be larger: column blocks of a wider array are fine)."""
    for arr in (A, B, C):
        if arr.ndim != 2 or arr.dtype != C.dtype or C.dtype not in (np.float32, np.float64):
            raise ValueError("gemm_into: expected 2-D float32/float64 arrays of one dtype")
    cdef int M = C.shape[0], N = C.shape[1]
    cdef int K = A.shape[0] if trans_a else A.shape[1]
    if (A.shape[1] if trans_a else A.shape[0]) != M or (B.shape[1] if trans_b else B.shape[0]) != K \
            or (B.shape[0] if trans_b else B.shape[1]) != N:
        raise ValueError(f"gemm_into: shapes {(<object>A).shape} {(<object>B).shape} -> {(<object>C).shape} do not chain")
    if M == 0 or N == 0:
        return
    cdef int lda = _ld(A), ldb = _ld(B), ldc = _ld(C)
    cdef void *a = cnp.PyArray_DATA(A)
    cdef void *b = cnp.PyArray_DATA(B)
    cdef void *c = cnp.PyArray_DATA(C)
    if C.dtype == np.float32:
        with nogil:
            if trans_a:
                gemm[float](True, trans_b, M, N, K, <float *>a, lda, <float *>b, ldb, <float>beta, <float *>c, ldc)
            else:  # one row goes to the SIMD vecmat (see _blas.pxd)
                matmul[float](trans_b, M, N, K, <float *>a, lda, <float *>b, ldb, <float>beta, <float *>c, ldc)
    else:
        with nogil:
            if trans_a:
                gemm[double](True, trans_b, M, N, K, <double *>a, lda, <double *>b, ldb, beta, <double *>c, ldc)
            else:
                matmul[double](trans_b, M, N, K, <double *>a, lda, <double *>b, ldb, beta, <double *>c, ldc)


# ---------------------------------------------------------------------------------------------------
# streaming: one time step per call, everything prepared once

cdef class StepKernel:
    """One inference step at a time over a T=1 Workspace: xp := x_t @ W, then the forward loop for one
    step, the new state becoming the next step's initial state (two state buffers swap roles, no copy
    back).  Built once by fastrnn.layers.Stream; `step` does no allocation and no attribute lookups.

    IN x (B, I) C-contiguous, the workspace's dtype; OUT the workspace's `out` (B, H) and the state
    buffers (`current()` says which holds h, c)."""

    cdef Loop L
    cdef object ws
    cdef object spec
    cdef void *W
    cdef int n_in  # not `I`: complex.h defines I as a macro
    cdef bint f32
    cdef bint flipped

    def __init__(self, ws, spec, W):
        if spec.T != 1 or ws.training:
            raise ValueError("StepKernel: expected an inference workspace with T == 1")
        _fill(&self.L, ws, spec)
        self.ws, self.spec = ws, spec
        self.W = cnp.PyArray_DATA(<cnp.ndarray>W)
        self.n_in = spec.I
        self.f32 = ws.xp.dtype == np.float32
        self.flipped = False

    def step(self, cnp.ndarray x):
        """Advance every row by one step with input x (B, I)."""
        cdef Loop *L = &self.L
        cdef void *xin = cnp.PyArray_DATA(x)
        cdef void *tmp
        cdef int GH = L.G * L.H
        with nogil:
            if self.f32:
                matmul[float](False, L.B, GH, self.n_in, <float *>xin, self.n_in, <float *>self.W, GH, 0,
                              <float *>L.xp, GH)
                _forward[float](L, <float *>L.xp)
            else:
                matmul[double](False, L.B, GH, self.n_in, <double *>xin, self.n_in, <double *>self.W, GH, 0,
                               <double *>L.xp, GH)
                _forward[double](L, <double *>L.xp)
            tmp = L.h0
            L.h0 = L.hT
            L.hT = tmp
            if L.c0 != NULL:
                tmp = L.c0
                L.c0 = L.cT
                L.cT = tmp
        self.flipped = not self.flipped

    def current(self):
        """(h, c) arrays holding the state after the last step (c is None without a cell state)."""
        ws = self.ws
        if self.flipped:
            return ws.hT, ws.cT
        return ws.h0, ws.c0


# ---------------------------------------------------------------------------------------------------
# threads and SIMD

def set_blas_threads(int n):
    scipy_openblas_set_num_threads(n)

def get_blas_threads():
    return scipy_openblas_get_num_threads()

def simd_level():
    """1 when the float32 gate math runs on AVX2/FMA, 0 on the portable path."""
    return fr_simd_level()

def packed_gemm(on=None):
    """Whether float32 forward uses the packed-R microkernel when it applies (module docstring);
    `on` switches it (tests, benchmarks).  Returns the setting in force."""
    global _pack_enabled
    if on is not None:
        _pack_enabled = bool(on)
    return _pack_enabled

def force_scalar(bint on):
    """Pin the portable gate math (for tests that compare both paths)."""
    fr_force_scalar(on)
