"""The torch autograd bridge (fastrnn/_torch_autograd.py): torch.autograd.gradcheck in float64 through
every cell with masks, go_backwards, initial states and no bias; gradients equal fastrnn.functional's."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastrnn import functional as F  # noqa: E402
from fastrnn._torch_autograd import rnn  # noqa: E402

CASES = [("lstm", True), ("gru", True), ("gru", False), ("simple_rnn", True)]


@pytest.mark.parametrize("cell,reset_after", CASES, ids=["lstm", "gru-ra", "gru-rb", "simple_rnn"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(cell, reset_after, use_bias):
    g = torch.Generator().manual_seed(0)
    B, T, I, H = 2, 4, 3, 5
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    x = torch.randn(B, T, I, generator=g).to(torch.float64).requires_grad_()
    k = torch.randn(I, G * H, generator=g).to(torch.float64).requires_grad_()
    r = torch.randn(H, G * H, generator=g).to(torch.float64).requires_grad_()
    bias_shape = (2, G * H) if cell == "gru" and reset_after else (G * H,)
    b = torch.randn(*bias_shape, generator=g).to(torch.float64).requires_grad_() if use_bias else None
    h0 = torch.randn(B, H, generator=g).to(torch.float64).requires_grad_()
    c0 = torch.randn(B, H, generator=g).to(torch.float64).requires_grad_() if cell == "lstm" else None
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)

    def f(*args):
        x_, k_, r_, h0_ = args[:4]
        b_ = args[4] if use_bias else None
        c0_ = args[-1] if cell == "lstm" else None
        out, states = rnn(cell, x_, k_, r_, b_, h0_, c0_, mask=mask, go_backwards=True, reset_after=reset_after)
        return (out, *states)

    args = (x, k, r, h0) + ((b,) if use_bias else ()) + ((c0,) if cell == "lstm" else ())
    assert torch.autograd.gradcheck(f, args)


def test_matches_functional_and_keeps_inputs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, 4)).astype(np.float32)
    k, r, b = (rng.normal(size=s).astype(np.float32) * 0.3 for s in [(4, 20), (5, 20), (20,)])
    tensors = [torch.from_numpy(a.copy()).requires_grad_() for a in (x, k, r, b)]
    out, (h, c) = rnn("lstm", *tensors)
    (out.sum() + 2 * h.sum() + 3 * c.sum()).backward()
    ref_out, ref_states, backward = F.lstm_vjp(x, k, r, b)
    grads = backward(np.ones_like(ref_out), [np.full_like(ref_states[0], 2), np.full_like(ref_states[1], 3)])
    np.testing.assert_array_equal(out.detach().numpy(), ref_out)
    for t, key in zip(tensors, ("x", "kernel", "recurrent_kernel", "bias")):
        np.testing.assert_allclose(t.grad.numpy(), grads[key], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(tensors[0].detach().numpy(), x)


def test_rejects_bad_arguments():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="cell"):
        rnn("conv", x, torch.zeros(4, 8), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="h0 and c0"):
        rnn("lstm", x, torch.zeros(4, 8), torch.zeros(2, 8), None, torch.zeros(2, 2))


def test_in_place_change_after_forward_is_refused():
    """The backward reads the inputs' memory: torch's version check must fire, not wrong gradients."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g)
    k, r = torch.randn(3, 16, generator=g).requires_grad_(), torch.randn(4, 16, generator=g).requires_grad_()
    out, (h, c) = rnn("lstm", x, k, r)
    loss = out.square().sum() + h.sum()
    with torch.no_grad():
        x.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
