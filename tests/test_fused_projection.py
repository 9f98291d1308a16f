"""The fused projection (B == 1, float32, AVX-512F: _engine.pyx "Fused projection",
vecmat_proj_avx512.c): the input projection computed a chunk of 8 steps ahead inside the recurrent
product, instead of hoisted.  Against the float64 reference and against the hoisted path, on shapes
that hit every edge of the chunking and of the tile: T = 9 (one step in the last chunk), 16 (whole
chunks), 33; I = 1 (empty k ranges), 17 and 300 (more projection k than product pairs); H with a
tail panel; masks, go_backwards, initial states, 1 and 2 threads (one slice, or one per thread),
the inference and the training forward and every gradient."""
import numpy as np
import pytest

import fastrnn
from checks import assert_close
from fastrnn import _dispatch, reference
from fastrnn import functional as F
from fastrnn._native import engine
from fastrnn._spec import build_spec
from test_engine import G, check_against_reference, make_case

pytestmark = pytest.mark.skipif(engine.simd_level() < 2, reason="the fused projection is AVX-512F only")

VARIANTS = [("lstm", {}), ("gru", {"reset_after": True}), ("simple_rnn", {})]
VARIANT_IDS = ["lstm", "gru", "simple_rnn"]


@pytest.fixture
def any_size(monkeypatch):
    """Fuse at any step size (the plan's FUSED_MIN_MACS keeps small steps hoisted, for speed only)."""
    monkeypatch.setattr(_dispatch, "FUSED_MIN_MACS", 0)
    _dispatch.plans_changed()   # (plans kept for repeated signatures are made again)
    assert _dispatch.fused_projection()
    yield
    monkeypatch.undo()
    _dispatch.plans_changed()


def _fused(cell, x, weights, cell_kw, threads, packs_kept):
    spec, _ = build_spec(cell, x, *weights, **cell_kw)
    with fastrnn.threads(threads):
        return _dispatch.cpu_plan(spec, training=False, packs_kept=packs_kept).forward_fused


def _hoisted(fn):
    """fn() with the fused projection switched off."""
    _dispatch.fused_projection(False)
    try:
        return fn()
    finally:
        _dispatch.fused_projection(True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T,I,H", [(9, 1, 34), (16, 17, 40), (33, 300, 34), (17, 17, 72)],
                         ids=["t9-i1-h34", "t16-i17-h40", "t33-i300-h34", "t17-i17-h72"])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_prepared_fused_matches_reference(cell, extra, T, I, H, threads, any_size):
    """Prepared calls (vector panels at any width) with every call option, fused vs the reference and vs
    the hoisted projection."""
    rng = np.random.default_rng(T * 1000 + I * 10 + H + threads)
    args, kw = make_case(rng, cell, extra, T, 1, I, H, mask="holes", init=True, dtype=np.float32)
    x, kernel, recurrent, bias = args
    cell_kw = {k: kw.pop(k) for k in ("reset_after",) if k in kw}
    kw.pop("time_major")
    assert _fused(cell, x, (kernel, recurrent, bias), cell_kw, threads, packs_kept=True)
    prepared = F.prepare(cell, kernel, recurrent, bias, **cell_kw)
    x64 = [a.astype(np.float64) for a in (x, kernel, recurrent, bias)]
    for opts in ({}, kw, dict(kw, go_backwards=True), dict(kw, go_backwards=True, zero_output_for_mask=True),
                 {"time_major": True}):
        xin = np.ascontiguousarray(x.transpose(1, 0, 2)) if opts.get("time_major") else x
        x_before = xin.copy()
        with fastrnn.threads(threads):
            out, states = prepared(xin, **opts)
            want, want_states = _hoisted(lambda: prepared(xin, **opts))   # noqa: B023
        np.testing.assert_array_equal(xin, x_before)
        ref_kw = {k: ([np.asarray(s, np.float64) for s in v] if k == "initial_state" else v) for k, v in opts.items()}
        ref_out, ref_states = getattr(reference, cell)(x64[0].transpose(1, 0, 2) if opts.get("time_major") else x64[0],
                                                       *x64[1:], **cell_kw, **ref_kw)
        assert_close("outputs vs reference", out, ref_out, 2e-5)
        assert_close("outputs vs hoisted", out, want, 3e-6)
        for s, r, w in zip(states, ref_states, want_states):
            assert_close("final state vs reference", s, r, 2e-5)
            assert_close("final state vs hoisted", s, w, 3e-6)


@pytest.mark.parametrize("transposed", [False, True], ids=["kernel", "kernel_t"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T", [9, 40])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_functional_fused_training(cell, extra, T, threads, transposed):
    """One-off calls (vector panels from G*H >= 512) at the plan's own rule: the training forward
    (saved gates written by the fused slices, masked steps too) and every gradient against the
    float64 reference, masks and go_backwards included; `transposed`: the kernel given as a transposed
    view (torch's (G*H, I) memory, read in place: W_k's panels are packed from the transpose)."""
    I, H = 17, {"lstm": 136, "gru": 176, "simple_rnn": 520}[cell]
    rng = np.random.default_rng(T * 7 + threads + G[cell])
    args, kw = make_case(rng, cell, extra, T, 1, I, H, mask="holes", init=True, dtype=np.float32)
    if transposed:
        args[1] = np.ascontiguousarray(args[1].T).T
        assert not args[1].flags.c_contiguous
    kw["go_backwards"] = T % 2 == 1
    cell_kw = {k: v for k, v in kw.items() if k == "reset_after"}
    assert _fused(cell, args[0], args[1:], cell_kw, threads, packs_kept=False)
    assert "fused-projection" in F.explain(cell, *args, **kw)
    with fastrnn.threads(threads):
        check_against_reference(cell, args, kw, np.dtype(np.float32), rng)


def test_plan_rule():
    """Fused only where it measured faster: B == 1, float32, on the vector panels, past one chunk, a
    step of FUSED_MIN_MACS, R_k and W_k within FUSED_MAX_SLICE_BYTES; the switch turns it off."""
    def plan(cell, T, B, I, H, dtype=np.float32, threads=1, packs_kept=True):
        rng = np.random.default_rng(0)
        g = G[cell]
        x = rng.normal(size=(B, T, I)).astype(dtype)
        w = [rng.normal(size=s).astype(dtype) for s in ((I, g * H), (H, g * H), (g * H,))]
        spec, _ = build_spec(cell, x, *w)
        with fastrnn.threads(threads):
            return _dispatch.cpu_plan(spec, training=False, packs_kept=packs_kept)

    assert plan("lstm", 100, 1, 128, 128).forward_fused
    assert plan("lstm", 100, 1, 128, 128, threads=2).forward_fused
    assert not plan("lstm", 8, 1, 128, 128).forward_fused            # one chunk: nothing to overlap
    # a one-off call packs narrow rows too once it has PACK_ONE_ROW_MIN_T steps, so it can fuse
    assert plan("lstm", 100, 1, 64, 64, packs_kept=False).forward_fused
    assert not plan("lstm", 16, 1, 64, 64, packs_kept=False).forward_packed
    assert not plan("lstm", 100, 2, 128, 128).forward_fused          # two rows: the microkernel
    assert not plan("lstm", 100, 1, 128, 128, np.float64).forward_fused
    assert not plan("simple_rnn", 1000, 1, 64, 64).forward_fused     # 4K multiply-adds a step
    assert not plan("lstm", 50, 1, 512, 512).forward_fused           # 8 MiB of R and W: from L3
    _dispatch.fused_projection(False)
    try:
        assert not plan("lstm", 100, 1, 128, 128).forward_fused
    finally:
        _dispatch.fused_projection(True)
