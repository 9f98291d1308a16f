"""Streaming inference (`layer.stream(B)`): step by step equals the NumPy reference over the whole
sequence, states carry, reset (all rows or some) restarts rows, bad use is refused."""
import numpy as np
import pytest

import fastrnn
from fastrnn import layers as L
from fastrnn import reference

LAYERS = [
    ("lstm", lambda: L.LSTM(34)),
    ("gru-ra", lambda: L.GRU(34)),
    ("gru-rb", lambda: L.GRU(34, reset_after=False, activation="relu")),
    ("simple_rnn", lambda: L.SimpleRNN(34, activation="softsign")),
]


def reference_outputs(cell, x, states=None):
    kw = {"activation": cell.activation, "initial_state": states}
    if cell.kind != "simple_rnn":
        kw["recurrent_activation"] = cell.recurrent_activation
    if cell.kind == "gru":
        kw["reset_after"] = cell.reset_after
    w = [None if a is None else a.astype(np.float64) for a in (cell.kernel, cell.recurrent_kernel, cell.bias)]
    return getattr(reference, cell.kind)(x.astype(np.float64), *w, **kw)


@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
@pytest.mark.parametrize("batch", [1, 3])
def test_steps_equal_the_whole_sequence(name, make, batch):
    rng = np.random.default_rng(0)
    layer = make()
    x = rng.normal(size=(batch, 9, 17)).astype(np.float32)
    layer(x)
    ref_out, ref_states = reference_outputs(layer.cell, x)
    stream = layer.stream(batch)
    steps = np.stack([stream.step(x[:, t]) for t in range(9)], axis=1)
    np.testing.assert_allclose(steps, ref_out, atol=2e-5)
    states = stream.states
    for got, want in zip(states, ref_states):
        np.testing.assert_allclose(got, want, atol=2e-5)
    stream.reset()
    chunked = np.concatenate([stream.step_many(x[:, :4]), stream.step_many(x[:, 4:])], axis=1)
    np.testing.assert_allclose(chunked, ref_out, atol=2e-5)


def test_reset_some_rows_and_stacked_cells():
    rng = np.random.default_rng(1)
    layer = L.RNN([L.LSTMCell(8), L.GRUCell(5)])
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    layer(x)
    stream = layer.stream(4)
    for t in range(6):
        stream.step(x[:, t])
    stream.reset(rows=[1, 3])
    y = stream.step(x[:, 0])
    fresh = layer.stream(4)
    y_fresh = fresh.step(x[:, 0])
    np.testing.assert_allclose(y[[1, 3]], y_fresh[[1, 3]], atol=1e-6)
    assert not np.allclose(y[[0, 2]], y_fresh[[0, 2]])
    full = L.RNN(layer.cell, return_sequences=True)
    full.built = True
    np.testing.assert_allclose(np.stack([fresh.step(x[:, t]) for t in range(1, 6)], 1), full(x)[:, 1:], atol=2e-5)


@pytest.mark.parametrize("batch,units,threads", [(2, 6, 1), (1, 6, 1), (1, 136, 1), (1, 136, 2)],
                         ids=["b2", "b1-narrow", "b1-panels", "b1-hidden-split"])
def test_stream_sees_new_weights_and_returns_fresh_arrays(batch, units, threads):
    """set_weights reaches the next step, also where the stream packed the weights (one row, float32:
    R's vector panels, or the hidden split's slices of R, W and the biases).  Three steps from the reset
    state, so R's product (zero at the first step) counts."""
    rng = np.random.default_rng(2)
    layer = L.LSTM(units)
    x = rng.normal(size=(batch, 3, 4)).astype(np.float32)
    layer(x)
    with fastrnn.threads(threads):
        stream = layer.stream(batch)
        a = np.stack([stream.step(x[:, t]) for t in range(3)], axis=1)
        stream.reset()
        layer.set_weights([w * (1.5 + 0.1 * i) for i, w in enumerate(layer.get_weights())])
        b = np.stack([stream.step(x[:, t]) for t in range(3)], axis=1)
        c = stream.step(x[:, 0])
    np.testing.assert_allclose(b, reference_outputs(layer.cell, x)[0], atol=2e-5)
    assert not np.allclose(a, b)
    c[...] = 0
    assert not np.allclose(stream.states[0], 0)  # the returned output is the caller's own array


def test_refusals():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="built"):
        L.LSTM(3).stream(2)
    layer = L.LSTM(3)
    layer(x)
    with pytest.raises(ValueError, match="batch size"):
        layer.stream(0)
    stream = layer.stream(2)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        stream.step(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="step_many"):
        stream.step_many(np.zeros((2, 4), np.float32))
    back = L.GRU(3, go_backwards=True)
    back(x)
    with pytest.raises(ValueError, match="go_backwards"):
        back.stream(2)
    bidi = L.Bidirectional(L.LSTM(3))
    bidi(x)
    with pytest.raises(ValueError, match="Bidirectional"):
        bidi.stream(2)
    custom = L.LSTM(3, activation=lambda v: np.tanh(v))
    custom(x)
    with pytest.raises(ValueError, match="named activations"):
        custom.stream(2)
