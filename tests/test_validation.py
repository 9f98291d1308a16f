"""Bad input is rejected with a clear error; good but awkward input is accepted and never modified.

1. Every public entry point of ``fastrnn.functional`` (the three cells, forward and ``*_vjp``), with
   both engines (validation is shared: ``fastrnn._spec``), rejects wrong ranks, shape mismatches,
   wrong dtypes, bad masks / states / dropout masks, unknown activations and engines with a
   ValueError or TypeError whose message names what was expected and what came.
2. ``backward`` rejects gradients of the wrong shape the same way.
3. Nasty inputs (bottleneck's generator): read-only, strided, Fortran-ordered, transposed and
   reversed views give the results of the NumPy reference on contiguous copies, and no input
   (nor ``d_outputs`` / ``d_final_states``) is written to.
4. Edge shapes and conversions: T=1, B=1, T=0, B=0, 0/1 integer masks, nested lists, mixed
   dtypes, NaN.
"""
import re

import numpy as np
import pytest

import fastrnn.reference as ref
from fastrnn import functional as F

ENGINES = ("compiled", "reference")
ACTIVATION_NAMES = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "softsign")

#: cell id -> (functional name, gates G, number of states, extra keywords)
CELLS = {
    "lstm": ("lstm", 4, 2, {}),
    "gru": ("gru", 3, 1, {"reset_after": True}),
    "gru_rb": ("gru", 3, 1, {"reset_after": False}),
    "simple_rnn": ("simple_rnn", 1, 1, {}),
}
#: the six public entry points, as (cell id, vjp?)
ENTRY_POINTS = [(c, v) for c in ("lstm", "gru", "simple_rnn") for v in (False, True)]
ENTRY_IDS = [f"{c}{'_vjp' if v else ''}" for c, v in ENTRY_POINTS]

B, T, I, H = 3, 5, 4, 6  # noqa: E741 - distinct sizes so that every message is unambiguous


def bias_shape(cell, H):
    _, G, _, extra = CELLS[cell]
    return (2, G * H) if extra.get("reset_after") else (G * H,)


def make_problem(cell, B=B, T=T, I=I, H=H, dtype=np.float64, seed=0):  # noqa: E741
    """x, kernel, recurrent_kernel, bias, initial_state for `cell` (a key of CELLS)."""
    _, G, n_states, _ = CELLS[cell]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    kernel = (rng.standard_normal((I, G * H)) * 0.5 / np.sqrt(max(I, 1))).astype(dtype)
    recurrent_kernel = (rng.standard_normal((H, G * H)) * 0.5 / np.sqrt(H)).astype(dtype)
    bias = (rng.standard_normal(bias_shape(cell, H)) * 0.3).astype(dtype)
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in range(n_states)]
    return x, kernel, recurrent_kernel, bias, states


def entry(cell, vjp, engine):
    """The public function for `cell`, with its extra keywords and `engine` bound."""
    name, _, _, extra = CELLS[cell]
    fn = getattr(F, f"{name}_vjp" if vjp else name)

    def call(*args, **kwargs):
        return fn(*args, **extra, **kwargs, engine=engine)

    return call


def oracle(cell, vjp=False):
    name, _, _, extra = CELLS[cell]
    fn = getattr(ref, f"{name}_vjp" if vjp else name)

    def call(*args, **kwargs):
        return fn(*args, **extra, **kwargs)

    return call


def raises(exc, *parts):
    """pytest.raises(exc) whose message must contain every one of `parts` (literal text)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(str(p))})" for p in parts))


@pytest.fixture(params=ENTRY_POINTS, ids=ENTRY_IDS)
def cell_vjp(request):
    return request.param


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


# ------------------------------------------------------------------------------------- bad input

class TestBadInput:
    """Each test runs for the 6 entry points x 2 engines."""

    def setup(self, cell_vjp, engine):
        cell, vjp = cell_vjp
        self.cell, self.G, self.n = cell, CELLS[cell][1], CELLS[cell][2]
        self.fn = entry(cell, vjp, engine)
        self.x, self.W, self.R, self.b, self.s = make_problem(cell)

    def test_x_2d(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "x:", "3-D", (T, I)):
            self.fn(self.x[0], self.W, self.R, self.b)

    def test_x_4d(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "x:", "3-D", (1, B, T, I)):
            self.fn(self.x[None], self.W, self.R, self.b)

    def test_x_0d(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "x:", "3-D", "()"):
            self.fn(np.float64(1.0), self.W, self.R, self.b)

    def test_x_2d_time_major_names_its_layout(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "x:", "(T, B, features)", (T, I)):
            self.fn(self.x[0], self.W, self.R, self.b, time_major=True)

    def test_features_of_x_do_not_match_kernel_rows(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "kernel", (I - 1, self.G * H), (I, self.G * H)):
            self.fn(self.x[:, :, :-1], self.W, self.R, self.b)

    def test_kernel_wrong_columns(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        W = np.zeros((I, self.G * H + 1))
        with raises(ValueError, "kernel", (I, self.G * H), W.shape):
            self.fn(self.x, W, self.R, self.b)

    def test_kernel_1d(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "kernel", (I, self.G * H), (I * self.G * H,)):
            self.fn(self.x, self.W.ravel(), self.R, self.b)

    @pytest.mark.parametrize("shape", ["columns", "rows", "1d", "3d"])
    def test_recurrent_kernel_wrong_shape(self, cell_vjp, engine, shape):
        self.setup(cell_vjp, engine)
        R = {"columns": np.zeros((H, self.G * H - 1)), "rows": np.zeros((H + 1, self.G * H)),
             "1d": np.zeros(self.G * H * H), "3d": np.zeros((1, H, self.G * H))}[shape]
        with raises(ValueError, "recurrent_kernel", f"(units, {self.G}*units)", R.shape):
            self.fn(self.x, self.W, R, self.b)

    def test_recurrent_kernel_zero_units(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "recurrent_kernel", "at least one unit", "(0, 0)"):
            self.fn(self.x, np.zeros((I, 0)), np.zeros((0, 0)), None)

    @pytest.mark.parametrize("how", ["short", "2d", "scalar"])
    def test_bias_wrong_shape(self, cell_vjp, engine, how):
        self.setup(cell_vjp, engine)
        expected = bias_shape(self.cell, H)
        bias = {"short": np.zeros(self.G * H - 1), "2d": np.zeros((3, self.G * H)),
                "scalar": np.zeros(())}[how]
        with raises(ValueError, "bias", expected, bias.shape):
            self.fn(self.x, self.W, self.R, bias)

    @pytest.mark.parametrize("got", ["short", "long", "transposed"])
    def test_mask_wrong_shape(self, cell_vjp, engine, got):
        self.setup(cell_vjp, engine)
        mask = {"short": np.ones((B, T - 1), bool), "long": np.ones(B * T, bool),
                "transposed": np.ones((T, B), bool)}[got]
        with raises(ValueError, "mask", (B, T), mask.shape):
            self.fn(self.x, self.W, self.R, self.b, mask=mask)

    def test_mask_is_batch_major_with_time_major_x(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        x = np.ascontiguousarray(self.x.transpose(1, 0, 2))
        with raises(ValueError, "mask", (B, T), (T, B)):
            self.fn(x, self.W, self.R, self.b, mask=np.ones((T, B), bool), time_major=True)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
    def test_mask_of_non_integer_dtype(self, cell_vjp, engine, dtype):
        self.setup(cell_vjp, engine)
        with raises(TypeError, "mask", "bool", np.dtype(dtype).name):
            self.fn(self.x, self.W, self.R, self.b, mask=np.ones((B, T), dtype))

    @pytest.mark.parametrize("delta", [-1, 1])
    def test_initial_state_wrong_count(self, cell_vjp, engine, delta):
        self.setup(cell_vjp, engine)
        n = self.n + delta
        states = [np.zeros((B, H))] * n
        with raises(ValueError, "initial_state", f"{self.n} arrays", (B, H), f"got {n}"):
            self.fn(self.x, self.W, self.R, self.b, initial_state=states)

    def test_initial_state_not_a_list(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "initial_state", f"{self.n} arrays", "got float"):
            self.fn(self.x, self.W, self.R, self.b, initial_state=1.0)

    @pytest.mark.parametrize("bad", [(B, H + 1), (B + 1, H), (H,), (1, B, H)])
    def test_initial_state_wrong_shape(self, cell_vjp, engine, bad):
        self.setup(cell_vjp, engine)
        for k in range(self.n):
            states = [s.copy() for s in self.s]
            states[k] = np.zeros(bad)
            with raises(ValueError, f"initial_state[{k}]", (B, H), bad):
                self.fn(self.x, self.W, self.R, self.b, initial_state=states)

    @pytest.mark.parametrize("bad", [(B, I + 1), (T, I), (I,)])
    def test_dropout_mask_wrong_shape(self, cell_vjp, engine, bad):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "dropout_mask", (B, I), bad):
            self.fn(self.x, self.W, self.R, self.b, dropout_mask=np.ones(bad))

    @pytest.mark.parametrize("bad", [(B, H + 1), (B, I), (H,)])
    def test_recurrent_dropout_mask_wrong_shape(self, cell_vjp, engine, bad):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "recurrent_dropout_mask", (B, H), bad):
            self.fn(self.x, self.W, self.R, self.b, recurrent_dropout_mask=np.ones(bad))

    @pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128, np.complex64])
    def test_x_of_non_float_dtype(self, cell_vjp, engine, dtype):
        self.setup(cell_vjp, engine)
        with raises(TypeError, "x:", "float32 or float64", np.dtype(dtype).name):
            self.fn(self.x.astype(dtype), self.W, self.R, self.b)

    @pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
    def test_x_of_unsupported_float_dtype(self, cell_vjp, engine, dtype):
        self.setup(cell_vjp, engine)
        with raises(TypeError, "x:", "float32 or float64", np.dtype(dtype).name):
            self.fn(self.x.astype(dtype), self.W, self.R, self.b)

    def test_x_of_strings(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(TypeError, "x:", "float", "<U"):
            self.fn(np.full((B, T, I), "a"), self.W, self.R, self.b)

    @pytest.mark.parametrize("which", ["kernel", "recurrent_kernel", "bias", "initial_state[0]",
                                       "dropout_mask", "recurrent_dropout_mask"])
    @pytest.mark.parametrize("dtype", [np.complex128, np.int64])
    def test_non_float_weights_and_states(self, cell_vjp, engine, which, dtype):
        self.setup(cell_vjp, engine)
        args = dict(kernel=self.W, recurrent_kernel=self.R, bias=self.b, initial_state=list(self.s),
                    dropout_mask=np.ones((B, I)), recurrent_dropout_mask=np.ones((B, H)))
        if which == "initial_state[0]":
            args["initial_state"][0] = args["initial_state"][0].astype(dtype)
        else:
            args[which] = args[which].astype(dtype)
        with raises(TypeError, which, "float32 or float64", np.dtype(dtype).name):
            self.fn(self.x, args.pop("kernel"), args.pop("recurrent_kernel"), args.pop("bias"), **args)

    @pytest.mark.parametrize("which", ["activation", "recurrent_activation"])
    def test_unknown_activation(self, cell_vjp, engine, which):
        self.setup(cell_vjp, engine)
        if which == "recurrent_activation" and self.cell == "simple_rnn":
            pytest.skip("SimpleRNN has no recurrent_activation")
        with raises(ValueError, which, "gelu", *ACTIVATION_NAMES):
            self.fn(self.x, self.W, self.R, self.b, **{which: "gelu"})

    @pytest.mark.parametrize("which", ["activation", "recurrent_activation"])
    def test_callable_activation(self, cell_vjp, engine, which):
        self.setup(cell_vjp, engine)
        if which == "recurrent_activation" and self.cell == "simple_rnn":
            pytest.skip("SimpleRNN has no recurrent_activation")
        with raises(TypeError, which, "by name", "callable", *ACTIVATION_NAMES):
            self.fn(self.x, self.W, self.R, self.b, **{which: np.tanh})
        with raises(TypeError, which, "by name", "callable"):
            self.fn(self.x, self.W, self.R, self.b, **{which: lambda v: v})

    @pytest.mark.parametrize("value", [["tanh"], 3, None])
    def test_activation_of_another_type(self, cell_vjp, engine, value):
        self.setup(cell_vjp, engine)
        with raises(TypeError, "activation", "name", *ACTIVATION_NAMES, repr(value)):
            self.fn(self.x, self.W, self.R, self.b, activation=value)

    def test_activation_names_are_case_sensitive(self, cell_vjp, engine):
        self.setup(cell_vjp, engine)
        with raises(ValueError, "activation", "'Tanh'", *ACTIVATION_NAMES):
            self.fn(self.x, self.W, self.R, self.b, activation="Tanh")


@pytest.mark.parametrize("cell_vjp", ENTRY_POINTS, ids=ENTRY_IDS)
@pytest.mark.parametrize("name", ["cuda", "Compiled", None, ""])
def test_unknown_engine(cell_vjp, name):
    cell, vjp = cell_vjp
    x, W, R, b, _ = make_problem(cell)
    with raises(ValueError, "engine", repr(name), "'auto'", "'compiled'", "'reference'"):
        entry(cell, vjp, name)(x, W, R, b)


@pytest.mark.parametrize("engine", ENGINES)
def test_gru_bias_layout_follows_reset_after(engine):
    x, W, R, _, _ = make_problem("gru")
    with raises(ValueError, "bias", (2, 3 * H), (3 * H,)):
        F.gru(x, W, R, np.zeros(3 * H), reset_after=True, engine=engine)
    with raises(ValueError, "bias", (3 * H,), (2, 3 * H)):
        F.gru(x, W, R, np.zeros((2, 3 * H)), reset_after=False, engine=engine)
    with raises(ValueError, "bias", (2, 3 * H), (3 * H,)):
        F.gru_vjp(x, W, R, np.zeros(3 * H), engine=engine)  # reset_after=True is the default
    with raises(ValueError, "bias", (3 * H,), (2, 3 * H)):
        F.gru_vjp(x, W, R, np.zeros((2, 3 * H)), reset_after=False, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_explain_validates_too(engine):
    x, W, R, b, _ = make_problem("lstm")
    with raises(ValueError, "x:", "3-D", (T, I)):
        F.explain("lstm", x[0], W, R, b, engine=engine)
    with raises(ValueError, "cell", "'lstm'", "'conv'"):
        F.explain("conv", x, W, R, b, engine=engine)
    assert "lstm-t5-b3-i4-h6" in F.explain("lstm", x, W, R, b, engine=engine)


# -------------------------------------------------------------------------------- bad gradients


def _bad_gradient_cases():
    outputs = (B, T, H)
    return {
        "d_outputs_long": (np.ones((B, T + 1, H)), None, ("d_outputs", outputs, (B, T + 1, H))),
        "d_outputs_time_major": (np.ones((T, B, H)), None, ("d_outputs", outputs, (T, B, H))),
        "d_outputs_flat": (np.ones(B * T * H), None, ("d_outputs", outputs, (B * T * H,))),
        "d_final_state_shape": (np.ones(outputs), "shape", ("d_final_states[0]", (B, H), (B, H + 1))),
        "d_final_state_broadcastable": (np.ones(outputs), "broadcast", ("d_final_states[0]", (B, H), (B, 1))),
        "d_final_states_count": (np.ones(outputs), "count", ("d_final_states", "got 3")),
    }


BAD_GRADIENTS = _bad_gradient_cases()


@pytest.mark.parametrize("engine", [
    "compiled", "reference"])
@pytest.mark.parametrize("case", list(BAD_GRADIENTS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_rejects_bad_gradients(cell, case, engine):
    x, W, R, b, states = make_problem(cell)
    n = CELLS[cell][2]
    _, _, backward = entry(cell, True, engine)(x, W, R, b, initial_state=states)
    d_outputs, how, parts = BAD_GRADIENTS[case]
    d_final = {None: None, "shape": [np.ones((B, H + 1))] + [None] * (n - 1),
               "broadcast": [np.ones((B, 1))] + [None] * (n - 1), "count": [None] * 3}[how]
    with raises(ValueError, *parts):
        backward(d_outputs, d_final)


# ---------------------------------------------------------------------- nasty inputs, never written

def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def nasty(a, kind, rng):
    """`a`'s values in a non-contiguous and/or read-only array of the layout `kind`."""
    if kind == "readonly":
        out = a.copy()
    elif kind == "strided":  # every axis steps by 2 through a bigger buffer full of junk
        big = rng.standard_normal(tuple(2 * n + 1 for n in a.shape)).astype(a.dtype)
        out = big[tuple(slice(1, 1 + 2 * n, 2) for n in a.shape)]
        out[...] = a
    elif kind == "fortran":
        out = np.asfortranarray(a)
    elif kind == "transposed":
        out = np.ascontiguousarray(a.T).T
    elif kind == "reversed":  # negative strides on every axis
        rev = tuple(slice(None, None, -1) for _ in a.shape)
        out = np.ascontiguousarray(a[rev])[rev]
    else:
        raise AssertionError(kind)
    assert np.array_equal(out, a)
    out.setflags(write=False)
    return out


def snapshot(arrays):
    """Copies of the whole buffers behind `arrays` (views included), to compare after the call."""
    return [(a, _root(a).copy()) for a in arrays]


def assert_unchanged(snap):
    for a, before in snap:
        root = _root(a)
        assert root.tobytes() == before.tobytes(), "an input was written to"
        assert not a.flags.writeable


NASTY_KINDS = ["readonly", "strided", "fortran", "transposed", "reversed"]


def full_options(cell, T=T, seed=1):
    """x, weights and every option on: holes in the mask, a fully masked row, dropout masks."""
    x, W, R, b, states = make_problem(cell, T=T, seed=seed)
    rng = np.random.default_rng(seed + 1)
    mask = np.ones((B, T), bool)
    mask[0, 1::2] = False  # holes
    mask[1, :] = False  # fully masked row
    mask[2, :2] = False  # left padding
    dm = (rng.random((B, I)) > 0.3) / 0.7
    rdm = (rng.random((B, H)) > 0.3) / 0.7
    return x, W, R, b, states, dict(mask=mask, dropout_mask=dm, recurrent_dropout_mask=rdm)


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("kind", NASTY_KINDS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_nasty_inputs_give_reference_results_and_are_never_written(cell, kind, time_major):
    x, W, R, b, states, opts = full_options(cell)
    if time_major:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    common = dict(go_backwards=True, time_major=time_major, zero_output_for_mask=False)
    want_out, want_states, want_bwd = oracle(cell, vjp=True)(x, W, R, b, initial_state=states, **opts, **common)
    rng = np.random.default_rng(7)
    d_out = rng.standard_normal(want_out.shape)
    d_fin = [rng.standard_normal((B, H)) for _ in states]
    want_grads = want_bwd(d_out, d_fin)

    nx, nW, nR, nb = (nasty(a, kind, rng) for a in (x, W, R, b))
    nstates = [nasty(s, kind, rng) for s in states]
    nopts = {k: nasty(v, kind, rng) for k, v in opts.items()}
    nd_out, nd_fin = nasty(d_out, kind, rng), [nasty(d, kind, rng) for d in d_fin]
    snap = snapshot([nx, nW, nR, nb, *nstates, *nopts.values(), nd_out, *nd_fin])

    out, fin = entry(cell, False, "compiled")(nx, nW, nR, nb, initial_state=nstates, **nopts, **common)
    np.testing.assert_allclose(out, want_out, rtol=0, atol=1e-10)
    for got, want in zip(fin, want_states):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)

    out, fin, backward = entry(cell, True, "compiled")(nx, nW, nR, nb, initial_state=nstates, **nopts, **common)
    np.testing.assert_allclose(out, want_out, rtol=0, atol=1e-10)
    out[...] = np.nan  # the caller owns the outputs: scribbling on them must not change the gradients
    for f in fin:
        f[...] = np.nan
    for _ in range(2):  # backward can run twice, with the same result
        grads = backward(nd_out, nd_fin)
        for key in ("x", "kernel", "recurrent_kernel", "bias"):
            np.testing.assert_allclose(grads[key], want_grads[key], rtol=1e-10, atol=1e-10, err_msg=key)
        for got, want in zip(grads["initial_state"], want_grads["initial_state"]):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert_unchanged(snap)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_outputs_do_not_alias_inputs(cell, engine):
    x, W, R, b, states, opts = full_options(cell)
    ins = [x, W, R, b, *states, *opts.values()]
    out, fin, backward = entry(cell, True, engine)(x, W, R, b, initial_state=states, **opts)
    grads = backward(np.ones_like(out), [np.ones_like(s) for s in fin])
    outs = [out, *fin, grads["x"], grads["kernel"], grads["recurrent_kernel"], grads["bias"],
            *grads["initial_state"]]
    for o in outs:
        assert not any(np.shares_memory(o, a) for a in ins)


# ----------------------------------------------------------------------------------- edge shapes

def check_against_reference(cell, x, W, R, b, atol=1e-10, engine="compiled", **kwargs):
    want_out, want_states = oracle(cell)(x, W, R, b, **kwargs)
    out, fin = entry(cell, False, engine)(x, W, R, b, **kwargs)
    assert out.shape == want_out.shape and out.dtype == want_out.dtype
    np.testing.assert_allclose(out, want_out, rtol=0, atol=atol)
    assert len(fin) == len(want_states)
    for got, want in zip(fin, want_states):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    return out, fin


@pytest.mark.parametrize("shape", [(1, B), (T, 1), (1, 1)], ids=["T1", "B1", "T1B1"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_t1_b1(cell, shape):
    t, bsz = shape
    x, W, R, b, states, opts = full_options(cell, T=t)
    x, states = x[:bsz], [s[:bsz] for s in states]
    opts = {k: v[:bsz] for k, v in opts.items()}
    for go_backwards in (False, True):
        check_against_reference(cell, x, W, R, b, initial_state=states, go_backwards=go_backwards, **opts)
    # gradients too
    want_out, _, want_bwd = oracle(cell, True)(x, W, R, b, initial_state=states, **opts)
    _, _, backward = entry(cell, True, "compiled")(x, W, R, b, initial_state=states, **opts)
    d = np.random.default_rng(3).standard_normal(want_out.shape)
    got, want = backward(d), want_bwd(d)
    for key in ("x", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-10, err_msg=key)


ENGINES_EMPTY = ["compiled", "reference"]


@pytest.mark.parametrize("engine", ENGINES_EMPTY)
@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_zero_timesteps_return_the_initial_state(cell, time_major, engine):
    x, W, R, b, states = make_problem(cell, T=0)
    if time_major:
        x = x.transpose(1, 0, 2)
    out, fin = entry(cell, False, engine)(x, W, R, b, initial_state=states, time_major=time_major,
                                          mask=np.zeros((B, 0), bool))
    assert out.shape == ((0, B, H) if time_major else (B, 0, H)) and out.dtype == x.dtype
    for got, want in zip(fin, states):
        assert np.array_equal(got, want) and not np.shares_memory(got, want)
    out, fin, backward = entry(cell, True, engine)(x, W, R, b, initial_state=states, time_major=time_major)
    d_fin = [np.full((B, H), k + 1.0) for k in range(len(states))]
    grads = backward(np.zeros(out.shape), d_fin)
    assert grads["x"].shape == x.shape
    assert not grads["kernel"].any() and not grads["recurrent_kernel"].any() and not grads["bias"].any()
    for got, want in zip(grads["initial_state"], d_fin):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("engine", ENGINES_EMPTY)
@pytest.mark.parametrize("cell", list(CELLS))
def test_empty_batch(cell, engine):
    x, W, R, b, states = make_problem(cell, B=0)
    out, fin = entry(cell, False, engine)(x, W, R, b, initial_state=states, mask=np.ones((0, T), bool))
    assert out.shape == (0, T, H) and [s.shape for s in fin] == [(0, H)] * len(states)
    out, fin, backward = entry(cell, True, engine)(x, W, R, b)
    grads = backward(np.zeros(out.shape))
    assert grads["x"].shape == (0, T, I) and not grads["kernel"].any()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_integer_mask_equals_bool_mask(cell, engine):
    x, W, R, b, states, opts = full_options(cell)
    bool_mask = opts.pop("mask")
    want = entry(cell, False, engine)(x, W, R, b, initial_state=states, mask=bool_mask, **opts)
    for int_mask in (bool_mask.astype(np.int64), bool_mask.astype(np.uint8), bool_mask.astype(np.int8).tolist()):
        got = entry(cell, False, engine)(x, W, R, b, initial_state=states, mask=int_mask, **opts)
        np.testing.assert_array_equal(got[0], want[0])
        for g, w in zip(got[1], want[1]):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_nested_lists_are_accepted(cell, engine):
    x, W, R, b, states = make_problem(cell)
    want = entry(cell, False, engine)(x, W, R, b, initial_state=states)
    got = entry(cell, False, engine)(x.tolist(), W.tolist(), R.tolist(), b.tolist(),
                                     initial_state=[s.tolist() for s in states])
    assert got[0].dtype == np.float64
    np.testing.assert_array_equal(got[0], want[0])
    for g, w in zip(got[1], want[1]):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_compute_dtype_is_the_dtype_of_x(cell, engine):
    x, W, R, b, states, opts = full_options(cell)
    # float32 weights, states and masks with float64 x: converted to float64 (exact: float32 -> float64)
    lo = [a.astype(np.float32) for a in (W, R, b)]
    lo_states = [s.astype(np.float32) for s in states]
    lo_opts = dict(opts, dropout_mask=opts["dropout_mask"].astype(np.float32),
                   recurrent_dropout_mask=opts["recurrent_dropout_mask"].astype(np.float32))
    up = lambda a: a.astype(np.float64)  # noqa: E731
    out, fin = check_against_reference(
        cell, x, *(up(a) for a in lo), engine=engine, initial_state=[up(s) for s in lo_states],
        **{k: (up(v) if v.dtype.kind == "f" else v) for k, v in lo_opts.items()})
    out2, fin2, backward = entry(cell, True, engine)(x, *lo, initial_state=lo_states, **lo_opts)
    np.testing.assert_array_equal(out2, out)
    assert out2.dtype == np.float64 and all(s.dtype == np.float64 for s in fin2)
    grads = backward(np.ones_like(out2))
    assert all(grads[k].dtype == np.float64 for k in ("x", "kernel", "recurrent_kernel", "bias"))

    # float64 weights with float32 x: everything float32
    x32 = x.astype(np.float32)
    out, fin, backward = entry(cell, True, engine)(x32, W, R, b, initial_state=states, **opts)
    assert out.dtype == np.float32 and all(s.dtype == np.float32 for s in fin)
    grads = backward(np.ones(out.shape, np.float64))
    assert all(grads[k].dtype == np.float32 for k in ("x", "kernel", "recurrent_kernel", "bias"))
    assert all(g.dtype == np.float32 for g in grads["initial_state"])
    want, _ = oracle(cell)(x32, W, R, b, initial_state=states, **opts)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_byte_swapped_input(cell, engine):
    x, W, R, b, states = make_problem(cell)
    swapped = [a.astype(a.dtype.newbyteorder(">")) for a in (x, W, R, b)]
    out, fin = entry(cell, False, engine)(*swapped, initial_state=states)
    assert out.dtype == np.float64 and out.dtype.isnative
    want, _ = entry(cell, False, engine)(x, W, R, b, initial_state=states)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_nan_in_x_propagates(cell, engine, dtype):
    x, W, R, b, states = make_problem(cell, dtype=dtype)
    clean = entry(cell, False, engine)(x, W, R, b)[0]
    x = x.copy()
    x[0, 2, 1] = np.nan
    with np.errstate(invalid="ignore"):
        out, fin = entry(cell, False, engine)(x, W, R, b)
        assert np.isnan(out[0, 2:]).all() and np.isfinite(out[0, :2]).all()
        assert all(np.isnan(s[0]).all() for s in fin)
        np.testing.assert_array_equal(out[1:], clean[1:])  # other rows are untouched
        out, fin, backward = entry(cell, True, engine)(x, W, R, b)
        grads = backward(np.ones_like(out))
    assert np.isnan(grads["x"][0, :3]).any() and np.isfinite(grads["x"][1:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("which", ["activation", "recurrent_activation"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_nan_propagates_through_every_activation(cell, which, activation, dtype):
    """NaN in x gives NaN exactly where the reference has NaN (torch and Keras keep NaN through relu)."""
    if cell == "simple_rnn" and which == "recurrent_activation":
        pytest.skip("SimpleRNN has no recurrent_activation")
    x, W, R, b, _ = make_problem(cell, B=2, T=4, I=3, H=10, dtype=dtype)
    x[0, 1, 0] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        want, _ = oracle(cell)(x, W, R, b, **{which: activation})
        got, _ = entry(cell, False, "compiled")(x, W, R, b, **{which: activation})
    assert np.isnan(want[0, 1:]).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-10)
