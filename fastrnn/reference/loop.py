"""The time loop: layout, direction, masks and dropout around a cell, and its BPTT.

Design
------
Everything is done time-major internally: ``x`` becomes (T, B, I) and outputs are built as
(T, B, H), then transposed back when the caller is batch-major. Processing step ``s`` reads the input
at real time ``t = T - 1 - s`` when ``go_backwards`` else ``t = s``; outputs are stored by ``s``
(processing order, as Keras returns them). ``mask`` is always (B, T) and indexed by ``t``.

Forward, per step (``m`` = mask[:, t], broadcast over units; Keras 3 ``backend.rnn`` semantics)::

    x_d      = x[t] * dropout_mask                      (if given)
    h_rec    = h * recurrent_dropout_mask               (if given)
    new      = cell.step(x_d, states, h_rec)            (new[0] is the cell output)
    states   = where(m, new, states)                    masked rows keep every state
    out[s]   = where(m, new[0], 0 if zero_output_for_mask else out[s-1]),   out[-1] = 0

So a masked step repeats the previous OUTPUT of its row (zeros before the row's first unmasked step,
not the initial state), and a fully masked row ends with its initial state.

Backward walks ``s`` downwards carrying ``dS`` (gradient w.r.t. the states after step ``s``) and
``d_carry`` (gradient w.r.t. ``out[s]`` that arrived from later masked steps repeating it)::

    g        = d_outputs[s] + d_carry
    d_new    = where(m, dS, 0);  d_new[0] += where(m, g, 0)
    d_carry  = where(m, 0, g)   (0 with zero_output_for_mask: the zeros are constants)
    dx_d, dh_rec, d_direct = cell.step_backward(d_new)
    dx[t]    = dx_d * dropout_mask
    dS       = where(m, 0, dS) + d_direct;  dS[0] += dh_rec * recurrent_dropout_mask

and ``dS`` after step 0 is the initial-state gradient. Weight gradients are accumulated per step.
"""
import numpy as np

from . import activations
from .cells import CellParams

__all__ = ["forward", "backward"]


class Tape:
    """What the forward pass keeps for the backward pass (never modified by the backward pass).

    It holds copies of the caller's arrays (see ``_prepare``), so writing to them after the forward
    pass does not change what ``backward`` computes.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)


# ----------------------------------------------------------------------------------- validation

def _float_array(name, a, dtype=None):
    """``a`` as an array; with ``dtype``, a fresh copy converted to it (numeric inputs only)."""
    a = np.asarray(a)
    if dtype is None:
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
        return a
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
            or a.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    return np.array(a, dtype=dtype)


def _check_shape(name, a, expected):
    if a.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {a.shape}")


def _prepare(cell, x, kernel, recurrent_kernel, bias, initial_state, mask, time_major,
             dropout_mask, recurrent_dropout_mask, activation, recurrent_activation):
    """Validate and convert everything once; returns private copies in the compute dtype."""
    activations.get(activation)
    activations.get(recurrent_activation)
    x = _float_array("x", x)
    if x.ndim != 3:
        layout = "(T, B, I)" if time_major else "(B, T, I)"
        raise ValueError(f"x must have rank 3 {layout}, got shape {x.shape}")
    dtype = x.dtype
    x_tm = np.array(x if time_major else x.transpose(1, 0, 2))      # (T, B, I) private copy
    T, B, I = x_tm.shape

    recurrent_kernel = _float_array("recurrent_kernel", recurrent_kernel, dtype)
    if recurrent_kernel.ndim != 2 or recurrent_kernel.shape[1] != cell.gates * recurrent_kernel.shape[0]:
        raise ValueError(f"recurrent_kernel of {cell.name} must have shape (H, {cell.gates}*H), "
                         f"got {recurrent_kernel.shape}")
    H = recurrent_kernel.shape[0]
    G = cell.gates
    kernel = _float_array("kernel", kernel, dtype)
    _check_shape("kernel", kernel, (I, G * H))
    if bias is None:
        bias_array = np.zeros(cell.bias_shape(H), dtype)
    else:
        bias_array = _float_array("bias", bias, dtype)
        _check_shape(f"bias of {cell.name}", bias_array, cell.bias_shape(H))

    if initial_state is None:
        states = tuple(np.zeros((B, H), dtype) for _ in range(cell.n_states))
    else:
        if isinstance(initial_state, np.ndarray) or len(initial_state) != cell.n_states:
            raise ValueError(f"initial_state of {cell.name} must be a list of {cell.n_states} "
                             f"arrays of shape (B, H) = {(B, H)}")
        states = tuple(_float_array(f"initial_state[{k}]", s, dtype)
                       for k, s in enumerate(initial_state))
        for k, s in enumerate(states):
            _check_shape(f"initial_state[{k}]", s, (B, H))

    if mask is not None:
        mask = np.array(mask, dtype=bool)
        _check_shape("mask (always batch-major (B, T))", mask, (B, T))
    if dropout_mask is not None:
        dropout_mask = _float_array("dropout_mask", dropout_mask, dtype)
        _check_shape("dropout_mask", dropout_mask, (B, I))
    if recurrent_dropout_mask is not None:
        recurrent_dropout_mask = _float_array("recurrent_dropout_mask", recurrent_dropout_mask,
                                              dtype)
        _check_shape("recurrent_dropout_mask", recurrent_dropout_mask, (B, H))
    return (x_tm, kernel, recurrent_kernel, bias_array, states, mask, dropout_mask,
            recurrent_dropout_mask)


# -------------------------------------------------------------------------------------- forward

def forward(cell, x, kernel, recurrent_kernel, bias, *, initial_state, mask, go_backwards,
            time_major, activation, recurrent_activation, zero_output_for_mask, dropout_mask,
            recurrent_dropout_mask):
    """Run ``cell`` over the sequence; returns ``(outputs, final_states, tape)``.

    Shapes: x (B, T, I) or (T, B, I); outputs (B, T, H) or (T, B, H) in processing order;
    final_states a list of (B, H).
    """
    (x_tm, kernel, recurrent_kernel, bias_array, states, mask, dropout_mask,
     recurrent_dropout_mask) = _prepare(cell, x, kernel, recurrent_kernel, bias, initial_state,
                                        mask, time_major, dropout_mask, recurrent_dropout_mask,
                                        activation, recurrent_activation)
    T, B, _ = x_tm.shape
    H = recurrent_kernel.shape[0]
    params = CellParams(kernel, recurrent_kernel, bias_array, activation, recurrent_activation)
    time_index = list(range(T - 1, -1, -1)) if go_backwards else list(range(T))

    outputs = np.zeros((T, B, H), x_tm.dtype)
    previous_output = np.zeros((B, H), x_tm.dtype)
    caches = []
    for s, t in enumerate(time_index):
        x_t = x_tm[t] if dropout_mask is None else x_tm[t] * dropout_mask
        h_rec = states[0] if recurrent_dropout_mask is None else states[0] * recurrent_dropout_mask
        new_states, cache = cell.step(params, x_t, states, h_rec)
        caches.append(cache)
        if mask is None:
            states, output = new_states, new_states[0]
        else:
            m = mask[:, t, None]
            states = tuple(np.where(m, new, old) for new, old in zip(new_states, states))
            skipped = np.zeros_like(previous_output) if zero_output_for_mask else previous_output
            output = np.where(m, new_states[0], skipped)
        outputs[s] = output
        previous_output = output

    if not time_major:
        outputs = np.ascontiguousarray(outputs.transpose(1, 0, 2))
    tape = Tape(cell=cell, params=params, time_index=time_index, caches=caches, mask=mask,
                dropout_mask=dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask,
                zero_output_for_mask=zero_output_for_mask, time_major=time_major,
                has_bias=bias is not None, outputs_shape=outputs.shape)
    final_states = [np.array(s, copy=True) for s in states]
    return outputs, final_states, tape


# ------------------------------------------------------------------------------------- backward

def backward(tape, d_outputs, d_final_states=None):
    """BPTT through a recorded forward pass.

    Parameters
    ----------
    tape : Tape
        From :func:`forward`.
    d_outputs : array, same shape and layout as the forward's outputs (processing order)
    d_final_states : list of (B, H) arrays or None entries, or None

    Returns
    -------
    dict with "x" (x's shape and layout), "kernel", "recurrent_kernel", "bias" (None when the forward
    had no bias) and "initial_state" (a list of (B, H)), all in the compute dtype.
    """
    p = tape.params
    dtype = p.kernel.dtype
    d_outputs = _float_array("d_outputs", d_outputs, dtype)
    _check_shape("d_outputs", d_outputs, tape.outputs_shape)
    d_out_tm = d_outputs if tape.time_major else d_outputs.transpose(1, 0, 2)
    T, B, H = d_out_tm.shape

    if d_final_states is None:
        d_final_states = [None] * tape.cell.n_states
    if len(d_final_states) != tape.cell.n_states:
        raise ValueError(f"d_final_states must be a list of {tape.cell.n_states} entries "
                         f"(arrays of shape {(B, H)} or None), got {len(d_final_states)}")
    dS = []
    for k, d in enumerate(d_final_states):
        if d is None:
            dS.append(np.zeros((B, H), dtype))
        else:
            d = _float_array(f"d_final_states[{k}]", d, dtype)
            _check_shape(f"d_final_states[{k}]", d, (B, H))
            dS.append(d)

    grads = {
        "kernel": np.zeros_like(p.kernel),
        "recurrent_kernel": np.zeros_like(p.recurrent_kernel),
        "bias": np.zeros_like(p.bias),
    }
    dx_tm = np.zeros((T, B, p.kernel.shape[0]), dtype)
    d_carry = np.zeros((B, H), dtype)
    mask = tape.mask
    for s in range(T - 1, -1, -1):
        t = tape.time_index[s]
        g = d_out_tm[s] + d_carry
        if mask is None:
            d_new = [dS[0] + g] + dS[1:]
            d_skip = [np.zeros((B, H), dtype) for _ in dS]
        else:
            m = mask[:, t, None]
            d_new = [np.where(m, d, 0) for d in dS]
            d_new[0] = d_new[0] + np.where(m, g, 0)
            d_skip = [np.where(m, 0, d) for d in dS]
            if not tape.zero_output_for_mask:
                d_carry = np.where(m, 0, g)

        dx_t, dh_rec, d_direct = tape.cell.step_backward(p, tape.caches[s], tuple(d_new), grads)

        dx_tm[t] = dx_t if tape.dropout_mask is None else dx_t * tape.dropout_mask
        if tape.recurrent_dropout_mask is not None:
            dh_rec = dh_rec * tape.recurrent_dropout_mask
        dS = [skip + direct for skip, direct in zip(d_skip, d_direct)]
        dS[0] = dS[0] + dh_rec

    dx = dx_tm if tape.time_major else np.ascontiguousarray(dx_tm.transpose(1, 0, 2))
    return {
        "x": dx,
        "kernel": grads["kernel"],
        "recurrent_kernel": grads["recurrent_kernel"],
        "bias": grads["bias"] if tape.has_bias else None,
        "initial_state": [np.array(d, copy=True) for d in dS],   # copies: never alias inputs
    }
