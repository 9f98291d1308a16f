/* fused_rows.inc.h - the one-row cell updates fused for the default activations (sigmoid gates, tanh),
 * written once for every vector width: gates_avx2.c includes it for 8 lanes, gates_avx512.c for 16.
 * The forward rows make one pass per activation chain (one for SimpleRNN, two for LSTM, three for
 * GRU), the backward rows one (LSTM) or two (GRU: to keep its streams within the L1's ways): a vector
 * of units loads its pre-activations, biases and states and stores the gates and the new state within
 * a pass, where the generic rows of cell_rows.inc.h make a pass (and an fr_act call) per gate (perf,
 * lstm t28-b64-i28-h64: fr_act 31% and the row 5% of the forward).  Why not one pass for all: see the
 * LSTM forward row's and the GRU backward row's comments.
 * Whole vectors first, then the H % LANES tail on masked loads and stores, so every unit gets the same
 * arithmetic wherever it sits in the row (the hidden split's slices see the same numbers as the whole
 * row), and both widths run the same operations in the same order: the same bits (tests/test_simd.py).
 * Sixteen lanes are not only for CPUs with 512-bit FMA pipes: C harness on Zen 4 (which splits each
 * 512-bit op in two), the GRU row 2.14 -> 1.2 ns a unit (bench/NOTES.md 36).
 *
 * Include after defining:
 *   FR_V, FR_OP         the float vector type and the intrinsic of that width, as for act_simd.inc.h
 *   FR_LANES            its lanes;  FR_MASK  the tail-mask type;  FR_TAIL_MASK(n)  the mask of n < FR_LANES lanes
 *   FR_LD(p), FR_ST(p, v)  a load and a store that use the locals `tail` (0 or 1) and `m` (the mask)
 *   FR_SIG, FR_TANH_V   the sigmoid and tanh of that width
 *   FR_ROW(name)        the name of a row function of that width (name##_avx2, name##_avx512)
 * It #undefs all of them at its end.
 * Rows (gates.h has each contract; these are its act == FR_TANH, ract == FR_SIGMOID cases):
 *   FR_ROW(fr_lstm_fwd_row_default_f32)   IN/OUT g; IN bias (or NULL), c_prev; OUT c, h
 *   FR_ROW(fr_lstm_bwd_row_default_f32)   IN g, c_prev, c, dh; IN/OUT dc; OUT dg
 *   FR_ROW(fr_gru_reset_after_fwd_row_default_f32)  IN/OUT g; IN rec, bx, br (or NULL), h_prev; OUT rh, h
 *   FR_ROW(fr_gru_reset_after_bwd_row_default_f32)  IN g, h_prev, rh, dh; OUT dg, dh_direct, drec
 *   FR_ROW(fr_simple_fwd_row_tanh_f32)    IN/OUT g; IN bias (or NULL); OUT h (may be g)
 */
/* One pass over the row: FR_UNITS_FN(name)(args..., j, tail, m) for each whole vector of units j, then
 * for the H % LANES tail on a mask */
#define FR_PASS(H, name, ...)                                                                          \
    do {                                                                                               \
        int j_ = 0;                                                                                    \
        for (; j_ + FR_LANES <= (H); j_ += FR_LANES)                                                   \
            FR_UNITS_FN(name)(__VA_ARGS__, j_, 0, FR_TAIL_MASK(FR_LANES));                             \
        if (j_ < (H)) FR_UNITS_FN(name)(__VA_ARGS__, j_, 1, FR_TAIL_MASK((H) - j_));                   \
    } while (0)
#define FR_UNITS_FN(name) FR_ROW(name##_units)

/* LSTM forward, in two passes over the row: (1) per vector of units, i, f, o := sigmoid, cand := tanh
 * of g + bias and c := f*c_prev + i*cand; (2) h := o*tanh(c).  g keeps the post-activation gates for
 * backward.  Why two passes: in one, each vector's tanh(c) waits for its four gates (two ~31-cycle
 * chains back to back, act_simd.inc.h), and the out-of-order window holds too few vectors to hide it;
 * each pass alone is one chain deep and its vectors independent.  C harness, one Zen 3 core, 32 rows:
 * H = 64 1.87 -> 1.64 ns a unit, H = 256 1.83 -> 1.62 (bench/NOTES.md 50). */
static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_lstm_gates)(float *restrict g, const float *restrict bias, const float *restrict c_prev,
                           float *restrict c, int H, int j, int tail, FR_MASK m)
{
    float *gi = g + j, *gf = g + H + j, *gc = g + 2 * H + j, *go = g + 3 * H + j;
    FR_V vi = FR_LD(gi), vf = FR_LD(gf), vc = FR_LD(gc), vo = FR_LD(go);
    if (bias) {
        vi = FR_OP(add_ps)(vi, FR_LD(bias + j));
        vf = FR_OP(add_ps)(vf, FR_LD(bias + H + j));
        vc = FR_OP(add_ps)(vc, FR_LD(bias + 2 * H + j));
        vo = FR_OP(add_ps)(vo, FR_LD(bias + 3 * H + j));
    }
    vi = FR_SIG(vi);
    vf = FR_SIG(vf);
    vc = FR_TANH_V(vc);
    vo = FR_SIG(vo);
    FR_ST(gi, vi);
    FR_ST(gf, vf);
    FR_ST(gc, vc);
    FR_ST(go, vo);
    FR_ST(c + j, FR_OP(fmadd_ps)(vf, FR_LD(c_prev + j), FR_OP(mul_ps)(vi, vc)));
}

static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_lstm_h)(const float *restrict g, const float *restrict c, float *restrict h, int H, int j, int tail,
                       FR_MASK m)
{
    FR_ST(h + j, FR_OP(mul_ps)(FR_LD(g + 3 * H + j), FR_TANH_V(FR_LD(c + j))));
}

void FR_ROW(fr_lstm_fwd_row_default_f32)(float *restrict g, const float *restrict bias,
                                         const float *restrict c_prev, float *restrict c, float *restrict h,
                                         int H)
{
    FR_PASS(H, fr_lstm_gates, g, bias, c_prev, c, H);
    FR_PASS(H, fr_lstm_h, g, c, h, H);
}

/* LSTM backward, per vector of units, with ac = tanh(c) recomputed:
 *   d := dc + dh*o*(1 - ac^2);  dg_i := d*cand*i(1-i);  dg_f := d*c_prev*f(1-f);  dg_c := d*i*(1-cand^2);
 *   dg_o := dh*ac*o(1-o);  dc := d*f. */
static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_lstm_bwd)(const float *restrict g, const float *restrict c_prev, const float *restrict c,
                         const float *restrict dh, float *restrict dc, float *restrict dg, int H, int j,
                         int tail, FR_MASK m)
{
    const FR_V one = FR_OP(set1_ps)(1.0f);
    FR_V vi = FR_LD(g + j), vf = FR_LD(g + H + j), vc = FR_LD(g + 2 * H + j), vo = FR_LD(g + 3 * H + j);
    FR_V vdh = FR_LD(dh + j), ac = FR_TANH_V(FR_LD(c + j));
    FR_V dct = FR_OP(mul_ps)(FR_OP(mul_ps)(vdh, vo), FR_OP(fnmadd_ps)(ac, ac, one));
    FR_V d = FR_OP(add_ps)(FR_LD(dc + j), dct);
    FR_ST(dg + j, FR_OP(mul_ps)(FR_OP(mul_ps)(d, vc), FR_OP(mul_ps)(vi, FR_OP(sub_ps)(one, vi))));
    FR_ST(dg + H + j,
          FR_OP(mul_ps)(FR_OP(mul_ps)(d, FR_LD(c_prev + j)), FR_OP(mul_ps)(vf, FR_OP(sub_ps)(one, vf))));
    FR_ST(dg + 2 * H + j, FR_OP(mul_ps)(FR_OP(mul_ps)(d, vi), FR_OP(fnmadd_ps)(vc, vc, one)));
    FR_ST(dg + 3 * H + j, FR_OP(mul_ps)(FR_OP(mul_ps)(vdh, ac), FR_OP(mul_ps)(vo, FR_OP(sub_ps)(one, vo))));
    FR_ST(dc + j, FR_OP(mul_ps)(d, vf));
}

void FR_ROW(fr_lstm_bwd_row_default_f32)(const float *restrict g, const float *restrict c_prev,
                                         const float *restrict c, const float *restrict dh, float *restrict dc,
                                         float *restrict dg, int H)
{
    FR_PASS(H, fr_lstm_bwd, g, c_prev, c, dh, dc, dg, H);
}

/* GRU (reset_after=True) forward, in three passes over the row, per vector of units:
 *   (1) z, r := sigmoid(g + rec + bx + br);  (2) rh := rec_h + br_h;  hh := tanh(g_h + (r*rh + bx_h));
 *   (3) h := z*h_prev + (1-z)*hh,  with g := z, r, hh and rh kept for backward.
 * As the LSTM row's two (above): in one pass hh's tanh waits for r's sigmoid, a chain of ~70 cycles a
 * vector.  C harness, one Zen 3 core, 32 rows: H = 64 1.85 -> 1.18 ns a unit (two passes, (2) and (3)
 * together: 1.24), H = 256 1.80 -> 1.17 (bench/NOTES.md 50). */
static inline __attribute__((always_inline)) FR_V
FR_UNITS_FN(fr_gru_pre)(const float *restrict g, const float *restrict rec, const float *restrict bx,
                        const float *restrict br, int o, int tail, FR_MASK m)
{
    FR_V v = FR_OP(add_ps)(FR_LD(g + o), FR_LD(rec + o));
    if (bx) v = FR_OP(add_ps)(v, FR_LD(bx + o));
    if (br) v = FR_OP(add_ps)(v, FR_LD(br + o));
    return v;
}

static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_gru_zr)(float *restrict g, const float *restrict rec, const float *restrict bx,
                       const float *restrict br, int H, int j, int tail, FR_MASK m)
{
    FR_ST(g + j, FR_SIG(FR_UNITS_FN(fr_gru_pre)(g, rec, bx, br, j, tail, m)));
    FR_ST(g + H + j, FR_SIG(FR_UNITS_FN(fr_gru_pre)(g, rec, bx, br, H + j, tail, m)));
}

static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_gru_cand)(float *restrict g, const float *restrict rec, const float *restrict bx,
                         const float *restrict br, float *restrict rh, int H, int j, int tail, FR_MASK m)
{
    const FR_V zero = FR_OP(setzero_ps)();
    FR_V vrh = FR_OP(add_ps)(FR_LD(rec + 2 * H + j), br ? FR_LD(br + 2 * H + j) : zero);
    FR_ST(g + 2 * H + j, FR_TANH_V(FR_OP(add_ps)(FR_LD(g + 2 * H + j),
                                                 FR_OP(fmadd_ps)(FR_LD(g + H + j), vrh,
                                                                 bx ? FR_LD(bx + 2 * H + j) : zero))));
    FR_ST(rh + j, vrh);
}

static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_gru_h)(const float *restrict g, const float *restrict h_prev, float *restrict h, int H, int j,
                      int tail, FR_MASK m)
{
    FR_V z = FR_LD(g + j);
    FR_ST(h + j, FR_OP(fmadd_ps)(z, FR_LD(h_prev + j),
                                 FR_OP(mul_ps)(FR_OP(sub_ps)(FR_OP(set1_ps)(1.0f), z), FR_LD(g + 2 * H + j))));
}

void FR_ROW(fr_gru_reset_after_fwd_row_default_f32)(float *restrict g, const float *restrict rec,
                                                    const float *restrict bx, const float *restrict br,
                                                    float *restrict rh, const float *restrict h_prev,
                                                    float *restrict h, int H)
{
    FR_PASS(H, fr_gru_zr, g, rec, bx, br, H);
    FR_PASS(H, fr_gru_cand, g, rec, bx, br, rh, H);
    FR_PASS(H, fr_gru_h, g, h_prev, h, H);
}

/* GRU (reset_after=True) backward, in two passes over the row, per vector of units:
 *   (1) dg_z := dh*(h_prev - hh) * z(1-z);  dg_h := dh*(1-z) * (1 - hh^2);  dh_direct := dh*z;
 *       drec_z := dg_z;
 *   (2) dg_r := dg_h*rh * r(1-r);  drec_r := dg_r;  drec_h := dg_h*r.
 * The generic row (cell_rows.inc.h) makes seven passes: zh's loop, two fr_dact, r's loop and its
 * fr_dact, drec's copy and loop; the same operations in the same order (the harness below: the same
 * bits as gates_avx2.c's build of it, where gcc contracts 1 - hh^2 into the same fnmadd).  Why not one
 * pass: a pass touches each of its arrays at the same offset, and where H is 512 or 1024 the blocks of
 * g, dg and drec (H floats apart; large arrays' bases alike modulo 4 KiB) fall in one or two sets of
 * the 8-way L1, which one pass's 13 streams thrash and these passes' 8 and 6 do not.  C harness
 * (bench/fused_rows.c), one Zen 3 core, min of 31 alternating rounds, two runs, ns a unit, generic ->
 * these two passes (one pass: H = 1024 1.48 -> 4.00, H = 512 1.07 -> 2.05, bases alike):
 *   bases alike modulo 4 KiB: 64 rows of H = 16 1.39-1.42 -> 1.18-1.26, 32 of H = 64 0.96-1.02 ->
 *   0.84-0.88, 8 of H = 256 0.84-1.07 -> 0.82-0.84, 4 of H = 512 0.97-1.25 -> 1.08-1.12, 2 of H = 1024
 *   1.05-1.12 -> 1.10-1.25;  bases 320 bytes apart: H = 16 1.28-1.30 -> 0.98-1.07, H = 64 0.86-0.87
 *   -> 0.74-0.76, H = 256 0.74-0.75 -> 0.73-0.74, H = 512 1.09 -> 0.77-0.86, H = 1024 0.85-1.14 ->
 *   0.76-0.81 (bench/NOTES.md 50).  The row is a few % of a training call's backward at H <= 64, less
 *   above. */
static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_gru_bwd_zh)(const float *restrict g, const float *restrict h_prev, const float *restrict dh,
                           float *restrict dg, float *restrict dh_direct, float *restrict drec, int H, int j,
                           int tail, FR_MASK m)
{
    const FR_V one = FR_OP(set1_ps)(1.0f);
    FR_V z = FR_LD(g + j), hh = FR_LD(g + 2 * H + j), vdh = FR_LD(dh + j);
    FR_V dgz = FR_OP(mul_ps)(FR_OP(mul_ps)(vdh, FR_OP(sub_ps)(FR_LD(h_prev + j), hh)),
                             FR_OP(mul_ps)(z, FR_OP(sub_ps)(one, z)));
    FR_ST(dg + j, dgz);
    FR_ST(drec + j, dgz);
    FR_ST(dg + 2 * H + j,
          FR_OP(mul_ps)(FR_OP(mul_ps)(vdh, FR_OP(sub_ps)(one, z)), FR_OP(fnmadd_ps)(hh, hh, one)));
    FR_ST(dh_direct + j, FR_OP(mul_ps)(vdh, z));
}

static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_gru_bwd_r)(const float *restrict g, const float *restrict rh, float *restrict dg,
                          float *restrict drec, int H, int j, int tail, FR_MASK m)
{
    const FR_V one = FR_OP(set1_ps)(1.0f);
    FR_V r = FR_LD(g + H + j), dgh = FR_LD(dg + 2 * H + j);
    FR_V dgr = FR_OP(mul_ps)(FR_OP(mul_ps)(dgh, FR_LD(rh + j)), FR_OP(mul_ps)(r, FR_OP(sub_ps)(one, r)));
    FR_ST(dg + H + j, dgr);
    FR_ST(drec + H + j, dgr);
    FR_ST(drec + 2 * H + j, FR_OP(mul_ps)(dgh, r));
}

void FR_ROW(fr_gru_reset_after_bwd_row_default_f32)(const float *restrict g, const float *restrict h_prev,
                                                    const float *restrict rh, const float *restrict dh,
                                                    float *restrict dg, float *restrict dh_direct,
                                                    float *restrict drec, int H)
{
    FR_PASS(H, fr_gru_bwd_zh, g, h_prev, dh, dg, dh_direct, drec, H);
    FR_PASS(H, fr_gru_bwd_r, g, rh, dg, drec, H);
}

/* SimpleRNN forward with tanh, per vector of units: g := tanh(g + bias); h := g (g keeps the output:
 * backward takes act' from it).  h may be g, so no restrict on either. */
static inline __attribute__((always_inline)) void
FR_UNITS_FN(fr_simple_fwd)(float *g, const float *restrict bias, float *h, int j, int tail, FR_MASK m)
{
    FR_V v = FR_LD(g + j);
    if (bias) v = FR_OP(add_ps)(v, FR_LD(bias + j));
    v = FR_TANH_V(v);
    FR_ST(g + j, v);
    if (h != g) FR_ST(h + j, v);
}

void FR_ROW(fr_simple_fwd_row_tanh_f32)(float *g, const float *restrict bias, float *h, int H)
{
    FR_PASS(H, fr_simple_fwd, g, bias, h);
}

#undef FR_UNITS_FN
#undef FR_PASS
#undef FR_V
#undef FR_OP
#undef FR_LANES
#undef FR_MASK
#undef FR_TAIL_MASK
#undef FR_LD
#undef FR_ST
#undef FR_SIG
#undef FR_TANH_V
#undef FR_ROW
