"""fastrnn.keras.RNN: the guide's NestedCell (nested inputs, outputs and states of different ranks) in Keras 3
models (fit, save/reload, stateful), its generic loop against Keras's own RNN layer for flat cells, its
fast path for Keras's stock cells, and its nested results against fastrnn.layers.RNN (NumPy) and closed forms.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import keras  # noqa: E402
from keras import ops  # noqa: E402

import fastrnn.keras as fk  # noqa: E402
from fastrnn import layers as np_layers  # noqa: E402

assert keras.backend.backend() == "torch", "these tests run Keras with KERAS_BACKEND=torch"

B, T = 4, 6
U1, U2, U3 = 3, 4, 5        # unit_1, unit_2, unit_3
I1, I2, I3 = 4, 3, 2        # i1, i2, i3
MASK = np.array([[0, 0, 1, 1, 1, 1],    # left padding
                 [1, 0, 1, 0, 1, 1],    # holes
                 [1, 1, 1, 1, 0, 0],    # right padding
                 [0, 0, 0, 0, 0, 0]], dtype=bool)  # nothing
TOL = dict(rtol=2e-5, atol=2e-5)


@keras.saving.register_keras_serializable(package="fastrnn_tests")
class NestedCell(keras.layers.Layer):
    """The guide's NestedCell in Keras 3 (keras.ops; state and output sizes as shape lists)."""

    def __init__(self, unit_1, unit_2, unit_3, **kwargs):
        super().__init__(**kwargs)
        self.unit_1, self.unit_2, self.unit_3 = unit_1, unit_2, unit_3
        self.state_size = [[unit_1], [unit_2, unit_3]]
        self.output_size = [[unit_1], [unit_2, unit_3]]

    def build(self, input_shapes):
        i1, i2, i3 = input_shapes[0][1], input_shapes[1][1], input_shapes[1][2]
        self.kernel_1 = self.add_weight(shape=(i1, self.unit_1), initializer="uniform", name="kernel_1")
        self.kernel_2_3 = self.add_weight(shape=(i2, i3, self.unit_2, self.unit_3), initializer="uniform",
                                          name="kernel_2_3")

    def call(self, inputs, states):
        input_1, input_2 = inputs
        s1, s2 = states
        output_1 = ops.matmul(input_1, self.kernel_1)
        output_2_3 = ops.einsum("bij,ijkl->bkl", input_2, self.kernel_2_3)
        return (output_1, output_2_3), (s1 + output_1, s2 + output_2_3)

    def get_config(self):
        return {**super().get_config(), "unit_1": self.unit_1, "unit_2": self.unit_2, "unit_3": self.unit_3}


class NumpyNestedCell(np_layers.Layer):
    """The same cell for fastrnn.layers.RNN (NumPy), the oracle: weights copied from a NestedCell."""

    def __init__(self, keras_cell):
        super().__init__()
        self.state_size = [(keras_cell.unit_1,), (keras_cell.unit_2, keras_cell.unit_3)]
        self.output_size = [(keras_cell.unit_1,), (keras_cell.unit_2, keras_cell.unit_3)]
        self.k1 = keras.ops.convert_to_numpy(keras_cell.kernel_1).astype(np.float64)
        self.k23 = keras.ops.convert_to_numpy(keras_cell.kernel_2_3).astype(np.float64)

    def build(self, input_shapes):
        self.built = True

    def call(self, inputs, states):
        (x1, x2), (s1, s2) = inputs, states
        o1, o23 = x1 @ self.k1, np.einsum("bij,ijkl->bkl", x2, self.k23)
        return (o1, o23), (s1 + o1, s2 + o23)


class MinimalRNNCell(keras.layers.Layer):
    """Keras's docstring example of a custom cell (flat input, one state), with a tanh."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units), name="recurrent_kernel")

    def call(self, inputs, states):
        output = ops.tanh(ops.matmul(inputs, self.kernel) + ops.matmul(states[0], self.recurrent_kernel))
        return output, [output]


def _nested_data(seed=0, batch=B, steps=T):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, steps, I1)).astype(np.float32),
            rng.normal(size=(batch, steps, I2, I3)).astype(np.float32))


def _nested_cell(seed=1):
    cell = NestedCell(U1, U2, U3)
    cell.build([(None, I1), (None, I2, I3)])
    rng = np.random.default_rng(seed)
    cell.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in cell.get_weights()])
    return cell


def _loss(outputs):
    g = torch.Generator().manual_seed(123)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outputs)


# ------------------------------------------------------------------------------------------------ Keras 3


def test_keras3_own_rnn_cannot_run_the_nested_cell():
    """Why fastrnn.keras.RNN exists: Keras 3's RNN.build takes the inputs as one shape (the cell is built with
    a mangled step shape), RNN.call slices ``sequences[:, 0, :]`` and RNN.compute_output_shape insists on an
    int output_size.  If a Keras release fixes these, this test says so."""
    x = _nested_data()
    with pytest.raises((IndexError, TypeError)):
        keras.layers.RNN(NestedCell(U1, U2, U3))(x)  # build: cell.build(((B, T, I1),)) -> IndexError
    with pytest.raises((AttributeError, TypeError)):
        keras.layers.RNN(_nested_cell())(x)  # call: tuple has no .shape
    with pytest.raises(ValueError, match="output_size"):
        keras.layers.RNN(_nested_cell())((keras.Input((None, I1)), keras.Input((None, I2, I3))))


# ---------------------------------------------------------------------------------------- nested results


@pytest.mark.parametrize("options", [
    dict(),
    dict(return_sequences=True, return_state=True),
    dict(return_sequences=True, return_state=True, go_backwards=True, _mask=True),
    dict(return_sequences=True, return_state=True, zero_output_for_mask=True, _mask=True, _initial_state=True),
    dict(return_state=True, go_backwards=True, _mask=True, _initial_state=True),
], ids=["last", "sequences+state", "mask+backwards", "mask+zero_output+initial_state", "mask-last+backwards"])
def test_nested_results_match_numpy_layer(options):
    """Outputs and states (nested, ranks 2 and 3) equal fastrnn.layers.RNN's NumPy loop on the same weights,
    and the final states equal the closed form: initial state + sum over unmasked steps."""
    options = dict(options)
    use_mask, use_state = options.pop("_mask", False), options.pop("_initial_state", False)
    cell = _nested_cell()
    x1, x2 = _nested_data()
    kwargs, np_kwargs = {}, {}
    if use_mask:
        kwargs["mask"], np_kwargs["mask"] = torch.tensor(MASK), MASK
    init = [np.zeros((B, U1), np.float32), np.zeros((B, U2, U3), np.float32)]
    if use_state:
        rng = np.random.default_rng(7)
        init = [rng.normal(size=s.shape).astype(np.float32) for s in init]
        kwargs["initial_state"] = [torch.tensor(s) for s in init]
        np_kwargs["initial_state"] = [s.astype(np.float64) for s in init]
    got = fk.RNN(cell, **options)((torch.tensor(x1), torch.tensor(x2)), **kwargs)
    oracle = np_layers.RNN(NumpyNestedCell(cell), dtype="float64", **options)
    expected = oracle((x1.astype(np.float64), x2.astype(np.float64)), **np_kwargs)
    got_flat, expected_flat = keras.tree.flatten(got), keras.tree.flatten(expected)
    assert len(got_flat) == len(expected_flat) == (4 if options.get("return_state") else 2)
    for g, e in zip(got_flat, expected_flat):
        assert tuple(g.shape) == e.shape
        np.testing.assert_allclose(keras.ops.convert_to_numpy(g), e, **TOL)
    if options.get("return_state"):
        valid = MASK if use_mask else np.ones((B, T), bool)
        k1, k23 = (keras.ops.convert_to_numpy(w) for w in (cell.kernel_1, cell.kernel_2_3))
        s1 = init[0] + np.einsum("bt,bti,ij->bj", valid, x1, k1)
        s2 = init[1] + np.einsum("bt,btij,ijkl->bkl", valid, x2, k23)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got_flat[-2]), s1, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got_flat[-1]), s2, rtol=1e-4, atol=1e-4)


def test_nested_cell_trains_with_fit():
    """The guide's model: (input_1, input_2) -> RNN(NestedCell) -> two outputs, adam + mse, random data;
    the loss goes down over 3 epochs and the output shapes are the cell's."""
    keras.utils.set_random_seed(0)
    input_1, input_2 = keras.Input((None, I1)), keras.Input((None, I2, I3))
    outputs = fk.RNN(NestedCell(U1, U2, U3))((input_1, input_2))
    model = keras.models.Model([input_1, input_2], outputs)
    assert [tuple(o.shape) for o in model.outputs] == [(None, U1), (None, U2, U3)]
    model.compile(optimizer="adam", loss="mse", metrics=[["accuracy"], ["accuracy"]])
    x = list(_nested_data(2, batch=32, steps=4))
    rng = np.random.default_rng(3)
    y = [rng.random((32, U1), dtype=np.float32), rng.random((32, U2, U3), dtype=np.float32)]
    losses = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
    assert losses[2] < losses[1] < losses[0], losses
    assert all(np.isfinite(losses))


def test_save_and_reload(tmp_path):
    x1, x2 = keras.Input((None, I1)), keras.Input((None, I2, I3))
    layer = fk.RNN(_nested_cell(), return_sequences=True, go_backwards=True)
    model = keras.models.Model([x1, x2], layer((x1, x2)))
    path = str(tmp_path / "nested.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    rnn = [lyr for lyr in loaded.layers if isinstance(lyr, fk.RNN)]
    assert len(rnn) == 1 and isinstance(rnn[0].cell, NestedCell) and rnn[0].go_backwards
    data = list(_nested_data(4))
    for a, b in zip(loaded.predict(data, verbose=0), model.predict(data, verbose=0)):
        assert a.shape in ((B, T, U1), (B, T, U2, U3))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert keras.saving.serialize_keras_object(layer)["registered_name"] == "fastrnn>RNN"


def test_stateful_chunks_and_reset():
    """stateful=True: two chunks give the states of one pass over both; reset_state zeroes the nested states."""
    cell = _nested_cell()
    x1, x2 = _nested_data(5, steps=2 * T)
    layer = fk.RNN(cell, stateful=True, return_state=True)
    layer((x1[:, :T], x2[:, :T]))
    _, s1, s2 = layer((x1[:, T:], x2[:, T:]))
    _, e1, e2 = fk.RNN(cell, return_state=True)((x1, x2))
    for g, e in ((s1, e1), (s2, e2)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(g), keras.ops.convert_to_numpy(e), rtol=1e-4,
                                   atol=1e-4)
    assert [tuple(v.shape) for v in layer.states] == [(B, U1), (B, U2, U3)]
    layer.reset_state()
    assert all(not np.any(keras.ops.convert_to_numpy(v)) for v in layer.states)


def test_mask_is_carried_to_both_sequence_outputs():
    """Masking on the first input: the RNN uses that mask (the masked steps repeat the previous output) and
    passes it on with each output sequence; the returned states carry no mask."""
    from keras.src.backend import get_keras_mask

    x1, x2 = _nested_data(6)
    x1[~MASK] = 0.0
    layer = fk.RNN(_nested_cell(), return_sequences=True, return_state=True)
    masked = keras.layers.Masking(0.0)(torch.tensor(x1))
    out, s1, s2 = layer((masked, torch.tensor(x2)))
    expected = layer((torch.tensor(x1), torch.tensor(x2)), mask=torch.tensor(MASK))[0]
    for o, e in zip(out, expected):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(get_keras_mask(o)), MASK)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(o), keras.ops.convert_to_numpy(e))
    assert get_keras_mask(s1) is None and get_keras_mask(s2) is None


class BadStateSizeCell(keras.layers.Layer):
    state_size = [["a"]]

    def call(self, inputs, states):
        return inputs, states


@pytest.mark.parametrize("bad,match", [
    (lambda: fk.RNN(BadStateSizeCell()), "state size"),
    (lambda: fk.RNN(_nested_cell())((np.zeros((B, I1), "f"), np.zeros((B, T, I2, I3), "f"))), "timesteps"),
    (lambda: fk.RNN(_nested_cell())((np.zeros((B, T, I1), "f"), np.zeros((B, T + 1, I2, I3), "f"))),
     "number of timesteps"),
    (lambda: fk.RNN(_nested_cell())(_nested_data(), initial_state=[np.zeros((B, U1), "f")]), "2 state"),
    (lambda: fk.RNN(_nested_cell())(_nested_data(), mask=np.ones((B, T + 1), bool)), "mask"),
], ids=["state_size", "rank", "timesteps", "initial_state", "mask"])
def test_bad_input_is_a_clear_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


# ------------------------------------------------------------------------------------------ flat cells


def _flat_pair(make_cell, seed=1):
    """(fastrnn.keras.RNN, keras.layers.RNN) over two cells with the same random weights."""
    fast, stock = fk.RNN(make_cell(), return_sequences=True, return_state=True, go_backwards=True), \
        keras.layers.RNN(make_cell(), return_sequences=True, return_state=True, go_backwards=True)
    fast.build((B, T, 3))
    stock.build((B, T, 3))
    rng = np.random.default_rng(seed)
    weights = [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in stock.get_weights()]
    fast.set_weights(weights)
    stock.set_weights(weights)
    return fast, stock


def _run(layer, x, mask, init):
    for v in layer.trainable_weights:
        v.value.grad = None
    xt = torch.tensor(x, requires_grad=True)
    states = [torch.tensor(s, requires_grad=True) for s in init]
    outs = list(layer(xt, mask=torch.tensor(mask), initial_state=states))
    _loss(outs).backward()
    grads = [v.value.grad.clone() for v in layer.trainable_weights] + [xt.grad] + [s.grad for s in states]
    return [o.detach().numpy() for o in outs], [g.numpy() for g in grads]


CELLS = {
    "LSTMCell": (lambda: keras.layers.LSTMCell(5), 2, True),
    "GRUCell": (lambda: keras.layers.GRUCell(5, reset_after=False), 1, True),
    "SimpleRNNCell": (lambda: keras.layers.SimpleRNNCell(5, activation="relu"), 1, True),
    "MinimalRNNCell": (lambda: MinimalRNNCell(5), 1, False),
    "stacked": (lambda: keras.layers.StackedRNNCells([MinimalRNNCell(4), keras.layers.LSTMCell(5)]), 2, False),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_flat_cells_match_keras_rnn(name, calls):
    """Same weights, a mask with left padding, holes, right padding and an empty row, go_backwards, initial
    states: outputs, final states and gradients (weights, inputs, initial states) equal keras.layers.RNN's.
    Stock cells run on fastrnn's kernels, the others in the generic loop."""
    make, n_states, fast_path = CELLS[name]
    fast, stock = _flat_pair(make)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, 3)).astype(np.float32)
    shapes = [(B, 4)] + [(B, 5)] * 2 if name == "stacked" else [(B, 5)] * n_states
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    if name == "stacked":  # one list of states per cell
        got = _run_stacked(fast, x, init)
        expected = _run_stacked(stock, x, init)
    else:
        got, expected = _run(fast, x, MASK, init), _run(stock, x, MASK, init)
    assert calls["n"] == (1 if fast_path else 0)
    for (a, b) in zip(got, expected):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, **TOL)


def _run_stacked(layer, x, init):
    for v in layer.trainable_weights:
        v.value.grad = None
    xt = torch.tensor(x, requires_grad=True)
    states = [torch.tensor(s, requires_grad=True) for s in init]
    outs = keras.tree.flatten(layer(xt, mask=torch.tensor(MASK), initial_state=[[states[0]], states[1:]]))
    _loss(outs).backward()
    grads = [v.value.grad.clone() for v in layer.trainable_weights] + [xt.grad] + [s.grad for s in states]
    return [o.detach().numpy() for o in outs], [g.numpy() for g in grads]


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_generic_loop_last_output_and_zero_output_match_keras(zero_output_for_mask, calls):
    """return_sequences=False and zero_output_for_mask both ways, forward, in the generic loop vs Keras."""
    outs = []
    weights = None
    for module in (fk, keras.layers):
        layer = module.RNN(MinimalRNNCell(5), zero_output_for_mask=zero_output_for_mask)
        layer.build((B, T, 3))
        weights = weights or [np.random.default_rng(8).normal(size=w.shape).astype(np.float32)
                              for w in layer.get_weights()]
        layer.set_weights(weights)
        x = np.random.default_rng(9).normal(size=(B, T, 3)).astype(np.float32)
        outs.append(keras.ops.convert_to_numpy(layer(x, mask=MASK)))
    np.testing.assert_allclose(outs[0], outs[1], **TOL)
    assert calls["n"] == 0
