"""fastrnn.torch's inference calls (no_grad, inference_mode, or nothing requiring grad): they run fastrnn's
inference forward on frozen weights (fastrnn.functional.prepare) instead of the custom ops' training
forward.  Against torch.nn on the same state_dict in the same grad context; the frozen weights follow
every parameter change torch can see (optimizer steps, in-place ops, load_state_dict, dtype changes,
assigning .data) and flatten_parameters() drops them; calls that can be differentiated or traced keep
the custom ops."""
import copy
import io

import numpy as np
import pytest

from checks import assert_close

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from fastrnn import _compiled, _torch_autograd, functional, reference  # noqa: E402

KINDS = {"lstm": (torch.nn.LSTM, ft.LSTM, {}), "gru": (torch.nn.GRU, ft.GRU, {}),
         "rnn_tanh": (torch.nn.RNN, ft.RNN, {"nonlinearity": "tanh"}),
         "rnn_relu": (torch.nn.RNN, ft.RNN, {"nonlinearity": "relu"})}
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
I, H = 17, 34


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def training_forward_calls(monkeypatch):
    """Counts the custom op's training forward (fastrnn._compiled.forward_residuals) calls."""
    calls = []
    real = _compiled.forward_residuals

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_compiled, "forward_residuals", counted)
    return calls


def pair(kind, dtype=torch.float64, seed=0, **config):
    ref_cls, cls, extra = KINDS[kind]
    torch.manual_seed(seed)
    ref = ref_cls(I, H, **extra, **config, dtype=dtype)
    twin = cls(I, H, **extra, **config, dtype=dtype)
    twin.load_state_dict(ref.state_dict())
    return ref, twin


def outputs(module, x, hx=None):
    """(output, h_n[, c_n]) as float64 arrays."""
    out, states = module(x, hx)
    states = list(states) if isinstance(states, tuple) else [states]
    return [t.detach().double().numpy() for t in [out] + states]


def assert_same(actual, expected, tol):
    for name, a, e in zip(("output", "h_n", "c_n"), actual, expected):
        assert_close(name, a, e, tol)


def make_input(module, B, T, dtype, seed=1, with_hx=True):
    gen = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if module.batch_first else (T, B, I)
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    if not with_hx:
        return x, None
    hx_shape = (module.num_layers * (2 if module.bidirectional else 1), B, H)
    states = [torch.randn(*hx_shape, generator=gen, dtype=dtype) for _ in range(2 if "LSTM" in type(module).__name__
                                                                               else 1)]
    return x, (tuple(states) if len(states) == 2 else states[0])


CONTEXTS = {
    "no_grad": lambda module: torch.no_grad(),
    "inference_mode": lambda module: torch.inference_mode(),
    "frozen_params": lambda module: _frozen(module),   # grad mode on, nothing requires grad
}


class _frozen:
    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.module.requires_grad_(False)

    def __exit__(self, *exc):
        self.module.requires_grad_(True)


@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", [(1, False, True), (2, True, False)], ids=["1layer-uni-bfirst", "2layer-bi-tmajor"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_inference_calls_match_torch_nn_without_the_training_forward(kind, layout, dtype, context,
                                                                     training_forward_calls):
    num_layers, bidirectional, batch_first = layout
    ref, twin = pair(kind, dtype, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    for B, T, with_hx in ((3, 7, True), (1, 1, False), (2, 40, True)):
        x, hx = make_input(twin, B, T, dtype, seed=B + T, with_hx=with_hx)
        with CONTEXTS[context](ref):
            expected = outputs(ref, x, hx)
        with CONTEXTS[context](twin):
            actual = outputs(twin, x, hx)
            again = outputs(twin, x, hx)   # the second call reuses the frozen weights and their packs
        assert_same(actual, expected, TOL[dtype])
        assert_same(again, actual, 0.0)
    assert training_forward_calls == []
    with torch.no_grad():
        assert ref(x, hx)[0].requires_grad is False and twin(x, hx)[0].requires_grad is False


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_lengths_and_packed_sequences_in_inference(kind, training_forward_calls):
    ref, twin = pair(kind, torch.float64, batch_first=True, bidirectional=True)
    x, hx = make_input(twin, 4, 9, torch.float64)
    lengths = torch.tensor([9, 3, 0, 6])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([9, 3, 1, 6]), batch_first=True,
                                                     enforce_sorted=False)
    with torch.no_grad():
        exp_out, exp_states = ref(packed, hx)
        got_out, got_states = twin(packed, hx)
        assert_close("packed output", got_out.data.numpy(), exp_out.data.numpy(), 1e-10)
        for a, e in zip(got_states if kind == "lstm" else [got_states], exp_states if kind == "lstm" else [exp_states]):
            assert_close("packed h_n", a.numpy(), e.numpy(), 1e-10)
        by_lengths = twin(x, hx, lengths=lengths)
    with torch.enable_grad():
        trained = twin(x, hx, lengths=lengths)
    assert len(training_forward_calls) == 2   # the grad-enabled call, both directions
    assert_close("lengths output", by_lengths[0].numpy(), trained[0].detach().numpy(), 1e-12)


def test_grad_needing_calls_keep_the_custom_ops(training_forward_calls):
    ref, twin = pair("lstm", torch.float64)
    x, hx = make_input(twin, 2, 5, torch.float64)
    twin(x, hx)                                   # parameters require grad
    assert len(training_forward_calls) == 1
    twin.requires_grad_(False)
    twin(x.requires_grad_(), hx)                  # the input requires grad
    assert len(training_forward_calls) == 2
    with torch.no_grad():
        twin(x, hx)
    assert len(training_forward_calls) == 2


def test_inference_ok_refuses_transforms_and_tensor_subclasses():
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert _torch_autograd.inference_ok(x, None)
        assert torch.func.vmap(lambda t: torch.tensor(_torch_autograd.inference_ok(t)))(x).tolist() == [False] * 2
    assert not _torch_autograd.inference_ok(x.requires_grad_())

    class Sub(torch.Tensor):
        pass

    with torch.no_grad():
        assert not _torch_autograd.inference_ok(torch.randn(2).as_subclass(Sub))


def test_vmap_and_grad_under_no_grad_still_run(training_forward_calls):
    """torch.func transforms go through the ops (their vmap rule) even with grad mode off."""
    ref, twin = pair("gru", torch.float64, batch_first=True)
    xs = torch.randn(3, 2, 4, I, dtype=torch.float64)
    with torch.no_grad():
        batched = torch.func.vmap(lambda x: twin(x)[0])(xs)
        looped = torch.stack([ref(x)[0] for x in xs])
    assert_close("vmapped output", batched.numpy(), looped.numpy(), 1e-10)
    assert len(training_forward_calls) == 3


def _sgd_step(module, x, hx, lr=0.1):
    out, states = module(x, hx)
    states = list(states) if isinstance(states, tuple) else [states]
    loss = (out ** 2).sum() + sum(s.sum() for s in states)
    module.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in module.parameters():
            p -= lr * p.grad


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_frozen_weights_follow_parameter_changes(kind):
    ref, twin = pair(kind, torch.float64, num_layers=2, bidirectional=True)
    x, hx = make_input(twin, 3, 6, torch.float64)

    def check(what):
        with torch.no_grad():
            assert_same(outputs(twin, x, hx), outputs(ref, x, hx), 1e-10)  # (what: for the traceback)

    check("initial")
    for module in (ref, twin):   # a training step between evaluations (in-place parameter updates)
        _sgd_step(module, x, hx)
    check("after an optimizer step")
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (ref, twin)]
    for module, opt in zip((ref, twin), optimizers):
        out, _ = module(x, hx)
        opt.zero_grad()
        out.sum().backward()
        opt.step()
    check("after Adam")
    other, _ = pair(kind, torch.float64, seed=5, num_layers=2, bidirectional=True)
    for module in (ref, twin):
        module.load_state_dict(other.state_dict())
    check("after load_state_dict")
    for module in (ref, twin):
        module.weight_hh_l1_reverse.data = torch.randn_like(module.weight_hh_l1_reverse) * 0 + 0.05
    check("after assigning .data")
    with torch.no_grad():
        for module in (ref, twin):
            module.weight_ih_l0.mul_(-1.0)
    check("after an in-place op")


def test_dtype_change_and_flatten_parameters():
    ref, twin = pair("lstm", torch.float32)
    x, hx = make_input(twin, 2, 5, torch.float32)
    with torch.no_grad():
        twin(x, hx)
        ref, twin = ref.double(), twin.double()
        x64, hx64 = x.double(), tuple(h.double() for h in hx)
        assert_same(outputs(twin, x64, hx64), outputs(ref, x64, hx64), 1e-10)
        # a write through a NumPy view passes torch's version counter: flatten_parameters drops the frozen copy
        for module in (ref, twin):
            module.weight_hh_l0.detach().numpy()[:] *= 0.5
        twin.flatten_parameters()
        assert_same(outputs(twin, x64, hx64), outputs(ref, x64, hx64), 1e-10)


def test_copies_and_pickles_do_not_carry_the_frozen_weights():
    ref, twin = pair("gru", torch.float64)
    x, hx = make_input(twin, 2, 5, torch.float64)
    with torch.no_grad():
        before = outputs(twin, x, hx)
        twin_copy = copy.deepcopy(twin)
        buffer = io.BytesIO()
        torch.save(twin, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        for module in (twin_copy, loaded, ref):
            module.weight_ih_l0.mul_(0.25)
        expected = outputs(ref, x, hx)
        assert_same(outputs(twin_copy, x, hx), expected, 1e-10)
        assert_same(outputs(loaded, x, hx), expected, 1e-10)
        assert_same(outputs(twin, x, hx), before, 0.0)   # the original kept its own weights


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_rnn_function_inference_branch_matches_the_reference(cell, training_forward_calls):
    """fastrnn._torch_autograd.rnn (fastrnn.keras's bridge) under no_grad: the functional inference
    forward, checked against the float64 NumPy reference, with masks and initial states."""
    rng = np.random.default_rng(3)
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    B, T = 3, 8
    k, r = rng.standard_normal((I, G * H)) * 0.3, rng.standard_normal((H, G * H)) * 0.3
    b = rng.standard_normal((2, G * H) if cell == "gru" else (G * H,)) * 0.1
    x = rng.standard_normal((B, T, I))
    h0 = [rng.standard_normal((B, H)) for _ in range(2 if cell == "lstm" else 1)]
    mask = rng.random((B, T)) > 0.3
    t = torch.from_numpy
    with torch.no_grad():
        out, states = _torch_autograd.rnn(cell, t(x), t(k), t(r), t(b), t(h0[0]),
                                          t(h0[1]) if cell == "lstm" else None, mask=t(mask), go_backwards=True)
    assert training_forward_calls == []
    ref_out, ref_states = getattr(reference, cell)(x, k, r, b, initial_state=h0, mask=mask, go_backwards=True)
    assert_close("outputs", out.numpy(), ref_out, 1e-10)
    for a, e in zip(states, ref_states):
        assert_close("state", a.numpy(), e, 1e-10)
    fn_out, _ = getattr(functional, cell)(x, k, r, b, initial_state=h0, mask=mask, go_backwards=True)
    np.testing.assert_array_equal(out.numpy(), fn_out)
