"""The torch autograd bridge (fastrnn/_torch_autograd.py): torch.autograd.gradcheck in float64 through
every cell with masks, go_backwards, initial states and no bias; gradients equal fastrnn.functional's;
the backward reuses the forward's residuals (no second forward); in-place changes of saved inputs are
refused, of h0/c0/bias allowed; non-CPU tensors refused.  torch.compile / torch.func: test_torch_compile."""
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


def test_backward_does_not_run_the_forward_again(monkeypatch):
    """The forward op hands its residuals to the backward op: one compiled forward loop per training step."""
    from fastrnn import _compiled

    calls = []
    real = _compiled.engine.forward
    monkeypatch.setattr(_compiled.engine, "forward",
                        lambda ws, spec, *plan: (calls.append(spec.cell), real(ws, spec, *plan)))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 3, generator=g, requires_grad=True)
    k, r = torch.randn(3, 12, generator=g).requires_grad_(), torch.randn(4, 12, generator=g).requires_grad_()
    out, (h,) = rnn("gru", x, k, r, mask=torch.tensor([[1, 1, 0, 1, 1], [1, 0, 0, 1, 1]]))
    (out.sum() + h.square().sum()).backward()
    assert calls == ["gru"]
    assert x.grad is not None and k.grad.abs().sum() > 0 and r.grad.abs().sum() > 0


def test_in_place_update_of_states_and_bias_after_forward_is_allowed():
    """h0, c0 and bias are copied by the forward (a stateful Keras layer assigns its state variables in
    place before backward): the gradients are those of the values the forward saw."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, generator=g)
    k, r, b = (torch.randn(*s, generator=g).requires_grad_() for s in [(3, 16), (4, 16), (16,)])
    h0, c0 = (torch.randn(2, 4, generator=g).requires_grad_() for _ in range(2))

    def grads(update):
        out, (h, c) = rnn("lstm", x, k, r, b, h0, c0)
        loss = out.square().sum() + h.sum() + c.sum()
        if update:
            with torch.no_grad():
                h0.copy_(h)
                c0.copy_(c)
                b.mul_(2)
        result = torch.autograd.grad(loss, (k, r, b, h0, c0))
        return result

    saved = [t.detach().clone() for t in (b, h0, c0)]
    expected = grads(update=False)
    got = grads(update=True)
    with torch.no_grad():  # the in-place update did happen (so the check above is not vacuous)
        assert not torch.equal(h0, saved[1]) and not torch.equal(b, saved[0])
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_refuses_non_cpu_tensors_and_keeps_dropout_masks_constant():
    x = torch.zeros(2, 3, 4)
    k, r = torch.zeros(4, 8), torch.zeros(2, 8)
    # a meta tensor stands in for a CUDA one (the same device check)
    with pytest.raises(ValueError, match="CPU tensors; got a tensor on meta"):
        rnn("simple_rnn", x, torch.zeros(4, 2, device="meta"), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="mask: expected a bool"):
        rnn("gru", x, torch.zeros(4, 6), torch.zeros(2, 6), mask=torch.ones(2, 3))
    with pytest.raises(TypeError, match="activation"):
        rnn("lstm", x, k, r, activation=torch.tanh)
    dm = torch.ones(2, 4, requires_grad=True)
    kk = torch.randn(4, 8, requires_grad=True)
    out, _ = rnn("lstm", torch.randn(2, 3, 4), kk, torch.randn(2, 8), dropout_mask=dm)
    out.sum().backward()
    assert dm.grad is None and kk.grad is not None


def test_backward_from_residuals_checks_its_arrays_and_only_reads_them():
    from fastrnn import _compiled
    from fastrnn._spec import build_spec

    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 3))
    k, r = rng.normal(size=(3, 16)) * 0.5, rng.normal(size=(4, 16)) * 0.5
    spec, arrays = build_spec("lstm", x, k, r, mask=np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], bool))
    out, states, res = _compiled.forward_residuals(spec, arrays)
    d_out = rng.normal(size=out.shape)
    with pytest.raises(ValueError, match=r"residuals\['hp'\]: expected a float64 array of shape \(10, 4\)"):
        _compiled.backward_from_residuals(spec, arrays, {**res, "hp": res["hp"][:-1]}, d_out)
    with pytest.raises(TypeError, match=r"residuals\['c_last'\]: expected a NumPy array"):
        _compiled.backward_from_residuals(spec, arrays, {**res, "c_last": None}, d_out)
    kept = {name: None if a is None else a.copy() for name, a in res.items()}
    first = _compiled.backward_from_residuals(spec, arrays, res, d_out, [None, np.ones((2, 4))])
    second = _compiled.backward_from_residuals(spec, arrays, res, d_out, [None, np.ones((2, 4))])
    for name, a in res.items():
        assert (a is None) == (kept[name] is None) and (a is None or np.array_equal(a, kept[name]))
    _, _, backward = F.lstm_vjp(x, k, r, mask=arrays.mask)
    ref = backward(d_out, [None, np.ones((2, 4))])
    for key in ("x", "kernel", "recurrent_kernel"):
        np.testing.assert_array_equal(first[key], ref[key])
        np.testing.assert_array_equal(second[key], ref[key])
    assert first["bias"] is None
