"""The compiled engine against torch.nn.LSTM / GRU / RNN (an independent implementation): outputs,
final states, and every gradient through torch autograd, in float32 and float64, with go_backwards,
time_major, initial states and B=1.  Weights go through fastrnn._weights.keras_to_torch."""
import numpy as np
import pytest

from checks import assert_close, assert_grad_close
from fastrnn import functional as F
from fastrnn._weights import keras_to_torch, torch_to_keras

torch = pytest.importorskip("torch")

TORCH_TOL = {np.float64: (1e-10, 1e-10), np.float32: (2e-5, 1e-4)}  # (outputs, gradients)
CASES = [("lstm", "tanh"), ("gru", "tanh"), ("simple_rnn", "tanh"), ("simple_rnn", "relu")]


def torch_module(cell, I, H, activation, weights, dtype):
    if cell == "lstm":
        m = torch.nn.LSTM(I, H, batch_first=True)
    elif cell == "gru":
        m = torch.nn.GRU(I, H, batch_first=True)
    else:
        m = torch.nn.RNN(I, H, nonlinearity=activation, batch_first=True)
    m = m.to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for name, value in keras_to_torch(cell, *weights).items():
            getattr(m, name).copy_(torch.from_numpy(np.asarray(value, dtype)))
    return m


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,activation", CASES, ids=[f"{c}-{a}" for c, a in CASES])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("time_major", [False, True], ids=["bm", "tm"])
@pytest.mark.parametrize("shape", [(7, 3, 17, 34), (1, 1, 5, 8), (40, 1, 17, 34)], ids=["t7b3", "t1b1", "t40b1"])
def test_matches_torch(cell, activation, go_backwards, time_major, shape, dtype):
    T, B, I, H = shape
    rng = np.random.default_rng(T * 1000 + B * 100 + I)
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    s = 1 / np.sqrt(H)
    weights = [rng.uniform(-s, s, (I, G * H)).astype(dtype), rng.uniform(-s, s, (H, G * H)).astype(dtype),
               rng.uniform(-s, s, (2, G * H) if cell == "gru" else (G * H,)).astype(dtype)]
    x = rng.normal(size=(B, T, I)).astype(dtype)
    n_states = 2 if cell == "lstm" else 1
    init = [rng.normal(size=(B, H)).astype(dtype) for _ in range(n_states)]
    d_out = rng.normal(size=(B, T, H)).astype(dtype)
    d_states = [rng.normal(size=(B, H)).astype(dtype) for _ in range(n_states)]

    # torch: batch-first, reads time forwards; go_backwards == torch on the flipped input
    m = torch_module(cell, I, H, activation, weights, dtype)
    xt = torch.from_numpy((x[:, ::-1] if go_backwards else x).copy()).requires_grad_()
    h0 = [torch.from_numpy(s[None]).requires_grad_() for s in init]
    out_t, st = m(xt, tuple(h0) if cell == "lstm" else h0[0])
    st = list(st) if cell == "lstm" else [st]
    loss = (out_t * torch.from_numpy(d_out)).sum() + sum((a[0] * torch.from_numpy(d)).sum()
                                                         for a, d in zip(st, d_states))
    loss.backward()

    kw = {"activation": activation, "initial_state": init, "go_backwards": go_backwards, "time_major": time_major}
    to_layout = (lambda a: np.ascontiguousarray(a.transpose(1, 0, 2))) if time_major else (lambda a: a)
    out, states, backward = getattr(F, cell + "_vjp")(to_layout(x), *weights, engine="compiled", **kw)
    grads = backward(to_layout(d_out), d_states)

    otol, gtol = TORCH_TOL[dtype]
    assert_close("outputs", to_layout(out), out_t.detach().numpy(), otol)
    for k, (a, b) in enumerate(zip(states, st)):
        assert_close(f"final_states[{k}]", a, b[0].detach().numpy(), otol)
    dx_t = xt.grad.numpy()
    assert_grad_close("dx", to_layout(grads["x"]), dx_t[:, ::-1] if go_backwards else dx_t, gtol)
    for k, (a, b) in enumerate(zip(grads["initial_state"], h0)):
        assert_grad_close(f"dinitial_state[{k}]", a, b.grad.numpy()[0], gtol)
    tg = {n: p.grad.numpy() for n, p in m.named_parameters()}
    dW, dR, db = torch_to_keras(cell, tg["weight_ih_l0"], tg["weight_hh_l0"], tg["bias_ih_l0"], tg["bias_hh_l0"])
    assert_grad_close("dkernel", grads["kernel"], dW, gtol)
    assert_grad_close("drecurrent_kernel", grads["recurrent_kernel"], dR, gtol)
    if cell == "gru":
        assert_grad_close("dbias", grads["bias"], db, gtol)
    else:  # torch's two biases get the same gradient; Keras has one
        assert_grad_close("dbias", grads["bias"], tg["bias_ih_l0"], gtol)
