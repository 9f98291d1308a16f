"""The ONLY place that branches on device and options: which engine runs a validated Spec, and why.

`select(spec, engine)` returns a Choice.  The compiled CPU engine serves every Spec that `_spec` accepts
(any mask pattern, dropout masks, go_backwards, time_major, every named activation, float32 and float64):
its eligibility predicate is "device is cpu and the extension loaded".  The NumPy reference serves the
same Specs (slowly) and is chosen when asked for, or when the compiled engine declines.  `explain()`
states the choice in words, including the paths not taken.

Plans are remembered: fastrnn.functional keeps a repeated signature's Choice (a prepared or a built-in
cell's call) while `plan_inputs()` is unchanged.  So whatever changes what `cpu_plan` returns for a Spec
besides the thread count and the SIMD level (the switches below, or a test or benchmark that sets this
module's constants) must call `plans_changed()`.  A stale plan is still a correct one: plans choose
kernels, never results beyond float rounding.
"""
from typing import NamedTuple

ENGINES = ("auto", "compiled", "reference")


class Choice(NamedTuple):
    engine: str  # "compiled" or "reference"
    plan: object  # the compiled engine's CpuPlan (None for the reference)
    reasons: tuple  # why faster paths were not taken (empty when the fastest path runs)


def _compiled_declines(spec):
    """Why the compiled CPU engine cannot run `spec` (empty tuple: it can)."""
    reasons = []
    if spec.device != "cpu":
        reasons.append(f"device {spec.device!r}: the compiled engine runs on the CPU")
    return tuple(reasons)


class CpuPlan(NamedTuple):
    """How the compiled CPU loops run one call (fastrnn/_kernels/_engine.pyx, "threads" and "Packed R")."""
    threads: int            # fastrnn's thread count at the time of the call
    forward_split: str      # "serial" | "batch" (rows per thread, no sync) | "hidden" (units, a barrier a step)
    backward_split: str     # "serial" | "batch" | "hidden" (B == 1)
    forward_packed: bool    # forward's per-step product on packed R (microkernel; B == 1: vector panels)
    backward_packed: bool   # backward's dG @ R^T likewise (on R^T)
    forward_fused: bool = False   # B == 1: the input projection inside the step's product (Fused
                                  # projection in _engine.pyx) where the call's W allows it
    forward_concat: bool = False  # B >= 2, small I: each step's product is [x_t | h_d] @ [W; R] on the
                                  # microkernel, no hoisted projection (Concatenated product, _engine.pyx)


# The packed-R microkernel against sgemm (which repacks R on every call), loop time, same process
# (bench/NOTES.md 7, 19).  Forward: wins at <= 16 rows a thread (2 rows 2.2x ... 16 rows 1.1-1.2x; now 32, below) and,
# since its C tiles are prefetched and K is not blocked, at any row count once a row of the product
# has G*H >= 512 columns (LSTM H=512, 64 rows: 1.1x; GRU H=1024: 1.3x; SimpleRNN H=512: 1.1x).  With
# fewer columns its per-step copy of A into row blocks was not paid back above 16 rows; since that
# copy runs on register transposes (bench/NOTES.md 50) the bound is 32 rows: at 32 rows a thread,
# packed vs sgemm (bench/ab_switch.py packrows, Zen 3, 7 rounds) gru t28-b64-h64 0.93, simple_rnn
# t28-b64-h64 0.87, simple_rnn t100-b64-h256 0.92, gru t100-b64-h128 0.90, simple_rnn t50-b64-h128
# 1.00, 1 thread gru t28-b32 0.93 and simple_rnn t100-b32-h256 0.91; at 24 rows simple_rnn
# t100-b48-h256 0.95; at 64 rows a tie or a loss (gru t28-b128-h64 0.96, simple_rnn 1.02, simple_rnn
# t100-b128-h256 1.04).  Backward (dG @ R^T, K = G*H): wins at every row count measured (1.0-1.3x).
# H <= 1024: at H = 2048 the two tie (R^T no longer fits L3), and the packed copy costs memory.
# On AVX-512 (simd level 2) the microkernel wins at any row count: 8 x 48 tiles on 32 registers, against
# OpenBLAS's sgemm (which this project's environment pins to its AVX2 kernels, OPENBLAS_CORETYPE=Haswell),
# same process, packed at every row count vs the rule (bench/ab_switch.py packrows), Zen 5, medians of 5:
# lstm t28-b64-h64 0.75x (2 threads) and 0.72x (1), simple_rnn t100-b128-h256 0.76x and 0.76x, gru
# t28-b64 0.78x; on the Xeon (OpenBLAS's own AVX-512 kernels) lstm t28-b64 0.90-0.98x (bench/NOTES.md 35).
# So PACK_MAX_ROWS (and its G*H >= PACK_MIN_COLUMNS exception) bound the AVX2 build's B >= 2 rule
# only; B == 1 keeps PACK_MIN_COLUMNS at every level.
# B == 1 packs R into 64-column vector panels (one sequential stream per panel) from G*H >= 512 columns,
# where R outgrows L2 and the row-major vecmat's four row streams plus y traffic lose (bench/NOTES.md 25).
PACK_MAX_ROWS = 32
PACK_MIN_COLUMNS = 512
PACK_MAX_H = 1024
# ... and at any width once a call has this many steps: the pack, about one step's read of R, is then
# paid back over the call as it is over a prepared call's many (NOTES 38: at H = 64-128 the panels ran
# T = 100-1000 calls in 0.81-1.01x the time), and it opens the fused projection to one-off and training
# calls (bench/NOTES.md 44).
PACK_ONE_ROW_MIN_T = 32
# The hidden split pays one barrier per step (~0.1-0.3 us between two quiet cores, a time slice when one
# is taken): never below H = 32, and at B == 1 only from HIDDEN_SPLIT_MIN_MACS (below).
HIDDEN_SPLIT_MIN_H = 32
# ... and for small batches only.  Loop time, 2 threads, packed (bench/NOTES.md): B = 4, H = 512: hidden
# 10.6 ms vs rows 15.3; B = 8 and 16, H = 256: equal.  Where they tie, rows win: no barrier, so a thread
# descheduled by another process does not stall the other at every step.
HIDDEN_SPLIT_MAX_B = 4
# At B == 1 a step's matvec over R must be big enough to pay for the barrier each step, and the call
# long enough to pay for the split's start (the pool's check-in, each slice's copy of R).  Forward,
# T = 300, 1 vs 2 threads, two runs on an earlier machine (512 KiB L2, busy; bench/NOTES.md 20):
# simple_rnn H=64 (4K multiply-adds a step) 0.72-1.0x, H=128 (16K) 0.89-1.05x; gru H=64 (12K)
# 1.0-1.12x, H=128 (48K) 1.07-1.49x; lstm H=64 (16K) 0.69-1.18x, H=128 (64K) 1.56-1.68x.  On this
# one (32 KiB L1, 1 MiB L2 a core; NOTES 26), the whole call, hidden/serial time, medians of 10-12
# alternations: lstm H=64, gru H=64, simple_rnn H=128 at T = 1000 0.79-0.81 (won 12 of 12), at T =
# 200-300 0.78-0.88 (8 of 10), at T = 100 1.0-1.06 (2-6 of 12); BPTT at T = 1000 0.76-0.82.  So B == 1
# splits from HIDDEN_SPLIT_MIN_MACS a step, or from HIDDEN_SPLIT_SMALL_MACS when the call has
# HIDDEN_SPLIT_MIN_CALL_MACS in all (T >= 192 at 16K).
HIDDEN_SPLIT_MIN_MACS = 32 * 1024
HIDDEN_SPLIT_SMALL_MACS = 12 * 1024
HIDDEN_SPLIT_MIN_CALL_MACS = 3 * 1024 * 1024
_packed_enabled = True
_fused_enabled = True
_concat_enabled = True
_generation = 0   # plans_changed() counts up
# Concatenated product (B >= 2, LSTM): with a narrow input the hoisted projection x @ W is a GEMM of
# K = I, which runs well below the peak (OpenBLAS, 896 x 28 x 256 on one Zen 3 core: 72 GFLOP/s),
# writes xp out to memory and has each step read it back; folding it into the step's product as
# K = I + H rows of panels ([W; R], packed once a call) costs one longer microkernel pass a step (C
# harness, M = 32, N = 256: K = 92 17.9 us against K = 64 15.8 plus the projection's 6.4 a step).
# Same process, on/off (bench/ab_switch.py concat, medians of 7-9), 1 and 2 threads: lstm t28-b64-i28-h64
# inference 0.93 / 0.83, training 0.99 / 0.90; lstm t50-b32-i32-h96 0.90 / 0.97; t50-b8-i32-h64 0.94 /
# 0.79; t100-b128-i16-h32 0.95 / 0.92; but simple_rnn t28-b64 1.07-1.08 / 0.92 (its step, N = H, is
# short next to its own projection), so LSTM only; GRU's candidate keeps x's part apart from r * (h @
# R_h) (bench/NOTES.md 47).  Up to CONCAT_MAX_I inputs, and while [W; R]'s panels stay in L2.
# Measured on AVX2 (simd level 1) only: level 2 keeps the hoisted projection on its own microkernel.
CONCAT_MAX_I = 64
CONCAT_MAX_BYTES = 256 << 10
# The fused projection computes a chunk of this many steps ahead inside the chunk before (vecmat_proj_
# avx512.c): a call of at most one chunk has nothing to overlap.  It pays where the product streams R
# from L2 and the step is big enough to carry the chunk's bookkeeping.  Prepared calls, fused / hoisted,
# medians of 7 alternations (Zen 4, 1 MiB L2; bench/NOTES.md 44), 1 and 2 threads: lstm T100 H=128
# 0.96 / 0.87, gru 0.92 / 0.80, lstm T1000 H=64 0.99 / 0.86, gru 0.94 / 1.02, simple_rnn T50 H=512
# 0.93 / 0.96; but simple_rnn T1000 H=64 (4K multiply-adds a step) 1.30 / 1.32, and with R_k and W_k
# beyond L2 the overlap is gone (the product waits on L3 and the longer loop keeps fewer of its loads in
# flight): lstm T50 H=512 (8 / 4 MiB a slice) 1.03 / 0.95, gru (6 / 3 MiB) 0.97 / 1.01.
FUSED_CHUNK = 8
FUSED_MIN_MACS = 12 * 1024
FUSED_MAX_SLICE_BYTES = 2 << 20


def _engine():
    """The compiled extension, imported on first use (so this module imports without it); a global
    after that, since a function-level import costs a microsecond on every call."""
    global _ENGINE
    if _ENGINE is None:
        from fastrnn._native import engine

        _ENGINE = engine
    return _ENGINE


_ENGINE = None


def plans_changed():
    """Say that what cpu_plan returns may have changed (a switch below, a constant set): plans kept by
    fastrnn.functional for repeated signatures are made again."""
    global _generation
    _generation += 1


def plan_inputs():
    """What a plan depends on besides its Spec and arguments: fastrnn's thread count, the SIMD level and
    plans_changed()'s count.  A plan made under equal plan_inputs() is the plan cpu_plan makes now."""
    e = _ENGINE or _engine()
    return e.get_num_threads(), e.simd_level(), _generation


def packed_gemm(on=None):
    """Whether plans may use the packed-R microkernel (tests and benchmarks switch it off to compare);
    `on` changes the setting.  Returns the setting in force."""
    global _packed_enabled
    if on is not None:
        _packed_enabled = bool(on)
        plans_changed()
    return _packed_enabled


def concat_product(on=None):
    """Whether plans may fold a narrow input's projection into each step's product (forward_concat; A/B
    switch, like `packed_gemm`); returns the setting in force."""
    global _concat_enabled
    if on is not None:
        _concat_enabled = bool(on)
        plans_changed()
    return _concat_enabled


def fused_projection(on=None):
    """Whether plans may fuse the B == 1 input projection into the recurrent product (A/B switch, like
    `packed_gemm`); returns the setting in force."""
    global _fused_enabled
    if on is not None:
        _fused_enabled = bool(on)
        plans_changed()
    return _fused_enabled


def cpu_plan(spec, training, threads=None, packs_kept=False):
    """The CpuPlan for a compiled call of `spec` (training: the forward keeps what backward needs;
    packs_kept: what the call packs serves later calls too, so a pack is paid once: a layer.stream's
    one-step kernel, fastrnn.functional.prepare's calls, a built-in cell's inference calls).

    Forward: B == 1 splits the hidden units (a bandwidth-bound vecmat per step) once R has
    HIDDEN_SPLIT_MIN_MACS multiply-adds (or HIDDEN_SPLIT_SMALL_MACS over a long enough call), as does
    2 <= B <= HIDDEN_SPLIT_MAX_B when the microkernel can run the slices (whole row blocks per slice,
    each core keeping its share of R in cache); larger batches split rows, with no synchronisation.
    Backward splits rows, or hidden units for B == 1 (by the same rule).
    GRU reset_after=False has two dependent products a step and never splits units.  The forward's
    plan does not depend on `training`, so inference and training forwards give the same numbers."""
    engine = _engine()
    n = engine.get_num_threads() if threads is None else threads
    # packing pays over T >= 2 steps of a call, or (one row) over the calls that keep what it packed
    # (a batch's T = 1 step would take the hidden split at 2 <= B <= 4, which a stream's StepKernel
    # runs for one row only)
    packable = (_packed_enabled and spec.dtype.char == "f" and engine.simd_level() >= 1
                and spec.H <= PACK_MAX_H and (spec.T >= 2 or (packs_kept and spec.B == 1))
                and not (spec.cell == "gru" and not spec.reset_after))
    units_ok = n > 1 and spec.H >= HIDDEN_SPLIT_MIN_H and not (spec.cell == "gru" and not spec.reset_after)
    macs = spec.G * spec.H * spec.H   # R's multiply-adds per row and step
    one_row_split = units_ok and spec.B == 1 and (macs >= HIDDEN_SPLIT_MIN_MACS or (
        macs >= HIDDEN_SPLIT_SMALL_MACS and spec.T * macs >= HIDDEN_SPLIT_MIN_CALL_MACS))
    if one_row_split or (units_ok and packable and 2 <= spec.B <= HIDDEN_SPLIT_MAX_B):
        forward, forward_rows = "hidden", spec.B
    else:
        forward = "batch" if n > 1 and spec.B >= 2 else "serial"
        forward_rows = -(-spec.B // n) if forward == "batch" else spec.B
    if one_row_split:
        backward = "hidden"   # a matvec over R per step, bandwidth-bound like the forward's
    else:
        backward = "batch" if n > 1 and spec.B >= 2 else "serial"
    backward_rows = -(-spec.B // n) if backward == "batch" else spec.B
    wide = spec.G * spec.H >= PACK_MIN_COLUMNS
    if spec.B == 1:   # the one-row product on R's vector panels (serial, or the hidden split's slices)
        # packed once for many calls, the panels win at any width: per stream step, panels vs row-major,
        # simple_rnn H=256 1.09-1.36x, narrower rows 0.92-1.13x (NOTES 37); prepared T = 100-1000 calls
        # at H = 64-128, 1 and 2 threads, 0.81-1.01x the time (NOTES 38)
        forward_packed = packable and (wide or packs_kept or spec.T >= PACK_ONE_ROW_MIN_T)
    else:
        forward_packed = packable and 2 <= forward_rows and (forward_rows <= PACK_MAX_ROWS or wide
                                                             or engine.simd_level() >= 2)
    # B == 1 on the vector panels, AVX-512F: the projection's FMAs fill the bandwidth-bound product's idle
    # slots (NOTES 44)
    per = -(-spec.H // n) if forward == "hidden" else spec.H   # one slice's units
    fused = (_fused_enabled and spec.B == 1 and forward_packed and engine.simd_level() >= 2
             and spec.T > FUSED_CHUNK and macs >= FUSED_MIN_MACS
             and (spec.H + spec.I) * spec.G * per * spec.dtype.itemsize <= FUSED_MAX_SLICE_BYTES)
    concat = (_concat_enabled and packable and engine.simd_level() == 1 and spec.B >= 2
              and forward in ("batch", "serial") and spec.cell == "lstm"
              and spec.I <= CONCAT_MAX_I and (spec.I + spec.H) * spec.G * spec.H * spec.dtype.itemsize
              <= CONCAT_MAX_BYTES)
    return CpuPlan(n, forward, backward if training else "serial", forward_packed or concat,
                   training and packable and 2 <= backward_rows, fused, concat)


def _kernel_name(spec, plan):
    parts = [spec.cell]
    if spec.cell == "gru":
        parts.append("reset_after" if spec.reset_after else "reset_before")
    parts.append(str(spec.dtype))
    if plan.forward_packed:  # the per-step product (see _blas.pxd and _engine.pyx)
        parts.append(("packed-vecmat+fused-projection" if plan.forward_fused else "packed-vecmat")
                     if spec.B == 1 else
                     "packed-microkernel+concatenated-projection" if plan.forward_concat else "packed-microkernel")
    else:
        parts.append("simd-vecmat" if spec.B == 1 or plan.forward_split == "hidden" else "blas-gemm")
    split = {"serial": "1 thread", "batch": f"batch split over {plan.threads} threads",
             "hidden": f"hidden-unit split over {plan.threads} threads"}[plan.forward_split]
    return "compiled " + "/".join(parts) + f" ({split})"


def select(spec, engine="auto", training=False, packs_kept=False):
    """Pick the engine for `spec`, and the compiled engine's plan.  engine: "auto" (fastest that can),
    "compiled" (raise if it cannot), "reference" (the NumPy oracle).  training: the call keeps what its
    backward needs (the plan then covers the backward too); packs_kept: see `cpu_plan`."""
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    if engine == "reference":
        return Choice("reference", None, ("engine='reference' was asked for",))
    declined = _compiled_declines(spec)
    if not declined:
        return Choice("compiled", cpu_plan(spec, training, packs_kept=packs_kept), ())
    if engine == "compiled":
        raise ValueError("engine='compiled' cannot run this call: " + "; ".join(declined))
    return Choice("reference", None, declined)


def explain(spec, engine="auto"):
    """One paragraph: which kernel runs `spec` and why the faster ones (if any) do not."""
    choice = select(spec, engine)
    kernel = _kernel_name(spec, choice.plan) if choice.engine == "compiled" else "numpy reference"
    text = f"{spec.id} ({spec.dtype}): runs on {kernel}."
    if choice.reasons:
        text += " Not faster because: " + "; ".join(choice.reasons) + "."
    return text


def rnn_layer_path(cell, inputs, engine="auto"):
    """How `fastrnn.layers.RNN` runs `cell` over `inputs`: ("fused", ()) when every cell is a built-in
    cell with named activations and the input is one float array (the whole sequence then goes to
    fastrnn.functional, compiled or reference as `engine` says), else ("loop", reasons) for the wrapper's
    generic Python loop over `cell.call`.  engine="compiled" raises instead of looping."""
    from fastrnn.layers.cells import DropoutRNNCell, StackedRNNCells

    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    cells = cell.cells if isinstance(cell, StackedRNNCells) else [cell]
    reasons = []
    for c in cells:
        if not isinstance(c, DropoutRNNCell):
            reasons.append(f"cell {getattr(c, 'name', c)!r} is a user cell ({type(c).__name__}): its call() runs "
                           "step by step in Python")
        elif not c.compiled_activations:
            reasons.append(f"cell {c.name!r} has a Python callable activation: the compiled gate math takes "
                           "names only")
    if isinstance(inputs, (list, tuple, dict)):
        reasons.append("nested inputs: the compiled kernels take one (B, T, I) array")
    if not reasons:
        return "fused", ()
    if engine == "compiled":
        raise ValueError("engine='compiled' cannot run this RNN: " + "; ".join(reasons))
    return "loop", tuple(reasons)


def explain_layer(layer, inputs):
    """`fastrnn.explain`: which kernel `layer` (an RNN layer or Bidirectional) runs for `inputs`, and why
    faster paths are not taken, e.g. ``fastrnn.explain(layers.LSTM(8), x)``."""
    if hasattr(layer, "forward_layer"):
        return " ".join(sub.explain(inputs) for sub in (layer.forward_layer, layer.backward_layer))
    if not hasattr(layer, "explain"):
        raise TypeError(f"explain: expected an RNN layer or Bidirectional, got {type(layer).__name__}")
    return layer.explain(inputs)
