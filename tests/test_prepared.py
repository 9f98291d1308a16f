"""fastrnn.functional.prepare: frozen weights whose packed layouts of R are made once and reused.

Oracles: the per-call functional API (the same kernels on the same values: equal bits) and the float64
reference.  Shapes that take each packed layout (one-row vector panels, the hidden split's slices with
and without panels, the microkernel's panels) and none (T = 1, float64, GRU reset_before), on 1-3
threads, with the per-call options."""
import concurrent.futures

import numpy as np
import pytest

import fastrnn
from fastrnn import _dispatch, layers
from fastrnn import functional as F
from fastrnn._native import engine
from fastrnn._spec import build_spec
from test_engine import VARIANT_IDS, VARIANTS, make_case

# (T, B, I, H): one row wide (vector panels / hidden split), one row narrow, a few rows (hidden split on
# the microkernel at 2-3 threads), a batch (panels per part), T = 1 with one row (a prepared call packs
# for the calls after it even then) and with a few (it does not)
SHAPES = [(9, 1, 17, 136), (6, 1, 17, 34), (7, 3, 17, 34), (5, 7, 9, 20), (1, 1, 17, 136), (1, 4, 9, 20)]


def _reference(cell, x, weights, **kw):
    """The float64 NumPy reference's outputs and final states for the same (rounded) data."""
    as64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    if kw.get("initial_state") is not None:
        kw = dict(kw, initial_state=[as64(s) for s in kw["initial_state"]])
    return getattr(F, cell)(as64(x), *(as64(w) for w in weights), engine="reference", **kw)


def _check_reference(cell, got, x, weights, atol=2e-5, **kw):
    """got (outputs, states) against the float64 reference."""
    want, want_states = _reference(cell, x, weights, **kw)
    np.testing.assert_allclose(got[0], want, atol=atol)
    for s, w in zip(got[1], want_states):
        np.testing.assert_allclose(s, w, atol=atol)


def _split(args, kw):
    """(x, weights, per-call options, cell options) from make_case's functional-API form."""
    x, kernel, recurrent, bias = args
    cell_kw = {k: kw.pop(k) for k in ("reset_after",) if k in kw}
    return x, (kernel, recurrent, bias), kw, cell_kw


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=["-".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_equals_functional(threads, shape, cell, extra, dtype):
    rng = np.random.default_rng(hash((threads, shape, cell, str(extra), dtype().itemsize)) % 2**32)
    args, kw = make_case(rng, cell, extra, *shape, mask="holes", init=True, dtype=dtype)
    x, weights, call_kw, cell_kw = _split(args, kw)
    fn = getattr(F, cell)
    with fastrnn.threads(threads):
        spec, _ = build_spec(cell, x, *weights, **cell_kw)
        plan = _dispatch.cpu_plan(spec, training=False, packs_kept=True)
        same_plan = plan == _dispatch.cpu_plan(spec, training=False)
        prepared = F.prepare(cell, *weights, **cell_kw)
        for _ in range(2):   # the first call packs, the second reads the cache
            for opts in ({}, call_kw, dict(call_kw, go_backwards=True, zero_output_for_mask=True)):
                out, states = prepared(x, **opts)
                want, want_states = fn(x, *weights, **cell_kw, **opts)
                for got, expected in zip([out, *states], [want, *want_states]):
                    if same_plan:   # the same kernels on the same values
                        np.testing.assert_array_equal(got, expected)
                    else:           # packed where the one-off call is not: float rounding apart
                        np.testing.assert_allclose(got, expected, atol=3e-6 if dtype == np.float32 else 1e-13)
                _check_reference(cell, (out, states), x, weights, atol=2e-5 if dtype == np.float32 else 1e-12,
                                 **cell_kw, **opts)
    # what the plan packs (R's panels, or the hidden split's slices) is what the cache holds, and W's
    # panels where the projection runs on the packed microkernel (AVX-512; AVX2 at one row), or (fused:
    # B == 1) W_k's panels in each slice's block
    r_layouts = [k for k in prepared.packed_layouts if k != ("w_panels",)]
    assert bool(r_layouts) == (plan.forward_packed or plan.forward_split == "hidden")
    w_panels = (dtype == np.float32 and shape[0] * shape[1] >= 2 and not plan.forward_fused
                and (engine.simd_level() >= 2 or (engine.simd_level() == 1 and shape[1] == 1)))
    assert (("w_panels",) in prepared.packed_layouts) == w_panels
    if plan.forward_fused:
        assert [k[-1] for k in r_layouts] == [True]   # the slices' key says W_k is packed with R_k


def test_time_major_and_reference_engine():
    rng = np.random.default_rng(5)
    args, kw = make_case(rng, "lstm", {}, 8, 1, 17, 136, time_major=True, dtype=np.float32)
    x, weights, call_kw, _ = _split(args, kw)
    call_kw.update(go_backwards=True)
    compiled, reference = F.prepare("lstm", *weights), F.prepare("lstm", *weights, engine="reference")
    for _ in range(2):   # the second call of a signature skips build_spec
        got, _ = compiled(x, **call_kw)
        np.testing.assert_array_equal(got, F.lstm(x, *weights, **call_kw)[0])
        ref, _ = reference(x, **call_kw)
        np.testing.assert_array_equal(ref, F.lstm(x, *weights, engine="reference", **call_kw)[0])
        np.testing.assert_allclose(got, ref, atol=2e-5)
    assert not np.array_equal(got, compiled(x, time_major=True)[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_the_cache_is_what_runs(threads):
    """Zeroing the cached packed R makes the next call run as if R were zero: the calls read the cache
    (and do not pack again), and a new thread count gets a layout of its own."""
    if engine.simd_level() < 1:
        pytest.skip("no packed layouts on this CPU")
    rng = np.random.default_rng(7)
    args, _ = make_case(rng, "gru", {}, 6, 1, 17, 200, dtype=np.float32)
    x, (kernel, recurrent, bias), _, _ = _split(args, {})
    with fastrnn.threads(threads):
        prepared = F.prepare("gru", kernel, recurrent, bias)
        np.testing.assert_array_equal(prepared(x)[0], F.gru(x, kernel, recurrent, bias)[0])
        (key,) = [k for k in prepared.packed_layouts if k != ("w_panels",)]
        prepared._packs[key][...] = 0
        zeroed = prepared(x)
        np.testing.assert_array_equal(zeroed[0], F.gru(x, kernel, np.zeros_like(recurrent), bias)[0])
        _check_reference("gru", zeroed, x, (kernel, np.zeros_like(recurrent), bias))
    with fastrnn.threads(3 - threads):
        again = prepared(x)
        np.testing.assert_array_equal(again[0], F.gru(x, kernel, recurrent, bias)[0])
        _check_reference("gru", again, x, (kernel, recurrent, bias))
        assert len([k for k in prepared.packed_layouts if k != ("w_panels",)]) == 2


@pytest.mark.parametrize("threads", [1, 2])
def test_calls_in_another_dtype_convert_the_frozen_weights(threads):
    rng = np.random.default_rng(8)
    args, _ = make_case(rng, "lstm", {}, 7, 1, 17, 136, dtype=np.float32)
    x, weights, _, _ = _split(args, {})
    x64 = x.astype(np.float64)
    with fastrnn.threads(threads):
        prepared = F.prepare("lstm", *weights)
        for _ in range(2):
            out, states = prepared(x64)
            assert out.dtype == np.float64
            np.testing.assert_array_equal(out, F.lstm(x64, *weights)[0])
            _check_reference("lstm", (out, states), x64, weights, atol=1e-12)
            np.testing.assert_array_equal(prepared(x)[0], F.lstm(x, *weights)[0])


def test_weights_are_frozen_copies():
    rng = np.random.default_rng(9)
    args, _ = make_case(rng, "lstm", {}, 10, 1, 17, 136, dtype=np.float32)
    x, weights, _, _ = _split(args, {})
    before = F.lstm(x, *weights)[0]
    originals = [w.copy() for w in weights]
    prepared = F.prepare("lstm", *weights)
    prepared(x)
    for w in weights:   # the caller's arrays change; the prepared copies do not
        w *= 0.5
    np.testing.assert_array_equal(prepared(x)[0], before)
    _check_reference("lstm", prepared(x), x, originals)
    np.testing.assert_array_equal(F.prepare("lstm", *weights)(x)[0], F.lstm(x, *weights)[0])
    for w in (prepared.kernel, prepared.recurrent_kernel, prepared.bias):
        with pytest.raises(ValueError, match="read-only"):
            w[0] = 1
    x_before = x.copy()
    prepared(x)
    np.testing.assert_array_equal(x, x_before)
    assert not np.shares_memory(prepared.kernel, weights[0])


def test_concurrent_calls_share_one_prepared():
    """Python threads calling one Prepared at once (the kernels release the GIL): every result right."""
    rng = np.random.default_rng(13)
    args, _ = make_case(rng, "lstm", {}, 12, 1, 17, 136, dtype=np.float32)
    _, weights, _, _ = _split(args, {})
    xs = [rng.normal(size=(1, 12, 17)).astype(np.float32) for _ in range(16)]
    prepared = F.prepare("lstm", *weights)
    with fastrnn.threads(2), concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: prepared(x)[0], xs))
        for x, out in zip(xs, got):
            np.testing.assert_array_equal(out, F.lstm(x, *weights)[0])
            np.testing.assert_allclose(out, _reference("lstm", x, weights)[0], atol=2e-5)


def test_bad_arguments_are_named():
    W, R = np.zeros((5, 32), np.float32), np.zeros((8, 32), np.float32)
    with pytest.raises(ValueError, match="cell: expected one of"):
        F.prepare("rnn", W, R)
    with pytest.raises(ValueError, match="kernel: expected a 2-D array"):
        F.prepare("lstm", np.zeros(32, np.float32), R)
    with pytest.raises(ValueError, match=r"recurrent_kernel: expected shape \(units, 4\*units\)"):
        F.prepare("lstm", W, np.zeros((8, 24), np.float32))
    with pytest.raises(ValueError, match=r"bias: expected shape \(32,\)"):
        F.prepare("lstm", W, R, np.zeros(31, np.float32))
    with pytest.raises(TypeError, match="kernel: expected a float32 or float64 array, got dtype int64"):
        F.prepare("lstm", np.zeros((5, 32), np.int64), R)
    with pytest.raises(TypeError, match="recurrent_kernel: expected a float32 or float64 array, got dtype float16"):
        F.prepare("lstm", W, R.astype(np.float16))
    with pytest.raises(ValueError, match="activation: expected one of"):
        F.prepare("lstm", W, R, activation="swish")
    with pytest.raises(ValueError, match="engine: expected one of"):
        F.prepare("lstm", W, R, engine="gpu")
    with pytest.raises(TypeError, match="simple_rnn has no recurrent activation"):
        F.prepare("simple_rnn", W[:, :8], R[:, :8], recurrent_activation="tanh")
    with pytest.raises(TypeError, match="only gru takes it"):
        F.prepare("lstm", W, R, reset_after=False)
    prepared = F.prepare("lstm", W, R)
    prepared(np.zeros((1, 3, 5), np.float32))
    prepared(np.zeros((1, 3, 5), np.float32))   # a known signature: the checks are skipped, not the others'
    with pytest.raises(ValueError, match=r"kernel: expected shape \(6, 32\)"):
        prepared(np.zeros((1, 3, 6), np.float32))
    with pytest.raises(ValueError, match="x: expected a 3-D array"):
        prepared(np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="unexpected keyword argument 'activation'"):
        prepared(np.zeros((1, 3, 5), np.float32), activation="relu")
    assert "lstm" in repr(prepared) and "units=8" in repr(prepared)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("make,name", [(lambda: layers.LSTM(136, return_sequences=True), "lstm"),
                                       (lambda: layers.GRU(200, return_sequences=True), "gru")], ids=["lstm", "gru"])
def test_layers_keep_packed_weights_until_set_weights(threads, make, name):
    """An RNN layer's inference calls reuse R's packed layouts (its cell's cache) while its weights, which
    are read-only between set_weights calls, stay the same; set_weights starts a new cache, so the next
    call sees the new weights (a stale cache would give the old outputs)."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(1, 9, 17)).astype(np.float32)
    layer = make()
    with fastrnn.threads(threads):
        first = np.asarray(layer(x))
        cell = layer.cell
        want, _ = getattr(F, name)(x, cell.kernel, cell.recurrent_kernel, cell.bias, **cell.sequence_kwargs())
        np.testing.assert_array_equal(first, want)
        np.testing.assert_allclose(first, _reference(name, x, cell.get_weights(), **cell.sequence_kwargs())[0],
                                   atol=2e-5)
        np.testing.assert_array_equal(np.asarray(layer(x)), want)
        if engine.simd_level() >= 1:
            assert cell._packs, "the inference call packed R but kept nothing"
        with pytest.raises(ValueError, match="read-only"):
            cell.recurrent_kernel[0, 0] = 1.0
        new = [w * 0.5 + 0.01 for w in layer.get_weights()]
        layer.set_weights(new)
        assert not cell.recurrent_kernel.flags.writeable
        want, _ = getattr(F, name)(x, *new, **cell.sequence_kwargs())
        got = np.asarray(layer(x))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got, _reference(name, x, new, **cell.sequence_kwargs())[0], atol=2e-5)
        assert not np.array_equal(got, first)


def test_kept_packs_take_the_panels_at_any_width():
    """A call whose packs are kept (prepare, a cell's inference) packs R for one row at any width and at
    T = 1; a one-off call packs from G*H >= 512 columns and T >= 2; a batch's T = 1 step never."""
    if engine.simd_level() < 1:
        pytest.skip("no packed layouts on this CPU")
    W, R = np.zeros((17, 136), np.float32), np.zeros((34, 136), np.float32)
    with fastrnn.threads(1):
        for T, B, kept, one_off in ((6, 1, True, False), (1, 1, True, False), (1, 4, False, False)):
            spec, _ = build_spec("lstm", np.zeros((B, T, 17), np.float32), W, R)
            assert _dispatch.cpu_plan(spec, False, packs_kept=True).forward_packed == kept
            assert _dispatch.cpu_plan(spec, False).forward_packed == one_off


def test_weights_of_mixed_dtypes_take_the_kernels():
    """prepare keeps every weight in the kernel's dtype, so a repeated call in it converts nothing and
    reads no array of another dtype (the per-call API converts them to x's dtype at every call)."""
    rng = np.random.default_rng(17)
    args, _ = make_case(rng, "gru", {}, 8, 1, 17, 136, dtype=np.float32)
    x, (kernel, recurrent, bias), _, _ = _split(args, {})
    prepared = F.prepare("gru", kernel, recurrent.astype(np.float64), bias.astype(np.float64))
    assert prepared.recurrent_kernel.dtype == prepared.bias.dtype == np.float32
    for _ in range(3):
        got = prepared(x)
        np.testing.assert_array_equal(got[0], F.gru(x, kernel, recurrent, bias)[0])
        _check_reference("gru", got, x, (kernel, recurrent, bias))


def test_signatures_seen_before_skip_validation_but_not_its_errors():
    """A SpecCache (prepare's, a cell's) reuses the validated Spec of a call signature it has seen (x's
    shape, the flags, the cell options), with or without initial states: results as the functional
    call, and bad states or another signature still get build_spec's errors and conversions."""
    rng = np.random.default_rng(23)
    layer = layers.LSTM(24, return_state=True)
    x = rng.normal(size=(3, 6, 5)).astype(np.float32)
    layer(x)
    cell = layer.cell
    states = [rng.normal(size=(3, 24)).astype(np.float32) for _ in range(2)]
    for _ in range(3):
        out, h, c = layer(x, initial_state=states)
        want, (wh, wc) = F.lstm(x, cell.kernel, cell.recurrent_kernel, cell.bias, initial_state=states)
        np.testing.assert_array_equal(out, want[:, -1])
        np.testing.assert_array_equal(c, wc)
        ref, (rh, rc) = _reference("lstm", x, cell.get_weights(), initial_state=states)
        np.testing.assert_allclose(out, ref[:, -1], atol=2e-5)
        np.testing.assert_allclose(c, rc, atol=2e-5)
    with pytest.raises(ValueError, match=r"expected shape \(3, 24\)"):
        layer(x, initial_state=[states[0][:2], states[1]])
    as64 = [s.astype(np.float64) for s in states]   # converted, as build_spec does
    np.testing.assert_array_equal(layer(x, initial_state=as64)[2], wc)
    x2 = rng.normal(size=(2, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(layer(x2)[0], F.lstm(x2, cell.kernel, cell.recurrent_kernel, cell.bias)[0][:, -1])
    with pytest.raises(ValueError, match=r"kernel: expected shape \(6, 96\)"):
        layer.cell.run_sequence(np.zeros((2, 4, 6), np.float32), None, mask=None, go_backwards=False,
                                time_major=False, zero_output_for_mask=False, training=False, engine="auto")
    cell.activation = "relu"   # another cell option is another signature
    np.testing.assert_array_equal(layer(x2)[0], F.lstm(x2, cell.kernel, cell.recurrent_kernel, cell.bias,
                                                        activation="relu")[0][:, -1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_one_row_projection_on_the_avx2_microkernel(packed_build, threads, cell):
    """On the AVX2 build a one-row forward of up to ONE_ROW_MICROKERNEL_MAX_T steps projects on fastrnn's
    microkernel: a prepared call keeps W's panels, a one-off call packs them itself, with the same bits;
    a longer call stays on OpenBLAS and keeps none.  Both against the float64 reference."""
    if packed_build != "avx2":
        pytest.skip("the rule is the AVX2 build's (AVX-512 projects on its microkernel at any shape)")
    rng = np.random.default_rng(23)
    max_t = engine.ONE_ROW_MICROKERNEL_MAX_T
    for T, kept in ((max_t, True), (max_t + 1, False)):
        args, _ = make_case(rng, cell, {}, T, 1, 33, 40, dtype=np.float32)
        x, weights, _, _ = _split(args, {})
        with fastrnn.threads(threads):
            prepared = F.prepare(cell, *weights)
            got = prepared(x)
            want = getattr(F, cell)(x, *weights)
        assert (("w_panels",) in prepared.packed_layouts) == kept
        for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
            np.testing.assert_array_equal(a, b)
        _check_reference(cell, got, x, weights)


@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_repeated_calls_reuse_a_workspace_but_never_its_results(cell, extra):
    """A signature seen before runs on a workspace kept from its last call (fastrnn._compiled.forward's
    `reuse`, Workspace.rebind): results equal a first call's bit for bit, with and without initial
    states, are fresh arrays that later calls never write, and the idle workspace keeps neither the
    caller's x nor the results alive."""
    import gc
    import weakref

    rng = np.random.default_rng(29)
    for T, B, I, H, tm in [(9, 1, 17, 136, False), (5, 7, 9, 20, False), (6, 3, 17, 34, True)]:
        args, kw = make_case(rng, cell, extra, T, B, I, H, init=True, dtype=np.float32, time_major=tm)
        x, weights, call_kw, cell_kw = _split(args, kw)
        states = call_kw.pop("initial_state")
        xs = [x, rng.normal(size=x.shape).astype(np.float32)]
        with fastrnn.threads(2):
            prepared = F.prepare(cell, *weights, **cell_kw)
            first = {}   # (which x, with states) -> the first call's results: a fresh workspace
            kept = []    # every result handed out, with a copy taken when it was returned
            for _ in range(3):
                for i, xi in enumerate(xs):
                    for st in (None, states):
                        out, got_states = prepared(xi, initial_state=st, **call_kw)
                        for a in (out, *got_states):
                            assert not any(np.shares_memory(a, b) for b, _ in kept)
                            kept.append((a, a.copy()))
                        want = first.setdefault((i, st is None), (out.copy(), [s.copy() for s in got_states]))
                        np.testing.assert_array_equal(out, want[0])
                        for s, w in zip(got_states, want[1]):
                            np.testing.assert_array_equal(s, w)
            for a, copy in kept:   # no later call wrote into an earlier call's results
                np.testing.assert_array_equal(a, copy)
            _check_reference(cell, prepared(xs[1], initial_state=states, **call_kw), xs[1], weights,
                             initial_state=states, **call_kw, **cell_kw)
            (reuse,) = [seen.idle for seen in prepared._specs._specs.values()]
            assert reuse, "the signature keeps an idle workspace"
            probe = rng.normal(size=x.shape).astype(np.float32)
            probe_ref = weakref.ref(probe)
            out, got_states = prepared(probe, **call_kw)
            # (the outputs are a view of the workspace's (N, H) array, the states its own)
            result_refs = [weakref.ref(a) for a in (out if out.base is None else out.base, *got_states)]
            del probe, out, got_states
            gc.collect()
            assert probe_ref() is None and all(r() is None for r in result_refs)


def test_repeated_signatures_keep_their_plan_while_its_inputs_stay(monkeypatch):
    """fastrnn.functional keeps a remembered signature's plan (fastrnn._spec.Signature.choice) while
    _dispatch.plan_inputs() stays: the thread count, the SIMD level and plans_changed(), which the
    switches and whoever sets a plan constant call.  Kept plans are cpu_plan's own, and the results
    stay the functional call's."""
    rng = np.random.default_rng(31)
    args, _ = make_case(rng, "lstm", {}, 6, 3, 17, 34, dtype=np.float32)
    x, weights, _, _ = _split(args, {})
    prepared = F.prepare("lstm", *weights)
    spec, _ = build_spec("lstm", x, *weights)

    def plan_of_a_call():
        np.testing.assert_allclose(prepared(x)[0], _reference("lstm", x, weights)[0], atol=2e-5)
        (seen,) = prepared._specs._specs.values()
        return seen.choice[1].plan

    with fastrnn.threads(1):
        one = plan_of_a_call()
        assert one == _dispatch.cpu_plan(spec, training=False, packs_kept=True) and one.threads == 1
    with fastrnn.threads(2):
        two = plan_of_a_call()
        assert two.threads == 2 and plan_of_a_call() is two   # the kept plan, not a new equal one
        _dispatch.packed_gemm(False)
        try:
            assert not plan_of_a_call().forward_packed
        finally:
            _dispatch.packed_gemm(True)
        assert plan_of_a_call() == two
        if engine.simd_level() >= 1:   # (B = 3 splits hidden units on the microkernel)
            monkeypatch.setattr(_dispatch, "HIDDEN_SPLIT_MAX_B", 0)
            _dispatch.plans_changed()
            assert two.forward_split == "hidden" and plan_of_a_call().forward_split == "batch"
    monkeypatch.undo()
    _dispatch.plans_changed()


def test_idle_workspaces_keep_their_xp_within_the_budget(monkeypatch):
    """An idle workspace keeps its scratch xp for the next call (fastrnn._compiled._park) while the
    bytes kept stay within IDLE_XP_TOTAL_BYTES (each at most IDLE_XP_MAX_BYTES); a call that takes it
    (or its collection) gives its bytes back to the budget; results are the same either way."""
    import gc

    from fastrnn import _compiled

    rng = np.random.default_rng(37)
    args, _ = make_case(rng, "gru", {"reset_after": True}, 7, 5, 9, 20, dtype=np.float32)
    x, weights, _, _ = _split(args, {})
    xp_bytes = 7 * 5 * 3 * 20 * 4
    gc.collect()
    start = _compiled._idle_xp[0]
    prepared = F.prepare("gru", *weights)
    want = prepared(x)[0].copy()   # the first call's workspace goes idle with its xp
    np.testing.assert_allclose(want, _reference("gru", x, weights)[0], atol=2e-5)
    (seen,) = prepared._specs._specs.values()
    (ws,) = seen.idle
    assert ws.parked and ws.xp is not None and _compiled._idle_xp[0] == start + xp_bytes
    np.testing.assert_array_equal(prepared(x)[0], want)   # taken, run on its kept xp, parked again
    assert seen.idle == [ws] and ws.parked and _compiled._idle_xp[0] == start + xp_bytes
    monkeypatch.setattr(_compiled, "IDLE_XP_TOTAL_BYTES", start + xp_bytes - 1)   # no room for it
    np.testing.assert_array_equal(prepared(x)[0], want)
    assert not ws.parked and ws.xp is None and _compiled._idle_xp[0] == start
    np.testing.assert_array_equal(prepared(x)[0], want)   # (an xp from the pool again)
    monkeypatch.undo()
    prepared(x)
    assert ws.parked and _compiled._idle_xp[0] == start + xp_bytes
    del prepared, seen, ws
    gc.collect()
    assert _compiled._idle_xp[0] == start


def test_a_plain_repeated_call_goes_straight_to_the_compiled_forward(monkeypatch):
    """Prepared.__call__ of a remembered signature with x its only array runs `_compiled.forward` on the
    kept plan and workspace without fastrnn.functional._run; initial states, a mask, or a plan whose
    inputs changed go through _run.  The bits are the same either way."""
    rng = np.random.default_rng(41)
    args, kw = make_case(rng, "lstm", {}, 6, 5, 17, 34, mask="holes", init=True, dtype=np.float32)
    x, weights, call_kw, _ = _split(args, kw)
    prepared = F.prepare("lstm", *weights)
    with fastrnn.threads(2):
        want = prepared(x)   # (remembers the signature)
        _check_reference("lstm", want, x, weights)   # (before _run is watched: the reference runs through it)
        through_run = []
        real = F._run
        monkeypatch.setattr(F, "_run", lambda *a, **k: through_run.append(1) or real(*a, **k))
        got = prepared(x)
        assert through_run == []
        for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
            np.testing.assert_array_equal(a, b)
        prepared(x, initial_state=call_kw["initial_state"])
        prepared(x, mask=call_kw["mask"])
        assert len(through_run) == 2
    with fastrnn.threads(1):   # another plan input: _run makes the plan again, then it is kept
        np.testing.assert_allclose(prepared(x)[0], want[0], atol=2e-6)
        assert len(through_run) == 3
        prepared(x)
        assert len(through_run) == 3
