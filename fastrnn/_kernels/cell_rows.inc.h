/* cell_rows.inc.h - one-row cell updates, written once for both dtypes.
 *
 * Included twice by gates.c with T (the element type) and SFX (the name suffix: f32, f64) defined; see
 * gates.h for the contract of each function.  Plain loops: gcc -O3 vectorises them with the baseline
 * ISA; the transcendental work goes through fr_act_SFX, which has the AVX2 path.
 */
#define FR_CAT2(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT2(a, b)
#define FN(name) FR_CAT(name, SFX)

void FN(fr_dact)(int kind, T *dx, const T *y, const T *dy, int n)
{
    int j;
    switch (kind) {
    case FR_TANH:
        for (j = 0; j < n; j++) dx[j] = dy[j] * ((T)1 - y[j] * y[j]);
        break;
    case FR_SIGMOID:
        for (j = 0; j < n; j++) dx[j] = dy[j] * (y[j] * ((T)1 - y[j]));
        break;
    case FR_HARD_SIGMOID:
        for (j = 0; j < n; j++) dx[j] = (y[j] > (T)0 && y[j] < (T)1) ? dy[j] * ((T)1 / (T)6) : (T)0;
        break;
    case FR_RELU:
        for (j = 0; j < n; j++) dx[j] = y[j] > (T)0 ? dy[j] : (T)0;
        break;
    case FR_SOFTSIGN:
        for (j = 0; j < n; j++) {
            T a = (T)1 - (y[j] < 0 ? -y[j] : y[j]);
            dx[j] = dy[j] * a * a;
        }
        break;
    default: /* FR_LINEAR */
        if (dx != dy)
            for (j = 0; j < n; j++) dx[j] = dy[j];
        break;
    }
}

#ifdef FR_OWN_LSTM_FWD /* gates_avx2.c fuses the default activations and calls this for the others */
static void FN(fr_lstm_fwd_row_generic)(T *restrict g, const T *restrict bias, const T *restrict c_prev,
                                        T *restrict c, T *restrict h, int H, int act, int ract)
#else
void FN(fr_lstm_fwd_row)(T *restrict g, const T *restrict bias, const T *restrict c_prev, T *restrict c,
                         T *restrict h, int H, int act, int ract)
#endif
{
    int j;
    if (bias)
        for (j = 0; j < 4 * H; j++) g[j] += bias[j];
    FN(fr_act)(ract, g, g, 2 * H);             /* i, f */
    FN(fr_act)(act, g + 2 * H, g + 2 * H, H);  /* candidate */
    FN(fr_act)(ract, g + 3 * H, g + 3 * H, H); /* o */
    {
        const T *gi = g, *gf = g + H, *gc = g + 2 * H;
        for (j = 0; j < H; j++) c[j] = gf[j] * c_prev[j] + gi[j] * gc[j];
    }
    FN(fr_act)(act, h, c, H);
    {
        const T *go = g + 3 * H;
        for (j = 0; j < H; j++) h[j] *= go[j];
    }
}

#ifdef FR_OWN_LSTM_BWD /* likewise */
static void FN(fr_lstm_bwd_row_generic)(const T *restrict g, const T *restrict c_prev, const T *restrict c,
                                        const T *restrict dh, T *restrict dc, T *restrict dg,
                                        T *restrict tmp, int H, int act, int ract)
#else
void FN(fr_lstm_bwd_row)(const T *restrict g, const T *restrict c_prev, const T *restrict c,
                         const T *restrict dh, T *restrict dc, T *restrict dg, T *restrict tmp, int H,
                         int act, int ract)
#endif
{
    const T *gi = g, *gf = g + H, *gc = g + 2 * H, *go = g + 3 * H;
    /* one restrict pointer per block: with dg[k*H + j] gcc keeps the loop scalar */
    T *restrict dgi = dg, *restrict dgf = dg + H, *restrict dgc = dg + 2 * H, *restrict dgo = dg + 3 * H;
    T *restrict ac = tmp, *restrict dct = tmp + H;
    int j;
    FN(fr_act)(act, ac, c, H); /* act(c_t), recomputed rather than stored */
    for (j = 0; j < H; j++) dct[j] = dh[j] * go[j];
    FN(fr_dact)(act, dct, ac, dct, H);
    for (j = 0; j < H; j++) {
        T d = dc[j] + dct[j]; /* dL/dc_t through both paths */
        dgi[j] = d * gc[j];
        dgf[j] = d * c_prev[j];
        dgc[j] = d * gi[j];
        dgo[j] = dh[j] * ac[j];
        dc[j] = d * gf[j];
    }
    FN(fr_dact)(ract, dg, gi, dg, 2 * H); /* i and f are adjacent */
    FN(fr_dact)(act, dgc, gc, dgc, H);
    FN(fr_dact)(ract, dgo, go, dgo, H);
}

void FN(fr_gru_zr_row)(T *restrict g, const T *restrict rec, const T *restrict bx, const T *restrict br,
                       int H, int ract)
{
    int j;
    if (rec)
        for (j = 0; j < 2 * H; j++) g[j] += rec[j];
    if (bx)
        for (j = 0; j < 2 * H; j++) g[j] += bx[j];
    if (br)
        for (j = 0; j < 2 * H; j++) g[j] += br[j];
    FN(fr_act)(ract, g, g, 2 * H);
}

void FN(fr_gru_reset_after_row)(T *restrict g, const T *restrict rec, const T *restrict bx,
                                const T *restrict br, T *restrict rh, int H)
{
    const T *r = g + H;
    T *gh = g + 2 * H;
    int j;
    for (j = 0; j < H; j++) rh[j] = rec[2 * H + j] + (br ? br[2 * H + j] : (T)0);
    for (j = 0; j < H; j++) gh[j] += r[j] * rh[j] + (bx ? bx[2 * H + j] : (T)0);
}

void FN(fr_gru_h_row)(T *restrict g, const T *restrict b_h, const T *restrict h_prev, T *restrict h,
                      int H, int act)
{
    const T *z = g;
    T *gh = g + 2 * H;
    int j;
    if (b_h)
        for (j = 0; j < H; j++) gh[j] += b_h[j];
    FN(fr_act)(act, gh, gh, H);
    for (j = 0; j < H; j++) h[j] = z[j] * h_prev[j] + ((T)1 - z[j]) * gh[j];
}

#ifdef FR_OWN_GRU_FWD /* gates_avx2.c fuses the default activations and calls this for the others */
static void FN(fr_gru_reset_after_fwd_row_generic)(T *restrict g, const T *restrict rec, const T *restrict bx,
                                                   const T *restrict br, T *restrict rh,
                                                   const T *restrict h_prev, T *restrict h, int H, int act,
                                                   int ract)
#else
void FN(fr_gru_reset_after_fwd_row)(T *restrict g, const T *restrict rec, const T *restrict bx,
                                    const T *restrict br, T *restrict rh, const T *restrict h_prev,
                                    T *restrict h, int H, int act, int ract)
#endif
{
    FN(fr_gru_zr_row)(g, rec, bx, br, H, ract);
    FN(fr_gru_reset_after_row)(g, rec, bx, br, rh, H);
    FN(fr_gru_h_row)(g, (const T *)0, h_prev, h, H, act);
}

void FN(fr_gru_bwd_zh_row)(const T *restrict g, const T *restrict h_prev, const T *restrict dh,
                           T *restrict dg, T *restrict dh_direct, int H, int act, int ract)
{
    const T *z = g, *hh = g + 2 * H;
    T *restrict dgz = dg, *restrict dgh = dg + 2 * H;
    int j;
    for (j = 0; j < H; j++) {
        dgz[j] = dh[j] * (h_prev[j] - hh[j]);
        dgh[j] = dh[j] * ((T)1 - z[j]);
        dh_direct[j] = dh[j] * z[j];
    }
    FN(fr_dact)(ract, dgz, z, dgz, H);
    FN(fr_dact)(act, dgh, hh, dgh, H);
}

void FN(fr_gru_bwd_r_row)(const T *restrict g, const T *restrict a, const T *restrict b, T *restrict dg,
                          int H, int ract)
{
    T *dr = dg + H;
    int j;
    for (j = 0; j < H; j++) dr[j] = a[j] * b[j];
    FN(fr_dact)(ract, dr, g + H, dr, H);
}

#ifdef FR_OWN_SIMPLE_FWD /* gates_avx2.c fuses tanh and calls this for the others */
static void FN(fr_simple_fwd_row_generic)(T *g, const T *bias, T *h, int H, int act)
#else
void FN(fr_simple_fwd_row)(T *g, const T *bias, T *h, int H, int act)
#endif
{
    int j;
    if (bias)
        for (j = 0; j < H; j++) g[j] += bias[j];
    FN(fr_act)(act, g, g, H); /* g keeps the output: backward takes act' from it */
    if (h != g)
        for (j = 0; j < H; j++) h[j] = g[j];
}


#ifndef FR_OWN_VECMAT /* gates_avx2.c brings a register-blocked intrinsics version */
void FN(fr_vecmat)(const T *restrict x, const T *restrict R, int K, int N, int ldr, T beta, T *restrict y)
{
    int k, n;
    if (beta == (T)0)
        for (n = 0; n < N; n++) y[n] = 0;
    else if (beta != (T)1)
        for (n = 0; n < N; n++) y[n] *= beta;
    /* four rows of R per pass over y: y stays in L1, R streams once */
    for (k = 0; k + 4 <= K; k += 4) {
        const T *r0 = R + (long)k * ldr, *r1 = r0 + ldr, *r2 = r1 + ldr, *r3 = r2 + ldr;
        T x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
        for (n = 0; n < N; n++) y[n] += x0 * r0[n] + x1 * r1[n] + x2 * r2[n] + x3 * r3[n];
    }
    for (; k < K; k++) {
        const T *r0 = R + (long)k * ldr;
        T x0 = x[k];
        for (n = 0; n < N; n++) y[n] += x0 * r0[n];
    }
}
#endif

#ifndef FR_OWN_MATVEC /* gates_avx2.c brings an intrinsics version: gcc keeps this reduction scalar */
void FN(fr_matvec)(const T *restrict R, const T *restrict x, int M, int N, int ldr, T beta, T *restrict y)
{
    int j, n, u;
    for (j = 0; j < M; j++) {
        const T *r = R + (long)j * ldr;
        T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sum;
        /* eight independent partial sums: one vector FMA per 8 elements, no fast-math needed */
        for (n = 0; n + 8 <= N; n += 8)
            for (u = 0; u < 8; u++) acc[u] += r[n + u] * x[n + u];
        sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; n < N; n++) sum += r[n] * x[n];
        y[j] = (beta == (T)0 ? (T)0 : beta * y[j]) + sum;
    }
}
#endif

/* Column sums kept in registers over the rows (32, then 8 columns a block): one load and one add an
 * element, where adding row by row into acc loads and stores acc for every row (NOTES 45).  The rows
 * are summed in order, so the result is the row-by-row sum's, bit for bit. */
void FN(fr_colsum_add)(T *restrict acc, const T *restrict x, int rows, int n, long ldx)
{
    int j, r, u;
    for (j = 0; j + 32 <= n; j += 32) {
        T s[32];
        for (u = 0; u < 32; u++) s[u] = acc[j + u];
        for (r = 0; r < rows; r++)
            for (u = 0; u < 32; u++) s[u] += x[(long)r * ldx + j + u];
        for (u = 0; u < 32; u++) acc[j + u] = s[u];
    }
    for (; j + 8 <= n; j += 8) {
        T s[8];
        for (u = 0; u < 8; u++) s[u] = acc[j + u];
        for (r = 0; r < rows; r++)
            for (u = 0; u < 8; u++) s[u] += x[(long)r * ldx + j + u];
        for (u = 0; u < 8; u++) acc[j + u] = s[u];
    }
    for (; j < n; j++) {
        T s = acc[j];
        for (r = 0; r < rows; r++) s += x[(long)r * ldx + j];
        acc[j] = s;
    }
}

/* One pass over four rows where the Cython loop took three (two of them scalar: the compiler could not
 * tell the pointers apart) and two memsets (simple_rnn t50-b64-h512 training: ~2% of the call).  The
 * sum keeps the loop's order, (dout + dacc) + dh, so the bits are the same. */
void FN(fr_bwd_dh_row)(T *restrict dh_t, const T *restrict dout, T *restrict dacc, T *restrict dh, int n)
{
    int j;
    for (j = 0; j < n; j++) {
        dh_t[j] = (dout[j] + dacc[j]) + dh[j];
        dacc[j] = 0;
        dh[j] = 0;
    }
}

/* drec := [dg_z, dg_r, dg_h * r]: fr_gru_reset_after_bwd_row's last step */
static void FN(fr_gru_drec_row)(const T *restrict dg, const T *restrict g, T *restrict drec, int H)
{
    int j;
    memcpy(drec, dg, 2 * (size_t)H * sizeof(T));
    for (j = 0; j < H; j++) drec[2 * H + j] = dg[2 * H + j] * g[H + j];
}

#ifdef FR_OWN_GRU_BWD /* gates_avx2.c fuses the default activations and calls this for the others */
static void FN(fr_gru_reset_after_bwd_row_generic)(const T *restrict g, const T *restrict h_prev,
                                                   const T *restrict rh, const T *restrict dh, T *restrict dg,
                                                   T *restrict dh_direct, T *restrict drec, int H, int act,
                                                   int ract)
#else
void FN(fr_gru_reset_after_bwd_row)(const T *restrict g, const T *restrict h_prev, const T *restrict rh,
                                    const T *restrict dh, T *restrict dg, T *restrict dh_direct,
                                    T *restrict drec, int H, int act, int ract)
#endif
{
    FN(fr_gru_bwd_zh_row)(g, h_prev, dh, dg, dh_direct, H, act, ract);
    FN(fr_gru_bwd_r_row)(g, dg + 2 * H, rh, dg, H, ract);
    FN(fr_gru_drec_row)(dg, g, drec, H);
}

#undef FN
#undef FR_CAT
#undef FR_CAT2
