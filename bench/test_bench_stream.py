"""Streaming benchmark: one time step per call (B=1, state carried), the real-time use of issue 5.

Engines per call: fastrnn `layer.stream(1).step(x_t)`, a NumPy step (two vector-matrix products and
the gate math, the obvious hand-written peer), torch.nn.LSTMCell / GRUCell under inference_mode, and
onnxruntime on a T=1 model with the state fed back.  Each engine runs 5 steps first and must match the
float64 reference over those 5 steps (1e-4) before it is timed.  Medians in microseconds per call.
"""
import numpy as np
import pytest

from fastrnn import layers as L
from fastrnn import reference
from problems import Problem

import engines

CASES = [(cell, H) for cell in ("lstm", "gru") for H in (128, 512)]
ENGINE_NAMES = ("fastrnn", "numpy", "torch-cell", "onnxruntime")
STEPS = 5


def _weights(cell, H, seed=0):
    rng = np.random.default_rng(seed)
    G = 4 if cell == "lstm" else 3
    s = 1 / np.sqrt(H)
    bias = rng.uniform(-s, s, (2, G * H) if cell == "gru" else (G * H,))
    return {"kernel": rng.uniform(-s, s, (H, G * H)).astype(np.float32),
            "recurrent_kernel": rng.uniform(-s, s, (H, G * H)).astype(np.float32),
            "bias": bias.astype(np.float32)}


def _numpy_step(cell, w, H):
    k, r, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731

    if cell == "lstm":
        state = [np.zeros((1, H), np.float32), np.zeros((1, H), np.float32)]

        def step(x):
            z = x @ k + state[0] @ r + b
            i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
            state[1] = f * state[1] + i * g
            state[0] = o * np.tanh(state[1])
            return state[0]
    else:
        state = [np.zeros((1, H), np.float32)]

        def step(x):
            xz, rec = x @ k + b[0], state[0] @ r + b[1]
            zg, rg = sig(xz[:, :H] + rec[:, :H]), sig(xz[:, H:2 * H] + rec[:, H:2 * H])
            hh = np.tanh(xz[:, 2 * H:] + rg * rec[:, 2 * H:])
            state[0] = zg * state[0] + (1 - zg) * hh
            return state[0]
    return step


def _torch_step(cell, w, H):
    import torch

    m = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(H, H)
    with torch.no_grad():
        for name, value in engines.keras_to_torch(cell, H, w).items():
            getattr(m, name.replace("_l0", "")).copy_(torch.from_numpy(np.asarray(value, np.float32)))
    state = [None]

    def step(x):
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            state[0] = m(xt, state[0])
            return (state[0][0] if cell == "lstm" else state[0]).numpy()
    return step


def _ort_step(cell, w, H):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    model = engines.build_onnx_model(Problem(cell, 1, 1, H, H), w)
    # feed the state back: rebuild the graph inputs with initial_h (and initial_c)
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load_from_string(model)
    node = m.graph.node[0]
    node.input.extend(["", "initial_h"] + (["initial_c"] if cell == "lstm" else []))
    for name in ["initial_h"] + (["initial_c"] if cell == "lstm" else []):
        m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, H]))
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = ["Y_h"] + (["Y_c"] if cell == "lstm" else [])
    feed = {"initial_h": np.zeros((1, 1, H), np.float32)}
    if cell == "lstm":
        feed["initial_c"] = np.zeros((1, 1, H), np.float32)

    def step(x):
        feed["X"] = x[None]
        out = sess.run(names, feed)
        feed["initial_h"] = out[0]
        if cell == "lstm":
            feed["initial_c"] = out[1]
        return out[0][0]
    return step


def _fastrnn_step(cell, w, H):
    layer = L.LSTM(H) if cell == "lstm" else L.GRU(H)
    layer(np.zeros((1, 1, H), np.float32))
    layer.set_weights([w["kernel"], w["recurrent_kernel"], w["bias"]])
    return layer.stream(1).step


MAKERS = {"fastrnn": _fastrnn_step, "numpy": _numpy_step, "torch-cell": _torch_step, "onnxruntime": _ort_step}


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("cell,H", CASES, ids=[f"{c}-h{h}" for c, h in CASES])
def test_stream_step(benchmark, bench_options, cell, H, engine):
    if engine == "torch-cell":
        pytest.importorskip("torch", reason="torch not installed")
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
        pytest.importorskip("onnx", reason="onnx not installed (builds the ORT model)")
    w = _weights(cell, H)
    step = MAKERS[engine](cell, w, H)
    xs = np.random.default_rng(1).normal(size=(STEPS, 1, H)).astype(np.float32)
    got = np.stack([np.array(step(x), copy=True) for x in xs], axis=1)
    kw = {"reset_after": True} if cell == "gru" else {}
    ref, _ = getattr(reference, cell)(xs.transpose(1, 0, 2).astype(np.float64),
                                      *(w[k].astype(np.float64) for k in ("kernel", "recurrent_kernel", "bias")), **kw)
    err = np.abs(got.reshape(ref.shape) - ref).max()
    assert err < 1e-4, f"{engine} streaming {cell} H={H}: max error {err:.2e} against the reference"
    x = xs[0]
    benchmark.extra_info.update(engine=engine, cell=cell, problem=f"{cell}-stream-b1-h{H}", mode="stream",
                                threads=bench_options.threads)
    benchmark(step, x)
