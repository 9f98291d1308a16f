"""Gradients of the compiled engine against float64 central finite differences of the compiled forward
itself (an oracle that shares no code with the backward pass), for every cell and the options that
change the backward: masks with holes, go_backwards, both dropout masks, initial states, no bias."""
import numpy as np
import pytest

from checks import numeric_grad
from fastrnn import functional as F

VARIANTS = [("lstm", {}), ("gru", {"reset_after": True}), ("gru", {"reset_after": False}), ("simple_rnn", {})]


@pytest.mark.parametrize("cell,extra", VARIANTS, ids=["lstm", "gru-ra", "gru-rb", "simple_rnn"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_finite_differences(cell, extra, go_backwards, use_bias):
    rng = np.random.default_rng(42)
    T, B, I, H = 5, 2, 3, 4
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    x = rng.normal(size=(B, T, I))
    kernel = rng.normal(size=(I, G * H)) * 0.5
    recurrent = rng.normal(size=(H, G * H)) * 0.5
    bias = rng.normal(size=(2, G * H) if extra.get("reset_after", cell == "gru") else (G * H,)) * 0.5
    bias = bias if use_bias else None
    init = [rng.normal(size=(B, H)) for _ in range(2 if cell == "lstm" else 1)]
    mask = np.array([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1]], bool)
    kw = dict(extra, mask=mask, go_backwards=go_backwards, initial_state=init,
              dropout_mask=rng.uniform(0.5, 1.5, (B, I)), recurrent_dropout_mask=rng.uniform(0.5, 1.5, (B, H)))
    r_out = rng.normal(size=(B, T, H))
    r_states = [rng.normal(size=(B, H)) for _ in init]

    def loss():
        out, states = getattr(F, cell)(x, kernel, recurrent, bias, **kw)
        return float((out * r_out).sum() + sum((s * r).sum() for s, r in zip(states, r_states)))

    _, _, backward = getattr(F, cell + "_vjp")(x, kernel, recurrent, bias, **kw)
    grads = backward(r_out, r_states)
    arrays = {"x": x, "kernel": kernel, "recurrent_kernel": recurrent}
    if use_bias:
        arrays["bias"] = bias
    for name, a in arrays.items():
        np.testing.assert_allclose(grads[name], numeric_grad(loss, a), rtol=1e-6, atol=1e-7, err_msg=name)
    for k, s in enumerate(init):
        np.testing.assert_allclose(grads["initial_state"][k], numeric_grad(loss, s), rtol=1e-6, atol=1e-7,
                                   err_msg=f"initial_state[{k}]")
    if not use_bias:
        assert grads["bias"] is None
