"""fastrnn.keras: Keras 3 LSTM/GRU/SimpleRNN on fastrnn's kernels (torch backend) vs the stock Keras layers
with the same weights, on outputs and on gradients wrt every trainable weight, the inputs and the initial
states; dropout semantics; fallbacks; model.fit; save/reload; enable()/disable() of the backend hooks."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import keras  # noqa: E402
from keras.src import backend as keras_backend  # noqa: E402

import fastrnn.keras as fk  # noqa: E402
from fastrnn import functional  # noqa: E402

assert keras.backend.backend() == "torch", "these tests run Keras with KERAS_BACKEND=torch"

B, T, I, H = 4, 6, 3, 5
GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
N_STATES = {"LSTM": 2, "GRU": 1, "SimpleRNN": 1}
MASK = np.array([[0, 0, 1, 1, 1, 1],    # left padding
                 [1, 0, 1, 0, 1, 1],    # holes
                 [1, 1, 1, 1, 0, 0],    # right padding
                 [1, 1, 1, 1, 1, 1]], dtype=bool)
TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.fixture(autouse=True)
def _hooks_restored():
    yield
    fk.disable()


def _data(seed=0, shape=(B, T, I)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _pair(name, input_shape=(B, T, I), weight_seed=1, **options):
    """(fastrnn layer, stock layer) built with the same random weights (biases non-zero)."""
    fast, stock = getattr(fk, name)(H, **options), getattr(keras.layers, name)(H, **options)
    fast.build(input_shape)
    stock.build(input_shape)
    rng = np.random.default_rng(weight_seed)
    weights = [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in stock.get_weights()]
    fast.set_weights(weights)
    stock.set_weights(weights)
    return fast, stock


def _loss(outputs):
    g = torch.Generator().manual_seed(123)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outputs)


def _run(layer, x, initial_state=None, **call_kwargs):
    """Outputs (list of arrays) and gradients (trainable weights, x, initial states) of a fixed random
    linear loss of every output."""
    for v in layer.trainable_weights:
        v.value.grad = None
    xt = torch.tensor(x, requires_grad=True)
    states = None
    if initial_state is not None:
        states = [torch.tensor(s, requires_grad=True) for s in initial_state]
        call_kwargs["initial_state"] = states
    out = layer(xt, **call_kwargs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    _loss(outs).backward()
    grads = [v.value.grad.clone() for v in layer.trainable_weights] + [xt.grad]
    grads += [s.grad for s in states or []]
    return [o.detach().numpy() for o in outs], [g.numpy() for g in grads]


def _assert_same(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert len(out_a) == len(out_b) and len(grads_a) == len(grads_b)
    for u, v in zip(out_a, out_b):
        np.testing.assert_allclose(u, v, **TOL)
    for u, v in zip(grads_a, grads_b):
        assert u is not None and v is not None
        np.testing.assert_allclose(u, v, **TOL)


OPTIONS = {
    "last": dict(),
    "sequences+state": dict(return_sequences=True, return_state=True),
    "backwards": dict(return_sequences=True, return_state=True, go_backwards=True),
    "mask": dict(return_sequences=True, return_state=True, _mask=True),
    "mask-last": dict(_mask=True),
    "mask+backwards+zero_output": dict(return_sequences=True, return_state=True, go_backwards=True,
                                       zero_output_for_mask=True, _mask=True),
    "initial_state": dict(return_sequences=True, return_state=True, _initial_state=True),
    "no_bias": dict(return_sequences=True, use_bias=False),
    "unroll": dict(return_sequences=True, unroll=True, _mask=True),
}
EXTRA = [
    ("GRU", dict(reset_after=False, return_sequences=True, return_state=True)),
    ("GRU", dict(reset_after=False, go_backwards=True, return_sequences=True, _mask=True, _initial_state=True)),
    ("GRU", dict(reset_after=False, use_bias=False)),
    ("SimpleRNN", dict(activation="relu", return_sequences=True, return_state=True)),
    ("SimpleRNN", dict(activation="relu", _mask=True, _initial_state=True, go_backwards=True)),
    ("LSTM", dict(recurrent_activation="hard_sigmoid", activation="softsign", return_sequences=True)),
    ("GRU", dict(activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True)),
    ("SimpleRNN", dict(activation=None, return_sequences=True)),
]
CASES = [(name, opts) for name in GATES for opts in OPTIONS.values()] + EXTRA
IDS = [f"{name}-{key}" for name in GATES for key in OPTIONS] + [
    f"{name}-" + "-".join(f"{k}={v}" for k, v in opts.items()) for name, opts in EXTRA]


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_parity_with_stock_layer(name, options, calls):
    options = dict(options)
    use_mask, use_state = options.pop("_mask", False), options.pop("_initial_state", False)
    fast, stock = _pair(name, **options)
    x = _data()
    kwargs = {}
    if use_mask:
        kwargs["mask"] = torch.tensor(MASK)
    init = None
    if use_state:
        rng = np.random.default_rng(5)
        init = [rng.normal(size=(B, H)).astype(np.float32) for _ in range(N_STATES[name])]
    got = _run(fast, x, init, **dict(kwargs))
    assert calls["n"] == 1
    _assert_same(got, _run(stock, x, init, **dict(kwargs)))


@pytest.mark.parametrize("name", list(GATES))
def test_masking_layer_in_a_model(name, calls):
    """Masking(0.0) in a model (left padding and holes via zero rows): outputs and weight gradients."""
    x = _data(2)
    x[~MASK] = 0.0
    models = []
    for module in (fk, keras.layers):
        models.append(keras.Sequential([keras.Input((T, I)), keras.layers.Masking(0.0),
                                        getattr(module, name)(H, return_sequences=True),
                                        keras.layers.Dense(2)]))
    models[0].set_weights(models[1].get_weights())
    results = []
    for model in models:
        xt = torch.tensor(x, requires_grad=True)
        out = model(xt)
        _loss([out]).backward()
        results.append(([out.detach().numpy()],
                        [v.value.grad.numpy() for v in model.trainable_weights] + [xt.grad.numpy()]))
    assert calls["n"] == 1
    _assert_same(*results)


@pytest.mark.parametrize("name", list(GATES))
def test_stateful_chunks(name, calls):
    """stateful=True over two chunks: outputs, carried states and gradients over both chunks' losses.

    The stock layer runs with use_cudnn=False (Keras's generic loop, which copies the states): through
    Keras's own torch `lstm`/`gru` hook, backward after the stateful state update raises "modified by an
    inplace operation" in this Keras version.  fastrnn's layers ignore use_cudnn."""
    x = _data(3, (B, 2 * T, I))
    results = []
    extra = {} if name == "SimpleRNN" else {"use_cudnn": False}
    for layer in _pair(name, stateful=True, return_sequences=True, **extra):
        for v in layer.trainable_weights:
            v.value.grad = None
        outs = [layer(torch.tensor(x[:, :T])), layer(torch.tensor(x[:, T:]))]
        _loss(outs).backward()
        states = [keras.ops.convert_to_numpy(s) for s in layer.states]
        results.append(([o.detach().numpy() for o in outs] + states,
                        [v.value.grad.numpy() for v in layer.trainable_weights]))
        layer.reset_state()
        assert all(not np.any(keras.ops.convert_to_numpy(s)) for s in layer.states)
    assert calls["n"] == 2
    _assert_same(*results)


@pytest.mark.parametrize("name,options", [
    ("LSTM", dict(dropout=0.3)), ("GRU", dict(dropout=0.3)), ("GRU", dict(dropout=0.3, reset_after=False)),
    ("SimpleRNN", dict(dropout=0.3, recurrent_dropout=0.4))], ids=["lstm", "gru", "gru-rb", "simple_rnn"])
def test_dropout_matches_stock_in_training(name, options, calls):
    """Same seed, same masks: input dropout of LSTM/GRU (one mask per sequence in Keras too) and both
    dropouts of SimpleRNN give the stock layer's training outputs and gradients."""
    fast, stock = _pair(name, weight_seed=4, return_sequences=True, seed=11, **options)
    x = _data(4)
    got = _run(fast, x, training=True)
    assert calls["n"] == 1
    _assert_same(got, _run(stock, x, training=True))
    # inference: no dropout
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fast(x)), keras.ops.convert_to_numpy(stock(x)),
                               **TOL)
    assert not np.allclose(got[0][0], keras.ops.convert_to_numpy(fast(x)))


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_recurrent_dropout_is_variational(name, calls):
    """With recurrent_dropout, fastrnn uses the first of the per-gate masks Keras drew (one (B, I) and one
    (B, H) mask for the whole sequence), from the cell's seed generator."""
    rate, recurrent_rate, seed = 0.25, 0.4, 21
    fast = getattr(fk, name)(H, dropout=rate, recurrent_dropout=recurrent_rate, seed=seed,
                             return_sequences=True)
    x = _data(6)
    out = keras.ops.convert_to_numpy(fast(x, training=True))
    assert calls["n"] == 1
    gen = keras.random.SeedGenerator(seed)
    dp = [keras.random.dropout(keras.ops.ones((B, I)), rate, seed=gen) for _ in range(GATES[name])]
    rdp = [keras.random.dropout(keras.ops.ones((B, H)), recurrent_rate, seed=gen) for _ in range(GATES[name])]
    weights = fast.get_weights()
    expected, _ = getattr(functional, name.lower())(
        x, *weights, dropout_mask=keras.ops.convert_to_numpy(dp[0]),
        recurrent_dropout_mask=keras.ops.convert_to_numpy(rdp[0]))
    np.testing.assert_allclose(out, expected, **TOL)
    # gradients flow in training with both dropouts
    _, grads = _run(fast, x, training=True)
    assert all(np.isfinite(g).all() and np.any(g) for g in grads)


def test_fallback_for_activation_fastrnn_cannot_run(calls):
    """A custom callable activation runs in Keras's own loop and equals the stock layer."""

    def shifted_tanh(a):
        return keras.ops.tanh(a) * 0.9

    for name in GATES:
        fast, stock = _pair(name, activation=shifted_tanh, return_sequences=True, return_state=True)
        got = _run(fast, _data(7), mask=torch.tensor(MASK))
        _assert_same(got, _run(stock, _data(7), mask=torch.tensor(MASK)))
    assert calls["n"] == 0


def test_fallback_when_backend_is_not_torch(monkeypatch, calls):
    """The backend is checked at each call: anything but torch runs Keras's loop."""
    fast, stock = _pair("LSTM", return_sequences=True)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    got = _run(fast, _data(8))
    assert calls["n"] == 0
    _assert_same(got, _run(stock, _data(8)))


@pytest.mark.parametrize("name", list(GATES))
def test_fit_trains_like_stock(name, calls):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(48, T, I)).astype(np.float32)
    y = (x.sum(axis=(1, 2))[:, None] * 0.1).astype(np.float32)
    models, histories = [], []
    for module in (keras.layers, fk):
        models.append(keras.Sequential([keras.Input((T, I)), getattr(module, name)(8), keras.layers.Dense(1)]))
    models[1].set_weights(models[0].get_weights())
    for model in models:
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        histories.append(model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"])
    assert calls["n"] >= 6  # 3 steps x 2 epochs (+ nothing else) went through fastrnn
    assert histories[1][1] < histories[1][0]
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-4)
    for a, b in zip(models[1].get_weights(), models[0].get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_save_and_reload(tmp_path):
    model = keras.Sequential([
        keras.Input((T, I)),
        fk.LSTM(H, return_sequences=True, dropout=0.1, seed=3),
        fk.GRU(H, return_sequences=True, reset_after=False, go_backwards=True),
        fk.SimpleRNN(H, activation="relu"),
        keras.layers.Dense(2)])
    x = _data(10)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer) for layer in loaded.layers[:3]] == [fk.LSTM, fk.GRU, fk.SimpleRNN]
    assert loaded.layers[1].reset_after is False and loaded.layers[1].go_backwards
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    config = keras.saving.serialize_keras_object(model.layers[0])
    assert config["registered_name"] == "fastrnn>LSTM"
    clone = fk.LSTM.from_config(model.layers[0].get_config())
    assert clone.units == H and clone.dropout == 0.1 and clone.return_sequences


@pytest.mark.parametrize("name,options", [
    ("LSTM", dict(return_sequences=True, return_state=True)),
    ("LSTM", dict(go_backwards=True, _initial_state=True)),
    ("GRU", dict(return_sequences=True, return_state=True)),
    ("GRU", dict(reset_after=False, go_backwards=True, return_sequences=True)),  # stock hook declines this
    ("GRU", dict(use_bias=False, _initial_state=True))], ids=["lstm", "lstm-back-init", "gru", "gru-rb", "gru-nb"])
def test_enable_routes_plain_keras_layers(name, options, calls):
    options = dict(options)
    use_state = options.pop("_initial_state", False)
    _, stock = _pair(name, **options)
    x = _data(11)
    init = [np.random.default_rng(12).normal(size=(B, H)).astype(np.float32)
            for _ in range(N_STATES[name])] if use_state else None
    expected = _run(stock, x, init)
    original = getattr(keras_backend, name.lower())
    assert calls["n"] == 0 and not fk.is_enabled()
    fk.enable()
    fk.enable()  # idempotent
    assert fk.is_enabled() and getattr(keras_backend, name.lower()) is not original
    got = _run(stock, x, init)
    assert calls["n"] == 1
    _assert_same(got, expected)
    # MASK mixes left padding, holes and right padding: every option here makes the result depend on the
    # layer's zero_output_for_mask, which the hook is not told, so Keras's loop runs (see the test below)
    _run(stock, x, init, mask=torch.tensor(MASK))
    assert calls["n"] == 1
    fk.disable()
    assert getattr(keras_backend, name.lower()) is original and not fk.is_enabled()
    _assert_same(_run(stock, x, init), expected)
    assert calls["n"] == 1


def test_enabled_context_manager_and_dropout(calls):
    lstm = keras.layers.LSTM(H, dropout=0.3, seed=5, return_sequences=True)
    gru = keras.layers.GRU(H, return_sequences=True)
    x = _data(13)
    expected = [_run(layer, x, training=True) for layer in (lstm, gru)]
    lstm.cell.seed_generator.state.assign(keras.random.SeedGenerator(5).state.value)
    originals = keras_backend.lstm, keras_backend.gru
    with fk.enabled():
        with fk.enabled():  # nested: the inner exit keeps fastrnn on
            pass
        assert fk.is_enabled()
        got = [_run(layer, x, training=True) for layer in (lstm, gru)]
    assert calls["n"] == 2
    assert (keras_backend.lstm, keras_backend.gru) == originals and not fk.is_enabled()
    for a, b in zip(got, expected):
        _assert_same(a, b)


HOOK_MASKS = {
    "left": np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], bool),
    "right": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool),
    "holes": np.array([[1, 0, 1, 0, 1, 1], [1, 1, 0, 1, 1, 1], [1, 0, 0, 1, 1, 1], [1, 1, 1, 0, 1, 1]], bool),
}
#: (mask, return_sequences, go_backwards) the hook serves: those where Keras's loop gives the same result with
#: zero_output_for_mask False and True (in processing order: rows end unmasked for the last output; rows are
#: masked-then-unmasked for the sequences)
HOOK_SERVED = {("left", False, False), ("left", True, False), ("right", False, True), ("right", True, True),
               ("holes", False, False), ("holes", False, True)}


# LSTM on the whole grid; GRU (same decision code, its own hook) on two served and two declined cases
HOOK_CASES = [("LSTM", kind, seq, back) for kind in HOOK_MASKS for seq in (False, True) for back in (False, True)]
HOOK_CASES += [("GRU", "left", True, False), ("GRU", "right", False, True), ("GRU", "holes", True, False),
               ("GRU", "right", False, False)]


@pytest.mark.parametrize("name,kind,return_sequences,go_backwards", HOOK_CASES, ids=[
    f"{n}-{k}-{'seq' if s else 'last'}-{'bwd' if b else 'fwd'}" for n, k, s, b in HOOK_CASES])
def test_enable_serves_masks_exactly_where_keras_ignores_zero_output(name, kind, return_sequences,
                                                                     go_backwards, calls):
    """Plain keras.layers.LSTM/GRU with a mask, zero_output_for_mask False and True: outputs, final states and
    gradients (weights, inputs, initial states) with enable() equal Keras's own loop (disable()); the hook
    runs fastrnn for exactly the HOOK_SERVED masks and hands the others to Keras's loop."""
    mask = torch.tensor(HOOK_MASKS[kind])
    x = _data(14)
    rng = np.random.default_rng(15)
    init = [rng.normal(size=(B, H)).astype(np.float32) for _ in range(N_STATES[name])]
    layers = []
    for zero_output in (False, True):
        _, stock = _pair(name, return_sequences=return_sequences, return_state=True, go_backwards=go_backwards,
                         zero_output_for_mask=zero_output)
        layers.append(stock)
    expected = [_run(layer, x, init, mask=mask) for layer in layers]
    with fk.enabled():
        got = [_run(layer, x, init, mask=mask) for layer in layers]
    served = (kind, return_sequences, go_backwards) in HOOK_SERVED
    assert calls["n"] == (2 if served else 0)
    for a, b in zip(got, expected):
        _assert_same(a, b)
    # the served masks are exactly those where Keras's own answer does not depend on the flag
    if served:
        _assert_same(expected[0], expected[1])
    else:
        assert not np.allclose(expected[0][0][0], expected[1][0][0])
