"""fastrnn.layers beyond Keras parity: bad calls raise clear errors; user cells (flat and the guide's
NestedCell with nested inputs and multi-dimensional states) run in RNN's generic loop and equal NumPy
loops written here; explain() and engine= ("compiled" raises for what it cannot run, "reference" equals
"auto")."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fastrnn import _dispatch  # noqa: E402
from fastrnn import layers as L  # noqa: E402

ATOL = 2e-5


def data(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def close(actual, expected, atol=ATOL, what="output"):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))) if actual.size else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol:.1e}"


def mask_patterns(B=4, T=6):
    m = np.ones((B, T), bool)
    m[0, 4:] = False  # right padding
    m[1, :2] = False  # left padding
    m[2, [1, 3]] = False  # holes
    m[3] = False  # fully masked
    return m


# --------------------------------------------------------------------------------------- bad calls
@pytest.fixture(scope="module")
def built():
    x = data(3, 5, 17, seed=1)
    layer = L.LSTM(8)
    layer(x)
    return layer, x


def test_wrong_input_rank(built):
    layer, _ = built
    with pytest.raises(ValueError, match=r"rank 3.*\(3, 5\)"):
        L.LSTM(8)(np.zeros((3, 5), np.float32))  # on build
    with pytest.raises(ValueError, match=r"rank 3.*\(3, 5\)"):
        layer(np.zeros((3, 5), np.float32))  # after build
    with pytest.raises(ValueError, match=r"3-D"):
        layer(np.zeros((3, 5, 17, 1), np.float32))


def test_feature_size_changes_after_build(built):
    layer, _ = built
    with pytest.raises(ValueError) as info:
        layer(np.zeros((3, 5, 9), np.float32))
    assert "9" in str(info.value) and "17" in str(info.value)


def test_mask_shape_mismatch(built):
    layer, x = built
    for shape in [(3, 4), (5, 3), (3,), (3, 5, 1)]:
        with pytest.raises(ValueError, match=r"mask.*\(3, 5\)"):
            layer(x, mask=np.ones(shape, bool))


def test_initial_state_wrong_count_or_shape(built):
    layer, x = built
    h = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"initial_state.*expected 2.*got 1"):
        layer(x, initial_state=[h])
    with pytest.raises(ValueError, match=r"initial_state.*expected 2.*got 3"):
        layer(x, initial_state=[h, h, h])
    with pytest.raises(ValueError, match=r"initial_state\[1\].*\(3, 8\).*\(3, 7\)"):
        layer(x, initial_state=[h, np.zeros((3, 7), np.float32)])
    with pytest.raises(ValueError, match=r"initial_state\[0\].*\(3, 8\).*\(2, 8\)"):
        layer(x, initial_state=[h[:2], h[:2]])
    stacked = L.RNN([L.LSTMCell(3), L.GRUCell(4)])
    with pytest.raises(ValueError, match=r"initial_state.*expected 3.*got 2"):
        stacked(x, initial_state=[np.zeros((3, 3), np.float32)] * 2)


def test_merge_mode_unknown():
    with pytest.raises(ValueError, match=r"merge_mode.*'max'"):
        L.Bidirectional(L.LSTM(3), merge_mode="max")
    with pytest.raises(ValueError, match=r"RNN layer"):
        L.Bidirectional(L.LSTMCell(3))


def test_stateful_batch_change():
    x = data(3, 5, 17, seed=2)
    layer = L.GRU(8, stateful=True)
    layer(x)
    with pytest.raises(ValueError, match=r"batch size.*3.*2"):
        layer(x[:2])
    layer(x)  # the right batch size still works


def test_reset_states_on_non_stateful_layer(built):
    layer, _ = built
    with pytest.raises((AttributeError, ValueError, RuntimeError), match="stateful"):
        layer.reset_states()


def test_set_weights_wrong_count_or_shape(built):
    layer, _ = built
    w = layer.get_weights()
    with pytest.raises(ValueError, match=r"expected 3 arrays.*got 2"):
        layer.set_weights(w[:2])
    with pytest.raises(ValueError, match=r"kernel.*\(17, 32\).*\(32, 17\)"):
        layer.set_weights([w[0].T, w[1], w[2]])
    with pytest.raises(ValueError, match=r"bias.*\(32,\).*\(5,\)"):
        layer.set_weights([w[0], w[1], np.zeros(5)])
    np.testing.assert_array_equal(layer.get_weights()[0], w[0])  # a refused set_weights changed nothing...
    bidi = L.Bidirectional(L.SimpleRNN(4))
    bidi(data(2, 3, 5))
    with pytest.raises(ValueError, match=r"expected 6 arrays.*got 3"):
        bidi.set_weights(bidi.get_weights()[:3])


def test_set_weights_refused_is_atomic():
    layer = L.LSTM(8)
    layer(data(3, 5, 17, seed=1))
    w = layer.get_weights()
    with pytest.raises(ValueError):
        layer.set_weights([w[0] + 1, w[1], np.zeros(5)])
    np.testing.assert_array_equal(layer.get_weights()[0], w[0])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="units"):
        L.LSTM(0)
    with pytest.raises(ValueError, match="dropout"):
        L.GRU(3, dropout=1.0)
    with pytest.raises(ValueError, match="activation.*swishy"):
        L.SimpleRNN(3, activation="swishy")
    with pytest.raises(ValueError, match="engine"):
        L.LSTM(3, engine="gpu")
    with pytest.raises(TypeError, match="foo"):
        L.LSTM(3, foo=1)
    with pytest.raises(ValueError, match="state_size"):
        L.RNN(object())
    with pytest.raises(ValueError, match="count_params"):
        L.GRU(3).count_params()


def test_zero_time_steps_raise_clear_error():
    with pytest.raises(ValueError, match="time ?step"):
        L.LSTM(3)(np.zeros((2, 0, 4), np.float32))


# -------------------------------------------------------------------------------------- user cells
class MinimalCell(L.Layer):
    """Keras's docs example cell, in NumPy, with a second state and an output that is not a state:
    h = x @ W + tanh(h_prev @ U); c = c_prev + h; output = 2 * h + c."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = [units, units]
        self.output_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight((input_shape[-1], self.units), "glorot_uniform", "kernel")
        self.recurrent_kernel = self.add_weight((self.units, self.units), "orthogonal", "recurrent_kernel")
        self.built = True

    def call(self, inputs, states):
        h_prev, c_prev = states
        h = inputs @ self.kernel + np.tanh(h_prev @ self.recurrent_kernel)
        c = c_prev + h
        return 2 * h + c, [h, c]


def minimal_loop(x, W, U, mask=None, go_backwards=False, zero_output=False, init=None):
    """Hand-written loop with Keras's mask rule: a masked step keeps the states; its output repeats the
    previous output (zeros before any) or is zero with zero_output_for_mask."""
    B, T, _ = x.shape
    H = W.shape[1]
    h, c = (np.zeros((B, H)), np.zeros((B, H))) if init is None else init
    prev = np.zeros((B, H))
    outs = []
    for t in (range(T - 1, -1, -1) if go_backwards else range(T)):
        h_new = x[:, t] @ W + np.tanh(h @ U)
        c_new = c + h_new
        y = 2 * h_new + c_new
        if mask is not None:
            m = mask[:, t][:, None]
            h_new, c_new = np.where(m, h_new, h), np.where(m, c_new, c)
            y = np.where(m, y, 0.0 if zero_output else prev)
        h, c, prev = h_new, c_new, y
        outs.append(y)
    return np.stack(outs, 1), h, c


@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("zero_output", [False, True], ids=["repeat", "zeros"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_user_cell_generic_loop_equals_numpy(go_backwards, zero_output, masked):
    x = data(4, 6, 5, seed=3)
    mask = mask_patterns() if masked else None
    cell = MinimalCell(7)
    rnn = L.RNN(cell, return_sequences=True, return_state=True, go_backwards=go_backwards,
                zero_output_for_mask=zero_output)
    out, h, c = rnn(x, mask=mask)
    ys, h_ref, c_ref = minimal_loop(x, cell.kernel, cell.recurrent_kernel, mask, go_backwards, zero_output)
    close(out, ys)
    close(h, h_ref, what="h")
    close(c, c_ref, what="c")
    assert _dispatch.rnn_layer_path(cell, x)[0] == "loop"
    # the last output alone, and an initial state
    init = [data(4, 7, seed=4), data(4, 7, seed=5)]
    last = L.RNN(cell, go_backwards=go_backwards, zero_output_for_mask=zero_output)(x, mask=mask, initial_state=init)
    ys, _, _ = minimal_loop(x, cell.kernel, cell.recurrent_kernel, mask, go_backwards, zero_output, init)
    close(last, ys[:, -1])
    assert rnn.count_params() == 5 * 7 + 7 * 7
    assert len(rnn.weights) == 2


def test_user_cell_stateful_and_in_a_stack():
    x = data(4, 6, 5, seed=6)
    cell = MinimalCell(4)
    rnn = L.RNN(cell, stateful=True)
    rnn(x[:, :3])
    rnn(x[:, 3:])
    _, h, c = minimal_loop(x, cell.kernel, cell.recurrent_kernel)
    close(rnn.states[0], h)
    close(rnn.states[1], c)
    rnn.reset_states(rows=[1])
    np.testing.assert_array_equal(rnn.states[0][1], 0)
    close(rnn.states[0][[0, 2, 3]], h[[0, 2, 3]])

    # a user cell under a built-in one in StackedRNNCells: the generic loop runs the stack step by step
    lstm_cell = L.LSTMCell(6)
    stack = L.RNN([lstm_cell, MinimalCell(4)], return_sequences=True, return_state=True)
    m = mask_patterns(4, 6)
    out, (h1, c1), (h2, c2) = stack(x, mask=m)
    assert _dispatch.rnn_layer_path(stack.cell, x)[0] == "loop"
    first = L.LSTM(6, return_sequences=True, return_state=True)
    first(x)
    first.set_weights(lstm_cell.get_weights())
    seq1, s1h, s1c = first(x, mask=m)
    second = stack.cell.cells[1]
    ys, h_ref, c_ref = minimal_loop(np.asarray(seq1), second.kernel, second.recurrent_kernel, m)
    close(out, ys)
    close(h1, s1h)
    close(c1, s1c)
    close(h2, h_ref)
    close(c2, c_ref)


# ------------------------------------------------------------------------------- the guide's NestedCell
class NestedCell(L.Layer):
    """The guide's NestedCell: inputs ((B, i1), (B, i2, i3)), states [(unit_1,), (unit_2, unit_3)]."""

    def __init__(self, unit_1, unit_2, unit_3, **kwargs):
        super().__init__(**kwargs)
        self.unit_1, self.unit_2, self.unit_3 = unit_1, unit_2, unit_3
        self.state_size = [(unit_1,), (unit_2, unit_3)]
        self.output_size = [(unit_1,), (unit_2, unit_3)]

    def build(self, input_shapes):
        # expect input_shape to contain 2 items, [(batch, i1), (batch, i2, i3)]
        i1 = input_shapes[0][1]
        i2, i3 = input_shapes[1][1], input_shapes[1][2]
        self.kernel_1 = self.add_weight((i1, self.unit_1), "uniform", "kernel_1")
        self.kernel_2_3 = self.add_weight((i2, i3, self.unit_2, self.unit_3), "uniform", "kernel_2_3")
        self.built = True

    def call(self, inputs, states):
        input_1, input_2 = inputs
        s1, s2 = states
        output_1 = input_1 @ self.kernel_1
        output_2_3 = np.einsum("bij,ijkl->bkl", input_2, self.kernel_2_3)
        return (output_1, output_2_3), (s1 + output_1, s2 + output_2_3)

    def get_config(self):
        return {"unit_1": self.unit_1, "unit_2": self.unit_2, "unit_3": self.unit_3}


class NestedCellWithInitialState(NestedCell):
    def get_initial_state(self, batch_size=None):
        return [np.zeros((batch_size, self.unit_1), np.float32),
                np.zeros((batch_size, self.unit_2, self.unit_3), np.float32)]


def nested_loop(x1, x2, k1, k23, mask=None):
    """Hand-written NestedCell loop: states accumulate the per-step products (masked steps skip)."""
    B, T = x1.shape[:2]
    s1 = np.zeros((B, k1.shape[1]))
    s2 = np.zeros((B,) + k23.shape[2:])
    y1, y2 = np.zeros_like(s1), np.zeros_like(s2)
    seq1, seq2 = [], []
    for t in range(T):
        o1 = x1[:, t] @ k1
        o2 = np.einsum("bij,ijkl->bkl", x2[:, t], k23)
        m = np.ones(B, bool) if mask is None else mask[:, t]
        s1, s2 = np.where(m[:, None], s1 + o1, s1), np.where(m[:, None, None], s2 + o2, s2)
        o1, o2 = np.where(m[:, None], o1, y1), np.where(m[:, None, None], o2, y2)
        y1, y2 = o1, o2
        seq1.append(o1)
        seq2.append(o2)
    return (np.stack(seq1, 1), np.stack(seq2, 1)), (s1, s2)


# the guide's sizes scaled down (unit 10/20/30, i1 32, i2 64, i3 32 -> smaller, same structure)
U1, U2, U3, I1, I2, I3, B, T = 10, 6, 5, 12, 7, 4, 4, 5


def nested_inputs():
    return data(B, T, I1, seed=7), data(B, T, I2, I3, seed=8)


@pytest.mark.parametrize("cell_class", [
    NestedCell,
    NestedCellWithInitialState,
], ids=["guide", "with_get_initial_state"])
def test_nested_cell_shapes_and_values(cell_class):
    x1, x2 = nested_inputs()
    cell = cell_class(U1, U2, U3)
    rnn = L.RNN(cell)
    out = rnn((x1, x2))
    # the guide: outputs (batch, unit_1) and (batch, unit_2, unit_3)
    assert [np.shape(o) for o in out] == [(B, U1), (B, U2, U3)]
    assert [w.shape for w in rnn.weights] == [(I1, U1), (I2, I3, U2, U3)]
    assert rnn.count_params() == I1 * U1 + I2 * I3 * U2 * U3
    (seq1, seq2), (s1, s2) = nested_loop(x1, x2, cell.kernel_1, cell.kernel_2_3)
    close(out[0], seq1[:, -1], atol=1e-4)
    close(out[1], seq2[:, -1], atol=1e-4)

    full = L.RNN(cell, return_sequences=True, return_state=True)
    m = mask_patterns(B, T)
    (o1, o2), st1, st2 = full((x1, x2), mask=m)
    (seq1, seq2), (s1, s2) = nested_loop(x1, x2, cell.kernel_1, cell.kernel_2_3, m)
    assert o1.shape == (B, T, U1) and o2.shape == (B, T, U2, U3)
    assert st1.shape == (B, U1) and st2.shape == (B, U2, U3)
    for a, b, what in ((o1, seq1, "out1"), (o2, seq2, "out2"), (st1, s1, "state1"), (st2, s2, "state2")):
        close(a, b, atol=1e-4, what=what)
    # initial_state as nested arrays of the right shapes
    init = [data(B, U1, seed=9), data(B, U2, U3, seed=10)]
    _, st1, st2 = full((x1, x2), initial_state=init)
    (_, _), (s1, s2) = nested_loop(x1, x2, cell.kernel_1, cell.kernel_2_3)
    close(st1, s1 + init[0], atol=1e-4)
    close(st2, s2 + init[1], atol=1e-4)
    with pytest.raises(ValueError, match=r"initial_state\[1\]"):
        full((x1, x2), initial_state=[init[0], init[1][:, :, :2]])


def test_nested_cell_compute_output_shape():
    rnn = L.RNN(NestedCellWithInitialState(U1, U2, U3))
    shape = rnn.compute_output_shape(((None, T, I1), (None, T, I2, I3)))
    assert [tuple(s) for s in shape] == [(None, U1), (None, U2, U3)]


def test_nested_cell_runs_in_the_generic_loop():
    x1, x2 = nested_inputs()
    rnn = L.RNN(NestedCellWithInitialState(U1, U2, U3))
    text = rnn.explain((x1, x2))
    assert "generic Python loop" in text and "user cell" in text and "nested inputs" in text
    with pytest.raises(ValueError, match="compiled"):
        L.RNN(NestedCellWithInitialState(U1, U2, U3), engine="compiled")((x1, x2))


# ------------------------------------------------------------------------------- explain and engines
def test_explain_names_the_path():
    x = data(2, 3, 5, seed=11)
    cell = MinimalCell(4)
    user = L.RNN(cell)
    assert "generic Python loop" in user.explain(x) and "MinimalCell" in user.explain(x)
    with pytest.raises(ValueError, match="compiled"):
        L.RNN(MinimalCell(4), engine="compiled")(x)
    fused = L.LSTM(4)
    assert "compiled kernels" in fused.explain(x)
    assert _dispatch.rnn_layer_path(fused.cell, x) == ("fused", ())
    assert "reference" in L.LSTM(4, engine="reference").explain(x)


@pytest.mark.parametrize("layer_class,kwargs", [
    (L.SimpleRNN, {"activation": np.tanh}),
    (L.LSTM, {"activation": np.tanh}),
    (L.GRU, {"recurrent_activation": lambda z: 1 / (1 + np.exp(-z))}),
], ids=["simple_rnn", "lstm", "gru"])
def test_callable_activation_runs_the_loop_and_equals_the_name(layer_class, kwargs):
    x = data(4, 5, 6, seed=12)
    m = mask_patterns(4, 5)
    named = layer_class(4, return_sequences=True, return_state=True)
    named(x)
    py = layer_class(4, return_sequences=True, return_state=True, **kwargs)
    py(x)
    py.set_weights(named.get_weights())
    text = py.explain(x)
    assert "generic Python loop" in text and "callable activation" in text
    with pytest.raises(ValueError, match="compiled"):
        layer_class(4, engine="compiled", **kwargs)(x)
    for a, b in zip(py(x, mask=m), named(x, mask=m)):
        close(a, b)


@pytest.mark.parametrize("layer_class,kwargs", [
    (L.LSTM, {}), (L.GRU, {}), (L.GRU, {"reset_after": False}), (L.SimpleRNN, {"activation": "relu"}),
], ids=["lstm", "gru", "gru_rb", "simple_rnn"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
def test_engine_reference_equals_auto(layer_class, kwargs, go_backwards):
    x = data(4, 6, 9, seed=13)
    m = mask_patterns()
    auto = layer_class(5, return_sequences=True, return_state=True, go_backwards=go_backwards, **kwargs)
    auto(x)
    ref = layer_class(5, return_sequences=True, return_state=True, go_backwards=go_backwards, engine="reference",
                      **kwargs)
    ref(x)
    ref.set_weights(auto.get_weights())
    for mask in (None, m):
        for a, b in zip(ref(x, mask=mask), auto(x, mask=mask)):
            close(a, b, atol=1e-5)
    stacked_ref = L.RNN([L.LSTMCell(5), L.GRUCell(3)], engine="reference", return_sequences=True)
    stacked_auto = L.RNN([L.LSTMCell(5), L.GRUCell(3)], return_sequences=True)
    stacked_auto(x)
    stacked_ref(x)
    stacked_ref.set_weights(stacked_auto.get_weights())
    close(stacked_ref(x, mask=m), stacked_auto(x, mask=m), atol=1e-5)


def test_keras_training_only_arguments():
    """Regularizers/constraints: None accepted (Keras's default), anything else refused clearly."""
    L.LSTM(3, kernel_regularizer=None, recurrent_constraint=None, use_cudnn="auto")
    with pytest.raises(ValueError, match="kernel_regularizer.*training"):
        L.GRU(3, kernel_regularizer="l2")
    with pytest.raises(ValueError, match="bias_constraint"):
        L.SimpleRNNCell(3, bias_constraint="non_neg")
