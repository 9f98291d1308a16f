"""Dense, Embedding, Masking, BatchNormalization and Sequential against Keras 3 (torch backend) with the
same weights, copied with set_weights both ways; parameter counts, configs, masks, bad input; the guide's
three Sequential models and their summaries."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest

from fastrnn.layers.base import get_mask
from fastrnn.layers.core import BatchNormalization, Dense, Embedding, Masking
from fastrnn.layers.models import Input, InputLayer, Sequential

from checks import assert_close

keras = pytest.importorskip("keras")

ATOL = 2e-5  # float32 against Keras's float32


def K(x):
    """A Keras result as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def rnn_layers():
    """The lead's RNN layers (fastrnn.layers.LSTM, ...)."""
    import fastrnn.layers as layers

    return layers


def copy_weights(src, dst):
    dst.set_weights([np.asarray(w) for w in src.get_weights()])


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def inputs_untouched(fn, *arrays):
    copies = [a.copy() for a in arrays]
    out = fn(*arrays)
    for a, c in zip(arrays, copies):
        assert np.array_equal(a, c), "the layer modified its input"
    return out


# ------------------------------------------------------------------------------------------------ Dense
@pytest.mark.parametrize("activation", [None, "linear", "relu", "tanh", "sigmoid", "softmax", "softplus",
                                        "elu", "selu", "gelu", "silu", "hard_sigmoid", "softsign"])
@pytest.mark.parametrize("shape", [(4, 7), (3, 5, 7), (2, 3, 2, 7)])
def test_dense_matches_keras(rng, activation, shape):
    x = rng.normal(size=shape).astype(np.float32)
    ours = Dense(6, activation=activation)
    ours.build((None,) + shape[1:])
    ours.set_weights([rng.normal(size=(7, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)])
    theirs = keras.layers.Dense(6, activation=activation)
    theirs.build((None,) + shape[1:])
    copy_weights(ours, theirs)  # ours -> keras
    y = inputs_untouched(ours, x)
    assert type(y) is np.ndarray and y.dtype == np.float32 and y.shape == shape[:-1] + (6,)
    assert_close("dense", y, K(theirs(x)), 1e-4 if activation in ("selu", "elu", "gelu") else ATOL)
    assert ours.count_params() == theirs.count_params() == 7 * 6 + 6
    assert ours.compute_output_shape((None,) + shape[1:]) == tuple(theirs.compute_output_shape((None,) + shape[1:]))


def test_dense_weights_from_keras_and_no_bias(rng):
    x = rng.normal(size=(5, 3)).astype(np.float32)
    theirs = keras.layers.Dense(4, use_bias=False, activation="relu")
    theirs.build((None, 3))
    ours = Dense(4, use_bias=False, activation="relu")
    ours.build((None, 3))
    copy_weights(theirs, ours)  # keras -> ours
    assert [w.shape for w in ours.weights] == [(3, 4)]
    assert ours.count_params() == theirs.count_params() == 12
    assert_close("dense", ours(x), K(theirs(x)), ATOL)


def test_dense_callable_activation_and_int_input(rng):
    layer = Dense(3, activation=lambda a: 2 * a, kernel_initializer="ones")
    y = layer(np.ones((2, 4), dtype=np.int64))
    assert y.dtype == np.float32
    assert_close("dense", y, np.full((2, 3), 8.0), 0)


def test_dense_passes_a_carried_mask_through(rng):
    emb = Embedding(10, 4, mask_zero=True)
    ids = np.array([[1, 2, 0], [3, 0, 0]])
    y = Dense(2)(emb(ids))
    assert np.array_equal(get_mask(y), ids != 0)


def test_dense_bad_input():
    layer = Dense(3)
    with pytest.raises(ValueError, match="rank >= 2"):
        layer(np.ones(4, np.float32))
    layer(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected 4 input features.*\(2, 5\)"):
        layer(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        layer(np.array([["a", "b", "c", "d"]]))
    for units in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="units"):
            Dense(units)
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        Dense(3, activation="nope")
    with pytest.raises(TypeError, match="unexpected keyword"):
        Dense(3, bogus=1)


# -------------------------------------------------------------------------------------------- Embedding
@pytest.mark.parametrize("mask_zero", [False, True])
def test_embedding_matches_keras(rng, mask_zero):
    ids = rng.integers(0, 20, size=(4, 6))
    ids[0, 4:] = 0
    ids[2, :] = 0
    theirs = keras.layers.Embedding(20, 5, mask_zero=mask_zero)
    theirs.build()
    ours = Embedding(20, 5, mask_zero=mask_zero)
    ours.build(None)
    ours.set_weights([rng.normal(size=(20, 5)).astype(np.float32)])
    copy_weights(ours, theirs)
    y = inputs_untouched(ours, ids)
    assert_close("embedding", y, K(theirs(ids)), 0)
    assert ours.count_params() == theirs.count_params() == 100
    assert ours.compute_output_shape((None, None)) == tuple(theirs.compute_output_shape((None, None)))
    if mask_zero:
        expected = K(theirs.compute_mask(ids))
        assert np.array_equal(get_mask(y), expected)
        assert np.array_equal(ours.compute_mask(ids), expected)
        assert np.asarray(y).view(np.ndarray).__class__ is np.ndarray
    else:
        assert get_mask(y) is None and type(y) is np.ndarray and ours.compute_mask(ids) is None


def test_embedding_weights_from_keras(rng):
    theirs = keras.layers.Embedding(7, 3)
    theirs.build()
    ours = Embedding(7, 3)
    ours.build(None)
    copy_weights(theirs, ours)
    ids = np.array([[0, 6], [3, 2]], dtype=np.int32)
    assert_close("embedding", ours(ids), K(theirs(ids)), 0)
    ours2 = Embedding(7, 3, weights=[theirs.get_weights()[0]])
    assert_close("embedding(weights=)", ours2(ids), K(theirs(ids)), 0)


def test_embedding_bad_input():
    layer = Embedding(10, 4)
    with pytest.raises(TypeError, match="integer ids.*float"):
        layer(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\[0, 10\).*10"):
        layer(np.array([[1, 10]]))
    with pytest.raises(ValueError, match=r"\[0, 10\).*-1"):
        layer(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="input_dim"):
        Embedding(0, 4)
    with pytest.raises(ValueError, match="output_dim"):
        Embedding(4, 2.0)
    assert layer(np.zeros((2, 0), np.int64)).shape == (2, 0, 4)


# ---------------------------------------------------------------------------------------------- Masking
@pytest.mark.parametrize("mask_value", [0.0, -1.0])
def test_masking_matches_keras(rng, mask_value):
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    x[0, 3:] = mask_value
    x[1, 0] = mask_value
    x[2, 2, :2] = mask_value  # only partly: not masked
    ours, theirs = Masking(mask_value), keras.layers.Masking(mask_value)
    y = inputs_untouched(ours, x)
    ky = theirs(x)
    assert_close("masking", y, K(ky), 0)
    expected = np.any(x != mask_value, axis=-1)
    assert np.array_equal(get_mask(y), expected)
    assert np.array_equal(K(ky._keras_mask), expected)
    assert np.array_equal(ours.compute_mask(x), expected)
    assert ours.count_params() == theirs.count_params() == 0
    assert np.all(np.asarray(y)[~expected] == 0)


# ----------------------------------------------------------------------------------- BatchNormalization
def _bn_pair(rng, features, **kwargs):
    ours = BatchNormalization(**kwargs)
    theirs = keras.layers.BatchNormalization(**kwargs)
    shape = (None, features)
    ours.build(shape)
    theirs.build(shape)
    weights = [rng.normal(size=features).astype(np.float32) for _ in ours.weights]
    weights[-1] = np.abs(weights[-1]) + 0.5  # moving_variance > 0
    ours.set_weights(weights)
    copy_weights(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
def test_batchnorm_inference_matches_keras(rng, center, scale):
    ours, theirs = _bn_pair(rng, 6, center=center, scale=scale)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    assert_close("bn", inputs_untouched(ours, x), K(theirs(x)), ATOL)
    assert_close("bn", ours(x, training=False), K(theirs(x, training=False)), ATOL)
    assert ours.count_params() == theirs.count_params() == 6 * (2 + center + scale)
    assert len(ours.trainable_weights) == center + scale and len(ours.non_trainable_weights) == 2


def test_batchnorm_training_uses_batch_stats_and_updates_moving_stats(rng):
    ours, theirs = _bn_pair(rng, 6, momentum=0.9)
    for step in range(3):
        x = (3 * rng.normal(size=(8, 6)) + 2).astype(np.float32)
        assert_close(f"bn training step {step}", ours(x, training=True), K(theirs(x, training=True)), 1e-4)
        for name, a, b in zip(("gamma", "beta", "moving_mean", "moving_variance"),
                              ours.get_weights(), theirs.get_weights()):
            assert_close(name, a, np.asarray(b), 1e-5)
    # inference afterwards uses the updated moving statistics
    x = rng.normal(size=(4, 6)).astype(np.float32)
    assert_close("bn inference after training", ours(x), K(theirs(x)), 1e-4)


def test_batchnorm_rank3_mask_and_axis(rng):
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = rng.random((3, 5)) > 0.3
    ours, theirs = BatchNormalization(), keras.layers.BatchNormalization()
    ours.build((None, 5, 4))
    theirs.build((None, 5, 4))
    copy_weights(ours, theirs)
    assert_close("bn masked", ours(x, training=True, mask=mask),
                 K(theirs(x, training=True, mask=mask)), 1e-4)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        assert_close("moving stats (masked)", a, np.asarray(b), 1e-5)
    ours, theirs = BatchNormalization(axis=1), keras.layers.BatchNormalization(axis=1)
    ours.build((None, 5, 4))
    theirs.build((None, 5, 4))
    assert [w.shape for w in ours.weights] == [tuple(w.shape) for w in theirs.weights] == [(5,)] * 4
    assert_close("bn axis=1", ours(x, training=True), K(theirs(x, training=True)), 1e-4)


def test_batchnorm_frozen_layer_runs_in_inference_mode(rng):
    ours, _ = _bn_pair(rng, 3)
    ours.trainable = False
    before = ours.get_weights()
    x = rng.normal(size=(4, 3)).astype(np.float32)
    assert_close("frozen bn", ours(x, training=True), ours(x, training=False), 0)
    for a, b in zip(before, ours.get_weights()):
        assert np.array_equal(a, b)
    assert ours.trainable_weights == [] and len(ours.non_trainable_weights) == 4


def test_batchnorm_bad_input(rng):
    layer = BatchNormalization()
    layer(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected 3 features.*\(2, 4\)"):
        layer(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="out of bounds"):
        BatchNormalization(axis=3).build((None, 4))
    with pytest.raises(ValueError, match="one dimension less"):
        BatchNormalization()(np.ones((2, 3, 4), np.float32), training=True, mask=np.ones((2, 3, 4), bool))


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("make,keras_make,shape", [
    (lambda: Dense(5, activation="tanh", use_bias=False, kernel_initializer="orthogonal"),
     lambda: keras.layers.Dense(5, activation="tanh", use_bias=False, kernel_initializer="orthogonal"), (None, 3)),
    (lambda: Dense(5), lambda: keras.layers.Dense(5), (None, 3)),
    (lambda: Embedding(30, 4, mask_zero=True), lambda: keras.layers.Embedding(30, 4, mask_zero=True), (None, None)),
    (lambda: Masking(-1.0), lambda: keras.layers.Masking(-1.0), (None, 4, 3)),
    (lambda: BatchNormalization(momentum=0.5, epsilon=0.01, center=False),
     lambda: keras.layers.BatchNormalization(momentum=0.5, epsilon=0.01, center=False), (None, 3)),
])
def test_config_round_trip(rng, make, keras_make, shape):
    layer = make()
    layer.build(shape)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build(shape)
    assert [w.shape for w in clone.weights] == [w.shape for w in layer.weights]
    # every key we write is a Keras key with Keras's value
    theirs = keras_make().get_config()
    for key, value in config.items():
        if key in ("name", "dtype"):
            continue
        assert key in theirs, key
        if not isinstance(value, (dict, str)) or key == "activation":
            assert value == theirs[key], key
    if isinstance(layer, Embedding):
        x = rng.integers(0, 30, size=(2, 3))
    else:
        x = rng.normal(size=(2,) + shape[1:]).astype(np.float32)
    clone.set_weights(layer.get_weights())
    assert_close("clone", clone(x), layer(x), 0)


# ------------------------------------------------------------------------------------------- Sequential
def test_sequential_of_core_layers_matches_keras(rng):
    model = Sequential([Input(shape=(None,)), Embedding(50, 8, mask_zero=True), Dense(6, activation="relu"),
                        BatchNormalization(), Dense(3, activation="softmax")])
    kmodel = keras.Sequential([keras.Input(shape=(None,), dtype="int32"), keras.layers.Embedding(50, 8, mask_zero=True),
                               keras.layers.Dense(6, activation="relu"), keras.layers.BatchNormalization(),
                               keras.layers.Dense(3, activation="softmax")])
    assert model.built
    assert model.count_params() == kmodel.count_params()
    weights = [w + rng.normal(size=w.shape).astype(np.float32) * 0.1 for w in model.get_weights()]
    weights[-3] = np.abs(weights[-3]) + 0.5  # moving_variance
    model.set_weights(weights)
    kmodel.set_weights(model.get_weights())
    assert [w.shape for w in model.weights] == [tuple(w.shape) for w in kmodel.weights]
    ids = rng.integers(0, 50, size=(4, 7))
    y = model(ids)
    assert_close("sequential", y, K(kmodel(ids)), ATOL)
    assert np.array_equal(get_mask(y), ids != 0)
    p = model.predict(ids, batch_size=3)
    assert type(p) is np.ndarray
    assert_close("predict", p, y, 1e-6)
    assert_close("training=True", model(ids, training=True), K(kmodel(ids, training=True)), 1e-4)
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        assert_close("weights after a training call", a, np.asarray(b), 1e-5)


def test_sequential_build_paths_and_errors():
    m = Sequential()
    m.add(Dense(4, input_shape=(3,)))
    m.add(Dense(2))
    assert m.built and m.count_params() == 3 * 4 + 4 + 4 * 2 + 2
    m2 = Sequential([Dense(4), Dense(2)])
    with pytest.raises(ValueError, match="needs a built model"):
        m2.count_params()
    m2(np.ones((5, 3), np.float32))
    assert m2.count_params() == m.count_params()
    m3 = Sequential([Dense(4), Dense(2)])
    m3.build((None, 3))
    assert m3.count_params() == m.count_params()
    with pytest.raises(ValueError, match="first entry"):
        Sequential([Dense(2), Input(shape=(3,))])
    with pytest.raises(TypeError, match="expects a Layer"):
        Sequential([3])
    d = Dense(2)
    with pytest.raises(ValueError, match="already"):
        Sequential([d, d])
    assert isinstance(Input(shape=(None, 8)), InputLayer)
    assert m.pop().units == 2 and len(m.layers) == 1


def test_sequential_summary_unbuilt_and_names():
    m = Sequential([Dense(4), Dense(2)])
    lines = []
    m.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert f'Model: "{m.name}"' in text and "0 (unbuilt)" in text and "Total params: 0" in text
    assert m.name.startswith("sequential")
    names = [layer.name for layer in m.layers]
    assert names[0].startswith("dense") and names[1].startswith("dense_") and len(set(names)) == 2


def test_sequential_config_round_trip(rng):
    model = Sequential([Input(shape=(5,)), Dense(4, activation="relu"), BatchNormalization(), Dense(2)])
    clone = Sequential.from_config(model.get_config())
    assert clone.built and [l.name for l in clone.layers] == [l.name for l in model.layers]
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    x = rng.normal(size=(3, 5)).astype(np.float32)
    assert_close("clone", clone(x), model(x), 0)


def _summary(model):
    lines = []
    model.summary(print_fn=lines.append)
    return "\n".join(lines)


def _row(text, name):
    return next(line for line in text.splitlines() if line.strip().startswith(name + " "))


# The guide's three Sequential models: these need the RNN layers (fastrnn.layers.LSTM, ...).
def test_guide_model_1_embedding_lstm_dense():
    L = rnn_layers()
    model = Sequential([Embedding(1000, 64), L.LSTM(128), Dense(10)])
    model.build((None, None))
    text = _summary(model)
    assert "Total params: 164,106" in text and "Trainable params: 164,106" in text
    assert "Non-trainable params: 0" in text
    emb, lstm, dense = model.layers
    assert "(None, None, 64)" in _row(text, emb.name) and "64000" in _row(text, emb.name)
    assert f"{lstm.name} (LSTM)" in text and "(None, 128)" in _row(text, lstm.name)
    assert "98816" in _row(text, lstm.name)
    assert "(None, 10)" in _row(text, dense.name) and "1290" in _row(text, dense.name)
    assert lstm.name.startswith("lstm")
    y = model(np.array([[1, 2, 3], [4, 5, 6]]))
    assert y.shape == (2, 10)


def test_guide_model_2_gru_simple_rnn():
    L = rnn_layers()
    model = Sequential([Embedding(1000, 64), L.GRU(256, return_sequences=True), L.SimpleRNN(128), Dense(10)])
    model.build((None, None))
    text = _summary(model)
    assert "Total params: 361,866" in text
    gru, rnn = model.layers[1:3]
    assert "(None, None, 256)" in _row(text, gru.name) and "247296" in _row(text, gru.name)
    assert "(None, 128)" in _row(text, rnn.name) and "49280" in _row(text, rnn.name)
    assert model(np.array([[1, 2, 3]])).shape == (1, 10)


def test_guide_model_3_bidirectional():
    L = rnn_layers()
    model = Sequential([Input(shape=(5, 10)), L.Bidirectional(L.LSTM(64, return_sequences=True)),
                        L.Bidirectional(L.LSTM(32)), Dense(10)])
    text = _summary(model)
    assert "Total params: 80,266" in text
    b1, b2, _ = model.layers
    assert "(None, 5, 128)" in _row(text, b1.name) and "38400" in _row(text, b1.name)
    assert "(None, 64)" in _row(text, b2.name) and "41216" in _row(text, b2.name)
    assert model(np.zeros((2, 5, 10), np.float32)).shape == (2, 10)
    # the R guide's keras_model_sequential(input_shape = ...) form
    model2 = Sequential([L.Bidirectional(L.LSTM(64, return_sequences=True)), L.Bidirectional(L.LSTM(32)),
                         Dense(10)], input_shape=(5, 10))
    assert model2.count_params() == 80266


@pytest.mark.parametrize("source", ["embedding", "masking"])
def test_sequential_masks_reach_the_rnn_as_in_keras(rng, source):
    """Embedding(mask_zero) / Masking -> LSTM(return_sequences) -> GRU -> Dense, against Keras."""
    L = rnn_layers()
    if source == "embedding":
        first, kfirst = Embedding(20, 6, mask_zero=True), keras.layers.Embedding(20, 6, mask_zero=True)
        x = rng.integers(1, 20, size=(4, 7))
        x[0, 5:] = 0  # right padding
        x[1, :2] = 0  # left padding
        x[2, 3] = 0   # a hole
        kin, shape = keras.Input(shape=(None,), dtype="int32"), (None, None)
    else:
        first, kfirst = Masking(0.0), keras.layers.Masking(0.0)
        x = rng.normal(size=(4, 7, 6)).astype(np.float32)
        x[0, 5:] = 0
        x[1, :2] = 0
        x[2, 3] = 0
        kin, shape = keras.Input(shape=(None, 6)), (None, None, 6)
    model = Sequential([first, L.LSTM(5, return_sequences=True), L.GRU(4), Dense(3)])
    model.build(shape)
    kmodel = keras.Sequential([kin, kfirst, keras.layers.LSTM(5, return_sequences=True), keras.layers.GRU(4),
                               keras.layers.Dense(3)])
    assert model.count_params() == kmodel.count_params()
    kmodel.set_weights(model.get_weights())
    expected = K(kmodel(x))
    assert_close("masked sequential", model(x), expected, 1e-5)
    assert_close("masked predict", model.predict(x, batch_size=2), expected, 1e-5)


def test_sequential_config_round_trip_with_rnn_layers(rng):
    L = rnn_layers()
    model = Sequential([L.Bidirectional(L.LSTM(6, return_sequences=True)), L.GRU(5, reset_after=False),
                        Dense(3, activation="softmax")], input_shape=(4, 7))
    clone = Sequential.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    assert [type(l).__name__ for l in clone.layers] == ["Bidirectional", "GRU", "Dense"]
    clone.set_weights(model.get_weights())
    x = rng.normal(size=(2, 4, 7)).astype(np.float32)
    assert_close("clone", clone(x), model(x), 0)


def test_sequential_last_layer_may_return_states(rng):
    L = rnn_layers()
    model = Sequential([Input(shape=(5, 3)), L.LSTM(4, return_state=True)])
    text = _summary(model)
    assert "[(None, 4), (None, 4), (None, 4)]" in text
    out = model.predict(rng.normal(size=(5, 5, 3)).astype(np.float32), batch_size=2)
    assert [o.shape for o in out] == [(5, 4)] * 3 and all(type(o) is np.ndarray for o in out)
    with pytest.raises(ValueError, match="only the last layer"):
        Sequential([Input(shape=(5, 3)), L.LSTM(4, return_state=True), Dense(2)])
