"""torch.compile and torch.func through fastrnn's torch custom ops (fastrnn/_torch_autograd.py).

- torch.compile(fullgraph=True) of fastrnn.torch.LSTM / GRU / RNN: outputs and gradients (input, hx, every
  parameter) equal eager fastrnn and torch.nn;
- a compiled function calling `rnn` with every option (mask, go_backwards, time_major, dropout masks);
- torch.func.grad / vjp / vmap against plain autograd and a Python loop;
- torch.library.opcheck on both ops (schema, autograd registration, fake tensors, aot dispatch with
  dynamic shapes) on float32/float64 samples with masks, states, dropout masks and no bias.

Shapes are tiny (I=5, H=6, T=4, B=3) and compiles few: torch.compile costs seconds per graph.
"""
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from fastrnn import functional as F  # noqa: E402
from fastrnn._torch_autograd import rnn, rnn_backward, rnn_forward  # noqa: E402

B, T, I, H = 3, 4, 5, 6
G = {"lstm": 4, "gru": 3, "simple_rnn": 1}
MASK = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)


def _backend():
    """inductor where it can build its C++ kernels (it needs a C++ compiler), else aot_eager (the same
    graph capture and autograd tracing, run without code generation)."""
    return "inductor" if any(shutil.which(c) for c in ("g++", "c++", "clang++")) else "aot_eager"


BACKEND = _backend()


def _weights(cell, dtype=torch.float64, seed=0, bias=True, reset_after=True):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(I, G[cell] * H, generator=g, dtype=dtype) * 0.4
    r = torch.randn(H, G[cell] * H, generator=g, dtype=dtype) * 0.4
    b = None
    if bias:
        b = torch.randn(*((2, 3 * H) if cell == "gru" and reset_after else (G[cell] * H,)), generator=g,
                        dtype=dtype) * 0.3
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    c0 = torch.randn(B, H, generator=g, dtype=dtype) if cell == "lstm" else None
    x = torch.randn(B, T, I, generator=g, dtype=dtype)
    return x, k, r, b, h0, c0


def _grads_of(module, x, hx):
    """(output, h_n, [d_x, d_hx..., d_params...]) for a fixed loss touching outputs and final states."""
    x = x.detach().clone().requires_grad_()
    hx = tuple(h.detach().clone().requires_grad_() for h in hx)
    module.zero_grad()
    out, h_n = module(x, hx if len(hx) == 2 else hx[0])
    states = h_n if isinstance(h_n, tuple) else (h_n,)
    loss = (out * torch.linspace(-1, 1, out.shape[-1])).square().sum() + sum((k + 1) * s.sum()
                                                                             for k, s in enumerate(states))
    loss.backward()
    return out.detach(), [s.detach() for s in states], [x.grad, *(h.grad for h in hx),
                                                         *(p.grad.clone() for p in module.parameters())]


MODULES = [
    (ft.LSTM, torch.nn.LSTM, dict(batch_first=True, bidirectional=True)),
    (ft.GRU, torch.nn.GRU, dict(batch_first=False)),
    (ft.RNN, torch.nn.RNN, dict(batch_first=True, nonlinearity="relu")),
]


@pytest.mark.parametrize("ours,theirs,kw", MODULES, ids=["lstm-bidirectional-batch_first", "gru-time_major",
                                                         "rnn-relu-batch_first"])
def test_compile_fullgraph_matches_eager_and_torch_nn(ours, theirs, kw):
    torch.manual_seed(0)
    model = ours(I, H, **kw)
    reference = theirs(I, H, **kw)
    reference.load_state_dict(model.state_dict())
    D = 2 if kw.get("bidirectional") else 1
    x = torch.randn(B, T, I) if kw.get("batch_first") else torch.randn(T, B, I)
    hx = tuple(torch.randn(D, B, H) for _ in range(2 if ours is ft.LSTM else 1))

    compiled = torch.compile(model, backend=BACKEND, fullgraph=True)  # fullgraph: a graph break raises
    got = _grads_of(compiled, x, hx)
    eager = _grads_of(model, x, hx)
    ref = _grads_of(reference, x, hx)

    torch.testing.assert_close(got[0], eager[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b, c in zip(got[1], eager[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    assert len(got[2]) == len(ref[2]) == len(hx) + 1 + len(list(model.parameters()))
    for a, b, c in zip(got[2], eager[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_compile_rnn_with_every_option():
    """One compiled function over `rnn` with a mask, go_backwards, time_major, both dropout masks and
    GRU reset_after=False: the same outputs and gradients as eager."""
    x, k, r, b, h0, _ = _weights("gru", torch.float32, seed=3, reset_after=False)
    xt = x.transpose(0, 1).contiguous()
    g = torch.Generator().manual_seed(4)
    dm = (torch.rand(B, I, generator=g) > 0.3).float() / 0.7
    rdm = (torch.rand(B, H, generator=g) > 0.3).float() / 0.7

    def loss(x_, k_, r_, b_, h0_):
        out, (h,) = rnn("gru", x_, k_, r_, b_, h0_, mask=MASK, go_backwards=True, time_major=True,
                        reset_after=False, recurrent_activation="hard_sigmoid", dropout_mask=dm,
                        recurrent_dropout_mask=rdm)
        return out.square().sum() + 3 * h.sum(), out

    args = [t.clone().requires_grad_() for t in (xt, k, r, b, h0)]
    compiled = torch.compile(loss, backend=BACKEND, fullgraph=True)
    value, out = compiled(*args)
    grads = torch.autograd.grad(value, args)
    args_e = [t.clone().requires_grad_() for t in (xt, k, r, b, h0)]
    value_e, out_e = loss(*args_e)
    grads_e = torch.autograd.grad(value_e, args_e)
    torch.testing.assert_close(out, out_e, rtol=1e-6, atol=1e-6)
    for a, e in zip(grads, grads_e):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert any(a.abs().sum() > 0 for a in grads)


# -- torch.func -----------------------------------------------------------------------------------------

CASES = [("lstm", True, True), ("gru", True, True), ("gru", False, False), ("simple_rnn", True, True)]
CASE_IDS = ["lstm", "gru-ra", "gru-rb-nobias", "simple_rnn"]


def _loss(cell, reset_after, **kw):
    def f(x, k, r, b, h0, c0):
        out, states = rnn(cell, x, k, r, b, h0, c0, mask=MASK, reset_after=reset_after, **kw)
        w = torch.arange(1.0, H + 1, dtype=x.dtype)
        return (out * w).tanh().sum() + sum((i + 2) * s.square().sum() for i, s in enumerate(states))
    return f


@pytest.mark.parametrize("cell,reset_after,bias", CASES, ids=CASE_IDS)
def test_func_grad_matches_autograd(cell, reset_after, bias):
    x, k, r, b, h0, c0 = _weights(cell, bias=bias, reset_after=reset_after)
    f = _loss(cell, reset_after, go_backwards=True)
    argnums = tuple(i for i, t in enumerate((x, k, r, b, h0, c0)) if t is not None)
    got = torch.func.grad(f, argnums=argnums)(x, k, r, b, h0, c0)
    leaves = [None if t is None else t.clone().requires_grad_() for t in (x, k, r, b, h0, c0)]
    f(*leaves).backward()
    expected = [leaves[i].grad for i in argnums]
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_func_vjp_matches_autograd_grad():
    x, k, r, b, h0, c0 = _weights("lstm")

    def f(x_, k_, h0_):
        out, (h, c) = rnn("lstm", x_, k_, r, b, h0_, c0, mask=MASK)
        return out, h, c

    primals, vjp_fn = torch.func.vjp(f, x, k, h0)
    g = torch.Generator().manual_seed(9)
    cotangents = tuple(torch.randn(p.shape, generator=g, dtype=p.dtype) for p in primals)
    got = vjp_fn(cotangents)
    leaves = [t.clone().requires_grad_() for t in (x, k, h0)]
    expected = torch.autograd.grad(f(*leaves), leaves, cotangents)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    # only a final-state cotangent (outputs' is zero): the None-as-zeros path of the backward op
    got_h = torch.func.vjp(lambda x_: f(x_, k, h0)[1], x)[1](cotangents[1])[0]
    x_leaf = x.clone().requires_grad_()
    expected_h = torch.autograd.grad(f(x_leaf, k, h0)[1], x_leaf, cotangents[1])[0]
    torch.testing.assert_close(got_h, expected_h, rtol=1e-12, atol=1e-12)


def test_vmap_and_per_example_grads_match_a_loop():
    """vmap runs the ops once per example (register_vmap loop): outputs and per-example gradients equal
    a Python loop, with batched and shared (in_dims None) arguments."""
    x, k, r, b, h0, c0 = _weights("lstm")
    xs = torch.stack([x, 2 * x, -x])
    f = _loss("lstm", True)
    outs = torch.func.vmap(lambda x_: rnn("lstm", x_, k, r, b, h0, c0, mask=MASK)[0])(xs)
    grads = torch.func.vmap(torch.func.grad(f, argnums=(0, 1)), in_dims=(0, None, None, None, None, None))(
        xs, k, r, b, h0, c0)
    for n in range(xs.shape[0]):
        torch.testing.assert_close(outs[n], rnn("lstm", xs[n], k, r, b, h0, c0, mask=MASK)[0])
        dx, dk = torch.func.grad(f, argnums=(0, 1))(xs[n], k, r, b, h0, c0)
        torch.testing.assert_close(grads[0][n], dx, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[1][n], dk, rtol=1e-12, atol=1e-12)


def test_double_backward_is_refused_clearly():
    x, k, r, b, h0, c0 = _weights("simple_rnn")
    k.requires_grad_()
    out, _ = rnn("simple_rnn", x, k, r, b, h0)
    (dk,) = torch.autograd.grad(out.square().sum(), k, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        dk.sum().backward()


# -- opcheck ----------------------------------------------------------------------------------------------

OPCHECK = [
    ("lstm", torch.float32, dict(mask=True, state=True, bias=True)),
    ("lstm", torch.float64, dict(mask=False, state=False, bias=False, time_major=True, dropout=True)),
    ("gru", torch.float32, dict(mask=True, state=True, bias=True, reset_after=False, go_backwards=True)),
    ("gru", torch.float64, dict(mask=True, state=False, bias=True, dropout=True)),
    ("simple_rnn", torch.float64, dict(mask=True, state=True, bias=True, zero_output=True)),
]


def _op_args(cell, dtype, mask=False, state=False, bias=True, time_major=False, dropout=False,
             reset_after=True, go_backwards=False, zero_output=False):
    x, k, r, b, h0, c0 = _weights(cell, dtype, seed=5, bias=bias, reset_after=reset_after)
    if time_major:
        x = x.transpose(0, 1).contiguous()
    g = torch.Generator().manual_seed(6)
    dm = (torch.rand(B, I, generator=g) > 0.3).to(dtype) if dropout else None
    rdm = (torch.rand(B, H, generator=g) > 0.3).to(dtype) if dropout else None
    tensors = [x, k, r, b, h0 if state else None, c0 if state else None, MASK if mask else None, dm, rdm]
    options = [cell, go_backwards, time_major, "tanh", "sigmoid", zero_output, reset_after]
    return tensors, options


@pytest.mark.parametrize("cell,dtype,kw", OPCHECK, ids=[f"{c}-{str(d)[6:]}-{i}" for i, (c, d, _) in
                                                        enumerate(OPCHECK)])
def test_opcheck(cell, dtype, kw):
    tensors, options = _op_args(cell, dtype, **kw)
    # forward op with gradients wanted (checks the autograd registration too)
    diff = [t.clone().requires_grad_() if t is not None and t.is_floating_point() and i < 6 else t
            for i, t in enumerate(tensors)]
    torch.library.opcheck(rnn_forward, (*diff, *options))
    # backward op on the forward's residuals, with cotangents for outputs and states (None for c: zeros)
    result = rnn_forward(*tensors, *options)
    g = torch.Generator().manual_seed(7)
    d_out = torch.randn(result[0].shape, generator=g, dtype=dtype)
    d_h = torch.randn(B, H, generator=g, dtype=dtype)
    x, k, r, _, _, _, mask, dm, rdm = tensors
    args = (x, k, r, mask, dm, rdm, *result[3:], d_out, d_h, None, *options, tensors[3] is not None)
    torch.library.opcheck(rnn_backward, args)
    # the residual-based backward equals fastrnn.functional's closure-based one (forward_vjp)
    grads = rnn_backward(*args)
    x, k, r, b, h0, c0, mask, dm, rdm = (None if t is None else t.numpy() for t in tensors)
    states = None if h0 is None else [h0, c0] if cell == "lstm" else [h0]
    opts = dict(initial_state=states, mask=mask, dropout_mask=dm, recurrent_dropout_mask=rdm,
                go_backwards=options[1], time_major=options[2], zero_output_for_mask=options[5])
    if cell == "gru":
        opts["reset_after"] = options[6]
    ref_out, _, backward = getattr(F, cell + "_vjp")(x, k, r, b, **opts)
    np.testing.assert_array_equal(result[0].numpy(), ref_out)
    ref = backward(d_out.numpy(), [d_h.numpy()] + ([None] if cell == "lstm" else []))
    for got, key in zip(grads[:3], ("x", "kernel", "recurrent_kernel")):
        np.testing.assert_array_equal(got.numpy(), ref[key])
    if b is not None:
        np.testing.assert_array_equal(grads[3].numpy(), ref["bias"])
    np.testing.assert_array_equal(grads[4].numpy(), ref["initial_state"][0])
    if cell == "lstm":
        np.testing.assert_array_equal(grads[5].numpy(), ref["initial_state"][1])
