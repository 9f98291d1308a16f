"""Public entry points of the reference: the same signatures as the compiled ``fastrnn.functional``.

``lstm``, ``gru``, ``simple_rnn`` return ``(outputs, final_states)``; the ``*_vjp`` twins return
``(outputs, final_states, backward)`` where ``backward(d_outputs, d_final_states=None)`` returns the
gradients of every differentiable input.
"""
from . import cells, loop

__all__ = ["lstm", "gru", "simple_rnn", "lstm_vjp", "gru_vjp", "simple_rnn_vjp"]

_COMMON_DOC = """
    Parameters
    ----------
    x : (B, T, I) float array, or (T, B, I) with ``time_major=True``
        Computation happens in ``x.dtype``; weights, states and masks are cast to it.
    kernel : (I, {G}H)
    recurrent_kernel : (H, {G}H)
    bias : {bias_shape} or None
        None means no bias (gradient None).
    initial_state : list of {n_states} (B, H) arrays ({state_names}), or None for zeros
    mask : (B, T) bool, or None
        Always batch-major, indexed by the real input time. A masked step keeps every state of its
        row; its output repeats the row's previous output (zeros before the first unmasked step), or
        is zeros with ``zero_output_for_mask=True``. A fully masked row ends with its initial state.
    go_backwards : bool
        Read the sequence from the end; outputs stay in processing order
        (``outputs[:, s]`` is the step that read ``x[:, T - 1 - s]``).
    time_major : bool
        ``x`` and ``outputs`` are (T, B, ...) instead of (B, T, ...). ``mask`` is not affected.
    activation : str
        One of ``activations.ACTIVATIONS``; default "tanh".{recurrent_activation_doc}
    zero_output_for_mask : bool
    dropout_mask : (B, I) or None
        Multiplies the input at every step before the input matmul (already scaled; a constant).
    recurrent_dropout_mask : (B, H) or None
        Multiplies ``h_prev`` where it enters the recurrent matmul only (already scaled; a constant).{extra}

    Returns
    -------
    outputs : (B, T, H), or (T, B, H) with ``time_major=True``; dtype of ``x``
    final_states : list of {n_states} (B, H) arrays ({state_names}){vjp_returns}
"""

_RECURRENT_ACTIVATION_DOC = """
    recurrent_activation : str
        Gate activation, one of ``activations.ACTIVATIONS``; default "sigmoid"."""

_RESET_AFTER_DOC = """
    reset_after : bool
        True (Keras 3 default, = cuDNN and torch.nn.GRU): ``u = f(x W_h + b0_h + r * (h R_h + b1_h))``
        with bias (2, 3H). False: ``u = f(x W_h + b_h + (r * h) R_h)`` with bias (3H,)."""

_VJP_RETURNS = """
    backward : callable ``backward(d_outputs, d_final_states=None) -> dict``
        ``d_outputs`` has the shape and layout of ``outputs``; ``d_final_states`` is None or a list
        like ``final_states`` whose entries may be None (zero). The dict holds "x", "kernel",
        "recurrent_kernel", "bias" (None if ``bias`` was None) and "initial_state" (a list like
        ``final_states``; zeros initial states count as inputs too), in ``x.dtype``. ``backward`` can
        be called any number of times and never modifies its arguments."""


def _doc(summary, *, G, bias_shape, n_states, state_names, recurrent_activation=True,
         reset_after=False, vjp=False):
    return summary + _COMMON_DOC.format(
        G=G if G > 1 else "", bias_shape=bias_shape, n_states=n_states,
        state_names=state_names,
        recurrent_activation_doc=_RECURRENT_ACTIVATION_DOC if recurrent_activation else "",
        extra=_RESET_AFTER_DOC if reset_after else "",
        vjp_returns=_VJP_RETURNS if vjp else "")


def _vjp(cell, x, kernel, recurrent_kernel, bias, **options):
    outputs, final_states, tape = loop.forward(cell, x, kernel, recurrent_kernel, bias, **options)

    def backward(d_outputs, d_final_states=None):
        return loop.backward(tape, d_outputs, d_final_states)

    return outputs, final_states, backward


# -------------------------------------------------------------------------------------------- LSTM

def lstm_vjp(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None,
             go_backwards=False, time_major=False, activation="tanh",
             recurrent_activation="sigmoid", zero_output_for_mask=False, dropout_mask=None,
             recurrent_dropout_mask=None):
    return _vjp(cells.LSTM, x, kernel, recurrent_kernel, bias, initial_state=initial_state,
                mask=mask, go_backwards=go_backwards, time_major=time_major,
                activation=activation, recurrent_activation=recurrent_activation,
                zero_output_for_mask=zero_output_for_mask, dropout_mask=dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask)


def lstm(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None,
         go_backwards=False, time_major=False, activation="tanh", recurrent_activation="sigmoid",
         zero_output_for_mask=False, dropout_mask=None, recurrent_dropout_mask=None):
    outputs, final_states, _ = lstm_vjp(
        x, kernel, recurrent_kernel, bias, initial_state=initial_state, mask=mask,
        go_backwards=go_backwards, time_major=time_major, activation=activation,
        recurrent_activation=recurrent_activation, zero_output_for_mask=zero_output_for_mask,
        dropout_mask=dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask)
    return outputs, final_states


_LSTM_DOC = dict(G=4, bias_shape="(4H,)", n_states=2, state_names="[h, c]")
lstm.__doc__ = _doc("""LSTM over a sequence (Keras 3 ``keras.layers.LSTM`` semantics), gate order i, f, c, o.

    ``a = x W + h_prev R + b``; ``i, f, o = ra(a_i), ra(a_f), ra(a_o)``; ``c = f c_prev + i act(a_c)``;
    ``h = o act(c)``; the output is ``h``.
""", **_LSTM_DOC)
lstm_vjp.__doc__ = _doc("""LSTM forward and its vector-Jacobian product (BPTT); see :func:`lstm`.
""", vjp=True, **_LSTM_DOC)


# --------------------------------------------------------------------------------------------- GRU

def _gru_cell(reset_after):
    return cells.GRU_RESET_AFTER if reset_after else cells.GRU_RESET_BEFORE


def gru_vjp(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None,
            go_backwards=False, time_major=False, activation="tanh",
            recurrent_activation="sigmoid", zero_output_for_mask=False, dropout_mask=None,
            recurrent_dropout_mask=None, reset_after=True):
    return _vjp(_gru_cell(reset_after), x, kernel, recurrent_kernel, bias,
                initial_state=initial_state, mask=mask, go_backwards=go_backwards,
                time_major=time_major, activation=activation,
                recurrent_activation=recurrent_activation,
                zero_output_for_mask=zero_output_for_mask, dropout_mask=dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask)


def gru(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None,
        go_backwards=False, time_major=False, activation="tanh", recurrent_activation="sigmoid",
        zero_output_for_mask=False, dropout_mask=None, recurrent_dropout_mask=None,
        reset_after=True):
    outputs, final_states, _ = gru_vjp(
        x, kernel, recurrent_kernel, bias, initial_state=initial_state, mask=mask,
        go_backwards=go_backwards, time_major=time_major, activation=activation,
        recurrent_activation=recurrent_activation, zero_output_for_mask=zero_output_for_mask,
        dropout_mask=dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask,
        reset_after=reset_after)
    return outputs, final_states


_GRU_DOC = dict(G=3, bias_shape="(2, 3H) if reset_after else (3H,)", n_states=1,
                state_names="[h]", reset_after=True)
gru.__doc__ = _doc("""GRU over a sequence (Keras 3 ``keras.layers.GRU`` semantics), gate order z, r, h.

    ``z, r = ra(x W_z + h_prev R_z + b..), ra(...)``; ``u`` as under ``reset_after``;
    ``h = z h_prev + (1 - z) u``; the output is ``h``.
""", **_GRU_DOC)
gru_vjp.__doc__ = _doc("""GRU forward and its vector-Jacobian product (BPTT); see :func:`gru`.
""", vjp=True, **_GRU_DOC)


# --------------------------------------------------------------------------------------- SimpleRNN

_UNUSED = "sigmoid"   # SimpleRNN has no gates; the cell never reads recurrent_activation


def simple_rnn_vjp(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None,
                   go_backwards=False, time_major=False, activation="tanh",
                   zero_output_for_mask=False, dropout_mask=None, recurrent_dropout_mask=None):
    return _vjp(cells.SIMPLE_RNN, x, kernel, recurrent_kernel, bias,
                initial_state=initial_state, mask=mask, go_backwards=go_backwards,
                time_major=time_major, activation=activation, recurrent_activation=_UNUSED,
                zero_output_for_mask=zero_output_for_mask, dropout_mask=dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask)


def simple_rnn(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None,
               go_backwards=False, time_major=False, activation="tanh",
               zero_output_for_mask=False, dropout_mask=None, recurrent_dropout_mask=None):
    outputs, final_states, _ = simple_rnn_vjp(
        x, kernel, recurrent_kernel, bias, initial_state=initial_state, mask=mask,
        go_backwards=go_backwards, time_major=time_major, activation=activation,
        zero_output_for_mask=zero_output_for_mask, dropout_mask=dropout_mask,
        recurrent_dropout_mask=recurrent_dropout_mask)
    return outputs, final_states


_RNN_DOC = dict(G=1, bias_shape="(H,)", n_states=1, state_names="[h]",
                recurrent_activation=False)
simple_rnn.__doc__ = _doc("""SimpleRNN over a sequence (Keras 3 ``keras.layers.SimpleRNN``).

    ``h = act(x W + b + h_prev R)``; the output is ``h``.
""", **_RNN_DOC)
simple_rnn_vjp.__doc__ = _doc("""SimpleRNN forward and its vector-Jacobian product (BPTT); see
    :func:`simple_rnn`.
""", vjp=True, **_RNN_DOC)
