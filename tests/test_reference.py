"""Validate the NumPy oracle ``fastrnn.reference`` against independent references.

1. torch.nn.LSTM / GRU / RNN in float64: outputs, final states and every gradient (torch autograd),
   with go_backwards and time_major.
2. Keras 3 (torch backend) in float32: masks of every pattern, go_backwards, initial states,
   zero_output_for_mask, GRU reset_after=False, hard_sigmoid / relu / softsign / linear, and the
   dropout semantics (Keras's random masks replaced by ours).
3. float64 central finite differences of a random scalar loss, for every cell and activation,
   through masks, go_backwards, dropout masks and initial states.
4. Inputs are never modified; backward can run twice.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")   # before anything imports keras

import time
import zlib

import numpy as np
import pytest

import fastrnn.reference as ref
from checks import numeric_grad
from fastrnn.reference import activations

#: cell id -> (forward, vjp, gates G, number of states, extra keywords)
CELLS = {
    "lstm": (ref.lstm, ref.lstm_vjp, 4, 2, {}),
    "gru": (ref.gru, ref.gru_vjp, 3, 1, {"reset_after": True}),
    "gru_rb": (ref.gru, ref.gru_vjp, 3, 1, {"reset_after": False}),
    "simple_rnn": (ref.simple_rnn, ref.simple_rnn_vjp, 1, 1, {}),
}
ALL_ACTIVATIONS = tuple(activations.ACTIVATIONS)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These problems are tiny: torch's intra-op threads only add synchronisation, and on a busy
    2-core machine they make the torch and Keras tests several times slower. Restored afterwards."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def seed_for(*parts):
    """A seed that depends on the test case but not on the process (str hashes are salted)."""
    return zlib.crc32(repr(parts).encode())


def make_weights(rng, cell, I, H, dtype=np.float64, use_bias=True, scale=0.5):  # noqa: E741
    """Random weights in the canonical Keras layout for ``cell`` (a key of CELLS)."""
    G = CELLS[cell][2]
    kernel = (rng.standard_normal((I, G * H)) * scale / np.sqrt(I)).astype(dtype)
    recurrent_kernel = (rng.standard_normal((H, G * H)) * scale / np.sqrt(H)).astype(dtype)
    if not use_bias:
        return kernel, recurrent_kernel, None
    bias_shape = (2, 3 * H) if cell == "gru" else (G * H,)
    bias = (rng.standard_normal(bias_shape) * 0.3).astype(dtype)
    return kernel, recurrent_kernel, bias


def mask_patterns(T):
    """(5, T) mask: right-padded, left-padded, holes, fully masked, all valid."""
    mask = np.ones((5, T), dtype=bool)
    mask[0, T - 3:] = False
    mask[1, :3] = False
    mask[2, 1::3] = False
    mask[3, :] = False
    return mask


def ref_call(cell, *args, vjp=False, **kwargs):
    forward, with_vjp, _, _, extra = CELLS[cell]
    return (with_vjp if vjp else forward)(*args, **extra, **kwargs)


# ---------------------------------------------------------------------------------------- 1. torch

def _gru_swap(a):
    """Swap the first two gate blocks of the last axis: Keras z, r, h <-> torch r, z, n."""
    z, r, h = np.split(a, 3, axis=-1)
    return np.concatenate([r, z, h], axis=-1)


def _torch_module(torch, cell, I, H, kernel, recurrent_kernel, bias):  # noqa: E741
    """A float64 torch.nn module with the reference's weights; returns (module, weight parameters)."""
    use_bias = bias is not None
    if cell == "lstm":
        module = torch.nn.LSTM(I, H, batch_first=True, bias=use_bias)
        w_ih, w_hh = kernel.T, recurrent_kernel.T
        b_ih, b_hh = (bias, np.zeros_like(bias)) if use_bias else (None, None)
    elif cell == "gru":
        module = torch.nn.GRU(I, H, batch_first=True, bias=use_bias)
        w_ih, w_hh = _gru_swap(kernel).T, _gru_swap(recurrent_kernel).T
        b_ih, b_hh = (_gru_swap(bias[0]), _gru_swap(bias[1])) if use_bias else (None, None)
    else:
        module = torch.nn.RNN(I, H, batch_first=True, bias=use_bias,
                              nonlinearity=cell.split("_")[1])
        w_ih, w_hh = kernel.T, recurrent_kernel.T
        b_ih, b_hh = (bias, np.zeros_like(bias)) if use_bias else (None, None)
    module = module.double()
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(w_ih)))
        module.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(w_hh)))
        if use_bias:
            module.bias_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(b_ih)))
            module.bias_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(b_hh)))
    return module


TORCH_SHAPES = [(7, 3, 17, 34, True), (1, 1, 17, 34, False), (50, 2, 5, 8, True)]


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("T,B,I,H,use_bias", TORCH_SHAPES,
                         ids=[f"t{T}-b{B}-i{I}-h{H}" + ("" if ub else "-nobias")
                              for T, B, I, H, ub in TORCH_SHAPES])
@pytest.mark.parametrize("torch_cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_matches_torch(torch_cell, T, B, I, H, use_bias, go_backwards, time_major):  # noqa: E741
    torch = pytest.importorskip("torch")
    cell = {"rnn_tanh": "simple_rnn", "rnn_relu": "simple_rnn"}.get(torch_cell, torch_cell)
    activation = "relu" if torch_cell == "rnn_relu" else "tanh"
    n_states = CELLS[cell][3]
    rng = np.random.default_rng(seed_for(torch_cell, T, B, go_backwards, time_major))
    kernel, recurrent_kernel, bias = make_weights(rng, cell, I, H, use_bias=use_bias)
    x = rng.standard_normal((B, T, I))
    states0 = [rng.standard_normal((B, H)) for _ in range(n_states)]
    d_out = rng.standard_normal((B, T, H))
    d_states = [rng.standard_normal((B, H)) for _ in range(n_states)]

    # reference
    to_layout = (lambda a: np.ascontiguousarray(a.transpose(1, 0, 2))) if time_major else (lambda a: a)
    out, states, backward = ref_call(cell, to_layout(x), kernel, recurrent_kernel, bias, vjp=True,
                                     initial_state=states0, go_backwards=go_backwards,
                                     time_major=time_major, activation=activation)
    grads = backward(to_layout(d_out), d_states)

    # torch: feed the reversed sequence for go_backwards; its outputs are then in processing order
    module = _torch_module(torch, torch_cell, I, H, kernel, recurrent_kernel, bias)
    x_t = torch.tensor(x[:, ::-1].copy() if go_backwards else x, requires_grad=True)
    s0_t = [torch.tensor(s[None], requires_grad=True) for s in states0]
    out_t, s_t = module(x_t, tuple(s0_t) if n_states == 2 else s0_t[0])
    s_t = list(s_t) if n_states == 2 else [s_t]
    loss = (out_t * torch.from_numpy(d_out)).sum()
    loss = loss + sum((s[0] * torch.from_numpy(d)).sum() for s, d in zip(s_t, d_states))
    params = [module.weight_ih_l0, module.weight_hh_l0] + (
        [module.bias_ih_l0, module.bias_hh_l0] if use_bias else [])
    g = torch.autograd.grad(loss, [x_t, *s0_t, *params])
    g = [t.numpy() for t in g]
    gx, g_s0, g_w = g[0], g[1:1 + n_states], g[1 + n_states:]

    close = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(to_layout(out), out_t.detach().numpy(), **close)
    for mine, theirs in zip(states, s_t):
        np.testing.assert_allclose(mine, theirs[0].detach().numpy(), **close)
    np.testing.assert_allclose(to_layout(grads["x"]), gx[:, ::-1] if go_backwards else gx, **close)
    for mine, theirs in zip(grads["initial_state"], g_s0):
        np.testing.assert_allclose(mine, theirs[0], **close)
    unswap = _gru_swap if cell == "gru" else (lambda a: a)   # the swap is its own inverse
    np.testing.assert_allclose(grads["kernel"], unswap(g_w[0].T), **close)
    np.testing.assert_allclose(grads["recurrent_kernel"], unswap(g_w[1].T), **close)
    if use_bias:
        if cell == "gru":
            np.testing.assert_allclose(grads["bias"], np.stack([unswap(g_w[2]), unswap(g_w[3])]),
                                       **close)
        else:   # Keras's single bias enters like torch's bias_ih (and like bias_hh)
            np.testing.assert_allclose(grads["bias"], g_w[2], **close)
    else:
        assert grads["bias"] is None


# ---------------------------------------------------------------------------------------- 2. Keras

def _keras():
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "torch", (
        f"Keras was imported with the {keras.backend.backend()!r} backend; these tests need "
        "KERAS_BACKEND=torch (set before keras is first imported)")
    return keras


def _keras_layer(keras, cell, H, options, **layer_kwargs):
    kwargs = dict(return_sequences=True, return_state=True, **layer_kwargs)
    for name in ("activation", "recurrent_activation", "use_bias"):
        if name in options:
            kwargs[name] = options[name]
    if cell in ("gru", "gru_rb"):
        return keras.layers.GRU(H, reset_after=cell == "gru", **kwargs)
    if cell == "lstm":
        return keras.layers.LSTM(H, **kwargs)
    return keras.layers.SimpleRNN(H, **kwargs)


def _numpy(tensors):
    # The backend is pinned to torch; keras.ops.convert_to_numpy would go through np.array(tensor),
    # which warns with this torch/numpy pair.
    return [t.detach().cpu().numpy() for t in tensors]


KERAS_CONFIGS = [
    ("lstm", {}),
    ("lstm", {"recurrent_activation": "hard_sigmoid"}),
    ("lstm", {"activation": "relu", "use_bias": False}),
    ("lstm", {"activation": "softsign", "recurrent_activation": "tanh"}),
    ("gru", {}),
    ("gru", {"recurrent_activation": "hard_sigmoid", "activation": "linear"}),
    ("gru_rb", {}),
    ("gru_rb", {"recurrent_activation": "hard_sigmoid", "activation": "relu"}),
    ("gru_rb", {"use_bias": False}),
    ("simple_rnn", {}),
    ("simple_rnn", {"activation": "relu"}),
    ("simple_rnn", {"activation": "softsign", "use_bias": False}),
]
KERAS_IDS = [cell + "".join(f"-{k}={v}" for k, v in o.items()) for cell, o in KERAS_CONFIGS]
#: (go_backwards, mask_mode, with_initial_state): every option is on in some variant, and both
#: directions see the masks with and without zero_output_for_mask and an initial state.
KERAS_VARIANTS = [
    (False, "mask", True),
    (True, "mask", True),
    (True, "mask_zero_output", False),
    (False, "mask_zero_output", True),
    (True, "no_mask", False),
]
KERAS_VARIANT_IDS = [("backwards-" if gb else "forward-") + mode + ("-initial_state" if init else "")
                     for gb, mode, init in KERAS_VARIANTS]


@pytest.mark.parametrize("go_backwards,mask_mode,with_initial_state", KERAS_VARIANTS,
                         ids=KERAS_VARIANT_IDS)
@pytest.mark.parametrize("cell,options", KERAS_CONFIGS, ids=KERAS_IDS)
def test_matches_keras(cell, options, go_backwards, mask_mode, with_initial_state):
    keras = _keras()
    B, T, I, H = 5, 8, 17, 6   # noqa: E741
    n_states = CELLS[cell][3]
    rng = np.random.default_rng(seed_for(cell, str(options), go_backwards, mask_mode))
    kernel, recurrent_kernel, bias = make_weights(rng, cell, I, H, np.float32,
                                                  use_bias=options.get("use_bias", True),
                                                  scale=1.5)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    mask = None if mask_mode == "no_mask" else mask_patterns(T)
    states0 = ([rng.standard_normal((B, H)).astype(np.float32) for _ in range(n_states)]
               if with_initial_state else None)
    zero_output = mask_mode == "mask_zero_output"

    layer = _keras_layer(keras, cell, H, options, go_backwards=go_backwards,
                         zero_output_for_mask=zero_output)
    layer.build((B, T, I))
    layer.set_weights([w for w in (kernel, recurrent_kernel, bias) if w is not None])
    out_k, *states_k = _numpy(layer(x, mask=mask, initial_state=states0))

    ref_options = {k: v for k, v in options.items() if k != "use_bias"}
    out, states = ref_call(cell, x, kernel, recurrent_kernel, bias, initial_state=states0,
                           mask=mask, go_backwards=go_backwards, zero_output_for_mask=zero_output,
                           **ref_options)
    assert out.dtype == np.float32 and all(s.dtype == np.float32 for s in states)
    np.testing.assert_allclose(out, out_k, rtol=1e-5, atol=1e-5)
    assert len(states) == len(states_k) == n_states
    for mine, theirs in zip(states, states_k):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["input", "recurrent", "both"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_dropout_masks_match_keras(cell, which):
    """Keras's random dropout masks are replaced by fixed ones: same places of application.

    With recurrent_dropout Keras draws one mask per gate (implementation 1); passing the SAME mask
    for every gate is what fastrnn's single (B, H) / (B, I) masks mean.
    """
    keras = _keras()
    B, T, I, H = 5, 8, 7, 6   # noqa: E741
    n_states = CELLS[cell][3]
    rng = np.random.default_rng(["lstm", "gru", "gru_rb", "simple_rnn"].index(cell))
    kernel, recurrent_kernel, bias = make_weights(rng, cell, I, H, np.float32, scale=1.5)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    mask = mask_patterns(T)
    states0 = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(n_states)]
    keep = 0.6
    dp = ((rng.random((B, I)) < keep) / keep).astype(np.float32) if which != "recurrent" else None
    rdp = ((rng.random((B, H)) < keep) / keep).astype(np.float32) if which != "input" else None

    layer = _keras_layer(keras, cell, H, {}, go_backwards=True,
                         dropout=0.4 if dp is not None else 0.0,
                         recurrent_dropout=0.4 if rdp is not None else 0.0)
    layer.build((B, T, I))
    layer.set_weights([kernel, recurrent_kernel, bias])

    def fixed(mask_array):
        count = getattr(layer.cell, "dropout_mask_count", None)
        tensor = keras.ops.convert_to_tensor(mask_array)
        return (lambda _: tensor) if count is None else (lambda _: [tensor] * count)

    if dp is not None:
        layer.cell.get_dropout_mask = fixed(dp)
    if rdp is not None:
        layer.cell.get_recurrent_dropout_mask = fixed(rdp)
    out_k, *states_k = _numpy(layer(x, mask=mask, initial_state=states0, training=True))

    out, states = ref_call(cell, x, kernel, recurrent_kernel, bias, initial_state=states0,
                           mask=mask, go_backwards=True, dropout_mask=dp,
                           recurrent_dropout_mask=rdp)
    np.testing.assert_allclose(out, out_k, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(states, states_k):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)
    # the masks did something: without them the result differs
    plain, _ = ref_call(cell, x, kernel, recurrent_kernel, bias, initial_state=states0,
                        mask=mask, go_backwards=True)
    assert np.abs(plain - out).max() > 1e-3


# ------------------------------------------------------------------- mask rules, stated explicitly

@pytest.mark.parametrize("cell", list(CELLS))
def test_mask_rules(cell):
    """Masked steps repeat the previous OUTPUT (zeros before the first valid step, never the
    initial state) and keep the state; fully masked rows return the initial state."""
    B, T, I, H = 5, 9, 4, 3   # noqa: E741
    n_states = CELLS[cell][3]
    rng = np.random.default_rng(7)
    kernel, recurrent_kernel, bias = make_weights(rng, cell, I, H)
    x = rng.standard_normal((B, T, I))
    mask = mask_patterns(T)
    states0 = [rng.standard_normal((B, H)) for _ in range(n_states)]
    out, states = ref_call(cell, x, kernel, recurrent_kernel, bias, mask=mask,
                           initial_state=states0)
    np.testing.assert_array_equal(out[1, :3], 0)                    # left padding: zeros
    np.testing.assert_array_equal(out[3], 0)                        # fully masked row: zeros
    for s, s0 in zip(states, states0):
        np.testing.assert_array_equal(s[3], s0[3])                  # ... and its initial state
    np.testing.assert_array_equal(out[0, T - 3:], out[0, [T - 4] * 3])   # right padding repeats
    np.testing.assert_array_equal(out[2, 1], out[2, 0])                  # a hole repeats
    np.testing.assert_array_equal(states[0][0], out[0, T - 4])

    # The valid steps of a row are exactly the unmasked run over its valid inputs.
    for row in range(B):
        valid = mask[row]
        if not valid.any():
            continue
        o, st = ref_call(cell, x[row:row + 1, valid], kernel, recurrent_kernel, bias,
                         initial_state=[s[row:row + 1] for s in states0])
        np.testing.assert_allclose(out[row, valid], o[0], rtol=1e-13, atol=1e-13)
        for a, b in zip(states, st):
            np.testing.assert_allclose(a[row], b[0], rtol=1e-13, atol=1e-13)

    out_z, states_z = ref_call(cell, x, kernel, recurrent_kernel, bias, mask=mask,
                               initial_state=states0, zero_output_for_mask=True)
    np.testing.assert_array_equal(out_z, np.where(mask[:, :, None], out, 0))
    for a, b in zip(states, states_z):
        np.testing.assert_array_equal(a, b)

    all_valid, _ = ref_call(cell, x, kernel, recurrent_kernel, bias, initial_state=states0,
                            mask=np.ones((B, T), bool))
    no_mask, _ = ref_call(cell, x, kernel, recurrent_kernel, bias, initial_state=states0)
    np.testing.assert_array_equal(all_valid, no_mask)


# ------------------------------------------------------------------------ 3. finite differences

#: (activation, recurrent_activation) pairs. Every activation appears in both roles somewhere.
#: GRU gates must stay bounded (z mixes h_prev multiplicatively: linear/relu gates blow up).
_BOUNDED_GATES = [("tanh", "sigmoid"), ("relu", "hard_sigmoid"), ("softsign", "tanh"),
                  ("hard_sigmoid", "softsign"), ("linear", "sigmoid"), ("sigmoid", "hard_sigmoid")]
FD_ACTIVATIONS = {
    "lstm": _BOUNDED_GATES + [("tanh", "relu"), ("softsign", "linear")],
    "gru": _BOUNDED_GATES,
    "gru_rb": _BOUNDED_GATES,
    "simple_rnn": [(a, None) for a in ALL_ACTIVATIONS],
}
FD_SCENARIOS = {
    # masks with holes, left/right padding and a fully masked row; reversed; both dropout masks;
    # explicit initial states
    "mask-backwards-dropout": dict(mask=True, go_backwards=True, dropout=True, initial=True),
    # repeated-output masking is replaced by zeros; time-major; no bias; zero initial states
    "zero_output-time_major-nobias": dict(mask=True, zero_output_for_mask=True, time_major=True,
                                          use_bias=False),
}
#: (cell, activation, recurrent_activation, scenario): each cell's first pair runs every scenario,
#: the other pairs alternate (the masking paths do not depend on the activation).
FD_CASES = [(cell, act, ract, scenario)
            for cell in CELLS
            for k, (act, ract) in enumerate(FD_ACTIVATIONS[cell])
            for j, scenario in enumerate(FD_SCENARIOS)
            if k == 0 or k % len(FD_SCENARIOS) == j]


def _finite_difference(loss, arrays, eps=1e-6):
    """Central differences of ``loss()`` w.r.t. every entry of every array (perturbed in place)."""
    return [numeric_grad(loss, a, eps) for a in arrays]


@pytest.mark.parametrize("cell,activation,recurrent_activation,scenario", FD_CASES,
                         ids=[f"{c}-{a}" + (f"-{r}" if r else "") + f"-{sc}"
                              for c, a, r, sc in FD_CASES])
def test_gradients_finite_differences(cell, activation, recurrent_activation, scenario):
    sc = FD_SCENARIOS[scenario]
    B, T, I, H = 4, 5, 2, 3   # noqa: E741
    n_states = CELLS[cell][3]
    rng = np.random.default_rng(seed_for(cell, activation, recurrent_activation, scenario))
    kernel, recurrent_kernel, bias = make_weights(rng, cell, I, H, use_bias=sc.get("use_bias", True),
                                                  scale=1.0)
    x = rng.standard_normal((T, B, I) if sc.get("time_major") else (B, T, I))
    states0 = [rng.standard_normal((B, H)) for _ in range(n_states)] if sc.get("initial") else None
    keep = 0.7
    options = dict(
        mask=mask_patterns(T)[:B] if sc.get("mask") else None,   # right, left, holes, none
        go_backwards=sc.get("go_backwards", False),
        time_major=sc.get("time_major", False),
        zero_output_for_mask=sc.get("zero_output_for_mask", False),
        dropout_mask=(rng.random((B, I)) < keep) / keep if sc.get("dropout") else None,
        recurrent_dropout_mask=(rng.random((B, H)) < keep) / keep if sc.get("dropout") else None,
        activation=activation,
    )
    if cell != "simple_rnn":
        options["recurrent_activation"] = recurrent_activation
    out_weights = rng.standard_normal((T, B, H) if sc.get("time_major") else (B, T, H))
    state_weights = [rng.standard_normal((B, H)) for _ in range(n_states)]

    # the zero initial state counts as an input too: differentiate w.r.t. explicit zeros
    inputs = {"x": x, "kernel": kernel, "recurrent_kernel": recurrent_kernel}
    if bias is not None:
        inputs["bias"] = bias
    initial = states0 if states0 is not None else [np.zeros((B, H)) for _ in range(n_states)]

    def loss():
        out, states = ref_call(cell, inputs["x"], inputs["kernel"], inputs["recurrent_kernel"],
                               inputs.get("bias"), initial_state=initial, **options)
        return np.sum(out * out_weights) + sum(np.sum(s * w) for s, w in zip(states, state_weights))

    out, states, backward = ref_call(cell, x, kernel, recurrent_kernel, bias, vjp=True,
                                     initial_state=states0, **options)
    grads = backward(out_weights, state_weights)
    assert np.abs(out).max() < 100, "badly conditioned test data: finite differences would be noise"
    numeric = _finite_difference(loss, [*inputs.values(), *initial])
    analytic = [grads[name] for name in inputs] + grads["initial_state"]
    names = list(inputs) + [f"initial_state[{k}]" for k in range(n_states)]
    if bias is None:
        assert grads["bias"] is None
    for name, a, n in zip(names, analytic, numeric):
        if (cell, activation, name) == ("lstm", "relu", "initial_state[1]") and states0 is None:
            # c = f * c0 + i * relu(a_c) is exactly 0 where c0 = 0 and a_c < 0: relu(c) sits on
            # its kink, where the analytic derivative is the flat side's 0 (as in torch) and
            # central differences see 1/2. Nothing to compare there.
            continue
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-7, err_msg=name)


def test_activation_derivatives_from_output():
    a = np.linspace(-5, 5, 1001) + 1e-3     # avoids the kinks at 0 and +-3 exactly
    eps = 1e-7
    for name in ALL_ACTIVATIONS:
        f = activations.get(name)[0]
        numeric = (f(a + eps) - f(a - eps)) / (2 * eps)
        np.testing.assert_allclose(activations.derivative_from_output(name, f(a)), numeric,
                                   rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(activations.activate("hard_sigmoid", np.array([-4.0, 0.0, 1.5, 4.0])),
                               [0.0, 0.5, 0.75, 1.0])


# -------------------------------------------------------------------- 4. inputs are never modified

@pytest.mark.parametrize("cell", list(CELLS))
def test_inputs_not_modified_and_backward_repeatable(cell):
    B, T, I, H = 3, 5, 17, 34   # noqa: E741
    n_states = CELLS[cell][3]
    rng = np.random.default_rng(11)
    kernel, recurrent_kernel, bias = make_weights(rng, cell, I, H)
    arrays = dict(
        x=rng.standard_normal((B, T, I)), kernel=kernel, recurrent_kernel=recurrent_kernel,
        bias=bias, mask=rng.random((B, T)) > 0.3, dropout_mask=rng.random((B, I)) * 2,
        recurrent_dropout_mask=rng.random((B, H)) * 2,
        **{f"state{k}": rng.standard_normal((B, H)) for k in range(n_states)},
    )
    d_out = rng.standard_normal((B, T, H))
    d_states = [rng.standard_normal((B, H)) for _ in range(n_states)]
    copies = {k: v.copy() for k, v in arrays.items()}
    d_copies = [d_out.copy()] + [d.copy() for d in d_states]
    for v in [*arrays.values(), d_out, *d_states]:
        v.setflags(write=False)          # any write raises

    out, states, backward = ref_call(
        cell, arrays["x"], arrays["kernel"], arrays["recurrent_kernel"], arrays["bias"], vjp=True,
        initial_state=[arrays[f"state{k}"] for k in range(n_states)], mask=arrays["mask"],
        go_backwards=True, dropout_mask=arrays["dropout_mask"],
        recurrent_dropout_mask=arrays["recurrent_dropout_mask"])
    first = backward(d_out, d_states)
    second = backward(d_out, d_states)
    for k in ("x", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(first[k], second[k])
    for a, b in zip(first["initial_state"], second["initial_state"]):
        np.testing.assert_array_equal(a, b)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, copies[k], err_msg=k)
    for v, c in zip([d_out, *d_states], d_copies):
        np.testing.assert_array_equal(v, c)
    # results do not alias inputs
    for s, s0 in zip(states, [arrays[f"state{k}"] for k in range(n_states)]):
        assert not np.shares_memory(s, s0)
    # d_final_states entries may be None
    partial = backward(d_out, [None] * n_states)
    assert len(partial["initial_state"]) == n_states

    # the forward keeps its own copies: scribbling on the caller's arrays afterwards changes nothing
    writable = {k: v.copy() for k, v in arrays.items()}
    _, _, backward = ref_call(
        cell, writable["x"], writable["kernel"], writable["recurrent_kernel"], writable["bias"],
        vjp=True, initial_state=[writable[f"state{k}"] for k in range(n_states)],
        mask=writable["mask"], go_backwards=True, dropout_mask=writable["dropout_mask"],
        recurrent_dropout_mask=writable["recurrent_dropout_mask"])
    for v in writable.values():
        v[...] = 0
    third = backward(d_out, d_states)
    for k in ("x", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(first[k], third[k])


# ----------------------------------------------------------------------------- API, dtypes, speed

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("cell", list(CELLS))
def test_dtype_follows_x(cell, dtype):
    rng = np.random.default_rng(3)
    kernel, recurrent_kernel, bias = make_weights(rng, cell, 5, 4)    # float64 weights
    x = rng.standard_normal((2, 3, 5)).astype(dtype)
    out, states, backward = ref_call(cell, x, kernel, recurrent_kernel, bias, vjp=True)
    grads = backward(np.ones_like(out))
    assert out.dtype == dtype and all(s.dtype == dtype for s in states)
    assert all(grads[k].dtype == dtype for k in ("x", "kernel", "recurrent_kernel", "bias"))
    forward_only, _ = ref_call(cell, x, kernel, recurrent_kernel, bias)
    np.testing.assert_array_equal(forward_only, out)


def test_unknown_activation_lists_known_names():
    rng = np.random.default_rng(0)
    kernel, recurrent_kernel, bias = make_weights(rng, "lstm", 3, 2)
    x = rng.standard_normal((1, 2, 3))
    with pytest.raises(ValueError, match="hard_sigmoid.*softsign|softsign.*hard_sigmoid"):
        ref.lstm(x, kernel, recurrent_kernel, bias, activation="swish")
    with pytest.raises(ValueError, match="'gelu'"):
        ref.gru(x, kernel[:, :6], recurrent_kernel[:, :6], recurrent_activation="gelu")


def test_bad_shapes_are_rejected():
    rng = np.random.default_rng(0)
    kernel, recurrent_kernel, bias = make_weights(rng, "lstm", 3, 2)
    x = rng.standard_normal((4, 5, 3))
    with pytest.raises(ValueError, match="rank 3"):
        ref.lstm(x[0], kernel, recurrent_kernel, bias)
    with pytest.raises(ValueError, match="kernel"):
        ref.lstm(x[:, :, :2], kernel, recurrent_kernel, bias)
    with pytest.raises(ValueError, match="bias"):
        ref.gru(x, kernel[:, :6], recurrent_kernel[:, :6], bias[:6])   # reset_after wants (2, 6)
    with pytest.raises(ValueError, match="mask"):
        ref.lstm(x, kernel, recurrent_kernel, bias, mask=np.ones((5, 4), bool))
    with pytest.raises(ValueError, match="initial_state"):
        ref.lstm(x, kernel, recurrent_kernel, bias, initial_state=[np.zeros((4, 2))])
    with pytest.raises(TypeError, match="floating"):
        ref.lstm(x.astype(int), kernel, recurrent_kernel, bias)
    out, _, backward = ref.lstm_vjp(x, kernel, recurrent_kernel, bias)
    with pytest.raises(ValueError, match="d_outputs"):
        backward(out[:, :-1])


def test_long_sequence_is_fast():
    """T=300, B=4, I=H=34: the oracle is a benchmark baseline, so it must not be pathological."""
    rng = np.random.default_rng(5)
    T, B, I, H = 300, 4, 34, 34   # noqa: E741
    kernel, recurrent_kernel, bias = make_weights(rng, "lstm", I, H)
    x = rng.standard_normal((B, T, I))
    start = time.perf_counter()
    out, _, backward = ref.lstm_vjp(x, kernel, recurrent_kernel, bias,
                                    mask=rng.random((B, T)) > 0.2)
    backward(out)
    assert time.perf_counter() - start < 1.0
