"""The compiled engine against the NumPy float64 reference (fastrnn.reference), on a grid of every
option: cell x dtype x go_backwards x mask pattern x initial state x dropout x layout, with awkward
shapes (tails I=17, H=34; T=1; B=1; T=300).  Forward outputs, final states and every gradient."""
import itertools
import zlib

import numpy as np
import pytest

from checks import assert_close, assert_grads_close, mask_pattern, tol
from fastrnn import functional as F
from fastrnn import reference
from problems import CHECK_SHAPES

VARIANTS = [("lstm", {}), ("gru", {"reset_after": True}), ("gru", {"reset_after": False}), ("simple_rnn", {})]
VARIANT_IDS = ["lstm", "gru-reset_after", "gru-reset_before", "simple_rnn"]
G = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def make_case(rng, cell, extra, T, B, I, H, *, mask="none", init=False, dropout=False, time_major=False,
              dtype=np.float64):
    """Random inputs for one call; returns (args, kwargs) in the functional API's form."""
    g = G[cell]
    scale = 1.0 / np.sqrt(H)
    kernel = rng.uniform(-scale, scale, (I, g * H))
    recurrent = rng.uniform(-scale, scale, (H, g * H)) * 2
    bias_shape = (2, g * H) if cell == "gru" and extra.get("reset_after", True) else (g * H,)
    bias = rng.uniform(-0.5, 0.5, bias_shape)
    x = rng.normal(size=(T, B, I) if time_major else (B, T, I))
    kw = dict(extra, mask=mask_pattern(mask, B, T, rng), time_major=time_major)
    if init:
        kw["initial_state"] = [rng.normal(size=(B, H)) * 0.5 for _ in range(2 if cell == "lstm" else 1)]
    if dropout:
        kw["dropout_mask"] = (rng.random((B, I)) > 0.25) / 0.75
        kw["recurrent_dropout_mask"] = (rng.random((B, H)) > 0.25) / 0.75
    cast = lambda a: None if a is None else np.asarray(a, dtype)  # noqa: E731
    args = [cast(a) for a in (x, kernel, recurrent, bias)]
    for key in ("dropout_mask", "recurrent_dropout_mask"):
        if key in kw:
            kw[key] = cast(kw[key])
    if "initial_state" in kw:
        kw["initial_state"] = [cast(s) for s in kw["initial_state"]]
    return args, kw


def as64(args, kw):
    args = [None if a is None else np.asarray(a, np.float64) for a in args]
    kw = dict(kw)
    for key in ("dropout_mask", "recurrent_dropout_mask"):
        if kw.get(key) is not None:
            kw[key] = np.asarray(kw[key], np.float64)
    if kw.get("initial_state") is not None:
        kw["initial_state"] = [np.asarray(s, np.float64) for s in kw["initial_state"]]
    return args, kw


def check_against_reference(cell, args, kw, dtype, rng):
    """Compiled forward + backward in `dtype` vs the float64 reference on the same (rounded) data."""
    out, states, backward = getattr(F, cell + "_vjp")(*args, **kw, engine="compiled")
    args64, kw64 = as64(args, kw)
    ref_out, ref_states, ref_backward = getattr(reference, cell + "_vjp")(*args64, **kw64)
    assert out.dtype == dtype
    assert_close("outputs", out, ref_out, tol(dtype, "out"))
    for k, (s, r) in enumerate(zip(states, ref_states)):
        assert_close(f"final_states[{k}]", s, r, tol(dtype, "out"))
    # inference path gives the same numbers as the training path
    inf_out, inf_states = getattr(F, cell)(*args, **kw, engine="compiled")
    assert_close("inference outputs", inf_out, out, 0)
    for s, r in zip(inf_states, states):
        assert_close("inference states", s, r, 0)
    d_out = rng.normal(size=out.shape)
    d_states = [rng.normal(size=s.shape) for s in states]
    grads = backward(d_out.astype(dtype), [d.astype(dtype) for d in d_states])
    ref_grads = ref_backward(d_out, d_states)
    assert_grads_close(grads, ref_grads, tol(dtype, "grad"))


GRID = list(itertools.product(
    ["none", "right", "left", "holes", "fully_masked_row"],  # mask
    [False, True],  # go_backwards
    [False, True],  # initial state
    [False, True],  # dropout masks
))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("mask,go_backwards,init,dropout", GRID,
                         ids=[f"{m}-{'bw' if g else 'fw'}-{'h0' if i else 'zero'}-{'drop' if d else 'nodrop'}"
                              for m, g, i, d in GRID])
def test_option_grid(cell, extra, mask, go_backwards, init, dropout, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((cell, extra, mask, go_backwards, init, dropout)).encode()))
    T, B, I, H = 7, 3, 17, 34
    args, kw = make_case(rng, cell, extra, T, B, I, H, mask=mask, init=init, dropout=dropout,
                         time_major=bool(rng.integers(2)), dtype=dtype)
    kw["go_backwards"] = go_backwards
    check_against_reference(cell, args, kw, np.dtype(dtype), rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", CHECK_SHAPES, ids=[f"t{t}-b{b}-i{i}-h{h}" for t, b, i, h in CHECK_SHAPES])
def test_awkward_shapes(cell, extra, shape, dtype):
    """Tails, T=1, B=1 (the GEMV path) and long T, with holes, dropout and an initial state."""
    rng = np.random.default_rng(sum(shape))
    T, B, I, H = shape
    args, kw = make_case(rng, cell, extra, T, B, I, H, mask="holes", init=True, dropout=True, dtype=dtype)
    check_against_reference(cell, args, kw, np.dtype(dtype), rng)


ACTIVATION_CASES = [
    (cell, extra, act, ract)
    for (cell, extra), act in itertools.product(VARIANTS, ["tanh", "sigmoid", "hard_sigmoid", "relu", "linear",
                                                           "softsign"])
    for ract in (["sigmoid", "hard_sigmoid", "tanh"] if cell != "simple_rnn" else [None])
]


# float32 as well: its AVX2 rows are fused for the default activations (sigmoid gates, tanh) and fall
# back to the generic rows for the others; both with and without a bias (gates_avx2.c)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,extra,activation,recurrent_activation", ACTIVATION_CASES,
                         ids=[f"{c}{'-' + str(e) if e else ''}-{a}-{r}" for c, e, a, r in ACTIVATION_CASES])
def test_activations(cell, extra, activation, recurrent_activation, dtype):
    rng = np.random.default_rng(7)
    args, kw = make_case(rng, cell, extra, 6, 3, 17, 34, mask="holes", init=True, dtype=dtype)
    kw["activation"] = activation
    if recurrent_activation is not None:
        kw["recurrent_activation"] = recurrent_activation
    check_against_reference(cell, args, kw, np.dtype(dtype), rng)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_zero_output_for_mask_and_no_bias(cell, extra, dtype):
    rng = np.random.default_rng(11)
    for zero_output, use_bias in itertools.product([False, True], [False, True]):
        args, kw = make_case(rng, cell, extra, 8, 4, 5, 34, mask="holes", init=True, dtype=dtype)
        if not use_bias:
            args[3] = None
        kw["zero_output_for_mask"] = zero_output
        check_against_reference(cell, args, kw, np.dtype(dtype), rng)


def test_fully_masked_row_keeps_initial_state():
    """Keras: a row whose every step is masked ends with its initial state and outputs zeros."""
    rng = np.random.default_rng(3)
    args, kw = make_case(rng, "lstm", {}, 5, 3, 4, 6, init=True)
    kw["mask"] = np.ones((3, 5), bool)
    kw["mask"][1] = False
    out, (h, c) = F.lstm(*args, **kw)
    np.testing.assert_array_equal(h[1], kw["initial_state"][0][1])
    np.testing.assert_array_equal(c[1], kw["initial_state"][1][1])
    np.testing.assert_array_equal(out[1], 0)


def test_backward_can_be_called_twice():
    rng = np.random.default_rng(5)
    args, kw = make_case(rng, "gru", {"reset_after": False}, 5, 2, 4, 6, mask="holes", init=True, dropout=True)
    out, states, backward = F.gru_vjp(*args, **kw)
    d = rng.normal(size=out.shape)
    first, second = backward(d), backward(d)
    for key in ("x", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", [(6, 2, 17, 34), (5, 7, 9, 20), (5, 8, 17, 34), (4, 14, 9, 20), (4, 16, 17, 34),
                                   (3, 40, 9, 176), (7, 1, 17, 176)],
                         ids=["b2", "b7", "b8", "b14", "b16", "b40", "b1"])  # 8, 14: row blocks end in 4 + 4
def test_packed_recurrent_product(cell, extra, shape, packed_build):
    """float32, one thread: the per-step products run on the packed-R microkernel (_engine.pyx, 'Packed
    R') in the forward at 2 <= B <= 16, or any B once G*H >= 512 (B = 40: LSTM and GRU) or on AVX-512, in the
    backward at B >= 2; B == 1 on R's vector panels once G*H >= 512 (LSTM and GRU, with a tail panel:
    G*H = 704 and 528); they must agree with the float64 reference like the BLAS path does, with masks,
    go_backwards and an initial state, in the inference and the training forward and the gradients."""
    import fastrnn
    from fastrnn import _dispatch

    rng = np.random.default_rng(sum(shape))
    T, B, I, H = shape
    args, kw = make_case(rng, cell, extra, T, B, I, H, mask="holes", init=True, dtype=np.float32)
    kw["go_backwards"] = bool(B % 2)
    with fastrnn.threads(1):
        assert _dispatch.packed_gemm()
        G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
        wide = G * H >= 512
        any_rows = packed_build == "avx512"   # the AVX-512 build packs at any row count
        # the concatenated product (a narrow input folded into the step's product) runs on the
        # microkernel too, at any rows (AVX2; _dispatch.CONCAT_MAX_I, CONCAT_MAX_BYTES)
        concat = (packed_build == "avx2" and cell == "lstm" and B >= 2 and I <= _dispatch.CONCAT_MAX_I
                  and (I + H) * G * H * 4 <= _dispatch.CONCAT_MAX_BYTES)
        packs = (cell != "gru" or extra.get("reset_after", True)) and (
            wide if B == 1 else (B <= 16 or wide or any_rows or concat))
        kernel = "packed-vecmat" if B == 1 else "packed-microkernel"
        assert (kernel in F.explain(cell, *args, **kw)) == packs
        check_against_reference(cell, args, kw, np.dtype(np.float32), rng)
        packed, _ = getattr(F, cell)(*args, **kw)
        _dispatch.packed_gemm(False)
        try:
            blas, _ = getattr(F, cell)(*args, **kw)
        finally:
            _dispatch.packed_gemm(True)
    assert_close("packed vs BLAS", packed, blas, 2e-6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
def test_state_in_output_rows_changes_no_bits(cell, extra, dtype, threads):
    """An unmasked inference forward keeps h in the output rows (_engine.pyx, 'Output rows as state')
    instead of a slot copied to them: outputs and final states close to the float64 reference, and the
    same bits with it on and off, batch-major and time-major, go_backwards, an initial state, dropout
    masks, the batch split (B = 7, 64) and the serial loop (B = 1, 2); a masked call (which never takes
    it) is unchanged too."""
    import fastrnn
    from fastrnn._native import engine

    rng = np.random.default_rng(zlib.crc32(f"{cell}{extra}{dtype}{threads}".encode()))
    fn = getattr(F, cell)
    with fastrnn.threads(threads):
        assert engine.h_in_out()
        for T, B, I, H, time_major, back, init, dropout, mask in [
                (5, 7, 17, 34, False, False, True, False, "none"), (9, 64, 9, 20, True, True, False, True, "none"),
                (1, 2, 3, 5, False, True, True, True, "none"), (6, 1, 17, 34, True, False, True, False, "none"),
                (4, 64, 28, 64, False, False, False, False, "none"), (6, 8, 17, 34, False, True, True, False, "holes")]:
            args, kw = make_case(rng, cell, extra, T, B, I, H, mask=mask, init=init, dropout=dropout,
                                 time_major=time_major, dtype=dtype)
            kw["go_backwards"] = back
            copies = [np.array(a) for a in args]
            on = fn(*args, **kw)
            try:
                engine.h_in_out(False)
                off = fn(*args, **kw)
            finally:
                engine.h_in_out(True)
            args64, kw64 = as64(args, kw)   # right against the float64 reference
            ref_out, ref_states = getattr(reference, cell)(*args64, **kw64)
            assert_close("outputs", on[0], ref_out, tol(np.dtype(dtype), "out"))
            for k, (a, r) in enumerate(zip(on[1], ref_states)):
                assert_close(f"final_states[{k}]", a, r, tol(np.dtype(dtype), "out"))
            np.testing.assert_array_equal(on[0], off[0])
            assert len(on[1]) == len(off[1])
            for a, b in zip(on[1], off[1]):
                np.testing.assert_array_equal(a, b)
            for a, c in zip(args, copies):   # the inputs are not written
                np.testing.assert_array_equal(a, c)
            if mask == "none":   # and the final h is the last output row
                last = on[0][-1] if time_major else on[0][:, -1]
                np.testing.assert_array_equal(on[1][0], last)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell,extra,shape", [("lstm", {}, (3, 4, 9, 256)), ("gru", {"reset_after": True}, (3, 12, 7, 352)),
                                              ("simple_rnn", {}, (3, 16, 5, 1024)), ("lstm", {}, (2, 3, 6, 320))],
                         ids=["lstm-bwd-k1024", "gru-bwd-k1056", "simple_rnn-k1024", "lstm-b3-k1280"])
def test_next_panel_prefetch_changes_no_bits(cell, extra, shape, threads, packed_build):
    """float32: the microkernel's few-row passes over panels of K >= 1024 rows prefetch the next panel
    (gates_avx2.c, 'Next-panel prefetch'): the forward's K = H = 1024 and the backward's K = G*H >= 1024,
    at 1-16 rows a thread (remainder rows and the last panels included); the results stay close to the
    float64 reference, and are the same bits with it on and off (a prefetch changes no arithmetic)."""
    import fastrnn
    from fastrnn._native import engine

    rng = np.random.default_rng(zlib.crc32(f"{cell}{shape}{threads}".encode()))
    T, B, I, H = shape
    args, kw = make_case(rng, cell, extra, T, B, I, H, mask="none", init=True, dtype=np.float32)
    d_out = rng.normal(size=(B, T, H)).astype(np.float32)
    fn = getattr(F, cell + "_vjp")

    def run():
        out, states, backward = fn(*args, **kw, engine="compiled")
        return out, states, backward(d_out)

    with fastrnn.threads(threads):
        assert engine.next_panel_prefetch()
        assert "packed-microkernel" in F.explain(cell, *args, **kw)
        check_against_reference(cell, args, kw, np.dtype(np.float32), rng)
        on = run()
        try:
            engine.next_panel_prefetch(False)
            off = run()
        finally:
            engine.next_panel_prefetch(True)
    np.testing.assert_array_equal(on[0], off[0])
    for a, b in zip(on[1], off[1]):
        np.testing.assert_array_equal(a, b)
    for key, g in on[2].items():
        if g is not None and key != "initial_state":
            np.testing.assert_array_equal(g, off[2][key], err_msg=key)
    for a, b in zip(on[2]["initial_state"], off[2]["initial_state"]):
        np.testing.assert_array_equal(a, b)
