"""fastrnn.torch against torch.nn (same state_dict): outputs, h_n/c_n and every gradient (parameters, input,
hx) for LSTM, GRU, RNN tanh/relu over num_layers x bidirectional x batch_first, hx, unbatched input,
dropout, PackedSequence with unsorted lengths and lengths=; gradcheck in float64; the module API
(state_dict names, init, from_torch/to_torch) and clear errors."""
import numpy as np
import pytest

from checks import assert_close, assert_grad_close

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

KINDS = {"lstm": (torch.nn.LSTM, ft.LSTM, {}), "gru": (torch.nn.GRU, ft.GRU, {}),
         "rnn_tanh": (torch.nn.RNN, ft.RNN, {"nonlinearity": "tanh"}),
         "rnn_relu": (torch.nn.RNN, ft.RNN, {"nonlinearity": "relu"})}
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-4)}  # (outputs/states abs, gradients rel)
I, H = 5, 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pair(kind, dtype=torch.float64, **config):
    """(torch.nn module, fastrnn.torch twin loaded from its state_dict)."""
    ref_cls, cls, extra = KINDS[kind]
    ref = ref_cls(I, H, **extra, **config, dtype=dtype)
    twin = cls(I, H, **extra, **config, dtype=dtype)
    twin.load_state_dict(ref.state_dict())
    return ref, twin


def make_hx(kind, module, B, dtype, gen, batched=True):
    shape = (module.num_layers * (2 if module.bidirectional else 1),) + ((B,) if batched else ()) + (H,)
    states = [torch.randn(*shape, generator=gen, dtype=dtype) for _ in range(2 if kind == "lstm" else 1)]
    return states


def run(module, x, hx, kind, gen_seed=7):
    """Forward + backward of a fixed random linear functional of (output, h_n[, c_n]); returns the
    values and gradients as float64 numpy arrays, keyed by name."""
    x = x.detach().clone().requires_grad_()
    hx = [h.detach().clone().requires_grad_() for h in hx] if hx is not None else None
    module.zero_grad()
    arg = None if hx is None else (tuple(hx) if kind == "lstm" else hx[0])
    out, states = module(x, arg)
    states = list(states) if kind == "lstm" else [states]
    gen = torch.Generator().manual_seed(gen_seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in [out] + states)
    loss.backward()
    res = {"output": out, **{f"state{k}": s for k, s in enumerate(states)}, "dx": x.grad}
    res.update({f"d{k}": p.grad for k, p in module.named_parameters()})
    if hx is not None:
        res.update({f"dhx{k}": h.grad for k, h in enumerate(hx)})
    return {k: v.detach().double().numpy() for k, v in res.items()}


def compare(actual, expected, dtype):
    out_tol, grad_tol = TOL[dtype]
    assert set(actual) == set(expected)
    for key in expected:
        if key.startswith("d"):
            assert_grad_close(key, actual[key], expected[key], grad_tol)
        else:
            assert_close(key, actual[key], expected[key], out_tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", list(KINDS))
def test_parity_with_torch_nn(kind, num_layers, bidirectional, batch_first, dtype):
    gen = torch.Generator().manual_seed(0)
    ref, twin = pair(kind, dtype, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    B, T = 3, 7
    x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), generator=gen, dtype=dtype)
    hx = make_hx(kind, ref, B, dtype, gen)
    compare(run(twin, x, hx, kind), run(ref, x, hx, kind), dtype)


@pytest.mark.parametrize("kind", list(KINDS))
def test_default_hx_and_unbatched_input(kind):
    gen = torch.Generator().manual_seed(1)
    ref, twin = pair(kind, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, I, generator=gen, dtype=torch.float64)
    compare(run(twin, x, None, kind), run(ref, x, None, kind), torch.float64)
    x1 = torch.randn(6, I, generator=gen, dtype=torch.float64)          # unbatched (T, I)
    hx1 = make_hx(kind, ref, None, torch.float64, gen, batched=False)  # (L*D, H)
    for hx in (None, hx1):
        got, want = run(twin, x1, hx, kind), run(ref, x1, hx, kind)
        assert got["output"].shape == (6, 2 * H) and got["state0"].shape == (4, H)
        compare(got, want, torch.float64)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_dropout_between_layers(kind):
    torch.manual_seed(0)
    ref, twin = pair(kind, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(6, 4, I, dtype=torch.float64)
    ref.eval(), twin.eval()
    compare(run(twin, x, None, kind), run(ref, x, None, kind), torch.float64)  # eval: no dropout
    plain = pair(kind, num_layers=3, bidirectional=True)[1]
    plain.load_state_dict(twin.state_dict())
    assert torch.equal(plain(x)[0], twin(x)[0])

    twin.train()
    torch.manual_seed(5)
    a = run(twin, x, None, kind)
    torch.manual_seed(5)
    b = run(twin, x, None, kind)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # deterministic under the seed
    twin.eval()
    assert not np.allclose(a["output"], twin(x)[0].detach().numpy())  # and differs from eval
    # the last layer's output is never dropped: no exact zeros appear in training mode
    assert np.count_nonzero(a["output"] == 0) == 0


def packed_case(kind, batch_first, dtype=torch.float64, **config):
    gen = torch.Generator().manual_seed(3)
    ref, twin = pair(kind, dtype, batch_first=batch_first, **config)
    lengths = torch.tensor([3, 7, 1, 5, 7])  # unsorted, with ties and a length-1 row
    B, T = len(lengths), int(lengths.max())
    x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), generator=gen, dtype=dtype)
    hx = make_hx(kind, ref, B, dtype, gen)
    return ref, twin, x, lengths, hx


def run_packed(module, x, lengths, hx, kind, batch_first):
    """Packs x, runs, and returns the packed output data, states and gradients (x through the pack)."""
    x = x.detach().clone().requires_grad_()
    hx = [h.detach().clone().requires_grad_() for h in hx]
    module.zero_grad()
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, states = module(packed, tuple(hx) if kind == "lstm" else hx[0])
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
    states = list(states) if kind == "lstm" else [states]
    gen = torch.Generator().manual_seed(11)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in [out.data] + states)
    loss.backward()
    res = {"data": out.data, **{f"state{k}": s for k, s in enumerate(states)}, "dx": x.grad}
    res.update({f"d{k}": p.grad for k, p in module.named_parameters()})
    res.update({f"dhx{k}": h.grad for k, h in enumerate(hx)})
    padded = pad_packed_sequence(out, batch_first=batch_first)[0]
    return {k: v.detach().double().numpy() for k, v in res.items()}, padded.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_packed_sequence_unsorted(kind, batch_first, dtype):
    ref, twin, x, lengths, hx = packed_case(kind, batch_first, dtype, num_layers=2, bidirectional=True)
    got, got_padded = run_packed(twin, x, lengths, hx, kind, batch_first)
    want, _ = run_packed(ref, x, lengths, hx, kind, batch_first)
    compare(got, want, dtype)
    time_axis = 1 if batch_first else 0
    for b, n in enumerate(lengths.tolist()):  # padded output positions are zeros
        row = got_padded.select(1 - time_axis, b)
        assert torch.count_nonzero(row[n:]) == 0


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_lengths_keyword_equals_packed_sequence(kind, batch_first):
    _, twin, x, lengths, hx = packed_case(kind, batch_first, num_layers=2, bidirectional=True)
    want, want_padded = run_packed(twin, x, lengths, hx, kind, batch_first)

    xg = x.detach().clone().requires_grad_()
    hxg = [h.detach().clone().requires_grad_() for h in hx]
    twin.zero_grad()
    out, states = twin(xg, tuple(hxg) if kind == "lstm" else hxg[0], lengths=lengths)
    assert torch.equal(out.detach(), want_padded)  # padded output, zeros past each length
    packed = pack_padded_sequence(out, lengths, batch_first=batch_first, enforce_sorted=False)
    states = list(states) if kind == "lstm" else [states]
    gen = torch.Generator().manual_seed(11)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in [packed.data] + states)
    loss.backward()
    got = {"data": packed.data, **{f"state{k}": s for k, s in enumerate(states)}, "dx": xg.grad}
    got.update({f"d{k}": p.grad for k, p in twin.named_parameters()})
    got.update({f"dhx{k}": h.grad for k, h in enumerate(hxg)})
    compare({k: v.detach().numpy() for k, v in got.items()}, want, torch.float64)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sorted_packed_sequence_and_empty_lengths(kind):
    ref, twin, x, lengths, hx = packed_case(kind, False, bidirectional=True)
    lengths, order = lengths.sort(descending=True)
    x, hx = x[:, order], [h[:, order] for h in hx]
    arg = lambda: tuple(hx) if kind == "lstm" else hx[0]  # noqa: E731
    packed = pack_padded_sequence(x, lengths)  # enforce_sorted=True: no sorted_indices
    out, states = twin(packed, arg())
    want, want_states = ref(packed, arg())
    assert out.sorted_indices is None
    assert_close("data", out.data.detach(), want.data.detach(), 1e-10)
    states, want_states = (states, want_states) if kind == "lstm" else ((states,), (want_states,))
    for s, w in zip(states, want_states):
        assert_close("h_n", s.detach(), w.detach(), 1e-10)
    # lengths= accepts zeros (torch's packing does not): that row's output is zeros and h_n is hx
    zero = torch.tensor([0] + lengths.tolist()[1:])
    out, states = twin(x, arg(), lengths=zero)
    states = states if kind == "lstm" else (states,)
    assert torch.count_nonzero(out[:, 0]) == 0
    for s, h in zip(states, hx):
        assert torch.equal(s[:, 0], h[:, 0])


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck(kind):
    _, cls, extra = KINDS[kind]
    twin = cls(2, 3, **extra, num_layers=2, bidirectional=True, dtype=torch.float64)  # small: 2 layers, both ways
    names = [n for n, _ in twin.named_parameters()]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    n_states = 2 if kind == "lstm" else 1
    hx = [torch.randn(4, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(n_states)]
    params = [p.detach().clone().requires_grad_() for p in twin.parameters()]
    lengths = torch.tensor([2, 3])  # the mask path, forward and reverse

    def f(x, *rest):
        states, weights = rest[:len(hx)], rest[len(hx):]
        arg = tuple(states) if kind == "lstm" else states[0]
        out, h = torch.func.functional_call(twin, dict(zip(names, weights)), (x, arg), {"lengths": lengths})
        return (out,) + (tuple(h) if kind == "lstm" else (h,))

    assert torch.autograd.gradcheck(f, (x, *hx, *params))


# -- module API ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_names_and_init_match_torch(kind):
    ref_cls, cls, extra = KINDS[kind]
    config = dict(num_layers=2, bidirectional=True, batch_first=True)
    torch.manual_seed(4)
    ref = ref_cls(I, H, **extra, **config)
    torch.manual_seed(4)
    twin = cls(I, H, **extra, **config)
    assert list(ref.state_dict()) == list(twin.state_dict())
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), twin.named_parameters()):
        assert n1 == n2 and isinstance(p2, torch.nn.Parameter) and torch.equal(p1, p2)  # same init draws
    assert twin.weight_hh_l1_reverse.shape == ref.weight_hh_l1_reverse.shape
    bound = 1 / np.sqrt(H)
    assert all(float(p.detach().abs().max()) <= bound for p in twin.parameters())
    # the same repr as torch.nn's, which leaves out the nonlinearity (shown by fastrnn's when relu)
    assert repr(twin).replace(cls.__name__, "").replace("nonlinearity='relu', ", "") == \
        repr(ref).replace(ref_cls.__name__, "")
    twin.flatten_parameters()
    nobias = cls(I, H, **extra, bias=False)
    assert sorted(nobias.state_dict()) == ["weight_hh_l0", "weight_ih_l0"]
    nobias_ref = ref_cls(I, H, **extra, bias=False).double()
    nobias = ft.from_torch(nobias_ref)
    x = torch.randn(4, 2, I, dtype=torch.float64)
    assert_close("no bias", nobias(x)[0].detach(), nobias_ref(x)[0].detach(), 1e-10)


@pytest.mark.parametrize("kind", list(KINDS))
def test_from_torch_and_to_torch(kind):
    ref_cls, cls, extra = KINDS[kind]
    ref = ref_cls(I, H, **extra, num_layers=2, batch_first=True, dropout=0.25).double().eval()
    twin = ft.from_torch(ref)
    assert type(twin) is cls and not twin.training and twin.dropout == 0.25 and twin.batch_first
    assert twin.weight_ih_l0.dtype == torch.float64
    assert twin.weight_ih_l0.data_ptr() != ref.weight_ih_l0.data_ptr()  # a copy
    back = ft.to_torch(twin)
    assert type(back) is ref_cls and back.num_layers == 2 and back.dropout == 0.25
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    if kind.startswith("rnn"):
        assert twin.nonlinearity == back.nonlinearity == extra["nonlinearity"]
    with pytest.raises(TypeError, match="torch.nn.LSTM, GRU or RNN"):
        ft.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="fastrnn.torch"):
        ft.to_torch(ref)


def test_rejects_projections_and_bad_configs():
    with pytest.raises(ValueError, match="proj_size"):
        ft.LSTM(I, H, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        ft.from_torch(torch.nn.LSTM(I, H, proj_size=2))
    with pytest.raises(ValueError, match="nonlinearity"):
        ft.RNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        ft.GRU(I, H, dropout=1.5)
    with pytest.raises(TypeError, match="float32 and float64"):
        ft.LSTM(I, H, dtype=torch.float16)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        ft.LSTM(I, H, dropout=0.2)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bad_inputs_raise_clear_errors(kind):
    _, cls, extra = KINDS[kind]
    m = cls(I, H, num_layers=2, **extra)
    x = torch.randn(4, 3, I)
    with pytest.raises(RuntimeError, match="input_size. Expected 5, got 4"):
        m(torch.randn(4, 3, 4))
    with pytest.raises(ValueError, match="2D or 3D, got 4D"):
        m(torch.randn(1, 4, 3, I))
    h = torch.zeros(2, 2, H)  # batch 2, input batch 3
    with pytest.raises(RuntimeError, match=r"Expected (h_0|hx) size \(2, 3, 6\), got \[2, 2, 6\]"):
        m(x, (h, h) if kind == "lstm" else h)
    h = torch.zeros(2, H)
    with pytest.raises(RuntimeError, match="should also be 3-D"):
        m(x, (h, h) if kind == "lstm" else h)
    if kind == "lstm":
        with pytest.raises(TypeError, match=r"\(h_0, c_0\) tuple"):
            m(x, torch.zeros(2, 3, H))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(4, 3, I, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"does not match weight dtype \(torch.float32\)"):
        m(x.double())
    with pytest.raises(ValueError, match="lengths must lie in"):
        m(x, lengths=torch.tensor([1, 5, 2]))
    with pytest.raises(ValueError, match="1-D tensor of 3"):
        m(x, lengths=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="batched 3-D"):
        m(x[:, 0], lengths=torch.tensor([1]))
    packed = pack_padded_sequence(x, torch.tensor([4, 2, 1]))
    with pytest.raises(ValueError, match="not both"):
        m(packed, lengths=torch.tensor([4, 2, 1]))


def test_non_cpu_tensor_refused():
    # a meta tensor stands in for a CUDA one (same check: fastrnn's torch path runs CPU tensors only)
    with pytest.raises(ValueError, match="CPU tensors; input on meta"):
        ft.LSTM(I, H)(torch.zeros(2, 3, I, device="meta"))
