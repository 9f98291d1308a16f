"""fastrnn.jax: outputs equal fastrnn.functional; jax.grad equals fastrnn's backward and an independent
pure-JAX lax.scan implementation of Keras's loop (written here), under jit, with every option."""
import functools
import os

import numpy as np
import pytest

# The lax.scan oracle's XLA compilations dominate this file's time; optimizing them does not pay here.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from checks import assert_close, assert_grad_close  # noqa: E402
from fastrnn import functional as F  # noqa: E402
from fastrnn import jax as fjax  # noqa: E402

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
N_STATES = {"lstm": 2, "gru": 1, "simple_rnn": 1}
ACT = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu,
       "hard_sigmoid": lambda a: jnp.clip(0.2 * a + 0.5, 0.0, 1.0)}


# ------------------------------------------------------------------------------------- the oracle
def _step(cell, p, x, states, h_rec, reset_after):
    """One Keras step (gate orders of DESIGN section 2); h_rec is h as it enters the recurrent matmul."""
    f, g = ACT[p["activation"]], ACT[p["recurrent_activation"]]
    W, R, b = p["kernel"], p["recurrent_kernel"], p["bias"]
    H = R.shape[0]
    if cell == "lstm":
        h, c = states
        a = x @ W + h_rec @ R + (0 if b is None else b)
        i, fg, u, o = g(a[:, :H]), g(a[:, H:2 * H]), f(a[:, 2 * H:3 * H]), g(a[:, 3 * H:])
        c = fg * c + i * u
        return (o * f(c), c)
    if cell == "simple_rnn":
        return (f(x @ W + h_rec @ R + (0 if b is None else b)),)
    (h,) = states
    if reset_after:
        xa = x @ W + (0 if b is None else b[0])
        ra = h_rec @ R + (0 if b is None else b[1])
        z, r = g(xa[:, :H] + ra[:, :H]), g(xa[:, H:2 * H] + ra[:, H:2 * H])
        u = f(xa[:, 2 * H:] + r * ra[:, 2 * H:])
    else:
        xa = x @ W + (0 if b is None else b)
        z = g(xa[:, :H] + h_rec @ R[:, :H])
        r = g(xa[:, H:2 * H] + h_rec @ R[:, H:2 * H])
        u = f(xa[:, 2 * H:] + (r * h_rec) @ R[:, 2 * H:])
    return (z * h + (1 - z) * u,)


def scan_rnn(cell, x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
             time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
             dropout_mask=None, recurrent_dropout_mask=None, reset_after=True):
    """Keras 3's backend.rnn loop in lax.scan: a masked step keeps the states and repeats the previous
    output (zeros at first, or always with zero_output_for_mask); outputs in processing order."""
    p = dict(kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias, activation=activation,
             recurrent_activation=recurrent_activation)
    xs = x if time_major else jnp.swapaxes(x, 0, 1)  # (T, B, I)
    T, B = xs.shape[:2]
    H = recurrent_kernel.shape[0]
    ms = jnp.ones((T, B), bool) if mask is None else jnp.asarray(mask, bool).T
    if go_backwards:
        xs, ms = xs[::-1], ms[::-1]
    states = tuple(initial_state) if initial_state is not None else tuple(
        jnp.zeros((B, H), x.dtype) for _ in range(N_STATES[cell]))

    def body(carry, inp):
        states, prev = carry
        xt, mt = inp
        if dropout_mask is not None:
            xt = xt * dropout_mask
        h_rec = states[0] if recurrent_dropout_mask is None else states[0] * recurrent_dropout_mask
        new = _step(cell, p, xt, states, h_rec, reset_after)
        m = mt[:, None]
        states = tuple(jnp.where(m, n, s) for n, s in zip(new, states))
        out = jnp.where(m, new[0], 0.0 if zero_output_for_mask else prev)
        return (states, out), out

    (final, _), outs = jax.lax.scan(body, (states, jnp.zeros((B, H), x.dtype)), (xs, ms))
    return (outs if time_major else jnp.swapaxes(outs, 0, 1)), list(final)


# ------------------------------------------------------------------------------------- problems
def make(cell, dtype=np.float32, B=3, T=6, I=4, H=5, reset_after=True, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    args = dict(
        x=rng.standard_normal((B, T, I)).astype(dtype),
        kernel=(0.4 * rng.standard_normal((I, G * H))).astype(dtype),
        recurrent_kernel=(0.4 * rng.standard_normal((H, G * H))).astype(dtype),
        bias=None,
    )
    if bias:
        shape = (2, G * H) if cell == "gru" and reset_after else (G * H,)
        args["bias"] = (0.3 * rng.standard_normal(shape)).astype(dtype)
    states = [(0.5 * rng.standard_normal((B, H))).astype(dtype) for _ in range(N_STATES[cell])]
    mask = rng.random((B, T)) > 0.35
    mask[0] = True          # one full row
    mask[1, :2] = False     # one row starting masked (repeats zeros)
    d_out = rng.standard_normal((B, T, H)).astype(dtype)
    d_states = [rng.standard_normal((B, H)).astype(dtype) for _ in range(N_STATES[cell])]
    drop = dict(dropout_mask=(rng.random((B, I)) > 0.3).astype(dtype) / dtype(0.7),
                recurrent_dropout_mask=(rng.random((B, H)) > 0.3).astype(dtype) / dtype(0.7))
    return args, states, mask, d_out, d_states, drop


def fjax_fn(cell, reset_after):
    fn = getattr(fjax, cell)
    return functools.partial(fn, reset_after=reset_after) if cell == "gru" else fn


def cell_kwargs(cell, reset_after):
    return {"reset_after": reset_after} if cell == "gru" else {}


CASES = [("lstm", True), ("gru", True), ("gru", False), ("simple_rnn", True)]
OPTIONS = [  # together: every option, each in a few combinations
    dict(),
    dict(mask=True, initial_state=True, go_backwards=True, float64=True),
    dict(mask=True, initial_state=True, zero_output_for_mask=True, time_major=True),
    dict(mask=True, initial_state=True, dropout=True, go_backwards=True),
]


def _options(opt, states, mask, drop):
    kw = {k: v for k, v in opt.items() if k in ("go_backwards", "time_major", "zero_output_for_mask")}
    if opt.get("mask"):
        kw["mask"] = mask
    if opt.get("dropout"):
        kw.update(drop)
    return kw, (states if opt.get("initial_state") else None)


def jit_vjp(fn, kw):
    """jit(forward + pullback) of fn(x, kernel, recurrent_kernel, bias, initial_state=..., **kw)."""
    @jax.jit
    def run(x, kernel, recurrent_kernel, bias, init, d_out, d_states):
        (out, final), pullback = jax.vjp(
            lambda *a: fn(*a[:4], initial_state=a[4], **kw), x, kernel, recurrent_kernel, bias, init)
        return out, final, pullback((d_out, d_states))
    return run


def _loss(fn, d_out, d_states, kw):
    """A scalar loss touching every output and final state: sum(out * d_out) + sum(state_k * d_states_k)."""
    def loss(x, kernel, recurrent_kernel, bias, states):
        out, final = fn(x, kernel, recurrent_kernel, bias, initial_state=states, **kw)
        total = jnp.sum(out * d_out)
        for s, d in zip(final, d_states):
            total = total + jnp.sum(s * d)
        return total
    return loss


@pytest.mark.parametrize("cell,reset_after", CASES)
@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_forward_and_grad_match_functional_and_scan(cell, reset_after, opt):
    if opt.get("float64"):
        with jax.enable_x64(True):  # scoped: the other cases keep JAX's float32 default
            _check(cell, reset_after, opt, np.float64)
    else:
        _check(cell, reset_after, opt, np.float32)


def _check(cell, reset_after, opt, dtype):
    tight = dtype == np.float64
    args, states, mask, d_out, d_states, drop = make(cell, dtype, reset_after=reset_after)
    kw, init = _options(opt, states, mask, drop)
    ck = cell_kwargs(cell, reset_after)
    if opt.get("time_major"):
        args["x"] = np.ascontiguousarray(args["x"].transpose(1, 0, 2))
        d_out = np.ascontiguousarray(d_out.transpose(1, 0, 2))
    ref_out, ref_final, backward = getattr(F, cell + "_vjp")(**args, initial_state=init, **kw, **ck)
    ref = backward(d_out, d_states)
    ref = [ref[k] for k in ("x", "kernel", "recurrent_kernel", "bias")] + [ref["initial_state"] or None]
    same, oracle = (1e-12, 1e-10) if tight else (1e-6, 2e-5)

    # jax.grad of a scalar loss, jitted: equals fastrnn's backward
    argnums = (0, 1, 2, 3) + ((4,) if init is not None else ())
    grads = jax.jit(jax.grad(_loss(fjax_fn(cell, reset_after), d_out, d_states, kw), argnums=argnums))(
        *args.values(), init)
    names = ("x", "kernel", "recurrent_kernel", "bias", "initial_state")
    for name, g, r in zip(names, grads, ref):
        for k, (gl, rl) in enumerate(zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(r))):
            assert gl.dtype == dtype
            assert_grad_close(f"jax.grad d{name}[{k}] vs fastrnn backward", gl, rl, same)

    # forward and pullback (jitted vjp): equal fastrnn.functional and the independent lax.scan oracle
    out, final, pulled = jit_vjp(fjax_fn(cell, reset_after), kw)(*args.values(), init, d_out, d_states)
    assert out.dtype == dtype
    assert_close("outputs vs functional", out, ref_out, same)
    for k in range(N_STATES[cell]):
        assert_close(f"state {k} vs functional", final[k], ref_final[k], same)
    for name, g, r in zip(names, pulled, ref):
        for k, (gl, rl) in enumerate(zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(r))):
            assert_grad_close(f"vjp d{name}[{k}] vs fastrnn backward", gl, rl, same)
    if not opt:
        return  # the plain case adds nothing to the oracle check below (each XLA compile costs seconds)
    scan = functools.partial(scan_rnn, cell, **ck)
    s_out, s_final, s_pulled = jit_vjp(scan, kw)(*args.values(), init, d_out, d_states)
    assert_close("outputs vs lax.scan", out, s_out, oracle)
    for k in range(N_STATES[cell]):
        assert_close(f"state {k} vs lax.scan", final[k], s_final[k], oracle)
    for name, g, o in zip(names, pulled, s_pulled):
        for k, (gl, ol) in enumerate(zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(o))):
            assert_grad_close(f"vjp d{name}[{k}] vs lax.scan", gl, ol, 5 * oracle)


def test_no_bias_and_single_state_array():
    args, states, _, d_out, _, _ = make("gru", bias=False)
    args.pop("bias")
    out, (h,) = fjax.gru(**args, initial_state=states[0])
    ref_out, (ref_h,) = F.gru(**args, initial_state=states)
    assert_close("outputs", out, ref_out, 1e-6)
    g = jax.grad(lambda k: jnp.sum(fjax.gru(args["x"], k, args["recurrent_kernel"])[0] * d_out))(args["kernel"])
    _, _, backward = F.gru_vjp(**args)
    assert_grad_close("dkernel", g, backward(d_out)["kernel"], 1e-6)


def test_grad_of_final_state_only_and_value_and_grad():
    args, _, _, _, _, _ = make("lstm")
    x, k, r, b = args.values()
    val, g = jax.value_and_grad(lambda r: fjax.lstm(x, k, r, b)[1][1].sum())(r)
    ref_out, (ref_h, ref_c) = F.lstm(x, k, r, b)
    assert_close("value", val, ref_c.sum(), 1e-5)
    _, _, backward = F.lstm_vjp(x, k, r, b)
    expected = backward(np.zeros_like(ref_out), [None, np.ones_like(ref_c)])["recurrent_kernel"]
    assert_grad_close("dR from the cell state alone", g, expected, 1e-6)


def test_vmap_loops_over_the_mapped_axis():
    args, _, _, _, _, _ = make("simple_rnn")
    x, k, r, b = args.values()
    xs = np.stack([x, 2 * x])
    out = jax.vmap(lambda x: fjax.simple_rnn(x, k, r, b)[0])(xs)
    for n in range(2):
        assert_close(f"vmap slice {n}", out[n], F.simple_rnn(xs[n], k, r, b)[0], 1e-6)
    g = jax.vmap(jax.grad(lambda x: fjax.simple_rnn(x, k, r, b)[0].sum()))(xs)
    _, _, backward = F.simple_rnn_vjp(xs[1], k, r, b)
    assert_grad_close("vmap grad slice 1", g[1], backward(np.ones((3, 6, 5), np.float32))["x"], 1e-6)


def test_masks_are_constants_and_weights_cast_to_x_dtype():
    args, _, mask, _, _, drop = make("lstm")
    x, k, r, b = args.values()
    # weights in float64 with float32 x compute in float32, and their gradients come back in float64
    with jax.enable_x64(True):
        g = jax.grad(lambda k: fjax.lstm(x, k, r, b, mask=mask, **drop)[0].sum())(k.astype(np.float64))
        assert g.dtype == jnp.float64
    gm = jax.grad(lambda d: fjax.lstm(x, k, r, b, dropout_mask=d)[0].sum())(drop["dropout_mask"])
    assert np.all(np.asarray(gm) == 0)  # documented: masks are constants


def test_errors_at_trace_time():
    args, _, _, _, _, _ = make("lstm")
    x, k, r, b = args.values()
    with pytest.raises(ValueError, match="kernel"):
        fjax.lstm(x, k[:, :-1], r, b)
    with pytest.raises(TypeError, match="float32 or float64"):
        fjax.lstm(x.astype(jnp.bfloat16), k, r, b)
    with pytest.raises(ValueError, match="initial_state"):
        fjax.lstm(x, k, r, b, initial_state=[np.zeros((3, 5), np.float32)])
    with pytest.raises(ValueError, match="activation"):
        jax.jit(lambda x: fjax.lstm(x, k, r, b, activation="gelu")[0])(x)
