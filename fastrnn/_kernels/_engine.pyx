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
    hd   (N, H)    hp * recurrent_dropout_mask (only with that mask; else hd is hp).  Inference: two
                   (B, H) slots, like hp.
    cp   (N, H)    LSTM: the cell state entering the step at time t (like hp).
    aux  (N, H)    GRU: reset_after -> rh = h_d @ R_h + b_rh; otherwise r * h_d (the GEMM input).

State slots.  slot(s) is where the state entering step s lives: hp rows of time t(s) when training
(so the saved sequence IS the state chain: no copies), a ping-pong pair otherwise, and the caller's
final-state array for s = T.  Output rows as state.  An inference call without a mask (every step's
output row is its new h) writes each step's h straight into out's row s and reads it back from there
as the next step's state (rows rs*H apart), instead of writing a slot and copying it to out; the
final state is copied from out's last rows once.  Same bits; simple_rnn t28-b64-h64 forward, on/off
in one process: 0.85-0.95 in 5 of 7 runs (1 and 2 threads), the rest inside the noise (NOTES 51).

Masks (Keras semantics).  A masked step copies the state through and outputs the previous output row
(zeros at s = 0, or always zeros with zero_output_for_mask).  Backward mirrors it: a masked step has
zero gate gradients, passes dh/dc straight through and hands its output gradient to the previous
output (`dacc`), or drops it when outputs are zeroed.

Bias gradient.  db is the column sum of dxp (and, GRU reset_after, of drec), so `backward` adds each
step's rows of gate gradients into Loop.dbias while they are still in cache (fr_colsum_add), instead of
a NumPy sum over all N rows afterwards, which re-read N * G*H floats from L3 or memory (lstm
t28-b64-h64: ~110 us of a 2.6 ms training call; bench/NOTES.md 45).  The batch split's parts each sum
into their own row of partials, added in part order (so the result does not depend on which thread
ran what).  The hidden split (B == 1) sums its T rows once after the loop instead: they are few and
still in cache, and adding each slice's few columns every step cost more (gru t100-b1-h128: +60-80 us
a call, against +0-7 for the sum after the loop; NOTES 45).

Sizes.  BLAS here takes 32-bit ints, so _spec refuses problems with B*T*G*H >= 2**31 elements; below
that every offset computed in int stays in range.

Packed R.  When the plan says so (fastrnn._dispatch.cpu_plan: float32 on AVX2, H <= 1024, T >= 2, not
GRU reset_after=False, and for the forward 2..32 batch rows per thread or G*H >= 512 columns), `forward`
packs R once per call into 16-column panels (gates.h, fr_pack_panels_f32_avx2) before the loop, and the
full per-step product h @ R runs on our own FMA microkernel (fr_gemm_packed_f32: 6 x 16 tiles on AVX2,
up to 8 x 48 on AVX-512F, picked at run time in gates.c) instead of sgemm, which repacks R on every
call (OpenBLAS has no pack-once API).  `backward` does the same for its dG @ R^T with R^T packed
(fr_pack_panels_t_f32_avx2).  Loop.Rp holds the call's packed matrix (R forward, R^T backward); NULL
means matmul/BLAS runs.  With one row (B == 1, G*H >= 512) the forward packs R instead into 64-column
vector panels (Loop.Rv, fr_pack_vec_panels_f32_avx2; the hidden split packs its slices so too), which
the one-row product streams sequentially (fr_vecmat_panels_f32).  A caller that keeps the packs
(`forward`'s packs: fastrnn.functional.prepare, a built-in cell's inference calls) packs each layout
once for many calls, and then one row takes the vector panels at any width and at T = 1.

Serpentine.  The one-row product reads all of R (or the slice) every step, and once that is about the
size of L2, a plain LRU cache evicts each panel just before the next step asks for it again: every
step streams everything from L3.  So odd steps visit the vector panels in reverse order (the panels are
independent column blocks: the results are bit for bit the same), and each step starts on the panels
the previous one left in L2.  A streaming StepKernel alternates per call (Loop.parity).  C harness on
a 2-core Xeon (2 MiB L2), 2 MiB of panels: 44-98 -> 31-67 us a product; LSTM H=512, 1 thread: 15%
faster (bench/NOTES.md 32).

Threads.  The plan also says how the loop is split over fastrnn's pool (pool.h): by batch rows (each
part runs the loop on its rows; forward and backward) or, for the forward of B <= 4, by hidden units
with one barrier per step.  See the "threads" section below.  OpenBLAS runs one thread, always.

Backward does only the dh/dc recursion per step (one GEMM against R^T, two for GRU reset_after=False);
dW, dR, dx and the bias gradient are single big GEMMs/reductions after the loop (`gemm_into`).

Hoisted GEMMs.  `gemm_into` (the input projection x @ W, and dW, dR, dx) runs on the same microkernel
at simd level 2 (float32), packing op(B) per K block and part and op(A) in L2-sized row chunks
(`_packed_gemm_block`), or reading B in place for few rows of A; elsewhere it is one 1-thread BLAS
call per part.  OpenBLAS's kernels are whatever its build or OPENBLAS_CORETYPE chose (bench/NOTES.md 35).
One exception to hoisting (DESIGN.md 4 hoists every projection): at B == 1 on AVX-512F the plan may move
the projection into the loop, 8 steps ahead, where its FMAs fill the bandwidth-bound product's idle
slots ("Fused projection" below; plan.forward_fused).

Concatenated product (plan.forward_concat: B >= 2, LSTM, a narrow input, AVX2).  A hoisted
x @ W of K = I <= 64 runs well below the peak and sends xp through memory; instead each step's product
is [x_t | h_d] @ [W; R] in one microkernel pass of K = I + H (beta 0) on [W; R] packed once per call
(_pack_concat), the step's input rows and h_d copied side by side into Loop.Acat first.  Training
forwards take it too (the plan does not depend on training), so the saved gates are the same numbers;
backward's dW = x^T @ dG and dx are as before.
"""
import numpy as np
from fastrnn import _scratch
cimport numpy as cnp
from cython cimport floating
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.unistd cimport usleep

from fastrnn._kernels._blas cimport gemm, matmul, scipy_openblas_set_num_threads, scipy_openblas_get_num_threads
from fastrnn._kernels._gates cimport (fr_pack_panels_f32_avx2, fr_pack_panels_t_f32_avx2,
                                     fr_gemm_packed_f32, fr_pack_vec_panels_f32_avx2,
                                     fr_vecmat_panels_f32, FR_VEC_PACKED_SIZE, FR_PACKED_A_SIZE,
                                     fr_pack_a_f32_avx512, fr_gemm_prepacked_f32_avx512, fr_pack_a_f32_avx2,
                                     fr_gemm_prepacked_f32_avx2, fr_next_panel_prefetch, FR_PROJ_ROWS,
                                     fr_proj_pack_a_f32, fr_vecmat_proj_panels_f32_avx512,
                                     fr_proj_panels_f32_avx512)
from fastrnn._kernels._pool cimport (fr_pool_run, fr_pool_run_adaptive, fr_pool_adaptive_solo_calls, fr_pool_adaptive,
                                    fr_pool_parts, fr_pool_barrier, fr_pool_stats,
                                    fr_pool_set_host, fr_pool_use_host)
from fastrnn._kernels._gates cimport (bwd_dh_row, colsum_add, dact, lstm_fwd_row, lstm_bwd_row, gru_zr_row, gru_reset_after_fwd_row,
                                     gru_h_row, gru_bwd_zh_row, gru_bwd_r_row, gru_reset_after_bwd_row, simple_fwd_row, transpose,
                                     fr_init_simd, fr_force_scalar, fr_limit_simd, fr_simd_level)

cnp.import_array()
fr_init_simd()

# Cell and activation codes shared with fastrnn/_spec.py (activations: gates.h enum fr_act).
cdef enum:
    CELL_LSTM = 0
    CELL_GRU = 1
    CELL_SIMPLE = 2
CELLS = {"lstm": CELL_LSTM, "gru": CELL_GRU, "simple_rnn": CELL_SIMPLE}

# Job.pack: what the hidden split's first step copies into its per-slice buffers (_hsplit_pack).
cdef enum:
    PACK_WEIGHTS = 1   # R_k (and W_k) into Job.pk
    PACK_BIASES = 2    # the bias slices into Job.vec
    PACK_ALL = 3
ACTIVATIONS = {"tanh": 0, "sigmoid": 1, "hard_sigmoid": 2, "relu": 3, "linear": 4, "softsign": 5}


ctypedef struct Loop:
    # the problem
    int cell, T, B, H, G, reset_after, act, ract
    int Bs             # batch rows per time step in the arrays (B, or the full batch for a sub-batch)
    bint go_backwards, zero_output, time_major, training
    # forward arrays (see the module docstring); NULL where absent
    void *xp
    void *R
    void *Rp           # float32 R packed in 16-column panels, or NULL (module docstring: Packed R)
    void *Rv           # B == 1: float32 R packed in 64-column vector panels, or NULL (likewise)
    void *Ap           # with Rp: scratch for the step's h_d in row blocks (FR_PACKED_A_SIZE)
    const void *xcat   # float32, Concatenated product (Rp then holds [W; R]'s panels): the input rows
                       # (Bs*T, I) in xp's layout; NULL: the projection is hoisted
    void *Acat         # ... scratch for the step's [x_t | h_d] rows (B, I + H)
    int xcat_k         # ... I (not `I`: complex.h defines it as a macro)
    int parity         # added to the step index for the serpentine order (StepKernel: its call count)
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
    void *dbias        # backward: += each step's dG rows, and at +G*H its drec rows (GRU); or NULL
    Py_ssize_t dbias_ld   # elements from one batch part's dbias to the next


cdef inline void *_ptr(object a) except? NULL:
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _fill(Loop *L, object ws, object spec) except *:
    L.cell = spec.cell_code
    L.T, L.B, L.H, L.G = spec.T, spec.B, spec.H, spec.G
    L.Bs = spec.B
    L.reset_after = spec.reset_after
    L.act, L.ract = spec.act_code, spec.ract_code
    L.go_backwards, L.zero_output = spec.go_backwards, spec.zero_output_for_mask
    L.time_major, L.training = spec.time_major, ws.training
    L.xp, L.R, L.bx, L.br = _ptr(ws.xp), _ptr(ws.R), _ptr(ws.bx), _ptr(ws.br)
    L.Rp = L.Ap = L.Rv = L.Acat = NULL
    L.xcat = NULL
    L.xcat_k = 0
    L.parity = 0
    L.h0, L.c0 = _ptr(ws.h0), _ptr(ws.c0)
    L.mask = <const unsigned char *>_ptr(ws.mask)
    L.rdmask = _ptr(ws.rdmask)
    L.out, L.hT, L.cT = _ptr(ws.out), _ptr(ws.hT), _ptr(ws.cT)
    L.hp, L.hd, L.cp, L.aux = _ptr(ws.hp), _ptr(ws.hd), _ptr(ws.cp), _ptr(ws.aux)
    L.rec, L.tmp = _ptr(ws.rec), _ptr(ws.tmp)
    L.dout, L.dxp, L.drec = _ptr(ws.dout), _ptr(ws.dxp), _ptr(ws.drec)
    L.dh, L.dc, L.dht, L.dhd, L.dacc = _ptr(ws.dh), _ptr(ws.dc), _ptr(ws.dht), _ptr(ws.dhd), _ptr(ws.dacc)
    L.dbias, L.dbias_ld = NULL, 0   # backward() points it at db or its parts' partial sums


# ---------------------------------------------------------------------------------------------------
# indexing helpers

cdef inline Py_ssize_t _row(const Loop *L, int b, int t) noexcept nogil:
    """Row of (batch b, time t) in an input-aligned (N, width) array."""
    return <Py_ssize_t>t * L.Bs + b if L.time_major else <Py_ssize_t>b * L.T + t

cdef inline int _rs(const Loop *L) noexcept nogil:
    """Distance in rows between batch rows of one time step."""
    return 1 if L.time_major else L.T

cdef inline int _time(const Loop *L, int s) noexcept nogil:
    """Input time read by processing step s."""
    return L.T - 1 - s if L.go_backwards else s

cdef inline floating *_slot(const Loop *L, floating *seq, floating *final, int s, int *ld) noexcept nogil:
    """Where the state entering step s lives (s == T: the final state); its row stride goes to ld.
    seq: the saved sequence (training) or a ping-pong pair of B rows (inference)."""
    if s == L.T:
        ld[0] = L.H
        return final
    if L.training:
        ld[0] = _rs(L) * L.H
        return seq + _row(L, 0, _time(L, s)) * L.H
    ld[0] = L.H
    return seq + (s % 2) * <Py_ssize_t>L.B * L.H

cdef inline floating *_hd_slot(const Loop *L, floating *hd, int s, int *ld) noexcept nogil:
    """Where h_d (the state times the recurrent dropout mask) of step s lives: the saved row of time
    t(s) when training, else a ping-pong pair (so a step may write the next h_d while others read this)."""
    if L.training:
        ld[0] = _rs(L) * L.H
        return hd + _row(L, 0, _time(L, s)) * L.H
    ld[0] = L.H
    return hd + (s % 2) * <Py_ssize_t>L.B * L.H


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

cdef int _h_in_out = 1     # see Output rows as state in the module docstring; `h_in_out(on)` switches it
cdef int _serpentine = 1   # see Serpentine in the module docstring; `serpentine(on)` switches it (A/B runs)


cdef inline void _rmatmul(const Loop *L, int M, int N, int K,
                          const floating *A, int lda,   # IN  (M, K) rows lda apart (the state h_d)
                          const floating *R, int ldr,   # IN  (K, N): the full recurrent kernel
                          floating beta,
                          floating *C, int ldc,         # IN/OUT (M, N): C := A @ R + beta*C
                          int rev                       # IN  odd steps: vector panels in reverse order
                          ) noexcept nogil:
    """The full recurrent product of one step: on the packed R when forward packed it, else matmul.
    One row streams R's vector panels forward on even steps and backward on odd ones (Serpentine, in
    the module docstring)."""
    if floating is float:
        if L.Rv != NULL:   # B == 1 (the plan packs vector panels for one row only)
            fr_vecmat_panels_f32(A, <const float *>L.Rv, K, N, beta, C, rev & _serpentine)
            return
        if L.Rp != NULL:
            fr_gemm_packed_f32(M, N, K, A, lda, <const float *>L.Rp, beta, C, ldc, <float *>L.Ap)
            return
    matmul(False, M, N, K, A, lda, R, ldr, beta, C, ldc)


cdef inline void _rmatmul_t(const Loop *L, int M, int N, int K,
                            const floating *A, int lda,   # IN  (M, K) rows lda apart (gate gradients)
                            const floating *R, int ldr,   # IN  (N, K): the full recurrent kernel
                            floating beta,
                            floating *C, int ldc          # IN/OUT (M, N): C := A @ R^T + beta*C
                            ) noexcept nogil:
    """Backward's per-step product: on R^T packed by `backward` (in Loop.Rp) when the plan packs, else BLAS."""
    if floating is float:
        if L.Rp != NULL:
            fr_gemm_packed_f32(M, N, K, A, lda, <const float *>L.Rp, beta, C, ldc, <float *>L.Ap)
            return
    matmul(True, M, N, K, A, lda, R, ldr, beta, C, ldc)


cdef inline void _concat_product(const Loop *L, int t,
                                 const floating *hdp, int ldd,   # IN  the step's h_d (B, H) rows ldd apart
                                 floating *g, int ldg            # OUT (B, G*H) := [x_t | h_d] @ [W; R]
                                 ) noexcept nogil:
    """Concatenated product (float32 only; Loop.xcat set): the step's pre-activations from its input rows
    and h_d in ONE microkernel pass of K = I + H over [W; R]'s panels (Loop.Rp), instead of a hoisted
    x @ W that the step adds to (see `forward`).  [x_t | h_d] is copied row by row into Loop.Acat."""
    cdef int b, ni = L.xcat_k, K = L.xcat_k + L.H
    cdef float *A = <float *>L.Acat
    if floating is float:
        for b in range(L.B):
            memcpy(A + b * K, <const float *>L.xcat + _row(L, b, t) * ni, ni * sizeof(float))
            memcpy(A + b * K + ni, hdp + b * ldd, L.H * sizeof(float))
        fr_gemm_packed_f32(L.B, L.G * L.H, K, A, K, <const float *>L.Rp, 0, g, ldg, <float *>L.Ap)


cdef inline void _masked_step(const Loop *L, int s, int b, int u0, int n,
                              floating *out,                                     # OUT the step's output
                              const floating *hp, floating *hn,                  # IN h_prev row; OUT h row
                              const floating *cp, floating *cn) noexcept nogil:  # LSTM c likewise (or NULL)
    """A masked step of row b, units [u0, u0 + n) (Keras): the state passes through and the output
    repeats the previous step's (zeros at s == 0, or always with zero_output_for_mask)."""
    cdef floating *ob = out + _row(L, b, s) * L.H + u0
    memcpy(hn + u0, hp + u0, n * sizeof(floating))
    if cn != NULL:
        memcpy(cn + u0, cp + u0, n * sizeof(floating))
    if L.zero_output or s == 0:
        memset(ob, 0, n * sizeof(floating))
    else:
        memcpy(ob, out + _row(L, b, s - 1) * L.H + u0, n * sizeof(floating))


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
    hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, 0, &ldp)
    _copy_rows(hpp, ldp, <floating *>L.h0, H, B, H)
    if is_lstm:
        cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, 0, &ldcp)
        _copy_rows(cpp, ldcp, <floating *>L.c0, H, B, H)

    # Output rows as state (module docstring): h lives in out's rows when every step writes one
    cdef bint h_in_out = _h_in_out and not L.training and L.mask == NULL
    for s in range(T):
        t = _time(L, s)
        if h_in_out:
            if s == 0:
                hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, 0, &ldp)
            else:
                hpp, ldp = out + _row(L, 0, s - 1) * H, rs * H
            hnp, ldn = out + _row(L, 0, s) * H, rs * H
        else:
            hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, s, &ldp)
            hnp = _slot(L, <floating *>L.hp, <floating *>L.hT, s + 1, &ldn)
        if is_lstm:
            cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, s, &ldcp)
            cnp_ = _slot(L, <floating *>L.cp, <floating *>L.cT, s + 1, &ldcn)
        g = xp + _row(L, 0, t) * GH

        # h_d: the state as the recurrent matmul sees it
        if rdm != NULL:
            hdp = _hd_slot(L, <floating *>L.hd, s, &ldd)
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
            _rmatmul(L, B, GH, H, hdp, ldd, R, GH, 0, rec, GH, (s + L.parity) & 1)
        elif L.xcat != NULL:
            _concat_product(L, t, hdp, ldd, g, ldg)
        elif is_gru:
            matmul(False, B, 2 * H, H, hdp, ldd, R, GH, 1, g, ldg)
            for b in range(B):
                gru_zr_row(g + b * ldg, <floating *>NULL, bx, <floating *>NULL, H, L.ract)
                _mul_rows(auxp + b * lda, lda, g + b * ldg + H, ldg, hdp + b * ldd, 1, H)
            matmul(False, B, H, H, auxp, lda, R + 2 * H, GH, 1, g + 2 * H, ldg)
        else:
            _rmatmul(L, B, GH, H, hdp, ldd, R, GH, 1, g, ldg, (s + L.parity) & 1)

        for b in range(B):
            m = L.mask == NULL or L.mask[<Py_ssize_t>b * T + t] != 0
            ob = out + _row(L, b, s) * H
            if not m:
                _masked_step(L, s, b, 0, H, out, hpp + b * ldp, hnp + b * ldn,
                             cpp + b * ldcp if is_lstm else NULL, cnp_ + b * ldcn if is_lstm else NULL)
                continue
            gb = g + b * ldg
            if is_lstm:
                lstm_fwd_row(gb, bx, cpp + b * ldcp, cnp_ + b * ldcn, hnp + b * ldn, H, L.act, L.ract)
            elif is_gru and L.reset_after:
                gru_reset_after_fwd_row(gb, rec + b * GH, bx, br, auxp + b * lda, hpp + b * ldp, hnp + b * ldn,
                                        H, L.act, L.ract)
            elif is_gru:
                gru_h_row(gb, bx + 2 * H if bx != NULL else NULL, hpp + b * ldp, hnp + b * ldn, H, L.act)
            else:
                simple_fwd_row(gb, bx, hnp + b * ldn, H, L.act)
            if not h_in_out:
                memcpy(ob, hnp + b * ldn, H * sizeof(floating))
    if h_in_out and T > 0:
        _copy_rows(<floating *>L.hT, H, out + _row(L, 0, T - 1) * H, rs * H, B, H)


# ---------------------------------------------------------------------------------------------------
# threads: batch split and hidden split over fastrnn's pool (pool.h); fastrnn._dispatch.cpu_plan picks
#
# Batch split.  Batch rows are independent, so each part of the batch runs the whole time loop (forward
# or BPTT) on its own rows: a sub-Loop whose pointers start at its first row (_sub_loop), claimed by
# whichever thread comes first (fr_pool_parts).  No synchronisation inside the loop; each part's
# per-step product is a 1-thread sgemm, or the packed microkernel on the shared packed R with the
# part's own A scratch.
#
# Hidden split (forward; B == 1, or 2 <= B <= 4 on the packed microkernel).  With few rows the step is
# bandwidth-bound (B == 1: a vector-matrix product over all of R) or, split by rows, leaves each thread
# one or two rows, whose microkernel passes stream all of R for little work.  So it is split by
# hidden units: slice k owns units [u0, u0 + nu) and the G*nu columns of R that feed them, packed
# (H, G*nu) by its own thread (row-major for the vecmat, or in panels), so each core streams only its
# share and keeps it in its own cache.  Per step: gather the slice's pre-activations, add h_d @ R_k
# (all B rows), the gate math on nu units per row, write h/c/out slices, then ONE barrier: the next step
# reads the whole h.  The state slots of consecutive steps are different buffers (_slot), so no thread
# overwrites what another reads.  Step 0 reads h0 itself and the last step ends with the pool's own
# join, so a streaming step (T = 1) has no barrier at all.

ctypedef struct GemmJob:
    bint f32, ta, tb, by_rows
    int M, N, K, lda, ldb, ldc, parts
    const void *A
    const void *B
    void *C
    double beta
    # the packed path (_packed_gemm_block): each part's scratch, `scratch` floats apart from J.work on:
    # `panel_floats` of op(B)'s panels (none when B is read in place), then op(A)'s row blocks
    bint packable      # the packed path can run this product (float32, beta 0 or 1, SIMD)
    bint packed        # ... and does: always at level 2, when asked for at level 1 (gemm_into)
    bint unpacked      # ... reading op(B) = B in place (few rows of A: see _gemm_unpacked_max_m)
    const float *Bp    # ... or on B's panels packed before the call (pack_b_panels; NULL: pack here)
    Py_ssize_t bp_ld   # with Bp: B's column count rounded up to whole 16-column panels
    int mc             # rows of op(A) packed at a time
    float *work
    Py_ssize_t scratch, panel_floats


ctypedef struct Job:
    Loop *L
    bint f32, backward
    size_t item                # sizeof the element
    int nparts                 # batch split: the plan's number of row ranges
    void *Ap                   # packed path: per-part A scratch ...
    Py_ssize_t ap_stride       # ... this many elements apart
    void *Acat                 # Concatenated product: per-part [x_t | h_d] rows, per * (I + H) apart
    # hidden split
    int nslices, per           # planned slices of `per` units (the last may be shorter)
    void *pk                   # per slice: R_k (row-major or panels; _hsplit_pack), pk_stride elements apart
    Py_ssize_t pk_stride
    void *vec                  # per slice: gates, product, bx, br, A scratch (_vec), vec_stride elements apart
    Py_ssize_t vec_stride
    int pack                   # PACK_WEIGHTS | PACK_BIASES: what _hsplit_pack copies first (0: ready)
    bint panels                # float32 R_k packed for the plan's product instead of row-major: the
                               # microkernel's 16-column panels per gate block (B >= 2), or 64-column
                               # vector panels over the whole slice (B == 1)
    const void *xin            # streaming (StepKernel): the step's input x (1, n_in); NULL: use xp
    const void *W              # with xin or fused: the input kernel (n_in, G*H), packed per slice below R_k
    int n_in
    bint w_t                   # fused: W is held as its transpose (G*H, n_in) (Workspace.W_t)
    bint fused                 # B == 1 on AVX-512: the projection rides in the step's product (Fused
    const float *xseq          # projection, below) from these input rows, (T, n_in), instead of xp
    GemmJob *proj              # batch split forward: each part computes its own rows of xp := x @ W
                               # first (rows by part, scratch slot = part), or NULL (xp is ready)


cdef void _job_init(Job *J, Loop *L, bint f32, bint backward) noexcept:
    memset(J, 0, sizeof(Job))
    J.L, J.f32, J.backward = L, f32, backward
    J.item = sizeof(float) if f32 else sizeof(double)


cdef inline void *_at(void *p, Py_ssize_t n, size_t item) noexcept nogil:
    return NULL if p == NULL else <char *>p + n * <Py_ssize_t>item


cdef void _sub_loop(const Loop *P, Loop *S, int b0, int nb, size_t item) noexcept nogil:
    """S := P restricted to batch rows [b0, b0 + nb): the same arrays, pointers moved to the sub-batch
    (input-aligned arrays by its first row, (B, .) arrays by b0 rows, the inference ping-pong pairs by
    2*b0 rows, since each sub-batch keeps its own pair)."""
    cdef Py_ssize_t r0 = b0 if P.time_major else <Py_ssize_t>b0 * P.T
    cdef Py_ssize_t H = P.H, GH = <Py_ssize_t>P.G * P.H, seq = r0 if P.training else 2 * b0, one = r0 if P.training else b0
    S[0] = P[0]
    S.B = nb
    S.xp, S.dxp, S.drec = _at(P.xp, r0 * GH, item), _at(P.dxp, r0 * GH, item), _at(P.drec, r0 * GH, item)
    S.out, S.dout = _at(P.out, r0 * H, item), _at(P.dout, r0 * H, item)
    S.hp, S.cp = _at(P.hp, seq * H, item), _at(P.cp, seq * H, item)
    S.hd, S.aux = _at(P.hd, seq * H, item), _at(P.aux, one * H, item)
    S.h0, S.c0, S.hT, S.cT = _at(P.h0, b0 * H, item), _at(P.c0, b0 * H, item), _at(P.hT, b0 * H, item), _at(P.cT, b0 * H, item)
    S.rdmask = _at(P.rdmask, b0 * H, item)
    S.xcat = _at(<void *>P.xcat, r0 * P.xcat_k, item)
    S.rec, S.tmp = _at(P.rec, b0 * GH, item), _at(P.tmp, b0 * 2 * H, item)
    S.dh, S.dc, S.dht = _at(P.dh, b0 * H, item), _at(P.dc, b0 * H, item), _at(P.dht, b0 * H, item)
    S.dhd, S.dacc = _at(P.dhd, b0 * H, item), _at(P.dacc, b0 * H, item)
    if P.mask != NULL:
        S.mask = P.mask + <Py_ssize_t>b0 * P.T


cdef void _batch_part(void *arg, int part) noexcept nogil:
    """One part of the batch split: the loop on the plan's row range `part` of J.nparts.  The partition
    is the plan's, whichever threads run the parts, so results never depend on who turned up."""
    cdef Job *J = <Job *>arg
    cdef Loop S
    cdef int B = J.L.B, per = (J.L.B + J.nparts - 1) // J.nparts
    cdef int b0 = part * per
    cdef int nb = B - b0 if B - b0 < per else per
    if nb <= 0:
        return
    if J.proj != NULL:   # batch-major: the part's rows of xp are contiguous, and now in this core's cache
        _gemm_rows(J.proj, part, b0 * J.L.T, nb * J.L.T)
    _sub_loop(J.L, &S, b0, nb, J.item)
    if S.dbias != NULL:   # this part's own partial sums (backward)
        S.dbias = _at(S.dbias, part * S.dbias_ld, J.item)
    if S.Rp != NULL:
        S.Ap = _at(J.Ap, part * J.ap_stride, J.item)
    if S.xcat != NULL:
        S.Acat = _at(J.Acat, <Py_ssize_t>part * per * (S.xcat_k + S.H), J.item)
    if J.f32:
        if J.backward:
            _backward[float](&S, <float *>S.xp)
        else:
            _forward[float](&S, <float *>S.xp)
    else:
        if J.backward:
            _backward[double](&S, <double *>S.xp)
        else:
            _forward[double](&S, <double *>S.xp)


cdef inline void _gather(floating *dst, const floating *src, int G, int H, int u0, int nu) noexcept nogil:
    """dst (G*nu) := the [u0, u0 + nu) units of each of the G gate blocks of src (G*H)."""
    cdef int k
    for k in range(G):
        memcpy(dst + k * nu, src + k * H + u0, nu * sizeof(floating))


cdef inline void _scatter(floating *dst, const floating *src, int G, int H, int u0, int nu) noexcept nogil:
    """The inverse of _gather."""
    cdef int k
    for k in range(G):
        memcpy(dst + k * H + u0, src + k * nu, nu * sizeof(floating))


cdef inline Py_ssize_t _proj_ld(int G, int per) noexcept nogil:
    """Fused projection: the row stride of a slice's chunk buffer, its G*per columns in whole 64-column
    vector panels."""
    return (<Py_ssize_t>G * per + 63) // 64 * 64


cdef inline floating *_vec(floating *vec, const Job *J, int sl, int part) noexcept nogil:
    """Slice sl's scratch vectors (Job.vec): part 0 gates (B, G*per), 1 recurrent product (B, G*per),
    2 bx and 3 br slices (G*per), 4 the packed product's A scratch; with J.fused, 5 the two chunk
    buffers of the projection, (FR_PROJ_ROWS, _proj_ld) each, and 6 the next chunk's input rows
    (n_in, FR_PROJ_ROWS) k-major (fr_proj_pack_a_f32)."""
    cdef Py_ssize_t B = J.L.B, gp = <Py_ssize_t>J.L.G * J.per
    cdef Py_ssize_t a_end = 2 * B * gp + 2 * gp + (FR_PACKED_A_SIZE(B, J.L.H) if J.panels else 0)
    cdef Py_ssize_t offs[7]
    offs[0], offs[1], offs[2], offs[3], offs[4] = 0, B * gp, 2 * B * gp, 2 * B * gp + gp, 2 * B * gp + 2 * gp
    offs[5] = (a_end + 15) // 16 * 16
    offs[6] = offs[5] + 2 * FR_PROJ_ROWS * _proj_ld(J.L.G, J.per)
    return vec + sl * J.vec_stride + offs[part]   # vec: J.vec, typed


cdef inline bint _next_slice(const Job *J, int nth, int *sl, int *u0, int *nu) noexcept nogil:
    """Advance *sl to this thread's next non-empty slice (a thread of nth owns slices tid, tid + nth, ...;
    start with *sl = tid - nth) and set its units [*u0, *u0 + *nu).  False when none is left."""
    while True:
        sl[0] += nth
        if sl[0] >= J.nslices:
            return False
        u0[0] = sl[0] * J.per
        nu[0] = J.L.H - u0[0] if J.L.H - u0[0] < J.per else J.per
        if nu[0] > 0:
            return True


cdef inline Py_ssize_t _panel_set(int H, int nu) noexcept nogil:
    """Floats in one gate block's panels of a slice: ceil(nu/16) panels of (H, 16)."""
    return <Py_ssize_t>(nu + 15) // 16 * 16 * H


cdef inline Py_ssize_t _w_panels_at(int H, int N) noexcept nogil:
    """Where a streaming slice's W_k vector panels start in its block: after R_k's (H rows, N columns)."""
    return FR_VEC_PACKED_SIZE(H, N)


cdef void _pack_vec_panels_from_t(const float *Wt, int K, int G, int H, int u0, int nu,
                                  float *P) noexcept nogil:
    """P := the vector panels of W's (K, G*H) slice columns, as fr_pack_vec_panels_f32_avx2 packs them
    (the units [u0, u0 + nu) of each gate block side by side, zeros past them), read from W's transpose
    Wt (G*H, K) (torch's layout, Workspace.W_t): each column of W is a contiguous row of Wt, so the
    reads stream and the writes go 64 floats apart within one panel."""
    cdef int N = G * nu, j, k
    cdef const float *src
    cdef float *dst
    for j in range((N + 63) // 64 * 64):
        dst = P + <Py_ssize_t>(j // 64) * K * 64 + j % 64
        if j < N:
            src = Wt + <Py_ssize_t>((j // nu) * H + u0 + j % nu) * K
            for k in range(K):
                dst[<Py_ssize_t>k * 64] = src[k]
        else:
            for k in range(K):
                dst[<Py_ssize_t>k * 64] = 0


cdef void _hsplit_pack(const Job *J, int sl, floating *pk) noexcept nogil:
    """Slice sl's R_k (H, G*nu) (then W_k (n_in, G*nu) when streaming) and bias slices, from the full R
    (W) and biases, as Job.pack says: row-major for the vecmat, or packed (Job.panels): for the
    microkernel (B >= 2) each gate block's nu columns in its own set of panels (a panel never straddles
    two gate blocks), for the one-row product (B == 1) the slice's G*nu columns side by side in 64-column
    vector panels."""
    cdef const Loop *L = J.L
    cdef int H = L.H, G = L.G, GH = L.G * L.H, u0 = sl * J.per, k
    cdef int nu = H - u0 if H - u0 < J.per else J.per
    if J.pack & PACK_BIASES:
        if L.bx != NULL:
            _gather(_vec(<floating *>J.vec, J, sl, 2), <const floating *>L.bx, G, H, u0, nu)
        if L.br != NULL:
            _gather(_vec(<floating *>J.vec, J, sl, 3), <const floating *>L.br, G, H, u0, nu)
    if not J.pack & PACK_WEIGHTS:
        return
    if J.panels:
        if floating is float:
            if L.B == 1:
                fr_pack_vec_panels_f32_avx2(<const float *>L.R + u0, H, GH, G, H, nu, pk)
            else:
                for k in range(G):
                    fr_pack_panels_f32_avx2(<const float *>L.R + k * H + u0, H, nu, GH,
                                            pk + k * _panel_set(H, nu))
    else:
        for k in range(H):
            _gather(pk + <Py_ssize_t>k * G * nu, <const floating *>L.R + <Py_ssize_t>k * GH, G, H, u0, nu)
    cdef bint w_panels = False
    if J.W != NULL:   # W_k below R_k: (n_in, G*nu), packed as R_k is
        if floating is float:
            if J.panels and L.B == 1 and J.w_t:
                _pack_vec_panels_from_t(<const float *>J.W, J.n_in, G, H, u0, nu, pk + _w_panels_at(H, G * nu))
                w_panels = True
            elif J.panels and L.B == 1:
                fr_pack_vec_panels_f32_avx2(<const float *>J.W + u0, J.n_in, GH, G, H, nu,
                                            pk + _w_panels_at(H, G * nu))
                w_panels = True
        if not w_panels:
            for k in range(J.n_in):
                _gather(pk + <Py_ssize_t>(H + k) * G * nu, <const floating *>J.W + <Py_ssize_t>k * GH, G, H, u0,
                        nu)


cdef inline void _hsplit_product(const Job *J, int sl, int nu, const floating *hdp, int ldd, floating beta,
                                 floating *C, int rev) noexcept nogil:
    """C (B, G*nu) := h_d (B, H) rows ldd apart @ R_k + beta*C: the slice's share of the step's product
    (one microkernel call per gate block, one vecmat over the vector panels, in reverse order when rev
    (Serpentine), or one vecmat / GEMM over the row-major R_k)."""
    cdef const Loop *L = J.L
    cdef int N = L.G * nu, k
    cdef floating *pk = <floating *>J.pk + sl * J.pk_stride
    if floating is float:
        if J.panels and L.B == 1:
            fr_vecmat_panels_f32(hdp, pk, L.H, N, beta, C, rev & _serpentine)
            return
        if J.panels:
            for k in range(L.G):
                fr_gemm_packed_f32(L.B, nu, L.H, hdp, ldd, pk + k * _panel_set(L.H, nu), beta, C + k * nu, N,
                                   _vec(<floating *>J.vec, J, sl, 4))
            return
    matmul(False, L.B, N, L.H, hdp, ldd, pk, N, beta, C, N)


cdef inline void _stream_projection(const Job *J, int sl, int nu, floating *loc, int rev) noexcept nogil:
    """loc (G*nu,) := x @ W_k: a streaming step's share of the input projection, on W_k's vector panels
    when the slice is packed (_hsplit_pack), else a vecmat over the row-major W_k."""
    cdef int H = J.L.H, N = J.L.G * nu
    cdef floating *pk = <floating *>J.pk + sl * J.pk_stride
    if floating is float:
        if J.panels and J.L.B == 1:   # the condition _hsplit_pack packs W_k's panels under
            fr_vecmat_panels_f32(<const float *>J.xin, pk + _w_panels_at(H, N), J.n_in, N, 0, loc,
                                 rev & _serpentine)
            return
    matmul(False, 1, N, J.n_in, <const floating *>J.xin, J.n_in, pk + <Py_ssize_t>H * N, N, 0, loc, N)


# Fused projection (B == 1, float32, AVX-512F: Job.fused).  The step's product is bound by the bandwidth
# of R's stream, with half its FMA slots idle (vecmat_proj_avx512.c), so instead of the hoisted GEMM
# xp = x @ W, each slice computes its own columns of the projection, FR_PROJ_ROWS = 8 steps (a chunk) at
# a time, inside the products of the chunk before: step s does piece s % 8 of chunk s // 8 + 1's tile
# into the other of two chunk buffers (_vec part 5), and reads its own pre-activations from row s % 8 of
# the current one.  Chunk 0 is computed before the loop.  W_k's vector panels sit below R_k's in the
# slice's block, as a stream's do.  A serial call (one thread) runs here too, as one slice.

cdef inline float *_chunk_row(const Job *J, int sl, int s) noexcept nogil:
    """Fused projection: slice sl's buffer row for step s (of chunk s // FR_PROJ_ROWS's buffer)."""
    cdef Py_ssize_t ld = _proj_ld(J.L.G, J.per)
    return (_vec(<float *>J.vec, J, sl, 5) + ((s // FR_PROJ_ROWS) & 1) * FR_PROJ_ROWS * ld
            + (s % FR_PROJ_ROWS) * ld)


cdef inline void _chunk_inputs(const Job *J, int sl, int s0) noexcept nogil:
    """Fused projection: slice sl's A := the input rows of the steps s0, s0 + 1, ... of a chunk,
    k-major (zeros past the last step); go_backwards walks back in time."""
    cdef const Loop *L = J.L
    cdef int rows = L.T - s0 if L.T - s0 < FR_PROJ_ROWS else FR_PROJ_ROWS
    fr_proj_pack_a_f32(J.xseq + <Py_ssize_t>_time(L, s0) * J.n_in, -J.n_in if L.go_backwards else J.n_in,
                       rows, J.n_in, _vec(<float *>J.vec, J, sl, 6))


cdef inline void _fused_first_chunk(const Job *J, int sl, int nu) noexcept nogil:
    """Fused projection, before the loop: chunk 0's columns of slice sl."""
    cdef int N = J.L.G * nu
    cdef float *pk = <float *>J.pk + sl * J.pk_stride
    _chunk_inputs(J, sl, 0)
    fr_proj_panels_f32_avx512(_vec(<float *>J.vec, J, sl, 6), pk + _w_panels_at(J.L.H, N), J.n_in, N,
                              _chunk_row(J, sl, 0), _proj_ld(J.L.G, J.per))


cdef inline void _fused_product(const Job *J, int sl, int nu, int s, const float *hdp, float beta, float *C,
                                int rev) noexcept nogil:
    """Fused projection: step s's product (as _hsplit_product), with piece s % 8 of the next chunk's
    projection in its loop while there is a next chunk."""
    cdef const Loop *L = J.L
    cdef int N = L.G * nu, c = s // FR_PROJ_ROWS
    cdef float *pk = <float *>J.pk + sl * J.pk_stride
    if (c + 1) * FR_PROJ_ROWS >= L.T:   # the last chunk: nothing to project
        fr_vecmat_panels_f32(hdp, pk, L.H, N, beta, C, rev & _serpentine)
        return
    if s % FR_PROJ_ROWS == 0:
        _chunk_inputs(J, sl, (c + 1) * FR_PROJ_ROWS)
    fr_vecmat_proj_panels_f32_avx512(hdp, pk, L.H, N, beta, C, rev & _serpentine,
                                     _vec(<float *>J.vec, J, sl, 6), pk + _w_panels_at(L.H, N), J.n_in,
                                     s % FR_PROJ_ROWS,
                                     _chunk_row(J, sl, (c + 1) * FR_PROJ_ROWS), _proj_ld(L.G, J.per))


cdef void _hsplit_forward(const Job *J, int tid, int nth, floating *xp) noexcept nogil:
    """Thread tid's slices (tid, tid + nth, ...) of the forward (see Hidden split above)."""
    cdef const Loop *L = J.L
    cdef int T = L.T, B = L.B, H = L.H, G = L.G, GH = L.G * L.H, rs = _rs(L)
    cdef int s, t, b, sl, u0, nu, ldp, ldn, ldcp, ldcn, ldd, lda, ldg = rs * GH, sense = 0, rev
    cdef bint m, is_lstm = L.cell == CELL_LSTM, is_gru = L.cell == CELL_GRU
    cdef floating *rdm = <floating *>L.rdmask
    cdef floating *out = <floating *>L.out
    cdef floating *hpp
    cdef floating *hnp
    cdef floating *cpp = NULL
    cdef floating *cnp_ = NULL
    cdef floating *hdp
    cdef floating *auxp = NULL
    cdef floating *g
    cdef floating *loc
    cdef floating *lrec
    cdef floating *lbx
    cdef floating *lbr
    cdef floating *ob

    sl = tid - nth
    while _next_slice(J, nth, &sl, &u0, &nu):   # this thread's slices: tid, tid + nth, ...
        if J.pack:
            _hsplit_pack(J, sl, <floating *>J.pk + sl * J.pk_stride)
        if floating is float:
            if J.fused:
                _fused_first_chunk(J, sl, nu)
        hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, 0, &ldp)
        _copy_rows(hpp + u0, ldp, <floating *>L.h0 + u0, H, B, nu)
        if is_lstm:
            cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, 0, &ldcp)
            _copy_rows(cpp + u0, ldcp, <floating *>L.c0 + u0, H, B, nu)
        if rdm != NULL:  # h_d of step 0, read by every slice's product
            hdp = _hd_slot(L, <floating *>L.hd, 0, &ldd)
            for b in range(B):   # row by row: the mask's rows are H apart, not nu
                _mul_rows(hdp + b * ldd + u0, H, hpp + b * ldp + u0, H, rdm + b * H + u0, 1, nu)
    if rdm != NULL:   # without h_d, step 0 reads h0 itself (below), so no thread waits for the copies
        fr_pool_barrier(nth, &sense)

    for s in range(T):
        t = _time(L, s)
        hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, s, &ldp)
        hnp = _slot(L, <floating *>L.hp, <floating *>L.hT, s + 1, &ldn)
        if is_lstm:
            cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, s, &ldcp)
            cnp_ = _slot(L, <floating *>L.cp, <floating *>L.cT, s + 1, &ldcn)
        if rdm != NULL:
            hdp = _hd_slot(L, <floating *>L.hd, s, &ldd)
        elif s == 0:
            hdp = <floating *>L.h0
            ldd = H
        else:
            hdp = hpp
            ldd = ldp
        if is_gru:
            auxp = <floating *>L.aux + (_row(L, 0, t) * H if L.training else 0)
            lda = rs * H if L.training else H
        g = xp + _row(L, 0, t) * GH
        sl = tid - nth
        while _next_slice(J, nth, &sl, &u0, &nu):
            loc = _vec(<floating *>J.vec, J, sl, 0)
            lrec = _vec(<floating *>J.vec, J, sl, 1)
            lbx = _vec(<floating *>J.vec, J, sl, 2) if L.bx != NULL else NULL
            lbr = _vec(<floating *>J.vec, J, sl, 3) if L.br != NULL else NULL
            # the slice's pre-activations (every row: masked rows are computed and discarded)
            rev = (s + L.parity) & 1
            if J.xin != NULL:   # streaming (B == 1): the input projection is split too (x @ W_k)
                _stream_projection(J, sl, nu, loc, rev)
            elif not J.fused:
                for b in range(B):
                    _gather(loc + b * G * nu, g + b * ldg, G, H, u0, nu)
            if J.fused:   # (float32, B == 1) the pre-activations are the chunk buffer's row
                if floating is float:
                    loc = _chunk_row(J, sl, s)
                    _fused_product(J, sl, nu, s, hdp, 0 if is_gru else 1, lrec if is_gru else loc, rev)
            elif is_gru:   # reset_after (plan): the whole product first, then r * (h_d @ R_h + b)
                _hsplit_product(J, sl, nu, hdp, ldd, 0, lrec, rev)
            else:
                _hsplit_product(J, sl, nu, hdp, ldd, 1, loc, rev)
            for b in range(B):
                m = L.mask == NULL or L.mask[<Py_ssize_t>b * T + t] != 0
                ob = out + _row(L, b, s) * H + u0
                if not m:
                    _masked_step(L, s, b, u0, nu, out, hpp + b * ldp, hnp + b * ldn,
                                 cpp + b * ldcp if is_lstm else NULL, cnp_ + b * ldcn if is_lstm else NULL)
                    if J.fused and L.training:   # xp holds no projection: keep the saved gates' row defined
                        _scatter(g + b * ldg, loc + b * G * nu, G, H, u0, nu)
                else:
                    if is_lstm:
                        lstm_fwd_row(loc + b * G * nu, lbx, cpp + b * ldcp + u0, cnp_ + b * ldcn + u0,
                                     hnp + b * ldn + u0, nu, L.act, L.ract)
                    elif is_gru:
                        gru_reset_after_fwd_row(loc + b * G * nu, lrec + b * G * nu, lbx, lbr,
                                                auxp + b * lda + u0, hpp + b * ldp + u0, hnp + b * ldn + u0,
                                                nu, L.act, L.ract)
                    else:
                        simple_fwd_row(loc + b * G * nu, lbx, hnp + b * ldn + u0, nu, L.act)
                    if L.training:   # backward reads the post-activation gates
                        _scatter(g + b * ldg, loc + b * G * nu, G, H, u0, nu)
                    memcpy(ob, hnp + b * ldn + u0, nu * sizeof(floating))
                if rdm != NULL and s + 1 < T:
                    _mul_rows(_hd_slot(L, <floating *>L.hd, s + 1, &ldd) + b * ldd + u0, H,
                              hnp + b * ldn + u0, H, rdm + b * H + u0, 1, nu)
        if s + 1 < T:   # after the last step, fr_pool_run's own wait for all threads is the barrier
            fr_pool_barrier(nth, &sense)


cdef void _hsplit_backward(const Job *J, int tid, int nth, floating *xp) noexcept nogil:
    """Thread tid's slices of the B == 1 BPTT, split by hidden units like the forward.  Per step: the
    gate gradients of the slice's units (they need only the slice's dh, dc, gates and states), written
    into the step's dG row; ONE barrier; then dh[slice] += R[slice rows, :] @ dG (a matvec over the
    slice's own contiguous rows of R, so nothing is packed).  The next step writes another dG row, so
    it needs no second barrier.  A masked step adds nothing (its dG row is zero) and skips the product."""
    cdef const Loop *L = J.L
    cdef int T = L.T, H = L.H, G = L.G, GH = L.G * L.H
    cdef int s, t, j, sl, u0, nu, ldp, ldcp, ldcn, ldd, sense = 0
    cdef bint m, is_lstm = L.cell == CELL_LSTM, is_gru = L.cell == CELL_GRU
    cdef floating *R = <floating *>L.R
    cdef floating *rdm = <floating *>L.rdmask
    cdef floating *dh = <floating *>L.dh
    cdef floating *dc = <floating *>L.dc
    cdef floating *dht = <floating *>L.dht
    cdef floating *dhd = <floating *>L.dhd
    cdef floating *dacc = <floating *>L.dacc
    cdef floating *hpp
    cdef floating *cpp = NULL
    cdef floating *cnp_ = NULL
    cdef floating *auxp = NULL
    cdef floating *g
    cdef floating *dg
    cdef floating *drec = NULL
    cdef floating *dsrc
    cdef floating *ob
    cdef floating *gl
    cdef floating *dgl
    cdef floating *wl

    sl = tid - nth
    while _next_slice(J, nth, &sl, &u0, &nu):
        memset(dacc + u0, 0, nu * sizeof(floating))
    for s in range(T - 1, -1, -1):
        t = _time(L, s)
        hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, s, &ldp)
        if is_lstm:
            cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, s, &ldcp)
            cnp_ = _slot(L, <floating *>L.cp, <floating *>L.cT, s + 1, &ldcn)
        if is_gru:
            auxp = <floating *>L.aux + _row(L, 0, t) * H
        g = xp + _row(L, 0, t) * GH
        dg = <floating *>L.dxp + _row(L, 0, t) * GH
        if L.drec != NULL:
            drec = <floating *>L.drec + _row(L, 0, t) * GH
        m = L.mask == NULL or L.mask[t] != 0
        ob = <floating *>L.dout + _row(L, 0, s) * H
        sl = tid - nth
        while _next_slice(J, nth, &sl, &u0, &nu):   # the slice's gate gradients
            for j in range(u0, u0 + nu):
                dht[j] = ob[j] + dacc[j]   # dL/d(output of step s), all paths
            if not m:
                for j in range(G):
                    memset(dg + j * H + u0, 0, nu * sizeof(floating))
                    if drec != NULL:
                        memset(drec + j * H + u0, 0, nu * sizeof(floating))
                if L.zero_output:
                    memset(dacc + u0, 0, nu * sizeof(floating))
                else:
                    memcpy(dacc + u0, dht + u0, nu * sizeof(floating))
                continue
            memset(dacc + u0, 0, nu * sizeof(floating))
            for j in range(u0, u0 + nu):
                dht[j] += dh[j]
            gl = _vec(<floating *>J.vec, J, sl, 0)
            dgl = _vec(<floating *>J.vec, J, sl, 1)
            wl = _vec(<floating *>J.vec, J, sl, 2)   # scratch: LSTM's 2*nu, GRU's recurrent-side grads
            _gather(gl, g, G, H, u0, nu)
            if is_lstm:
                lstm_bwd_row(gl, cpp + u0, cnp_ + u0, dht + u0, dc + u0, dgl, wl, nu, L.act, L.ract)
                memset(dh + u0, 0, nu * sizeof(floating))
            elif is_gru:   # reset_after (plan)
                gru_reset_after_bwd_row(gl, hpp + u0, auxp + u0, dht + u0, dgl, dh + u0, wl, nu, L.act, L.ract)
                _scatter(drec, wl, G, H, u0, nu)
            else:
                dact(L.act, dgl, gl, dht + u0, nu)
                memset(dh + u0, 0, nu * sizeof(floating))
            _scatter(dg, dgl, G, H, u0, nu)
        fr_pool_barrier(nth, &sense)   # the step's dG (and dG_rec) row is whole
        if not m:
            continue
        dsrc = drec if is_gru else dg
        sl = tid - nth
        # dL/dh_prev[slice] += dG @ R[slice rows]^T, through the recurrent dropout mask
        while _next_slice(J, nth, &sl, &u0, &nu):
            if rdm == NULL:
                matmul(True, 1, nu, GH, dsrc, GH, R + <Py_ssize_t>u0 * GH, GH, 1, dh + u0, nu)
            else:
                matmul(True, 1, nu, GH, dsrc, GH, R + <Py_ssize_t>u0 * GH, GH, 0, dhd + u0, nu)
                for j in range(u0, u0 + nu):
                    dh[j] += dhd[j] * rdm[j]


cdef void _hsplit_task(void *arg, int tid, int nth) noexcept nogil:
    cdef Job *J = <Job *>arg
    if J.f32:
        if J.backward:
            _hsplit_backward[float](J, tid, nth, <float *>J.L.xp)
        else:
            _hsplit_forward[float](J, tid, nth, <float *>J.L.xp)
    else:
        if J.backward:
            _hsplit_backward[double](J, tid, nth, <double *>J.L.xp)
        else:
            _hsplit_forward[double](J, tid, nth, <double *>J.L.xp)


cdef long _hsplit_work_ns(const Loop *L, int n_in) noexcept nogil:
    """A floor on the single-thread time of a hidden-split forward: its products at 100 GFLOP/s."""
    return <long>(2.0 * L.T * L.B * (L.H + n_in) * L.G * L.H / 100.0)


cdef void _run_batch(Job *J, int n) noexcept:
    """The batch split: J.nparts = n row ranges as a parts task on fastrnn's pool (n == 1: inline)."""
    J.nparts = n
    with nogil:
        fr_pool_parts(n, n, _batch_part, J)


def _empty_aligned(Py_ssize_t n, dtype, bint pooled=False):
    """np.empty(n, dtype) starting on a 64-byte cache line (NumPy aligns to 16): blocks laid out a
    multiple of 64 bytes apart inside it then never share a line.  pooled: ``(array, token)``, the
    memory from fastrnn._scratch (mapped already: a call's buffers of megabytes otherwise fault in fresh
    zeroed pages whenever glibc has handed the last ones back; bench/NOTES.md 39); give the token back
    once no kernel uses the array."""
    cdef Py_ssize_t item = np.dtype(dtype).itemsize
    if pooled:
        raw, token = _scratch.take((n * item + 64,), np.uint8)
        return _aligned_view(raw, n, dtype), token
    return _aligned_view(np.empty(n * item + 64, np.uint8), n, dtype)


def _aligned_view(raw, Py_ssize_t n, dtype):
    """The n-element `dtype` view of the uint8 array `raw` (n * itemsize + 64 bytes) that starts on a
    64-byte line."""
    cdef Py_ssize_t item = np.dtype(dtype).itemsize
    # unsigned: this module compiles with cdivision, where (-addr) % 64 is negative for a misaligned
    # addr, and the slice below was then empty, its data pointer past the end of raw
    cdef size_t addr = <size_t>cnp.PyArray_DATA(<cnp.ndarray>raw)
    cdef Py_ssize_t skip = <Py_ssize_t>((64 - addr % 64) % 64)
    out = raw[skip:skip + n * item].view(dtype)
    assert out.size == n and <size_t>cnp.PyArray_DATA(<cnp.ndarray>out) % 64 == 0
    return out


cdef class _HSplitBuffers:
    """The hidden split's per-slice buffers (Job.pk, Job.vec, see _vec): each slice's block starts on its
    own 64-byte line, so two threads never write one cache line.  panels: R_k packed (float32; Job.panels:
    the microkernel's 16-column panels for B >= 2, vector panels for B == 1) rather than row-major.
    pk: the packed slices of an earlier call with the same layout (`pk_key`) to reuse, or None.
    pooled (one call's buffers): vec, and pk unless given or `keep_pk`, come from fastrnn._scratch;
    `release` hands them back after the call's loop."""
    cdef readonly object pk, vec
    cdef readonly int nslices, per
    cdef readonly bint panels
    cdef readonly Py_ssize_t pk_stride, vec_stride
    cdef list tokens

    def __init__(self, int B, int H, int G, int nslices, dtype, bint panels, int n_in=0, pk=None,
                 bint pooled=False, bint keep_pk=False, bint fused=False):
        cdef Py_ssize_t gp, a_scratch
        self.nslices, self.panels = nslices, panels
        self.per = ((H + nslices - 1) // nslices + 7) // 8 * 8   # whole SIMD vectors per slice
        gp = <Py_ssize_t>G * self.per
        # row-major R_k (and W_k), G panel sets of ceil(per/16) panels (H, 16), or (B == 1) ceil(G*per/64)
        # vector panels (H, 64)
        if panels and B == 1:   # (streaming: W_k's vector panels after R_k's, at _w_panels_at)
            self.pk_stride = FR_VEC_PACKED_SIZE(H + n_in, G * self.per)
        else:
            self.pk_stride = ((H + n_in) * G * ((self.per + 15) // 16 * 16) + 15) // 16 * 16
        a_scratch = FR_PACKED_A_SIZE(B, H) if panels else 0   # the microkernel's A scratch
        self.vec_stride = (2 * B * gp + 2 * gp + a_scratch + 15) // 16 * 16
        if fused:   # _vec's parts 5 and 6
            self.vec_stride += 2 * FR_PROJ_ROWS * _proj_ld(G, self.per) + (FR_PROJ_ROWS * n_in + 15) // 16 * 16
        self.tokens = []
        if pk is None:
            pk = self._alloc(self.pk_stride * nslices, dtype, pooled and not keep_pk)
        self.pk = pk
        if self.pk.size != self.pk_stride * nslices or self.pk.dtype != dtype:
            raise ValueError(f"_HSplitBuffers: reused slices of {self.pk.size} {self.pk.dtype}, expected "
                             f"{self.pk_stride * nslices} {np.dtype(dtype)}")
        self.vec = self._alloc(self.vec_stride * nslices, dtype, pooled)

    def _alloc(self, Py_ssize_t n, dtype, bint pooled):
        if not pooled:
            return _empty_aligned(n, dtype)
        a, token = _empty_aligned(n, dtype, pooled=True)
        self.tokens.append(token)
        return a

    def release(self):
        """Hand the pooled buffers back (after the loop; the buffers must not be used again)."""
        tokens, self.tokens = self.tokens, []
        for token in tokens:
            _scratch.give(token)

    @staticmethod
    def pk_key(int B, int nslices, dtype, bint panels, bint with_w=False):
        """What the slices' layout depends on besides R's shape (a packs-cache key, see `forward`);
        with_w: W_k packed below each R_k (the fused projection)."""
        return ("hidden", B == 1, nslices, np.dtype(dtype).char, bool(panels), bool(with_w))

    cdef void fill(self, Job *J):
        J.nslices, J.per, J.panels = self.nslices, self.per, self.panels
        J.pk, J.pk_stride = cnp.PyArray_DATA(<cnp.ndarray>self.pk), self.pk_stride
        J.vec, J.vec_stride = cnp.PyArray_DATA(<cnp.ndarray>self.vec), self.vec_stride


cdef object _pack_recurrent(Loop *L, Job *J, int n, bint transposed, dict packs=None):
    """Pack R (forward: K = H, N = G*H) or R^T (backward: K = G*H, N = H) once per call, before the loop
    (so nothing allocates inside it), into Loop.Rp, with an A scratch per batch part in Job.Ap.
    packs: the caller's cache of packed copies of this R (see `forward`): looked up, or filled.
    Returns the arrays, which the caller keeps alive for the loop."""
    cdef int GH = L.G * L.H
    cdef int K = GH if transposed else L.H, N = L.H if transposed else GH
    cdef int per = (L.B + n - 1) // n
    key = ("panels_t" if transposed else "panels",)
    cdef cnp.ndarray packed = packs.get(key) if packs is not None else None
    J.ap_stride = FR_PACKED_A_SIZE(per, K)
    cdef cnp.ndarray scratch = np.empty(n * J.ap_stride, np.float32)
    J.Ap = cnp.PyArray_DATA(scratch)
    if packed is not None:
        L.Rp = cnp.PyArray_DATA(packed)
        return packed, scratch
    packed = np.empty(((N + 15) // 16 * 16) * K, np.float32)
    L.Rp = cnp.PyArray_DATA(packed)
    with nogil:
        if transposed:
            fr_pack_panels_t_f32_avx2(<const float *>L.R, K, N, GH, <float *>L.Rp)
        else:
            fr_pack_panels_f32_avx2(<const float *>L.R, K, N, GH, <float *>L.Rp)
    if packs is not None:
        packs[key] = packed
    return packed, scratch


cdef object _pack_concat(Loop *L, Job *J, int n, object ws, dict packs=None):
    """Concatenated product: [W; R] ((I + H) x G*H) packed once per call (or found in packs) into
    16-column panels in Loop.Rp, the input rows in Loop.xcat, and per batch part the step's [x_t | h_d]
    rows (Job.Acat) and the microkernel's row blocks of them (Job.Ap).  Returns the arrays, which the
    caller keeps alive for the loop."""
    cdef int GH = L.G * L.H, ni = ws.xd.shape[1], K = ni + L.H
    cdef int per = (L.B + n - 1) // n
    key = ("panels_cat",)
    cdef cnp.ndarray packed = packs.get(key) if packs is not None else None
    cdef cnp.ndarray stacked
    if packed is None:
        stacked = np.ascontiguousarray(np.concatenate([ws.W.T if ws.W_t else ws.W, ws.R]), np.float32)
        packed = np.empty(((GH + 15) // 16 * 16) * K, np.float32)
        with nogil:
            fr_pack_panels_f32_avx2(<const float *>cnp.PyArray_DATA(stacked), K, GH, GH,
                                    <float *>cnp.PyArray_DATA(packed))
        if packs is not None:
            packs[key] = packed
    L.Rp = cnp.PyArray_DATA(packed)
    J.ap_stride = FR_PACKED_A_SIZE(per, K)
    cdef cnp.ndarray scratch = np.empty(n * J.ap_stride + <Py_ssize_t>n * per * K, np.float32)
    J.Ap = cnp.PyArray_DATA(scratch)
    J.Acat = <float *>J.Ap + n * J.ap_stride
    L.xcat, L.xcat_k = cnp.PyArray_DATA(<cnp.ndarray>ws.xd), ni
    return packed, scratch


cdef object _pack_recurrent_vec(Loop *L, dict packs=None):
    """B == 1: pack R (H, G*H) once per call into 64-column vector panels, Loop.Rv (or take them from
    `packs`, like _pack_recurrent); returns the array, which the caller keeps alive for the loop."""
    cdef int GH = L.G * L.H
    key = ("vector_panels",)
    cdef cnp.ndarray packed = packs.get(key) if packs is not None else None
    if packed is not None:
        L.Rv = cnp.PyArray_DATA(packed)
        return packed
    packed = np.empty(FR_VEC_PACKED_SIZE(L.H, GH), np.float32)
    L.Rv = cnp.PyArray_DATA(packed)
    with nogil:
        fr_pack_vec_panels_f32_avx2(<const float *>L.R, L.H, GH, 1, 0, GH, <float *>L.Rv)
    if packs is not None:
        packs[key] = packed
    return packed


# The batch split's parts compute their own rows of xp (Job.proj) while W is at most this big: each part
# packs all of W (gemm_into's column split packs half a thread), which costs more than the locality
# pays at LSTM I = H = 1024 (16 MiB: lstm t25-b32 training 196-205 -> 203-214 ms); up to L2's size it
# wins: 2 threads, old/new medians, gru t28-b64 0.467 -> 0.438 ms, simple_rnn t100-b128-h256 19.2 ->
# 17.7, lstm t28-b64 0.596 -> 0.584, gru t100-b128 51.8 -> 50.5; lstm t100-b128 (1 MiB) level
# (bench/NOTES.md 36).
PART_PROJECTION_MAX_W_BYTES = 1 << 20


def forward(ws, spec, plan=None, dict packs=None):
    """Run the forward time loop over the Workspace `ws` (arrays prepared by fastrnn.functional).

    IN ws.xp (N, G*H) = x @ W, or when not ws.projected ws.xd (N, I) and ws.W ((I, G*H), or its
    transpose (G*H, I) where ws.W_t), from which this computes
    xp first (the batch split of a batch-major call: each part its own rows, in its task, so the rows
    it reads every step are in its core's cache; otherwise gemm_into), ws.R, ws.bx, ws.br, ws.h0,
    ws.c0, ws.mask (B, T) uint8, ws.rdmask (B, H);
    OUT ws.out (N, H), ws.hT, ws.cT, and when ws.training the saved gates (in ws.xp), hp, hd, cp, aux.
    `plan` is fastrnn._dispatch.cpu_plan's choice: forward_split "serial" | "batch" | "hidden" over
    plan.threads threads, plan.forward_packed (the packed-R microkernel for the per-step product;
    float32 on AVX2 or AVX-512 only) and plan.forward_fused (B == 1: the projection inside the product,
    see Fused projection, where xp is not projected yet; then the saved
    gates are the only thing xp holds after the loop, and a serial call runs as one slice of the hidden
    split).  None: serial, BLAS products.
    `packs`: a cache of the packed copies of R (the vector panels, the microkernel's panels, the hidden
    split's slices) and of W (the projection's panels, pack_b_panels, on AVX-512), keyed by layout: a
    layout found there is used as it is, one packed here is added.
    The caller owns the promise that ws.R and ws.W hold the same values at every call given the same dict
    (fastrnn.functional.prepare's frozen weights, a built-in cell's read-only ones; a plan made with
    cpu_plan(packs_kept=True)); None packs for this call only.
    """
    cdef Loop L
    cdef Job J
    cdef GemmJob P
    cdef _HSplitBuffers bufs
    cdef int n = 1
    cdef bint f32 = ws.xp.dtype == np.float32
    _pin_blas()
    _fill(&L, ws, spec)
    _job_init(&J, &L, f32, False)
    split = "serial" if plan is None else plan.forward_split
    if split != "serial":
        n = plan.threads
    proj_buf = proj_token = w_panels = None
    cdef bint w_t = ws.W_t   # ws.W is (G*H, I), W's transpose (a transposed kernel read in place)
    cdef bint fused = (plan is not None and plan.forward_fused and plan.forward_packed and f32
                       and fr_simd_level() >= 2 and L.B == 1 and not ws.projected and L.T > FR_PROJ_ROWS
                       and ws.W.dtype == np.float32 and ws.xd.dtype == np.float32 and ws.W.flags.c_contiguous)
    cdef bint concat = (plan is not None and plan.forward_concat and f32 and fr_simd_level() >= 1
                        and split != "hidden" and not fused and not ws.projected and L.B >= 2
                        and ws.xd.dtype == np.float32 and ws.W.dtype == np.float32)
    if fused:
        split = "hidden"   # n: 1 for a serial plan
        J.fused, J.W, J.w_t, J.n_in = True, cnp.PyArray_DATA(<cnp.ndarray>ws.W), w_t, ws.xd.shape[1]
        J.xseq = <const float *>cnp.PyArray_DATA(<cnp.ndarray>ws.xd)
    elif concat:
        pass   # each step projects its own inputs (Concatenated product, _pack_concat)
    elif not ws.projected:
        one_row = fr_simd_level() == 1 and L.B == 1 and L.T <= ONE_ROW_MICROKERNEL_MAX_T
        if (packs is not None and f32 and _packed_gemm_enabled and _keep_w_panels and L.B * L.T >= 2 and not w_t
                and (fr_simd_level() >= 2 or one_row)):
            # W's panels for the projection on the packed microkernel (gemm_into's packed path), kept
            w_panels = packs.get(("w_panels",))
            if w_panels is None:
                w_panels = packs[("w_panels",)] = pack_b_panels(ws.W)
        if (split == "batch" and not L.time_major and L.T >= 2
                and ws.W.nbytes <= PART_PROJECTION_MAX_W_BYTES
                and _gemm_prepare(&P, ws.xd, ws.W, ws.xp, False, w_t, 0.0)):
            P.parts, P.by_rows = n, True   # part p: the rows of batch part p (_batch_part)
            _use_b_panels(&P, w_panels)
            proj_buf, proj_token = _gemm_scratch(&P, (L.B + n - 1) // n * L.T)
            J.proj = &P
        else:   # (one_row: the microkernel whether W's panels are kept or not, so that a prepared call
                # and a one-off one give the same bits)
            gemm_into(ws.xd, ws.W, ws.xp, trans_b=w_t, b_panels=w_panels, microkernel=one_row)
        ws.projected = True
    if split == "hidden":
        panels = plan.forward_packed and f32 and fr_simd_level()
        key = _HSplitBuffers.pk_key(L.B, n, ws.xp.dtype, panels, fused)
        cached = packs.get(key) if packs is not None else None
        bufs = _HSplitBuffers(L.B, L.H, L.G, n, ws.xp.dtype, panels, n_in=J.n_in, pk=cached, pooled=True,
                              keep_pk=packs is not None, fused=fused)
        bufs.fill(&J)
        J.pack = PACK_BIASES if cached is not None else PACK_ALL
        try:
            with nogil:
                fr_pool_run_adaptive(n, _hsplit_task, &J, _hsplit_work_ns(&L, J.n_in), L.training)
        finally:
            bufs.release()
        if packs is not None and cached is None:
            packs[key] = bufs.pk
        return
    if concat:
        keep = _pack_concat(&L, &J, n, ws, packs)
    elif plan is not None and plan.forward_packed and f32 and fr_simd_level():
        keep = _pack_recurrent_vec(&L, packs) if L.B == 1 else _pack_recurrent(&L, &J, n, False, packs)
    try:
        _run_batch(&J, n)
    finally:
        _scratch.give(proj_token)



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
    cdef floating *dbias = <floating *>L.dbias
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
    cdef const floating *ob
    cdef bint m
    cdef bint is_lstm = L.cell == CELL_LSTM, is_gru = L.cell == CELL_GRU
    cdef floating *dsrc

    memset(dacc, 0, <Py_ssize_t>B * H * sizeof(floating))
    for s in range(T - 1, -1, -1):
        t = _time(L, s)
        hpp = _slot(L, <floating *>L.hp, <floating *>L.hT, s, &ldp)
        if is_lstm:
            cpp = _slot(L, <floating *>L.cp, <floating *>L.cT, s, &ldcp)
            cnp_ = _slot(L, <floating *>L.cp, <floating *>L.cT, s + 1, &ldcn)
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
            if not m:
                for j in range(H):
                    db_[j] = ob[j] + dacc[b * H + j]   # dL/d(output of step s)
                memset(dgb, 0, GH * sizeof(floating))
                if drec != NULL:
                    memset(drec + b * ldg, 0, GH * sizeof(floating))
                if L.zero_output:
                    memset(dacc + b * H, 0, H * sizeof(floating))
                else:
                    memcpy(dacc + b * H, db_, H * sizeof(floating))
                continue
            bwd_dh_row(db_, ob, dacc + b * H, dh + b * H, H)   # dL/d(output of step s), all paths; dh := 0
            gb = g + b * ldg
            if is_lstm:
                lstm_bwd_row(gb, cpp + b * ldcp, cnp_ + b * ldcn, db_, dc + b * H, dgb, tmp + b * 2 * H,
                             H, L.act, L.ract)
            elif is_gru and L.reset_after:
                gru_reset_after_bwd_row(gb, hpp + b * ldp, auxp + b * lda, db_, dgb, dh + b * H, drec + b * ldg,
                                        H, L.act, L.ract)
            elif is_gru:   # reset_before: dg_r comes after the candidate's product, below
                gru_bwd_zh_row(gb, hpp + b * ldp, db_, dgb, dh + b * H, H, L.act, L.ract)
            else:
                dact(L.act, dgb, gb, db_, H)
        if dbias != NULL and not (is_gru and not L.reset_after):   # (reset_before: dr comes below)
            colsum_add(dbias, dg, B, GH, ldg)   # (a masked row's dG is zeros)
            if drec != NULL:
                colsum_add(dbias + GH, drec, B, GH, ldg)

        # dL/dh_prev += (gate grads) @ R^T, through the recurrent dropout mask
        if is_gru and not L.reset_after:
            # d(r*h_d) = dg_h @ R_h^T; then dr, and dh_d = d(r*h_d)*r + dg_zr @ R_zr^T
            matmul(True, B, H, H, dg + 2 * H, ldg, R + 2 * H, GH, 0, dhd, H)
            for b in range(B):
                if L.mask == NULL or L.mask[<Py_ssize_t>b * T + t] != 0:
                    gru_bwd_r_row(g + b * ldg, dhd + b * H, hdp + b * ldd, dg + b * ldg, H, L.ract)
                for j in range(H):
                    dhd[b * H + j] *= g[b * ldg + H + j]
            if dbias != NULL:
                colsum_add(dbias, dg, B, GH, ldg)
            matmul(True, B, H, 2 * H, dg, ldg, R, GH, 1, dhd, H)
            dsrc = dhd
        else:
            dsrc = drec if (is_gru and L.reset_after) else dg
            if rdm == NULL:
                _rmatmul_t(L, B, H, GH, dsrc, ldg, R, GH, 1, dh, H)
                continue
            _rmatmul_t(L, B, H, GH, dsrc, ldg, R, GH, 0, dhd, H)
            dsrc = dhd
        for b in range(B):
            for j in range(H):
                dh[b * H + j] += dsrc[b * H + j] * (rdm[b * H + j] if rdm != NULL else <floating>1)


def backward(ws, spec, plan=None):
    """Run BPTT over a Workspace filled by a training `forward`.

    IN ws.dout (N, H) (processing order, like ws.out); IN/OUT ws.dh, ws.dc (B, H): dL/d(final state) in,
    dL/d(initial state) out; OUT ws.dxp (N, G*H) pre-activation gradients (input side), ws.drec (GRU
    reset_after: recurrent side); OUT ws.db, if not None: (1, G*H), or (2, G*H) with ws.drec, the
    column sums of dxp (and drec): the bias gradient, summed inside the loop ("Bias gradient" above).
    `plan` as for `forward` (plan.backward_split: "serial", "batch" or "hidden" (B == 1);
    plan.backward_packed: dG @ R^T on the microkernel).
    """
    cdef Job J
    cdef Loop L
    cdef int n = 1
    cdef bint hidden = plan is not None and plan.backward_split == "hidden"
    cdef bint f32 = ws.xp.dtype == np.float32
    cdef _HSplitBuffers bufs
    cdef cnp.ndarray db = getattr(ws, "db", None), partials = None
    cdef Py_ssize_t k = 0
    cdef void *acc
    cdef void *rows
    _pin_blas()
    _fill(&L, ws, spec)
    _job_init(&J, &L, f32, True)
    if plan is not None and plan.backward_split in ("batch", "hidden"):
        n = plan.threads   # (the hidden split: one slice a thread)
    if db is not None:
        if (<object>db).shape != (1 + (ws.drec is not None), L.G * L.H) or db.dtype != ws.xp.dtype \
                or not db.flags.c_contiguous:
            raise ValueError(f"backward: ws.db must be a C-contiguous {ws.xp.dtype} array of shape "
                             f"{(1 + (ws.drec is not None), L.G * L.H)}, got {db.dtype} {(<object>db).shape}")
        k = db.size
        memset(cnp.PyArray_DATA(db), 0, k * J.item)
        if n == 1 and not hidden:
            L.dbias = cnp.PyArray_DATA(db)   # db's rows: dxp's sums, then drec's (Loop.dbias's layout)
        elif not hidden:   # row p: batch part p's sums, on cache lines of its own
            L.dbias_ld = (k + 15) // 16 * 16
            partials = _empty_aligned(n * L.dbias_ld, ws.xp.dtype)
            memset(cnp.PyArray_DATA(partials), 0, n * L.dbias_ld * J.item)
            L.dbias = cnp.PyArray_DATA(partials)
    if hidden:
        bufs = _HSplitBuffers(L.B, L.H, L.G, plan.threads, ws.xp.dtype, False, pooled=True)
        bufs.fill(&J)
        J.pk = NULL   # the product reads each slice's own rows of R in place
        try:
            with nogil:
                fr_pool_run_adaptive(n, _hsplit_task, &J, _hsplit_work_ns(&L, 0), 2)   # (label: backward)
        finally:
            bufs.release()
        if db is not None:   # all T rows at once, after the loop ("Bias gradient")
            acc = cnp.PyArray_DATA(db)
            with nogil:
                _sum_rows(acc, L.dxp, L.B * L.T, L.G * L.H, L.G * L.H, f32)
                if L.drec != NULL:
                    _sum_rows(_at(acc, L.G * L.H, J.item), L.drec, L.B * L.T, L.G * L.H, L.G * L.H, f32)
        return
    if plan is not None and plan.backward_packed and f32 and fr_simd_level():
        keep = _pack_recurrent(&L, &J, n, True)   # R^T for dG @ R^T, in Loop.Rp (forward's Rp is not used here)
    _run_batch(&J, n)
    if partials is not None:   # db := the parts' sums, added in part order
        acc, rows = cnp.PyArray_DATA(db), cnp.PyArray_DATA(partials)
        with nogil:
            _sum_rows(acc, rows, n, k, L.dbias_ld, f32)


cdef inline void _sum_rows(void *acc, const void *rows, int n, int k, Py_ssize_t ld, bint f32) noexcept nogil:
    """acc[:k] += the n rows of k elements at `rows`, ld elements apart, in row order (float32 or 64)."""
    if f32:
        colsum_add(<float *>acc, <const float *>rows, n, k, ld)
    else:
        colsum_add(<double *>acc, <const double *>rows, n, k, ld)


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



# The hoisted GEMMs on fastrnn's own microkernel (float32, AVX-512F): OpenBLAS has no pack-once API, and
# its kernels are whatever its build or OPENBLAS_CORETYPE picked (on this project's machines the
# environment sets OPENBLAS_CORETYPE=Haswell: AVX2, half of an AVX-512 core's FMA width; bench/NOTES.md 35).
# On an AVX2 CPU OpenBLAS's Haswell kernel is the native one, and runs these products as fast as
# gates_avx2.c's or faster (kept panels included, at B >= 16), so there the microkernel takes only the
# one-row forward's projection (bench/NOTES.md 48).
# K runs in blocks of GEMM_KC; each part packs its op(B) columns of one K block (GEMM_KC x its width:
# <= 2 MiB at 512 columns) and op(A) GEMM_MC_FLOATS at a time (512 KiB), both L2-sized, before the
# microkernel passes over them; C gains each K block's share in turn (the first with beta), in the same
# order whatever the split, so every thread count gives the same bits.
cdef enum:
    GEMM_KC = 1024
    GEMM_MC_FLOATS = 128 * 1024
# With few rows of op(A) the copy of op(B) into panels is not paid back (each panel row is used by only
# M rows): up to this many rows the microkernel reads B's rows in place (not for B^T, and only when N is
# a multiple of 16, as a panel's loads are whole rows of 16).  K x N = 512 x 2048 on one Zen 5 core,
# GFLOP/s in place vs packed: 8 rows 110 vs 54, 16 166 vs 106, 32 148 vs 126, 50 130-143 vs 123-126
# (three runs), 64 130-152 vs 125-141 (won 2 of 3), 96 120-151 vs 137-162, 128 149-157 vs 168-184
# (bench/NOTES.md 35).
cdef int _gemm_unpacked_max_m = 64
# On AVX2 (level 1) the microkernel projects only a one-row forward of up to this many steps, where
# OpenBLAS packs all of W for few rows of x (prepared calls keep W's panels, one-off calls pack them
# too, for the same bits).  Zen 3, same process, 2 threads, microkernel vs OpenBLAS, prepared calls:
# lstm t50-b1-h512 0.93, gru 0.94, simple_rnn 0.97, lstm t100-b1-h128 0.92-0.98, gru t100-b1-h128
# 1.00-1.01; but t1000-b1-h64 1.01-1.16 and B >= 16 0.98-1.13 (bench/NOTES.md 48).
ONE_ROW_MICROKERNEL_MAX_T = 128


def gemm_unpacked_max_m(n=None):
    """The most rows of op(A) for which gemm_into's packed path reads B in place (tests and A/B runs
    change it); `n` sets it.  Returns the setting in force."""
    global _gemm_unpacked_max_m
    if n is not None:
        _gemm_unpacked_max_m = int(n)
    return _gemm_unpacked_max_m


cdef void _packed_gemm_block(const GemmJob *J, int slot, int m0, int mw, int n0, int nw) noexcept nogil:
    """C[m0:m0+mw, n0:n0+nw] := (op(A) @ op(B))[that block] + beta*C (float32) on the packed microkernel,
    K in blocks of GEMM_KC, each packed here (op(B)'s columns n0.. into panels, op(A) mc rows at a time
    into row blocks, either taken transposed) before the prepacked GEMM runs it: AVX-512's 8-row blocks
    at level 2, AVX2's 6-row blocks at level 1 (which reads panels only: J.unpacked is never set there);
    n0 a multiple of 16.  Scratch: J.work + slot*J.scratch."""
    cdef int k0, kc, i0, mc
    cdef float b
    cdef const float *bp
    cdef const float *a
    cdef Py_ssize_t ps, ks
    cdef const float *A = <const float *>J.A
    cdef const float *B = <const float *>J.B
    cdef float *C = <float *>J.C
    cdef float *P = J.work + slot * J.scratch
    cdef float *work = P + J.panel_floats
    cdef bint wide = fr_simd_level() >= 2
    if mw <= 0 or nw <= 0:
        return
    k0 = 0
    while k0 < J.K:
        kc = J.K - k0 if J.K - k0 < GEMM_KC else GEMM_KC
        b = <float>J.beta if k0 == 0 else 1.0
        if J.Bp != NULL:   # packed already: K block k0 starts k0 whole rows of panels in, panel n0/16 of it
            bp, ps, ks = J.Bp + <Py_ssize_t>k0 * J.bp_ld + <Py_ssize_t>n0 * kc, <Py_ssize_t>kc * 16, 16
        elif J.unpacked:   # the microkernel reads B's rows where they are
            bp, ps, ks = B + <Py_ssize_t>k0 * J.ldb + n0, 16, J.ldb
        else:
            bp, ps, ks = P, <Py_ssize_t>kc * 16, 16
            if J.tb:   # op(B) = B^T: B is (N, K)
                fr_pack_panels_t_f32_avx2(B + <Py_ssize_t>n0 * J.ldb + k0, kc, nw, J.ldb, P)
            else:
                fr_pack_panels_f32_avx2(B + <Py_ssize_t>k0 * J.ldb + n0, kc, nw, J.ldb, P)
        i0 = m0
        while i0 < m0 + mw:
            mc = m0 + mw - i0 if m0 + mw - i0 < J.mc else J.mc
            # op(A) = A^T: A is (K, M)
            a = A + <Py_ssize_t>k0 * J.lda + i0 if J.ta else A + <Py_ssize_t>i0 * J.lda + k0
            if wide:
                fr_pack_a_f32_avx512(a, J.lda, J.ta, mc, kc, work)
                fr_gemm_prepacked_f32_avx512(mc, nw, kc, work, bp, ps, ks, b, C + <Py_ssize_t>i0 * J.ldc + n0,
                                             J.ldc)
            else:
                fr_pack_a_f32_avx2(a, J.lda, J.ta, mc, kc, work)
                fr_gemm_prepacked_f32_avx2(mc, nw, kc, work, bp, ps, b, C + <Py_ssize_t>i0 * J.ldc + n0, J.ldc)
            i0 += mc
        k0 += kc


cdef void _gemm_block(const GemmJob *J, floating beta, int m0, int mw, int n0, int nw) noexcept nogil:
    """The same block of C as one 1-thread BLAS call."""
    cdef const floating *A = <const floating *>J.A
    cdef const floating *B = <const floating *>J.B
    cdef floating *C = <floating *>J.C + <Py_ssize_t>m0 * J.ldc + n0
    if mw <= 0 or nw <= 0:
        return
    A = A + (m0 if J.ta else <Py_ssize_t>m0 * J.lda)    # rows m0.. of op(A): A's rows, or A's columns
    B = B + (<Py_ssize_t>n0 * J.ldb if J.tb else n0)   # columns n0.. of op(B): B's columns, or B's rows
    if J.ta:
        gemm(True, J.tb, mw, nw, J.K, A, J.lda, B, J.ldb, beta, C, J.ldc)
    else:
        matmul(J.tb, mw, nw, J.K, A, J.lda, B, J.ldb, beta, C, J.ldc)


cdef void _gemm_rows(const GemmJob *J, int slot, int m0, int mw) noexcept nogil:
    """Rows [m0, m0 + mw) of C, all its columns, on the packed microkernel or BLAS (scratch slot `slot`)."""
    if J.packed:
        _packed_gemm_block(J, slot, m0, mw, 0, J.N)
    elif J.f32:
        _gemm_block[float](J, <float>J.beta, m0, mw, 0, J.N)
    else:
        _gemm_block[double](J, J.beta, m0, mw, 0, J.N)


cdef void _gemm_part_task(void *arg, int part) noexcept nogil:
    """Part `part` of J.parts: a block of rows of C (J.by_rows) or of columns (whole 16-column panels
    on the packed path)."""
    cdef GemmJob *J = <GemmJob *>arg
    cdef int per
    if J.by_rows:
        per = (J.M + J.parts - 1) // J.parts
        _gemm_rows(J, part, part * per, min(per, J.M - part * per))
        return
    per = ((J.N + 15) // 16 + J.parts - 1) // J.parts * 16 if J.packed else (J.N + J.parts - 1) // J.parts
    if J.packed:
        _packed_gemm_block(J, part, 0, J.M, part * per, min(per, J.N - part * per))
    elif J.f32:
        _gemm_block[float](J, <float>J.beta, 0, J.M, part * per, min(per, J.N - part * per))
    else:
        _gemm_block[double](J, J.beta, 0, J.M, part * per, min(per, J.N - part * per))


# A GEMM is split over the pool from this many flops on (~50 us on one core): below it, waking the
# workers costs more than it saves.
GEMM_SPLIT_MIN_FLOPS = 4_000_000
cdef bint _packed_gemm_enabled = True


def packed_gemm(on=None):
    """Whether gemm_into may take the packed microkernel (A/B runs and tests switch it off to compare with
    OpenBLAS); `on` changes the setting.  Returns the setting in force."""
    global _packed_gemm_enabled
    if on is not None:
        _packed_gemm_enabled = bool(on)
    return _packed_gemm_enabled


cdef bint _gemm_prepare(GemmJob *J, cnp.ndarray A, cnp.ndarray B, cnp.ndarray C, bint trans_a, bint trans_b,
                        double beta) except -1:
    """J := C := op(A) @ op(B) + beta*C, checked, as one part; False when C is empty (nothing to do)."""
    for arr in (A, B, C):
        if arr.ndim != 2 or arr.dtype != C.dtype or C.dtype not in (np.float32, np.float64):
            raise ValueError("gemm_into: expected 2-D float32/float64 arrays of one dtype")
    cdef int M = C.shape[0], N = C.shape[1]
    cdef int K = A.shape[0] if trans_a else A.shape[1]
    if (A.shape[1] if trans_a else A.shape[0]) != M or (B.shape[1] if trans_b else B.shape[0]) != K \
            or (B.shape[0] if trans_b else B.shape[1]) != N:
        raise ValueError(f"gemm_into: shapes {(<object>A).shape} {(<object>B).shape} -> {(<object>C).shape} do not chain")
    if M == 0 or N == 0:
        return False
    J.f32, J.ta, J.tb = C.dtype == np.float32, trans_a, trans_b
    J.M, J.N, J.K = M, N, K
    J.lda, J.ldb, J.ldc = _ld(A), _ld(B), _ld(C)
    J.A, J.B, J.C = cnp.PyArray_DATA(A), cnp.PyArray_DATA(B), cnp.PyArray_DATA(C)
    J.beta = beta
    J.by_rows = M >= N
    J.parts = 1
    # the microkernel's C update is C := P or C += P; on AVX2 (level 1) only when asked for (gemm_into's
    # `microkernel`, or B's panels kept: _use_b_panels), as OpenBLAS's kernel is as fast there
    J.packable = (J.f32 and M >= 2 and K >= 1 and (beta == 0.0 or beta == 1.0) and fr_simd_level() >= 1
                  and _packed_gemm_enabled)
    J.packed = J.packable and fr_simd_level() >= 2
    J.unpacked = False
    J.Bp = NULL
    J.work = NULL
    return True


def pack_b_panels(cnp.ndarray B):
    """B (K, N) float32, rows contiguous, in the panels gemm_into's packed path makes of op(B) for each
    K block (GEMM_KC rows of 16-column panels, each panel kc x 16 floats), all K blocks in order: the
    `b_panels` of a later gemm_into(A, B, C) on the same B, which then packs nothing."""
    if B.ndim != 2 or B.dtype != np.float32:
        raise ValueError(f"pack_b_panels: expected a 2-D float32 array, got {B.dtype} of shape {(<object>B).shape}")
    cdef int K = B.shape[0], N = B.shape[1], ldb = _ld(B), k0, kc
    cdef Py_ssize_t npad = (N + 15) // 16 * 16
    cdef cnp.ndarray out = np.empty(max(1, K * npad), np.float32)
    cdef float *P = <float *>cnp.PyArray_DATA(out)
    cdef const float *src = <const float *>cnp.PyArray_DATA(B)
    with nogil:
        k0 = 0
        while k0 < K:
            kc = K - k0 if K - k0 < GEMM_KC else GEMM_KC
            fr_pack_panels_f32_avx2(src + <Py_ssize_t>k0 * ldb, kc, N, ldb, P + <Py_ssize_t>k0 * npad)
            k0 += kc
    return out


ctypedef struct TransposeJob:
    int M, N, per              # src (M, N); each part `per` rows of src (a multiple of 16)
    const void *src
    void *dst
    long lds, ldd
    bint f32


cdef void _transpose_part(void *arg, int part) noexcept nogil:
    """Rows [part*per, part*per + per) of src into the same columns of dst: parts write disjoint
    64-byte-aligned runs of dst's rows (per is a multiple of 16), so they share no cache line."""
    cdef TransposeJob *J = <TransposeJob *>arg
    cdef int i0 = part * J.per
    cdef int rows = J.M - i0 if J.M - i0 < J.per else J.per
    if J.f32:
        transpose(rows, J.N, <const float *>J.src + <Py_ssize_t>i0 * J.lds, J.lds, <float *>J.dst + i0, J.ldd)
    else:
        transpose(rows, J.N, <const double *>J.src + <Py_ssize_t>i0 * J.lds, J.lds, <double *>J.dst + i0, J.ldd)


# From this size of src a transpose splits over the pool: 1 MiB, one Zen 4 core 55 us, two 39 (C
# harness, bench/NOTES.md 40); a split of a smaller one costs about the dispatch it saves.
TRANSPOSE_SPLIT_MIN_BYTES = 256 << 10


def transpose_into(cnp.ndarray src, cnp.ndarray dst):
    """dst := src.T for 2-D float32/float64 arrays of one dtype, src (M, N) and dst (N, M), each with
    contiguous rows (any row stride), not overlapping: np.copyto(dst, src.T) in register-transposed
    blocks (float32: 16 x 16 on AVX-512F, 8 x 8 in 32 x 32 tiles on AVX2), split by rows of src over
    the pool from TRANSPOSE_SPLIT_MIN_BYTES, where numpy's and torch's strided copies run 10-40x slower
    than a plain copy (fastrnn/_torch_autograd.py: torch's (G*H, I) weights <-> the Keras layout)."""
    if src.ndim != 2 or dst.ndim != 2 or src.dtype != dst.dtype or src.dtype not in (np.float32, np.float64):
        raise ValueError(f"transpose_into: expected two 2-D float32 or float64 arrays of one dtype, got "
                         f"{src.dtype} {(<object>src).shape} and {dst.dtype} {(<object>dst).shape}")
    if dst.shape[0] != src.shape[1] or dst.shape[1] != src.shape[0]:
        raise ValueError(f"transpose_into: dst must be src's transpose shape {(src.shape[1], src.shape[0])}, "
                         f"got {(<object>dst).shape}")
    if not dst.flags.writeable:
        raise ValueError("transpose_into: dst is read-only")
    for name, a in (("src", src), ("dst", dst)):
        if (a.shape[1] > 1 and a.strides[1] != a.itemsize) or (a.shape[0] > 1 and a.strides[0] < a.itemsize * a.shape[1]):
            raise ValueError(f"transpose_into: {name} needs contiguous rows, got strides {(<object>a).strides}")
    if np.may_share_memory(src, dst):   # (bounds only: cheap, and refuses interleaved views too)
        raise ValueError("transpose_into: src and dst overlap")
    if src.size == 0:
        return
    cdef TransposeJob J
    J.M, J.N, J.f32 = src.shape[0], src.shape[1], src.dtype == np.float32
    J.lds = src.strides[0] // src.itemsize if J.M > 1 else J.N
    J.ldd = dst.strides[0] // dst.itemsize if J.N > 1 else J.M
    J.src, J.dst = cnp.PyArray_DATA(src), cnp.PyArray_DATA(dst)
    cdef int n = _n_threads if src.nbytes >= TRANSPOSE_SPLIT_MIN_BYTES else 1
    cdef int nparts = min(2 * n, (J.M + 15) // 16)   # two a thread: a late worker takes the second
    J.per = ((J.M + nparts - 1) // nparts + 15) // 16 * 16
    nparts = (J.M + J.per - 1) // J.per
    with nogil:
        if nparts > 1:
            fr_pool_parts(n, nparts, _transpose_part, &J)
        else:
            _transpose_part(&J, 0)


cdef void _use_b_panels(GemmJob *J, object b_panels) except *:
    """Point J's packed path at B's panels from pack_b_panels (None, another path or B^T: no-op); that
    takes the packed path at level 1 too."""
    if b_panels is None or not J.packable or J.tb:
        return
    cdef Py_ssize_t npad = (J.N + 15) // 16 * 16
    if (<cnp.ndarray>b_panels).dtype != np.float32 or (<cnp.ndarray>b_panels).size != max(1, J.K * npad):
        raise ValueError(f"gemm_into: b_panels of {b_panels.size} {b_panels.dtype}, expected "
                         f"{J.K * npad} float32 (pack_b_panels of a ({J.K}, {J.N}) B)")
    J.Bp, J.bp_ld = <const float *>cnp.PyArray_DATA(<cnp.ndarray>b_panels), npad
    J.packed = True


cdef object _gemm_scratch(GemmJob *J, int rows):
    """The packed path's scratch for J.parts parts of at most `rows` rows of C each (J.by_rows: all of
    C's columns; else the panels of one column part): J.unpacked, J.mc, J.panel_floats, J.scratch and
    J.work, from the scratch pool (mapped already).  Returns (buffer, pool token): the caller keeps the
    buffer alive while J runs (a small one is a plain array, with no token) and gives the token back."""
    if not J.packed:
        return None, None
    cdef bint wide = fr_simd_level() >= 2
    J.unpacked = wide and J.Bp == NULL and not J.tb and J.N % 16 == 0 and rows <= _gemm_unpacked_max_m
    kc = min(J.K, GEMM_KC)
    if wide:
        J.mc = max(8, min(rows, GEMM_MC_FLOATS // kc // 8 * 8))
    else:   # 6-row blocks, and half the A block (Zen 3's L2 is 512 KiB, Zen 4's 1 MiB)
        J.mc = max(6, min(rows, GEMM_MC_FLOATS // 2 // kc // 6 * 6))
    # per part: one K block of op(B) in panels of its columns (a row part: all of them), then op(A)'s
    # mc-row blocks; parts whole cache lines apart
    width = J.N if J.by_rows else (J.N + 15) // 16 // J.parts * 16 + 16
    J.panel_floats = 0 if J.unpacked or J.Bp != NULL else <Py_ssize_t>kc * ((width + 15) // 16 * 16)
    J.scratch = (J.panel_floats + FR_PACKED_A_SIZE(J.mc, kc) + 15) // 16 * 16
    buf, token = _scratch.take((J.scratch * J.parts + 16,), np.float32)
    J.work = <float *>cnp.PyArray_DATA(<cnp.ndarray>buf)
    J.work += (16 - <Py_ssize_t>J.work // 4 % 16) % 16   # a cache line's start (C division: no negatives)
    return buf, token


def gemm_into(cnp.ndarray A, cnp.ndarray B, cnp.ndarray C, bint trans_a=False, bint trans_b=False,
              double beta=0.0, b_panels=None, bint microkernel=False):
    """C := op(A) @ op(B) + beta*C for 2-D arrays of one float dtype whose rows are contiguous
    (row strides may be larger: column blocks of a wider array are fine).  Large products are split
    over fastrnn's pool along the longer of C's dimensions (the packed path: by whole panels of columns
    while there are two a part), one 1-thread BLAS call per part, or for float32 with at least 2 rows and
    1 column of K, beta 0 or 1, fastrnn's packed microkernel (_packed_gemm_block): always on an AVX-512
    CPU (simd_level() == 2), on AVX2 (level 1) with b_panels or `microkernel`.  b_panels:
    pack_b_panels(B), which that path then reads instead of packing B (the caller promises B has not
    changed since); the bits are the same with and without them."""
    cdef GemmJob J
    if not _gemm_prepare(&J, A, B, C, trans_a, trans_b, beta):
        return
    if microkernel:
        J.packed = J.packable
    _use_b_panels(&J, b_panels)
    _pin_blas()
    if _n_threads > 1 and 2.0 * J.M * J.N * J.K >= GEMM_SPLIT_MIN_FLOPS:
        if J.packed:   # whole panels of columns while each part gets two, else rows
            J.by_rows = (J.N + 15) // 16 < 2 * _n_threads
        # parts of at least 16 rows/columns (a microkernel's width), one per thread
        J.parts = max(1, min(_n_threads, (J.M if J.by_rows else J.N) // 16))
    buf, token = _gemm_scratch(&J, J.M)
    try:
        with nogil:
            fr_pool_parts(J.parts, J.parts, _gemm_part_task, &J)
    finally:
        _scratch.give(token)


# ---------------------------------------------------------------------------------------------------
# streaming: one time step per call, everything prepared once

cdef class StepKernel:
    """One inference step at a time over a T=1 Workspace: xp := x_t @ W, then the forward loop for one
    step, the new state becoming the next step's initial state (two state buffers swap roles, no copy
    back).  Built once by fastrnn.layers.Stream; `step` does no allocation and no attribute lookups.
    With a "hidden" plan (B == 1, several threads) the step is the hidden split of `forward`, with the
    input projection split too (x @ W_k per slice) and the slices packed once, on the first step.  A
    packed plan (cpu_plan(packs_kept=True): B == 1, float32) streams vector panels (of R, and of each
    slice's R_k and W_k), packed once for the stream's life: per step, same process, 1.15-1.6x the
    row-major vecmats at lstm H = 256 and 512 and simple_rnn H = 512, lstm H = 128 1.17-1.23x on one
    thread and level on two (bench/NOTES.md 37).

    IN x (B, I) C-contiguous, the workspace's dtype; OUT the workspace's `out` (B, H) and the state
    buffers (`current()` says which holds h, c)."""

    cdef Loop L
    cdef Job J
    cdef object ws
    cdef object spec
    cdef object bufs
    cdef void *W
    cdef int n_in  # not `I`: complex.h defines I as a macro
    cdef int threads
    cdef long work_ns
    cdef bint f32
    cdef bint flipped
    cdef bint hidden

    def __init__(self, ws, spec, W, plan=None):
        if spec.T != 1 or ws.training:
            raise ValueError("StepKernel: expected an inference workspace with T == 1")
        _fill(&self.L, ws, spec)
        self.ws, self.spec = ws, spec
        self.W = cnp.PyArray_DATA(<cnp.ndarray>W)
        self.n_in = spec.I
        self.f32 = ws.xp.dtype == np.float32
        self.flipped = False
        _job_init(&self.J, &self.L, self.f32, False)
        self.hidden = plan is not None and plan.forward_split == "hidden"
        self.threads = plan.threads if self.hidden else 1
        if self.hidden:
            if spec.B != 1:
                raise ValueError("StepKernel: the hidden split streams one row (B == 1)")
            self.bufs = _HSplitBuffers(1, spec.H, spec.G, self.threads, ws.xp.dtype,
                                       plan.forward_packed and self.f32, spec.I)
            (<_HSplitBuffers>self.bufs).fill(&self.J)
            self.J.pack = PACK_ALL
            self.J.W, self.J.n_in = self.W, spec.I
            self.work_ns = _hsplit_work_ns(&self.L, spec.I)
        elif plan is not None and plan.forward_packed and self.f32 and spec.B == 1:
            self.bufs = _pack_recurrent_vec(&self.L)   # R's vector panels, for every step of the stream

    def repack(self):
        """Take the weights' current values into the packed copies (fastrnn.layers.Stream calls this
        after set_weights): R's vector panels at once, the hidden split's slices on the next step."""
        if self.hidden:
            self.J.pack = PACK_ALL
        elif self.L.Rv != NULL:
            self.bufs = _pack_recurrent_vec(&self.L)

    def step(self, cnp.ndarray x):
        """Advance every row by one step with input x (B, I)."""
        cdef Loop *L = &self.L
        cdef void *xin = cnp.PyArray_DATA(x)
        cdef void *tmp
        cdef int GH = L.G * L.H
        _pin_blas()
        with nogil:
            if self.hidden:
                self.J.xin = xin
                # (not fr_pool_run_adaptive: its bookkeeping and its every 33rd step alone cost ~0.3 us a
                # step, 7% of LSTM H=128 B=1 on 2 threads, 4.5 us; bench/NOTES.md 46)
                fr_pool_run(self.threads, _hsplit_task, &self.J, self.work_ns)
                self.J.pack = 0
            elif self.f32:
                matmul[float](False, L.B, GH, self.n_in, <float *>xin, self.n_in, <float *>self.W, GH, 0,
                              <float *>L.xp, GH)
                _forward[float](L, <float *>L.xp)
            else:
                matmul[double](False, L.B, GH, self.n_in, <double *>xin, self.n_in, <double *>self.W, GH, 0,
                               <double *>L.xp, GH)
                _forward[double](L, <double *>L.xp)
            L.parity ^= 1   # the next step streams R's panels the other way (Serpentine)
            tmp = L.h0
            L.h0 = L.hT
            L.hT = tmp
            if L.c0 != NULL:
                tmp = L.c0
                L.c0 = L.cT
                L.cT = tmp
        self.flipped = not self.flipped

    def step_copy(self, x):
        """`step(x)` then a copy of the new h (B, H): the whole of Stream.step for one cell, in C.
        Returns None, without stepping, unless x is a C-contiguous (B, I) ndarray of the workspace's
        dtype: the caller then takes its checked path (which converts or explains)."""
        cdef cnp.ndarray a
        if not cnp.PyArray_CheckExact(x):
            return None
        a = <cnp.ndarray>x
        if (cnp.PyArray_NDIM(a) != 2 or a.shape[0] != self.L.B or a.shape[1] != self.n_in
                or not cnp.PyArray_IS_C_CONTIGUOUS(a)
                or cnp.PyArray_TYPE(a) != (cnp.NPY_FLOAT32 if self.f32 else cnp.NPY_FLOAT64)):
            return None
        self.step(a)
        return cnp.PyArray_NewCopy(<cnp.ndarray>(self.ws.hT if self.flipped else self.ws.h0), cnp.NPY_CORDER)

    def current(self):
        """(h, c) arrays holding the state after the last step (c is None without a cell state)."""
        ws = self.ws
        if self.flipped:
            return ws.hT, ws.cT
        return ws.h0, ws.c0


# ---------------------------------------------------------------------------------------------------
# threads and SIMD

# fastrnn's thread count: the size of its own pool, which runs every parallel part (the split loops and
# the split hoisted GEMMs).  OpenBLAS itself runs on one thread for good, so its pool never wakes: one
# pool, and results that depend on the plan only (not on how many threads a busy pool lends).
# fastrnn._native loads OpenBLAS with one thread (no workers spinning at start-up) and then sets the
# count OpenBLAS would have picked (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else the CPUs).
cdef int _n_threads = max(1, scipy_openblas_get_num_threads())
scipy_openblas_set_num_threads(1)


cdef inline void _pin_blas() noexcept nogil:
    """Pin OpenBLAS back to one thread if someone changed it since (threadpoolctl's
    `threadpool_limits(n, user_api="blas")` sets every BLAS it finds, ours included, as scikit-learn and
    the bench harness do).  Two threads per BLAS call inside our pool put four threads on two cores, and
    OpenBLAS's workers then spin for ~2^28 cycles after each call, on the cores our pool runs on.
    Called at each entry that may reach BLAS; a get is a load."""
    if scipy_openblas_get_num_threads() != 1:
        scipy_openblas_set_num_threads(1)

def set_num_threads(int n):
    """Use n >= 1 threads in fastrnn's pool (fastrnn._threads validates n)."""
    global _n_threads
    _n_threads = n

def get_num_threads():
    return _n_threads

def pool_stats():
    """{"solo_calls": team calls the pool's stall guard ran on the caller alone, "backoff_calls": its
    current solo period in calls (0: none; a clean team task halves it), "asleep_calls": small team calls
    run on the caller alone because every worker was asleep, "adaptive_solo_calls": hidden-split calls
    run alone because one thread had been faster than the team for that kind of call} (pool.h).
    """
    cdef long solo = 0, backoff = 0, asleep = 0
    fr_pool_stats(&solo, &backoff, &asleep)
    return {"solo_calls": solo, "backoff_calls": backoff, "asleep_calls": asleep,
            "adaptive_solo_calls": fr_pool_adaptive_solo_calls()}


def pool_set_host(size_t gomp_parallel=0, size_t omp_get_thread_num=0, size_t omp_get_num_threads=0):
    """Register another OpenMP runtime of this process as the host (pool.h): the addresses of its
    GOMP_parallel, omp_get_thread_num and omp_get_num_threads (all 0: none, the default).  Threads that
    then call pool_use_host(True) run their parallel tasks on its team (fastrnn/_torch_autograd.py does
    for torch's)."""
    with nogil:
        fr_pool_set_host(<void *>gomp_parallel, <void *>omp_get_thread_num, <void *>omp_get_num_threads)


def pool_use_host(bint on):
    """Switch the calling thread's parallel tasks to the registered host runtime (or back to fastrnn's
    own workers); returns the previous setting.  No-op while no host is registered."""
    return bool(fr_pool_use_host(on))


ctypedef struct _ProbeJob:
    int rounds
    int sleep_us   # > 0: tid 1 sleeps this long before each barrier (a team member off its core)
    long busy_ns   # each round's work: busy_ns / nth of spinning per thread ...
    long team_ns   # ... plus this much more per thread when nth > 1 (a team slower than one thread)


cdef inline void _spin_ns(long ns) noexcept nogil:
    cdef timespec t0, t
    clock_gettime(CLOCK_MONOTONIC, &t0)
    while True:
        clock_gettime(CLOCK_MONOTONIC, &t)
        if (t.tv_sec - t0.tv_sec) * 1000000000 + (t.tv_nsec - t0.tv_nsec) >= ns:
            return


cdef void _probe_task(void *arg, int tid, int nth) noexcept nogil:
    cdef _ProbeJob *P = <_ProbeJob *>arg
    cdef int sense = 0, r
    for r in range(P.rounds):
        if P.busy_ns > 0 or P.team_ns > 0:
            _spin_ns(P.busy_ns // nth + (P.team_ns if nth > 1 else 0))
        if tid == 1 and P.sleep_us > 0:
            usleep(P.sleep_us)
        fr_pool_barrier(nth, &sense)


def _pool_probe(int threads, int rounds, int sleep_us=0, long work_ns=1000000, long busy_ns=0,
                long team_ns=0, bint adaptive=False):
    """Test hook: a team task of `rounds` barriers on up to `threads` threads; sleep_us > 0 makes tid 1
    late at every barrier, as if the OS had taken its core; work_ns is the task's estimated time (small:
    a streaming step).  Each round's work: busy_ns spinning shared by the threads, plus team_ns more per
    thread in a team.  adaptive: through fr_pool_run_adaptive (team or solo, as the hidden split runs).
    Returns the number of threads that ran."""
    cdef _ProbeJob P
    cdef int n
    P.rounds, P.sleep_us, P.busy_ns, P.team_ns = rounds, sleep_us, busy_ns, team_ns
    with nogil:
        if adaptive:
            n = fr_pool_run_adaptive(threads, _probe_task, &P, work_ns, 0)
        else:
            n = fr_pool_run(threads, _probe_task, &P, work_ns)
    return n


def _packed_product(cnp.ndarray A, cnp.ndarray R, cnp.ndarray C, float beta, bint reverse=False):
    """Test hook: C := A @ R + beta*C (beta 0 or 1) through the packed path at the current SIMD level
    (>= 1), as the loops run it: R (K, N) packed into panels, then the microkernel (A with >= 2 rows)
    or the vector-panel product (one row; `reverse`: its panels in the serpentine order of odd steps).
    float32 2-D arrays whose rows are contiguous (row strides may be larger); C is written in place."""
    for arr in (A, R, C):
        if arr.ndim != 2 or arr.dtype != np.float32 or arr.strides[1] != 4:
            raise ValueError("_packed_product: expected 2-D float32 arrays with contiguous rows")
    cdef int M = A.shape[0], K = A.shape[1], N = R.shape[1]
    if R.shape[0] != K or C.shape[0] != M or C.shape[1] != N:
        raise ValueError(f"_packed_product: shapes {(<object>A).shape} {(<object>R).shape} -> {(<object>C).shape} do not chain")
    if fr_simd_level() < 1:
        raise ValueError("_packed_product: the packed products need AVX2/FMA (simd_level() >= 1)")
    cdef cnp.ndarray packed, work
    cdef int lda = _ld(A), ldr = _ld(R), ldc = _ld(C)
    if M == 1:
        packed = np.empty(FR_VEC_PACKED_SIZE(K, N), np.float32)
        with nogil:
            fr_pack_vec_panels_f32_avx2(<const float *>cnp.PyArray_DATA(R), K, ldr, 1, 0, N,
                                        <float *>cnp.PyArray_DATA(packed))
            fr_vecmat_panels_f32(<const float *>cnp.PyArray_DATA(A), <const float *>cnp.PyArray_DATA(packed),
                                 K, N, beta, <float *>cnp.PyArray_DATA(C), reverse)
        return
    packed = np.empty(((N + 15) // 16 * 16) * max(K, 1), np.float32)
    cdef Py_ssize_t size = FR_PACKED_A_SIZE(M, K)
    work = np.full(size + 64, np.nan, np.float32)   # a guard band after the scratch the kernels may use
    with nogil:
        fr_pack_panels_f32_avx2(<const float *>cnp.PyArray_DATA(R), K, N, ldr, <float *>cnp.PyArray_DATA(packed))
        fr_gemm_packed_f32(M, N, K, <const float *>cnp.PyArray_DATA(A), lda, <const float *>cnp.PyArray_DATA(packed),
                           beta, <float *>cnp.PyArray_DATA(C), ldc, <float *>cnp.PyArray_DATA(work))
    if not np.isnan(work[size:]).all():
        raise RuntimeError(f"_packed_product: the microkernel wrote past FR_PACKED_A_SIZE({M}, {K})")


def get_blas_threads():
    """OpenBLAS's own thread count: always 1 (see above; a test checks it)."""
    return scipy_openblas_get_num_threads()

def simd_level():
    """0: the portable float32 path; 1: gate math and packed products on AVX2/FMA; 2: the packed and
    one-row products and the cell rows fused for the default activations on AVX-512F, the rest of the gate math on
    AVX2/FMA.  See gates.h."""
    return fr_simd_level()

cdef bint _keep_w_panels = True


def keep_w_panels(on=None):
    """Whether `forward` keeps W's panels in its packs (for the projection) as well as R's; `on` changes
    it (benchmarks compare: bench/ab_switch.py wpanels).  Returns the setting in force."""
    global _keep_w_panels
    if on is not None:
        _keep_w_panels = bool(on)
    return _keep_w_panels


def serpentine(on=None):
    """Whether one-row products stream R's panels the other way on every other step (module docstring:
    Serpentine); `on` changes it (benchmarks compare).  Returns the setting in force."""
    global _serpentine
    if on is not None:
        _serpentine = 1 if on else 0
    return bool(_serpentine)

def next_panel_prefetch(on=None):
    """Whether the AVX2 microkernel's few-row passes over long panels prefetch the next panel instead of
    a few rows ahead in their own (gates_avx2.c, Next-panel prefetch); `on` changes it (benchmarks
    compare: bench/ab_switch.py nextpanel).  Returns the setting in force."""
    global fr_next_panel_prefetch
    if on is not None:
        fr_next_panel_prefetch = 1 if on else 0
    return bool(fr_next_panel_prefetch)


def h_in_out(on=None):
    """Whether an unmasked inference forward keeps h in the output rows instead of a slot it copies to
    them (module docstring: Output rows as state); `on` changes it (tests and benchmarks compare).
    Returns the setting in force."""
    global _h_in_out
    if on is not None:
        _h_in_out = 1 if on else 0
    return bool(_h_in_out)

def adaptive_team(on=None):
    """Whether the hidden split chooses between its team and one thread by their measured times (pool.h,
    fr_pool_run_adaptive); `on` changes it (benchmarks compare).  Returns the setting in force."""
    return bool(fr_pool_adaptive(-1 if on is None else (1 if on else 0)))


def limit_simd(int max_level):
    """Cap the SIMD level at max_level (0, 1 or 2: tests compare the builds); 2 lifts the cap.
    Returns the level now in force."""
    if not 0 <= max_level <= 2:
        raise ValueError(f"limit_simd: expected a level 0, 1 or 2, got {max_level}")
    fr_limit_simd(max_level)
    return fr_simd_level()

def force_scalar(bint on):
    """Pin the portable gate math (for tests that compare both paths)."""
    fr_force_scalar(on)
