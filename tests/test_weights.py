"""Weight converters (fastrnn._weights) between Keras, torch.nn and ONNX layouts, checked by round trips and
by running the converted weights in torch.nn and onnxruntime; and fastrnn.io.load_keras_weights against
Keras 3 models saved to .weights.h5 and .keras."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from checks import assert_close  # noqa: E402
from fastrnn import functional as F  # noqa: E402
from fastrnn import io as fio  # noqa: E402
from fastrnn import layers as L  # noqa: E402
from fastrnn._weights import (keras_to_onnx, keras_to_onnx_bidirectional, keras_to_torch, onnx_to_keras,  # noqa: E402
                              onnx_to_torch, from_torch, to_torch, torch_to_keras, torch_to_onnx)

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
# (cell, reset_after): GRU both ways
CELLS = [("lstm", True), ("gru", True), ("gru", False), ("simple_rnn", True)]
IDS = ["lstm", "gru", "gru_reset_before", "simple_rnn"]


def keras_weights(cell, reset_after=True, I=3, H=4, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    kernel = (0.5 * rng.standard_normal((I, G * H))).astype(np.float32)
    recurrent = (0.5 * rng.standard_normal((H, G * H))).astype(np.float32)
    shape = (2, G * H) if cell == "gru" and reset_after else (G * H,)
    return kernel, recurrent, (0.5 * rng.standard_normal(shape)).astype(np.float32) if bias else None


def equal(a, b):
    assert (a is None) == (b is None)
    if a is not None:
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("cell,reset_after", [c for c in CELLS if c != ("gru", False)], ids=lambda v: str(v))
def test_keras_torch_keras_round_trip(cell, reset_after):
    k, r, b = keras_weights(cell, reset_after)
    sd = keras_to_torch(cell, k, r, b, layer=1, reverse=True)
    assert sorted(sd) == ["bias_hh_l1_reverse", "bias_ih_l1_reverse", "weight_hh_l1_reverse", "weight_ih_l1_reverse"]
    k2, r2, b2 = torch_to_keras(cell, *(sd[f"{n}_l1_reverse"] for n in ("weight_ih", "weight_hh", "bias_ih",
                                                                          "bias_hh")))
    equal(k2, k), equal(r2, r), equal(b2, b)
    k3, r3, b3 = onnx_to_keras(cell, *torch_to_onnx(cell, *sd.values()))  # torch -> ONNX -> Keras too
    equal(k3, k), equal(r3, r), np.testing.assert_allclose(b3, b, atol=1e-7)


@pytest.mark.parametrize("cell,reset_after", CELLS, ids=IDS)
def test_keras_onnx_keras_round_trip(cell, reset_after):
    k, r, b = keras_weights(cell, reset_after)
    W, R, B = keras_to_onnx(cell, k, r, b)
    G, H = GATES[cell], r.shape[0]
    assert W.shape == (1, G * H, 3) and R.shape == (1, G * H, H) and B.shape == (1, 2 * G * H)
    back = onnx_to_keras(cell, W, R, B, linear_before_reset=int(reset_after))
    equal(back[0], k), equal(back[1], r), equal(back[2], b)
    # no bias: ONNX gets zeros, which come back as a zero bias
    assert not keras_to_onnx(cell, k, r, None, reset_after=reset_after)[2].any()
    assert onnx_to_keras(cell, W, R, None)[2] is None


@pytest.mark.parametrize("cell,reset_after", CELLS, ids=IDS)
def test_bidirectional_onnx_round_trip(cell, reset_after):
    fwd, bwd = keras_weights(cell, reset_after, seed=1), keras_weights(cell, reset_after, seed=2)
    W, R, B = keras_to_onnx_bidirectional(cell, fwd, bwd)
    assert W.shape[0] == R.shape[0] == B.shape[0] == 2
    for d, expected in enumerate((fwd, bwd)):
        got = onnx_to_keras(cell, W, R, B, direction=d, linear_before_reset=int(reset_after))
        for a, e in zip(got, expected):
            equal(a, e)
    with pytest.raises(ValueError, match="direction=0"):
        onnx_to_keras(cell, W, R, B)


def test_refusals():
    k, r, b = keras_weights("gru", reset_after=False)
    with pytest.raises(ValueError, match="reset_after=True"):
        keras_to_torch("gru", k, r, b, reset_after=False)
    with pytest.raises(ValueError, match="reset_after=True but the GRU bias"):
        keras_to_onnx("gru", k, r, b, reset_after=True)
    W, R, B = keras_to_onnx("gru", k, r, b)
    with pytest.raises(ValueError, match="linear_before_reset=1"):
        onnx_to_torch("gru", W, R, B, linear_before_reset=0)
    kl, rl, bl = keras_weights("lstm")
    Wl, Rl, Bl = keras_to_onnx("lstm", kl, rl, bl)
    with pytest.raises(ValueError, match="peephole"):
        onnx_to_keras("lstm", Wl, Rl, Bl, P=np.ones((1, 12), np.float32))
    with pytest.raises(ValueError, match="cell"):
        keras_to_onnx("lstmx", kl, rl, bl)
    with pytest.raises(ValueError, match="expects W"):
        onnx_to_keras("gru", Wl, Rl, Bl)


# ------------------------------------------------------------------------------------------ ONNX numerics
def run_onnx(cell, x_tbi, W, R, B, initial_h=None, initial_c=None, **attrs):
    """One ONNX LSTM/GRU/RNN node (opset 14) on onnxruntime: returns Y (T, D, B, H) and Y_h (D, B, H)."""
    op = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "RNN"}[cell]
    (T, Bn, _), D, H = x_tbi.shape, R.shape[0], R.shape[2]
    inputs = ["X", "W", "R", "B", "", "initial_h" if initial_h is not None else ""]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")]
    if initial_h is not None:
        inits.append(numpy_helper.from_array(initial_h, "initial_h"))
    if cell == "lstm" and initial_c is not None:
        inputs.append("initial_c")
        inits.append(numpy_helper.from_array(initial_c, "initial_c"))
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(op, inputs, ["Y", "Y_h"], hidden_size=H, **attrs)
    graph = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_tbi.shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, (T, D, Bn, H)),
                               helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, (D, Bn, H))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x_tbi})


@pytest.mark.parametrize("cell,reset_after", CELLS, ids=IDS)
def test_onnx_runtime_equals_fastrnn(cell, reset_after):
    rng = np.random.default_rng(5)
    T, Bn, I, H = 6, 3, 3, 4
    k, r, b = keras_weights(cell, reset_after, I, H)
    x = rng.standard_normal((T, Bn, I)).astype(np.float32)
    h0 = rng.standard_normal((Bn, H)).astype(np.float32)
    attrs = {"linear_before_reset": int(reset_after)} if cell == "gru" else {}
    W, R, B = keras_to_onnx(cell, k, r, b)
    y, yh = run_onnx(cell, x, W, R, B, initial_h=h0[None], **attrs)
    kw = {"reset_after": reset_after} if cell == "gru" else {}
    states = [h0, np.zeros_like(h0)] if cell == "lstm" else [h0]
    out, final = getattr(F, cell)(x, k, r, b, initial_state=states, time_major=True, **kw)
    assert_close("Y", y[:, 0], out, 1e-5)
    assert_close("Y_h", yh[0], final[0], 1e-5)

    # ONNX -> Keras of a node with a nonzero recurrent bias (what exporters write), then fastrnn
    B2 = rng.standard_normal(B.shape).astype(np.float32)
    y2, _ = run_onnx(cell, x, W, R, B2, **attrs)
    out2, _ = getattr(F, cell)(x, *onnx_to_keras(cell, W, R, B2, linear_before_reset=int(reset_after)),
                               time_major=True, **kw)
    assert_close("Y from ONNX weights", y2[:, 0], out2, 1e-5)


@pytest.mark.parametrize("cell,reset_after", CELLS, ids=IDS)
def test_onnx_bidirectional_equals_fastrnn(cell, reset_after):
    rng = np.random.default_rng(6)
    T, Bn, I, H = 5, 2, 3, 4
    fwd, bwd = keras_weights(cell, reset_after, I, H, seed=1), keras_weights(cell, reset_after, I, H, seed=2)
    x = rng.standard_normal((T, Bn, I)).astype(np.float32)
    attrs = {"linear_before_reset": int(reset_after)} if cell == "gru" else {}
    y, yh = run_onnx(cell, x, *keras_to_onnx_bidirectional(cell, fwd, bwd), direction="bidirectional", **attrs)
    kw = {"reset_after": reset_after} if cell == "gru" else {}
    out_f, fin_f = getattr(F, cell)(x, *fwd, time_major=True, **kw)
    out_b, fin_b = getattr(F, cell)(x, *bwd, time_major=True, go_backwards=True, **kw)
    assert_close("Y forward", y[:, 0], out_f, 1e-5)
    assert_close("Y reverse (input order)", y[:, 1], out_b[::-1], 1e-5)
    assert_close("Y_h", yh, np.stack([fin_f[0], fin_b[0]]), 1e-5)


# ------------------------------------------------------------------------------------------ torch numerics
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_torch_nn_equals_fastrnn(cell):
    k, r, b = keras_weights(cell, True, 3, 4, seed=7)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple_rnn": torch.nn.RNN}[cell]
    module = cls(3, 4, batch_first=True)
    module.load_state_dict({n: torch.from_numpy(v) for n, v in keras_to_torch(cell, k, r, b).items()})
    x = np.random.default_rng(8).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        y, _ = module(torch.from_numpy(x))
    assert_close("torch output", y.numpy(), getattr(F, cell)(x, k, r, b)[0], 1e-5)


@pytest.mark.parametrize("kind,options", [
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(batch_first=False)),
    ("RNN", dict(nonlinearity="relu", bias=False, batch_first=True, bidirectional=True)),
], ids=["lstm-2-layers-bidirectional", "gru-time-major", "rnn-relu-no-bias"])
def test_from_torch_and_back(kind, options):
    torch.manual_seed(0)
    module = getattr(torch.nn, kind)(3, 4, **options)
    converted = from_torch(module)
    stack = converted if isinstance(converted, list) else [converted]
    assert len(stack) == module.num_layers
    assert isinstance(stack[0], L.Bidirectional) == module.bidirectional
    x = torch.randn((2, 5, 3) if module.batch_first else (5, 2, 3))
    with torch.no_grad():
        expected = module(x)[0].numpy()
    h = x.numpy()
    for layer in stack:
        h = layer(h)
    assert_close("from_torch output", h, expected, 1e-5)
    back = to_torch(converted)
    assert type(back) is type(module) and back.batch_first == module.batch_first
    with torch.no_grad():
        assert_close("to_torch output", back(x)[0].numpy(), expected, 1e-5)


def test_to_torch_refuses_what_torch_cannot_compute():
    gru = L.GRU(4, reset_after=False)
    gru.build((None, None, 3))
    with pytest.raises(ValueError, match="reset_after"):
        to_torch(gru)
    lstm = L.LSTM(4, activation="relu")
    lstm.build((None, None, 3))
    with pytest.raises(ValueError, match="activations"):
        to_torch(lstm)


# ------------------------------------------------------------------------------------------ Keras 3 files
def _keras_and_twin(arch):
    """A Keras model and its fastrnn.layers twin (fresh, different weights) for an architecture name."""
    K, Lf = keras.layers, L
    if arch == "embedding-lstm-dense":
        spec = lambda m: [m.Embedding(30, 6, mask_zero=True), m.LSTM(5), m.Dense(3)]  # noqa: E731
        shape, ids = (None,), True
    elif arch == "gru-stack":
        spec = lambda m: [m.GRU(5, return_sequences=True), m.GRU(4, reset_after=False), m.Dense(2)]  # noqa: E731
        shape, ids = (None, 3), False
    elif arch == "bidirectional":
        spec = lambda m: [m.Embedding(30, 6, mask_zero=True),  # noqa: E731
                          m.Bidirectional(m.SimpleRNN(4, return_sequences=True)),
                          m.Bidirectional(m.LSTM(3)), m.BatchNormalization(), m.Dense(2)]
        shape, ids = (None,), True
    else:  # stacked cells in RNN
        spec = lambda m: [m.RNN([m.GRUCell(4), m.SimpleRNNCell(3), m.LSTMCell(2)]), m.Dense(2)]  # noqa: E731
        shape, ids = (None, 3), False
    km = keras.Sequential([keras.Input(shape)] + spec(K))
    fm = Lf.Sequential([Lf.Input(shape)] + spec(Lf))
    rng = np.random.default_rng(0)
    if ids:
        x = rng.integers(1, 30, (4, 7))
        x[1, 5:] = 0  # padding: masked steps
    else:
        x = rng.standard_normal((4, 7, 3)).astype(np.float32)
    for layer in km.layers:  # non-trivial batch-norm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.standard_normal(layer.moving_mean.shape) * 0.1)
            layer.moving_variance.assign(rng.random(layer.moving_variance.shape) + 0.5)
    return km, fm, x


@pytest.mark.parametrize("arch", ["embedding-lstm-dense", "gru-stack", "bidirectional", "stacked-cells"])
def test_load_keras_weights_equals_keras_predictions(arch, tmp_path):
    km, fm, x = _keras_and_twin(arch)
    expected = km.predict(x, verbose=0)
    km.save_weights(tmp_path / "model.weights.h5")
    km.save(tmp_path / "model.keras")
    for name in ("model.weights.h5", "model.keras"):
        fm.set_weights([np.zeros_like(w) for w in fm.get_weights()])
        assert fio.load_keras_weights(fm, tmp_path / name) is fm
        assert_close(f"{arch} from {name}", fm(x), expected, 1e-5)
        for a, b in zip(fm.get_weights(), km.get_weights()):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_load_one_layer_and_mismatches(tmp_path):
    km, _, x = _keras_and_twin("gru-stack")
    km.save_weights(tmp_path / "m.weights.h5")
    gru = L.GRU(4, reset_after=False)
    gru.build((None, None, 5))
    fio.load_keras_weights(gru, tmp_path / "m.weights.h5", layer_path="layers/gru_1")
    np.testing.assert_array_equal(gru.cell.kernel, km.layers[1].cell.kernel.numpy())

    wrong = L.Sequential([L.Input((None, 3)), L.GRU(5, return_sequences=True), L.GRU(3, reset_after=False),
                          L.Dense(2)])
    before = [w.copy() for w in wrong.get_weights()]
    with pytest.raises(ValueError, match=r"layers/gru_1/cell/vars/0 has shape \(5, 12\)"):
        fio.load_keras_weights(wrong, tmp_path / "m.weights.h5")
    for a, b in zip(wrong.get_weights(), before):  # nothing written on failure
        np.testing.assert_array_equal(a, b)
    other = L.Sequential([L.Input((None, 3)), L.LSTM(5), L.Dense(2)])
    with pytest.raises(ValueError, match="no group 'layers/lstm'"):
        fio.load_keras_weights(other, tmp_path / "m.weights.h5")
    unbuilt = L.Sequential([L.GRU(5)])
    with pytest.raises(ValueError, match="not built"):
        fio.load_keras_weights(unbuilt, tmp_path / "m.weights.h5")
