"""JAX functions over fastrnn's CPU kernels: ``lstm``, ``gru`` and ``simple_rnn`` with ``jax.custom_vjp``.

    import jax, jax.numpy as jnp
    from fastrnn import jax as fjax

    outputs, (h, c) = fjax.lstm(x, kernel, recurrent_kernel, bias, mask=mask)
    grads = jax.grad(lambda k: fjax.lstm(x, k, recurrent_kernel, bias)[0].sum())(kernel)

Same signature, shapes, options and return values as `fastrnn.functional` (Keras weight layout,
see fastrnn/_weights.py), over jax arrays; usable under ``jax.jit``, ``jax.grad``/``jax.vjp`` and
``jax.vmap`` (which loops over the mapped axis).  Nothing here re-implements RNN math: each call is a
``jax.pure_callback`` into `fastrnn.functional` on the host CPU.

Design
------
* Differentiable inputs: x, kernel, recurrent_kernel, bias and initial_state.  mask, dropout_mask and
  recurrent_dropout_mask are constants (wrapped in ``lax.stop_gradient``): their gradient is zero.
* Options (go_backwards, time_major, activation names, zero_output_for_mask, reset_after) are static
  Python values; a new value retraces under jit.
* The compute dtype is x's: float32, or float64 when ``jax_enable_x64`` is on.  Weights, states and
  dropout masks are cast to it (the cast is differentiated by JAX as usual).
* Gradients recompute the forward pass.  The fwd rule runs the plain forward callback and keeps only
  its *inputs* as residuals (jax arrays, as custom_vjp requires); the bwd rule's callback re-runs
  ``fastrnn.functional.<cell>_vjp`` on them and applies its ``backward`` to the cotangents.  So one
  ``jax.grad`` costs two forward passes and one backward pass, and keeps no activations alive between
  the forward and the backward pass (the engine's tape lives only inside the bwd callback).  Keeping
  the engine's tape across callbacks would save the second forward, but needs host-side state keyed by
  a token, which jit's caching and dead-code elimination make fragile; the recompute is always right.
"""
import functools

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - only without the optional dependency
    raise ImportError("fastrnn.jax needs JAX (pip install jax)") from exc

from fastrnn import functional

__all__ = ["lstm", "gru", "simple_rnn"]

from fastrnn._spec import N_STATES as _N_STATES  # noqa: E402
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _host(a):
    return None if a is None else np.asarray(a)


def _engine_call(cell, opts, x, kernel, recurrent_kernel, bias, states, consts, vjp):
    """Call fastrnn.functional.<cell>[_vjp] on host arrays (the body of every callback)."""
    opts = dict(opts)
    if cell != "gru":
        opts.pop("reset_after")
    if cell == "simple_rnn":
        opts.pop("recurrent_activation")
    mask, dropout_mask, recurrent_dropout_mask = (_host(c) for c in consts)
    fn = getattr(functional, cell + ("_vjp" if vjp else ""))
    return fn(_host(x), _host(kernel), _host(recurrent_kernel), _host(bias),
              initial_state=[_host(s) for s in states] or None,
              mask=None if mask is None else mask != 0, dropout_mask=dropout_mask,
              recurrent_dropout_mask=recurrent_dropout_mask, **opts)


def _result_shapes(cell, opts, x, recurrent_kernel):
    H = recurrent_kernel.shape[0]
    if opts["time_major"]:
        T, B = x.shape[0], x.shape[1]
        out_shape = (T, B, H)
    else:
        B, T = x.shape[0], x.shape[1]
        out_shape = (B, T, H)
    out = jax.ShapeDtypeStruct(out_shape, x.dtype)
    state = jax.ShapeDtypeStruct((B, H), x.dtype)
    return out, tuple(state for _ in range(_N_STATES[cell]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rnn(cell, opts, x, kernel, recurrent_kernel, bias, states, consts):
    """(outputs, final_states tuple); cell and opts (a tuple of (key, value) pairs) are static."""
    return _forward(cell, opts, x, kernel, recurrent_kernel, bias, states, consts)


def _forward(cell, opts, x, kernel, recurrent_kernel, bias, states, consts):
    dtype = x.dtype

    def callback(x, kernel, recurrent_kernel, bias, states, consts):
        out, final = _engine_call(cell, dict(opts), x, kernel, recurrent_kernel, bias, states, consts, vjp=False)
        return np.asarray(out, dtype), tuple(np.asarray(s, dtype) for s in final)

    return jax.pure_callback(callback, _result_shapes(cell, dict(opts), x, recurrent_kernel),
                             x, kernel, recurrent_kernel, bias, states, consts, vmap_method="sequential")


def _rnn_fwd(cell, opts, x, kernel, recurrent_kernel, bias, states, consts):
    result = _forward(cell, opts, x, kernel, recurrent_kernel, bias, states, consts)
    return result, (x, kernel, recurrent_kernel, bias, states, consts)  # residuals: the inputs (recompute)


def _rnn_bwd(cell, opts, residuals, cotangents):
    x, kernel, recurrent_kernel, bias, states, consts = residuals
    d_outputs, d_final = cotangents
    dtype = x.dtype

    def callback(x, kernel, recurrent_kernel, bias, states, consts, d_outputs, d_final):
        _, _, backward = _engine_call(cell, dict(opts), x, kernel, recurrent_kernel, bias, states, consts,
                                      vjp=True)
        grads = backward(np.asarray(d_outputs), [np.asarray(d) for d in d_final])
        d_bias = None if bias is None else np.asarray(grads["bias"], dtype)
        d_states = tuple(np.asarray(g, dtype) for g in grads["initial_state"]) if states else ()
        return (np.asarray(grads["x"], dtype), np.asarray(grads["kernel"], dtype),
                np.asarray(grads["recurrent_kernel"], dtype), d_bias, d_states)

    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                    (x, kernel, recurrent_kernel, bias, states))
    d_x, d_kernel, d_recurrent, d_bias, d_states = jax.pure_callback(
        callback, shapes, x, kernel, recurrent_kernel, bias, states, consts, d_outputs, tuple(d_final),
        vmap_method="sequential")
    d_consts = jax.tree_util.tree_map(jnp.zeros_like, consts)  # constants: no gradient
    return d_x, d_kernel, d_recurrent, d_bias, d_states, d_consts


_rnn.defvjp(_rnn_fwd, _rnn_bwd)


def _as_float(name, a, dtype):
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a float array, got dtype {a.dtype}")
    return a.astype(dtype)


def _call(cell, x, kernel, recurrent_kernel, bias, initial_state, mask, dropout_mask, recurrent_dropout_mask,
          **options):
    x = jnp.asarray(x)
    if x.dtype not in _DTYPES:
        raise TypeError(f"x: expected dtype float32 or float64 (float64 needs jax_enable_x64), got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-D array, got shape {x.shape}")
    dtype = x.dtype
    kernel = _as_float("kernel", kernel, dtype)
    recurrent_kernel = _as_float("recurrent_kernel", recurrent_kernel, dtype)
    if recurrent_kernel.ndim != 2:
        raise ValueError(f"recurrent_kernel: expected shape (units, G*units), got {recurrent_kernel.shape}")
    bias = None if bias is None else _as_float("bias", bias, dtype)
    n = _N_STATES[cell]
    if initial_state is None:
        states = ()
    else:
        if n == 1 and not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) != n:
            raise ValueError(f"initial_state: expected a list of {n} arrays for {cell}, got {initial_state!r}")
        states = tuple(_as_float(f"initial_state[{k}]", s, dtype) for k, s in enumerate(initial_state))
    if mask is not None:
        mask = jnp.asarray(mask)
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer)):
            raise TypeError(f"mask: expected a bool (or 0/1 integer) array, got dtype {mask.dtype}")
        mask = (mask != 0).astype(dtype)  # crosses the callback as floats; the engine reads != 0
    consts = tuple(None if c is None else jax.lax.stop_gradient(_as_float(name, c, dtype) if name != "mask" else c)
                   for name, c in (("mask", mask), ("dropout_mask", dropout_mask),
                                   ("recurrent_dropout_mask", recurrent_dropout_mask)))
    # Fail at trace time with fastrnn's own messages (shapes only; no computation).
    _validate(cell, x, kernel, recurrent_kernel, bias, states, consts, options)
    opts = tuple(sorted(options.items()))
    outputs, final = _rnn(cell, opts, x, kernel, recurrent_kernel, bias, states, consts)
    return outputs, list(final)


def _validate(cell, x, kernel, recurrent_kernel, bias, states, consts, options):
    from fastrnn._spec import build_spec

    def empty(a, dtype=None):
        return None if a is None else np.empty(a.shape, dtype or np.dtype(x.dtype))

    mask, dropout_mask, recurrent_dropout_mask = consts
    build_spec(cell, empty(x), empty(kernel), empty(recurrent_kernel), empty(bias),
               initial_state=[empty(s) for s in states] or None,
               mask=None if mask is None else np.zeros(mask.shape, bool), dropout_mask=empty(dropout_mask),
               recurrent_dropout_mask=empty(recurrent_dropout_mask), **options)


def lstm(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
         time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
         dropout_mask=None, recurrent_dropout_mask=None):
    """LSTM over jax arrays: ``outputs, [h, c]`` (see fastrnn.functional.lstm); differentiable."""
    return _call("lstm", x, kernel, recurrent_kernel, bias, initial_state, mask, dropout_mask,
                 recurrent_dropout_mask, go_backwards=bool(go_backwards), time_major=bool(time_major),
                 activation=activation, recurrent_activation=recurrent_activation,
                 zero_output_for_mask=bool(zero_output_for_mask), reset_after=True)


def gru(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
        time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
        dropout_mask=None, recurrent_dropout_mask=None, reset_after=True):
    """GRU over jax arrays: ``outputs, [h]`` (see fastrnn.functional.gru); differentiable."""
    return _call("gru", x, kernel, recurrent_kernel, bias, initial_state, mask, dropout_mask,
                 recurrent_dropout_mask, go_backwards=bool(go_backwards), time_major=bool(time_major),
                 activation=activation, recurrent_activation=recurrent_activation,
                 zero_output_for_mask=bool(zero_output_for_mask), reset_after=bool(reset_after))


def simple_rnn(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
               time_major=False, activation="tanh", zero_output_for_mask=False, dropout_mask=None,
               recurrent_dropout_mask=None):
    """Fully connected RNN over jax arrays: ``outputs, [h]`` (see fastrnn.functional.simple_rnn)."""
    return _call("simple_rnn", x, kernel, recurrent_kernel, bias, initial_state, mask, dropout_mask,
                 recurrent_dropout_mask, go_backwards=bool(go_backwards), time_major=bool(time_major),
                 activation=activation, recurrent_activation="sigmoid",
                 zero_output_for_mask=bool(zero_output_for_mask), reset_after=True)
