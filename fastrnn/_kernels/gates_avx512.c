/* gates_avx512.c - the gate math fused for the default activations (sigmoid gates, tanh) on 512-bit
 * registers: the LSTM forward and backward rows, the GRU reset_after forward row and the SimpleRNN tanh
 * row of fused_rows.inc.h on 16 lanes, for CPUs with AVX-512F (fr_simd_level() == 2; gates.c picks
 * them, and keeps gates_avx2.c's rows for every other row and activation).  Compiled on its own with
 * -mavx512f -mfma (setup.py).
 *
 * Why: they are the gate math the big rows spend their time in (perf, 1 thread: the LSTM row 11% of
 * lstm t100-b128-h256 inference, 23% of lstm t28-b64-h64; the GRU row 26% of gru t28-b64-h64 on Zen 4),
 * and sixteen lanes an instruction do the same work in half the instructions: on a CPU with two
 * 512-bit FMA pipes, and even on Zen 4, which splits each 512-bit op in two (bench/NOTES.md 34, 36).
 *
 * The arithmetic is gates_avx2.c's, operation for operation (tanh and sigmoid come from the same
 * act_simd.inc.h, the rows from the same fused_rows.inc.h), so both builds give the same bits for the
 * same inputs; a tail of H % 16 units runs on masked loads and stores.
 */
#include <immintrin.h>
#include "gates.h"

#define FR_V __m512
#define FR_OP(op) _mm512_##op
#define FR_TANH_FN tanh512
#define FR_SIGMOID_FN sigmoid512
#include "act_simd.inc.h" /* tanh512, sigmoid512: gates_avx2.c's, on 16 lanes */

/* The rows fused for the default activations (fused_rows.inc.h) on 16 lanes */
#define FR_V __m512
#define FR_OP(op) _mm512_##op
#define FR_LANES 16
#define FR_MASK __mmask16
#define FR_TAIL_MASK(n) ((__mmask16)((1u << (n)) - 1u))
#define FR_LD(p) (tail ? _mm512_maskz_loadu_ps(m, (p)) : _mm512_loadu_ps(p))
#define FR_ST(p, v) (tail ? _mm512_mask_storeu_ps((p), m, (v)) : _mm512_storeu_ps((p), (v)))
#define FR_SIG sigmoid512
#define FR_TANH_V tanh512
#define FR_ROW(name) name##_avx512
#include "fused_rows.inc.h"
