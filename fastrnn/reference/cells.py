"""One time step of each cell, forward and backward, in plain NumPy.

Design
------
A cell here knows one step and nothing about time, masks or direction (``loop.py`` owns those, as
Keras's RNN wrapper owns the loop around its cells). Every step function has the same shape:

``step(p, x, states, h_rec) -> (new_states, cache)``
    ``x``       (B, I)  this step's input, input dropout already applied
    ``states``  tuple of (B, H): ``(h, c)`` for LSTM, ``(h,)`` for GRU and SimpleRNN
    ``h_rec``   (B, H)  ``h`` as it enters the recurrent matmul (recurrent dropout already applied);
                        the undropped ``states`` are used everywhere else (``c``, GRU's ``z * h``)
    ``new_states[0]`` is also the step's output.

``step_backward(p, cache, d_new_states, grads) -> (dx, dh_rec, d_states)``
    ``d_new_states``  tuple of (B, H): gradient w.r.t. each new state (output gradient included)
    ``grads``         dict of arrays "kernel", "recurrent_kernel", "bias", ACCUMULATED in place
    ``dx``            (B, I)  gradient w.r.t. ``x`` (the dropped input)
    ``dh_rec``        (B, H)  gradient w.r.t. ``h_rec`` (the dropped recurrent input)
    ``d_states``      tuple of (B, H): gradient w.r.t. the previous states by the direct paths only
                      (LSTM's ``c``, GRU's ``z * h_prev``), excluding the path through ``h_rec``.

``p`` is a :class:`CellParams`. Weights are in the canonical Keras layout (DESIGN.md section 2);
``p.bias`` is always an array (zeros when the caller passed no bias). Caches are never modified by
``step_backward``, so a backward pass can be run several times.

Activation derivatives are taken from activation outputs (see ``activations.py``), so caches hold
gate values, not pre-activations.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import activations

__all__ = ["CellParams", "Cell", "LSTM", "GRU_RESET_AFTER", "GRU_RESET_BEFORE", "SIMPLE_RNN"]


@dataclass(frozen=True)
class CellParams:
    """Weights and activation names of one cell (canonical Keras layout, compute dtype)."""

    kernel: np.ndarray            # (I, G*H)
    recurrent_kernel: np.ndarray  # (H, G*H)
    bias: np.ndarray              # (G*H,), or (2, 3H) for GRU reset_after=True
    activation: str
    recurrent_activation: str

    @property
    def units(self):
        return self.recurrent_kernel.shape[0]


def _f(p, a):
    return activations.activate(p.activation, a)


def _df(p, y):
    return activations.derivative_from_output(p.activation, y)


def _g(p, a):
    return activations.activate(p.recurrent_activation, a)


def _dg(p, y):
    return activations.derivative_from_output(p.recurrent_activation, y)


def _split(a, n):
    """Split the last axis of ``a`` into ``n`` equal gate blocks (views)."""
    H = a.shape[-1] // n
    return [a[..., k * H:(k + 1) * H] for k in range(n)]


def _accumulate(grads, x, h_rec, d_input_gates, d_recurrent_gates=None):
    """Weight gradients of ``x @ W + h_rec @ R`` for one step (bias handled by the caller)."""
    grads["kernel"] += x.T @ d_input_gates
    grads["recurrent_kernel"] += h_rec.T @ (d_input_gates if d_recurrent_gates is None
                                            else d_recurrent_gates)


# --------------------------------------------------------------------------------------------- LSTM

def lstm_step(p, x, states, h_rec):
    """LSTM step, gate order i, f, c, o (f = activation, g = recurrent_activation).

    ``a := x @ W + h_rec @ R + b``;  ``i, f_, o := g(a_i), g(a_f), g(a_o)``;  ``u := f(a_c)``;
    ``c := f_ * c_prev + i * u``;  ``h := o * f(c)``.
    """
    _, c_prev = states
    a = x @ p.kernel + h_rec @ p.recurrent_kernel + p.bias
    a_i, a_f, a_c, a_o = _split(a, 4)
    i, f, u, o = _g(p, a_i), _g(p, a_f), _f(p, a_c), _g(p, a_o)
    c = f * c_prev + i * u
    fc = _f(p, c)
    h = o * fc
    cache = dict(x=x, h_rec=h_rec, c_prev=c_prev, i=i, f=f, u=u, o=o, fc=fc)
    return (h, c), cache


def lstm_step_backward(p, cache, d_new_states, grads):
    """Backward of :func:`lstm_step`."""
    dh, dc_next = d_new_states
    i, f, u, o, fc = cache["i"], cache["f"], cache["u"], cache["o"], cache["fc"]
    d_o = dh * fc
    dc = dc_next + dh * o * _df(p, fc)
    d_i, d_f, d_u = dc * u, dc * cache["c_prev"], dc * i
    da = np.concatenate([d_i * _dg(p, i), d_f * _dg(p, f), d_u * _df(p, u), d_o * _dg(p, o)],
                        axis=1)
    _accumulate(grads, cache["x"], cache["h_rec"], da)
    grads["bias"] += da.sum(axis=0)
    dx = da @ p.kernel.T
    dh_rec = da @ p.recurrent_kernel.T
    return dx, dh_rec, (np.zeros_like(dh), dc * f)


# ----------------------------------------------------------------------------- GRU, reset_after=True

def gru_reset_after_step(p, x, states, h_rec):
    """GRU step with the reset gate applied after the recurrent matmul (Keras default, = cuDNN/torch).

    ``xa := x @ W + b[0]``;  ``ra := h_rec @ R + b[1]``  (gate order z, r, h);
    ``z, r := g(xa_z + ra_z), g(xa_r + ra_r)``;  ``u := f(xa_h + r * ra_h)``;
    ``h := z * h_prev + (1 - z) * u``.
    """
    (h_prev,) = states
    xa = x @ p.kernel + p.bias[0]
    ra = h_rec @ p.recurrent_kernel + p.bias[1]
    xa_z, xa_r, xa_h = _split(xa, 3)
    ra_z, ra_r, ra_h = _split(ra, 3)
    z = _g(p, xa_z + ra_z)
    r = _g(p, xa_r + ra_r)
    u = _f(p, xa_h + r * ra_h)
    h = z * h_prev + (1 - z) * u
    cache = dict(x=x, h_rec=h_rec, h_prev=h_prev, z=z, r=r, u=u, ra_h=ra_h)
    return (h,), cache


def gru_reset_after_step_backward(p, cache, d_new_states, grads):
    """Backward of :func:`gru_reset_after_step`."""
    (dh,) = d_new_states
    z, r, u = cache["z"], cache["r"], cache["u"]
    d_z = dh * (cache["h_prev"] - u)
    d_uh = dh * (1 - z) * _df(p, u)        # gradient w.r.t. u's pre-activation
    d_r = d_uh * cache["ra_h"]
    d_zh = d_z * _dg(p, z)
    d_rh = d_r * _dg(p, r)
    d_xa = np.concatenate([d_zh, d_rh, d_uh], axis=1)
    d_ra = np.concatenate([d_zh, d_rh, d_uh * r], axis=1)
    _accumulate(grads, cache["x"], cache["h_rec"], d_xa, d_ra)
    grads["bias"][0] += d_xa.sum(axis=0)
    grads["bias"][1] += d_ra.sum(axis=0)
    dx = d_xa @ p.kernel.T
    dh_rec = d_ra @ p.recurrent_kernel.T
    return dx, dh_rec, (dh * z,)


# ---------------------------------------------------------------------------- GRU, reset_after=False

def gru_reset_before_step(p, x, states, h_rec):
    """GRU step with the reset gate applied to the state before the matmul (original GRU, Keras 2).

    ``xa := x @ W + b``  (gate order z, r, h; bias (3H,));
    ``z, r := g(xa_z + h_rec @ R_z), g(xa_r + h_rec @ R_r)``;
    ``u := f(xa_h + (r * h_rec) @ R_h)``;  ``h := z * h_prev + (1 - z) * u``.
    """
    (h_prev,) = states
    H = p.units
    R_zr, R_h = p.recurrent_kernel[:, :2 * H], p.recurrent_kernel[:, 2 * H:]
    xa = x @ p.kernel + p.bias
    xa_z, xa_r, xa_h = _split(xa, 3)
    ra_z, ra_r = _split(h_rec @ R_zr, 2)
    z = _g(p, xa_z + ra_z)
    r = _g(p, xa_r + ra_r)
    rh = r * h_rec
    u = _f(p, xa_h + rh @ R_h)
    h = z * h_prev + (1 - z) * u
    cache = dict(x=x, h_rec=h_rec, h_prev=h_prev, z=z, r=r, u=u, rh=rh)
    return (h,), cache


def gru_reset_before_step_backward(p, cache, d_new_states, grads):
    """Backward of :func:`gru_reset_before_step`."""
    (dh,) = d_new_states
    H = p.units
    R_zr, R_h = p.recurrent_kernel[:, :2 * H], p.recurrent_kernel[:, 2 * H:]
    z, r, u, h_rec = cache["z"], cache["r"], cache["u"], cache["h_rec"]
    d_z = dh * (cache["h_prev"] - u)
    d_uh = dh * (1 - z) * _df(p, u)        # gradient w.r.t. u's pre-activation
    d_rh = d_uh @ R_h.T                    # gradient w.r.t. r * h_rec
    d_zh = d_z * _dg(p, z)
    d_rr = d_rh * h_rec * _dg(p, r)        # gradient w.r.t. r's pre-activation
    d_zr = np.concatenate([d_zh, d_rr], axis=1)
    d_xa = np.concatenate([d_zh, d_rr, d_uh], axis=1)
    grads["kernel"] += cache["x"].T @ d_xa
    grads["recurrent_kernel"][:, :2 * H] += h_rec.T @ d_zr
    grads["recurrent_kernel"][:, 2 * H:] += cache["rh"].T @ d_uh
    grads["bias"] += d_xa.sum(axis=0)
    dx = d_xa @ p.kernel.T
    dh_rec = d_zr @ R_zr.T + d_rh * r
    return dx, dh_rec, (dh * z,)


# -------------------------------------------------------------------------------------- SimpleRNN

def simple_rnn_step(p, x, states, h_rec):
    """SimpleRNN step: ``h := f(x @ W + b + h_rec @ R)`` (``recurrent_activation`` is unused)."""
    h = _f(p, x @ p.kernel + p.bias + h_rec @ p.recurrent_kernel)
    return (h,), dict(x=x, h_rec=h_rec, h=h)


def simple_rnn_step_backward(p, cache, d_new_states, grads):
    """Backward of :func:`simple_rnn_step`."""
    (dh,) = d_new_states
    da = dh * _df(p, cache["h"])
    _accumulate(grads, cache["x"], cache["h_rec"], da)
    grads["bias"] += da.sum(axis=0)
    return da @ p.kernel.T, da @ p.recurrent_kernel.T, (np.zeros_like(dh),)


# -------------------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Cell:
    """What the time loop needs to know about a cell."""

    name: str
    gates: int                   # G: kernel (I, G*H), recurrent_kernel (H, G*H)
    n_states: int                # 2 for LSTM (h, c), else 1 (h)
    bias_shape: Callable         # H -> expected bias shape
    step: Callable
    step_backward: Callable


LSTM = Cell("lstm", 4, 2, lambda H: (4 * H,), lstm_step, lstm_step_backward)
GRU_RESET_AFTER = Cell("gru(reset_after=True)", 3, 1, lambda H: (2, 3 * H),
                       gru_reset_after_step, gru_reset_after_step_backward)
GRU_RESET_BEFORE = Cell("gru(reset_after=False)", 3, 1, lambda H: (3 * H,),
                        gru_reset_before_step, gru_reset_before_step_backward)
SIMPLE_RNN = Cell("simple_rnn", 1, 1, lambda H: (H,), simple_rnn_step, simple_rnn_step_backward)
