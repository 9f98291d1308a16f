"""fastrnn.torch's modules in plain eager autograd: one layer and direction is ONE autograd node
(fastrnn._torch_autograd._TorchLayoutFunction) that takes torch.nn's parameters as they are.  Checked
against torch.nn (outputs, h_n/c_n and every gradient, float64) and against the route it replaces (the
Keras-layout weights made by differentiable torch ops, then `rnn`), on awkward shapes (I=17, H=34,
T=1, B=1), with and without bias, hx and lengths (the mask), both directions; gradcheck; the layout
conversion itself; and the saved-tensor contract (version checks, the forward's call read once,
retain_graph)."""
import numpy as np
import pytest

from checks import assert_close, assert_grad_close

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402
from fastrnn import _torch_autograd as ta  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = {"lstm": (torch.nn.LSTM, ft.LSTM, {}), "gru": (torch.nn.GRU, ft.GRU, {}),
         "rnn_tanh": (torch.nn.RNN, ft.RNN, {}), "rnn_relu": (torch.nn.RNN, ft.RNN, {"nonlinearity": "relu"})}


def _pair(kind, I, H, dtype=torch.float64, **config):
    ref_cls, cls, extra = KINDS[kind]
    torch.manual_seed(11)
    ref = ref_cls(I, H, **extra, **config, dtype=dtype)
    twin = cls(I, H, **extra, **config, dtype=dtype)
    twin.load_state_dict(ref.state_dict())
    return ref, twin


def _train_step(module, kind, x, hx, lengths=None, seed=3):
    """Outputs, states and the gradients of a fixed random functional of them, as float64 arrays."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else [h.detach().clone().requires_grad_() for h in hx]
    module.zero_grad()
    arg = None if hx is None else (tuple(hx) if kind == "lstm" else hx[0])
    if lengths is None:
        out, states = module(x, arg)
    elif isinstance(module, ft._RNNBase):   # fastrnn.torch: padded input and lengths=
        out, states = module(x, arg, lengths=lengths)
    else:   # torch.nn: through a PackedSequence
        packed = pack_padded_sequence(x, lengths, batch_first=module.batch_first, enforce_sorted=False)
        out, states = module(packed, arg)
        out, _ = pad_packed_sequence(out, batch_first=module.batch_first, total_length=x.shape[1])
    states = list(states) if kind == "lstm" else [states]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in [out] + states)
    loss.backward()
    res = {"output": out, "dx": x.grad, **{f"state{k}": s for k, s in enumerate(states)}}
    res.update({f"d{n}": p.grad for n, p in module.named_parameters()})
    if hx is not None:
        res.update({f"dhx{k}": h.grad for k, h in enumerate(hx)})
    return {k: v.detach().double().numpy() for k, v in res.items()}


def _compare(got, want, tol):
    assert set(got) == set(want)
    for key in want:
        (assert_grad_close if key.startswith("d") else assert_close)(key, got[key], want[key], tol)


def _padded_lengths(T, B, seed):
    """B lengths in [1, T] (a padded batch; torch.nn's packing refuses 0), not sorted, one of them T."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, B)
    lengths[-1] = T
    return torch.as_tensor(lengths)


@pytest.mark.parametrize("lengths", [False, True], ids=["dense", "lengths"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_hx", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [(9, 3, 17, 34), (1, 1, 17, 34), (12, 1, 5, 6)], ids=["t9-b3", "t1-b1", "t12-b1"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_torch_nn_bidirectional(kind, shape, bias, with_hx, lengths):
    T, B, I, H = shape  # noqa: E741
    ref, twin = _pair(kind, I, H, bias=bias, bidirectional=True, batch_first=True)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, I, generator=gen, dtype=torch.float64)
    hx = None
    if with_hx:
        hx = [torch.randn(2, B, H, generator=gen, dtype=torch.float64) for _ in range(2 if kind == "lstm" else 1)]
    lens = _padded_lengths(T, B, seed=T + B) if lengths else None
    _compare(_train_step(twin, kind, x, hx, lens), _train_step(ref, kind, x, hx, lens), 1e-10)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_float32_two_layers_match_the_keras_layout_route(kind, batch_first, monkeypatch):
    """The torch-layout node against the route it replaces (differentiable torch ops to the Keras layout,
    then `rnn`, forced by switching torch_layout_ok off): the same float32 results to rounding."""
    _, twin = _pair(kind, 17, 34, dtype=torch.float32, num_layers=2, batch_first=batch_first)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(*((4, 10, 17) if batch_first else (10, 4, 17)), generator=gen)
    hx = [torch.randn(2, 4, 34, generator=gen) for _ in range(2 if kind == "lstm" else 1)]
    got = _train_step(twin, kind, x, hx)
    monkeypatch.setattr(ft, "torch_layout_ok", lambda *tensors: False)
    want = _train_step(twin, kind, x, hx)
    _compare(got, want, 1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_one_node_per_layer_and_direction(kind):
    """The module's graph: the output comes straight from the node, whose inputs are the parameters
    themselves (no transposes, bias sums or gate reordering in between)."""
    _, twin = _pair(kind, 5, 6)
    out, _ = twin(torch.randn(3, 2, 5, dtype=torch.float64))
    node = out.grad_fn
    assert type(node).__name__ == "_TorchLayoutFunctionBackward"
    inputs = [fn for fn, _ in node.next_functions if fn is not None]
    # x needs no gradient here; the four parameters are leaves (AccumulateGrad), nothing in between
    assert [type(fn).__name__ for fn in inputs] == ["AccumulateGrad"] * 4


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_keras_arrays_equal_the_differentiable_conversion(kind, bias):
    """`_keras_arrays` (NumPy, in the node) gives exactly the module's differentiable `_keras_weights`."""
    _, twin = _pair(kind, 17, 34, bias=bias)
    params = [None if p is None else p.detach().numpy() for p in twin._direction_parameters("_l0")]
    got = ta._keras_arrays(twin._cell, *params)
    with torch.no_grad():
        want = [None if t is None else t.numpy() for t in twin._keras_weights("_l0")]
    for name, g, w in zip(("kernel", "recurrent_kernel", "bias"), got, want):
        if w is None:
            assert g is None, name
            continue
        np.testing.assert_array_equal(g, w, err_msg=name)
    assert got[1].flags.c_contiguous   # R: a Keras-layout copy; the kernel: a transposed view
    assert got[0].T.flags.c_contiguous


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck(kind):
    _, cls, extra = KINDS[kind]
    twin = cls(2, 3, **extra, bidirectional=True, dtype=torch.float64)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    hx = [torch.randn(2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
          for _ in range(2 if kind == "lstm" else 1)]
    params = list(twin.parameters())
    lengths = torch.tensor([2, 3])

    def f(x, *states_and_weights):
        states = states_and_weights[:len(hx)]
        out, h = twin(x, tuple(states) if kind == "lstm" else states[0], lengths=lengths)
        return (out,) + (tuple(h) if kind == "lstm" else (h,))

    assert _nodes(f(x, *hx)[0].grad_fn) == 2   # both directions ran as the node
    assert torch.autograd.gradcheck(f, (x, *hx, *params))


def _nodes(fn, seen=None):
    """How many _TorchLayoutFunction nodes the graph behind `fn` holds."""
    seen = set() if seen is None else seen
    if fn is None or fn in seen:
        return 0
    seen.add(fn)
    own = type(fn).__name__ == "_TorchLayoutFunctionBackward"
    return own + sum(_nodes(f, seen) for f, _ in fn.next_functions)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_backward_reads_the_forward_call_once(cell):
    """The node's backward reads the forward's validated call (spec, NumPy views, residuals) and drops it,
    so after the backward the graph holds no view of the residuals.  A retain_graph second backward
    rebuilds the call from the saved tensors: the same gradients, which match torch.nn's."""
    torch.manual_seed(5)
    stock = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple_rnn": torch.nn.RNN}[cell](17, 34, batch_first=True)
    twin = ft.from_torch(stock)
    x = torch.randn(3, 7, 17, requires_grad=True)
    d_out = torch.randn(3, 7, 34)
    out, _ = twin(x)
    node = out.grad_fn
    assert type(node).__name__ == "_TorchLayoutFunctionBackward" and node.call is not None
    first = torch.autograd.grad(out, [x, *twin.parameters()], d_out, retain_graph=True)
    assert node.call is None
    second = torch.autograd.grad(out, [x, *twin.parameters()], d_out)
    want = torch.autograd.grad(stock(x)[0], [x, *stock.parameters()], d_out)
    for a, b, w in zip(first, second, want):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("what", ["weight_ih_l0", "weight_hh_l0", "x"])
def test_an_inplace_change_before_backward_is_refused(what):
    twin = ft.GRU(5, 6)
    x = torch.randn(4, 2, 5, requires_grad=True)
    xi = x * 1.0
    out, _ = twin(xi)
    with torch.no_grad():
        (xi if what == "x" else getattr(twin, what)).mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_the_bias_may_change_before_backward():
    """Like the custom ops: the bias goes into the gates once, is not read again, and is not saved, so
    an in-place update before the backward is allowed and changes nothing."""
    ref, twin = _pair("lstm", 5, 6)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    out, _ = twin(x)
    want_out, _ = ref(x)
    with torch.no_grad():
        twin.bias_ih_l0.add_(1.0)
    got = torch.autograd.grad(out.sum(), [twin.weight_hh_l0])
    want = torch.autograd.grad(want_out.sum(), [ref.weight_hh_l0])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_frozen_parameters_and_unused_outputs():
    """Parameters that need no gradient and outputs that get none (h_n only): torch.nn's gradients."""
    ref, twin = _pair("gru", 17, 34, bias=True)
    for m in (ref, twin):
        m.weight_hh_l0.requires_grad_(False)
        m.bias_hh_l0.requires_grad_(False)
    x = torch.randn(2, 5, 17, dtype=torch.float64, requires_grad=True)
    grads = []
    for m in (twin, ref):
        _, h = m(x)
        grads.append(torch.autograd.grad(h.sum(), [x, m.weight_ih_l0, m.bias_ih_l0]))
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_a_second_derivative_is_refused_clearly():
    """create_graph=True gives the first derivatives (torch.nn's); taking a derivative of them raises."""
    ref, twin = _pair("lstm", 5, 6)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    grads = []
    for m in (twin, ref):
        out, _ = m(x)
        grads.append(torch.autograd.grad(out.square().sum(), [m.weight_hh_l0], create_graph=True)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="second derivatives"):
        grads[0].sum().backward()
