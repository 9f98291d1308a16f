"""Canonical weight layout (Keras) and converters to and from PyTorch and ONNX.

=========================  ============  ================  ======================  ==========
cell                       kernel        recurrent_kernel  bias                    gate order
=========================  ============  ================  ======================  ==========
LSTM                       (I, 4H)       (H, 4H)           (4H,)                   i, f, c, o
GRU reset_after=True       (I, 3H)       (H, 3H)           (2, 3H) input, recur.   z, r, h
GRU reset_after=False      (I, 3H)       (H, 3H)           (3H,)                   z, r, h
SimpleRNN                  (I, H)        (H, H)            (H,)                    -
=========================  ============  ================  ======================  ==========

PyTorch keeps (G*H, I) matrices (the transpose) and two biases; LSTM gates are in the same order and
only their sum matters; torch.nn.GRU is [r, z, n] and equals reset_after=True once z and r are swapped.
ONNX LSTM is [i, o, f, c] with W (1, 4H, I), R (1, 4H, H), B (1, 8H) = [Wb, Rb]; ONNX GRU is [z, r, h]
(linear_before_reset=1 is reset_after=True).  Converters never modify their inputs.
"""
import numpy as np

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def _blocks(a, order, axis):
    """Reorder the G gate blocks of `a` along `axis` (order: the source block index for each slot)."""
    parts = np.split(np.asarray(a), len(order), axis=axis)
    return np.concatenate([parts[k] for k in order], axis=axis)


def _torch_order(cell):
    """Index map between Keras and torch gate blocks (an involution: the same both ways)."""
    return [1, 0, 2] if cell == "gru" else list(range(GATES[cell]))


def keras_to_torch(cell, kernel, recurrent_kernel, bias=None, reset_after=True):
    """Keras weights -> dict of torch.nn.{LSTM,GRU,RNN} layer-0 arrays (weight_ih_l0, weight_hh_l0,
    bias_ih_l0, bias_hh_l0), as NumPy arrays.  GRU needs reset_after=True (torch's formulation)."""
    if cell == "gru" and not reset_after:
        raise ValueError("keras_to_torch: torch.nn.GRU computes reset_after=True; got reset_after=False")
    order = _torch_order(cell)
    out = {
        "weight_ih_l0": _blocks(kernel, order, axis=1).T.copy(),
        "weight_hh_l0": _blocks(recurrent_kernel, order, axis=1).T.copy(),
    }
    if bias is not None:
        bias = np.asarray(bias)
        if cell == "gru":
            out["bias_ih_l0"] = _blocks(bias[0], order, axis=0)
            out["bias_hh_l0"] = _blocks(bias[1], order, axis=0)
        else:
            out["bias_ih_l0"] = bias.copy()
            out["bias_hh_l0"] = np.zeros_like(bias)
    return out


def torch_to_keras(cell, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """torch.nn layer weights (NumPy arrays) -> (kernel, recurrent_kernel, bias) in Keras layout.
    LSTM/RNN biases are summed; GRU biases become the (2, 3H) reset_after=True bias."""
    order = _torch_order(cell)
    kernel = _blocks(np.asarray(weight_ih).T, order, axis=1)
    recurrent = _blocks(np.asarray(weight_hh).T, order, axis=1)
    bias = None
    if bias_ih is not None:
        if cell == "gru":
            bias = np.stack([_blocks(bias_ih, order, 0), _blocks(bias_hh, order, 0)])
        else:
            bias = np.asarray(bias_ih) + np.asarray(bias_hh)
    return kernel, recurrent, bias


_ONNX_LSTM_ORDER = [0, 3, 1, 2]  # ONNX slot k takes Keras block _ONNX_LSTM_ORDER[k]: i, o, f, c


def keras_to_onnx(cell, kernel, recurrent_kernel, bias=None):
    """Keras weights -> ONNX (W, R, B) for the LSTM/GRU/RNN operators, one direction:
    W (1, G*H, I), R (1, G*H, H), B (1, 2*G*H).  GRU B assumes linear_before_reset=1 when bias is (2, 3H)."""
    G = GATES[cell]
    order = _ONNX_LSTM_ORDER if cell == "lstm" else list(range(G))
    W = _blocks(kernel, order, axis=1).T[None].copy()
    R = _blocks(recurrent_kernel, order, axis=1).T[None].copy()
    H = R.shape[2]
    if bias is None:
        B = np.zeros((1, 2 * G * H), W.dtype)
    else:
        bias = np.asarray(bias)
        wb, rb = (bias[0], bias[1]) if bias.ndim == 2 else (bias, np.zeros_like(bias))
        B = np.concatenate([_blocks(wb, order, 0), _blocks(rb, order, 0)])[None]
    return W, R, B
