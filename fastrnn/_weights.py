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
ONNX LSTM is [i, o, f, c] with W (D, 4H, I), R (D, 4H, H), B (D, 8H) = [Wb, Rb] (D = num_directions:
1, or 2 for direction="bidirectional", forward first); ONNX GRU is [z, r, h]: linear_before_reset=1 is
reset_after=True (B = the two bias rows), linear_before_reset=0 is reset_after=False (Keras's bias is
Wb + Rb: ONNX adds Rbh outside the reset gate then).  Converters never modify their inputs.

Whole layers: `from_torch(torch.nn.LSTM/GRU/RNN)` builds the matching fastrnn.layers layer (Bidirectional
for bidirectional=True, a list of layers for num_layers > 1) with the same weights; `to_torch` goes back.
"""
import numpy as np

from fastrnn._spec import GATES


def _blocks(a, order, axis):
    """Reorder the G gate blocks of `a` along `axis` (order: the source block index for each slot)."""
    parts = np.split(np.asarray(a), len(order), axis=axis)
    return np.concatenate([parts[k] for k in order], axis=axis)


def _torch_order(cell):
    """Index map between Keras and torch gate blocks (an involution: the same both ways)."""
    return [1, 0, 2] if cell == "gru" else list(range(GATES[cell]))


def _check_cell(cell):
    if cell not in GATES:
        raise ValueError(f"cell: expected one of {tuple(GATES)}, got {cell!r}")


def _gru_reset_after(bias, reset_after, who):
    """GRU's formulation from the bias rank, checked against an explicit reset_after."""
    if bias is None:
        return True if reset_after is None else bool(reset_after)
    inferred = np.ndim(bias) == 2
    if reset_after is not None and bool(reset_after) != inferred:
        raise ValueError(f"{who}: reset_after={reset_after} but the GRU bias has shape {np.shape(bias)} "
                         f"({'(2, 3H): reset_after=True' if inferred else '(3H,): reset_after=False'})")
    return inferred


def keras_to_torch(cell, kernel, recurrent_kernel, bias=None, reset_after=True, layer=0, reverse=False):
    """Keras weights -> dict of torch.nn.{LSTM,GRU,RNN} arrays named as in its state_dict
    (``weight_ih_l{layer}``, ``weight_hh_l...``, ``bias_ih_l...``, ``bias_hh_l...``, with ``_reverse`` for
    the backward direction), as NumPy arrays.  GRU needs reset_after=True (torch's formulation)."""
    _check_cell(cell)
    if cell == "gru" and not _gru_reset_after(bias, reset_after, "keras_to_torch"):
        raise ValueError("keras_to_torch: torch.nn.GRU computes reset_after=True; got reset_after=False")
    order = _torch_order(cell)
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    out = {
        "weight_ih" + sfx: _blocks(kernel, order, axis=1).T.copy(),
        "weight_hh" + sfx: _blocks(recurrent_kernel, order, axis=1).T.copy(),
    }
    if bias is not None:
        bias = np.asarray(bias)
        if cell == "gru":
            out["bias_ih" + sfx] = _blocks(bias[0], order, axis=0)
            out["bias_hh" + sfx] = _blocks(bias[1], order, axis=0)
        else:
            out["bias_ih" + sfx] = bias.copy()
            out["bias_hh" + sfx] = np.zeros_like(bias)
    return out


def torch_to_keras(cell, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """torch.nn layer weights (NumPy arrays) -> (kernel, recurrent_kernel, bias) in Keras layout.
    LSTM/RNN biases are summed; GRU biases become the (2, 3H) reset_after=True bias."""
    _check_cell(cell)
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


def keras_to_onnx(cell, kernel, recurrent_kernel, bias=None, reset_after=None):
    """Keras weights -> ONNX (W, R, B) for the LSTM/GRU/RNN operators, one direction:
    W (1, G*H, I), R (1, G*H, H), B (1, 2*G*H) = [Wb, Rb] (Rb zero except GRU reset_after=True).

    GRU: run the ONNX node with ``linear_before_reset=int(reset_after)``; reset_after is read from the
    bias shape ((2, 3H) True, (3H,) False) and must be given without a bias (default True).  Stack the
    two directions of a bidirectional layer with `keras_to_onnx_bidirectional`."""
    _check_cell(cell)
    G = GATES[cell]
    if cell == "gru":
        _gru_reset_after(bias, reset_after, "keras_to_onnx")
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


def keras_to_onnx_bidirectional(cell, forward, backward, reset_after=None):
    """Two Keras weight triples (kernel, recurrent_kernel, bias) -> ONNX (W, R, B) with
    num_directions=2 (forward first), for ``direction="bidirectional"``."""
    parts = [keras_to_onnx(cell, *weights, reset_after=reset_after) for weights in (forward, backward)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def onnx_to_keras(cell, W, R, B=None, *, direction=None, linear_before_reset=1, P=None):
    """ONNX LSTM/GRU/RNN tensors -> (kernel, recurrent_kernel, bias) in Keras layout, for one direction.

    W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) or None; D = num_directions.  With D == 2 pass
    ``direction=0`` (forward) or ``1`` (reverse: Keras's go_backwards=True copy); D == 1 needs nothing.
    LSTM and RNN: bias = Wb + Rb.  GRU: ``linear_before_reset`` is the node's attribute (ONNX's
    default is 0, the default here is 1, torch's and Keras's reset_after=True): 1 gives reset_after=True
    with a (2, 3H) bias [Wb, Rb]; 0 gives reset_after=False with bias Wb + Rb (exact: ONNX adds Rbh after
    the reset gate's product then).  LSTM peepholes ``P`` have no Keras counterpart: refused unless all
    zero.  The ONNX node's other attributes (activations, clip, input_forget, layout) are the caller's to
    check; the defaults match Keras's tanh/sigmoid."""
    _check_cell(cell)
    G = GATES[cell]
    W, R = np.asarray(W), np.asarray(R)
    if W.ndim != 3 or R.ndim != 3 or W.shape[0] != R.shape[0]:
        raise ValueError(f"onnx_to_keras: expected W (D, {G}*H, I) and R (D, {G}*H, H), got {W.shape} and {R.shape}")
    D, GH = R.shape[0], R.shape[1]
    H = R.shape[2]
    if GH != G * H or W.shape[1] != GH:
        raise ValueError(f"onnx_to_keras: {cell} expects W (D, {G}*H, I) and R (D, {G}*H, H) with H={H}, "
                         f"got {W.shape} and {R.shape}")
    if D not in (1, 2):
        raise ValueError(f"onnx_to_keras: num_directions must be 1 or 2, got {D}")
    if direction is None:
        if D == 2:
            raise ValueError("onnx_to_keras: these tensors hold 2 directions; pass direction=0 (forward) or "
                             "direction=1 (reverse)")
        direction = 0
    if direction not in range(D):
        raise ValueError(f"onnx_to_keras: direction must be in range({D}), got {direction!r}")
    if P is not None and np.any(np.asarray(P)[direction] != 0):
        raise ValueError("onnx_to_keras: the ONNX LSTM has peephole weights (P), which Keras's LSTM does not "
                         "compute; refusing to drop them")
    order = _ONNX_LSTM_ORDER if cell == "lstm" else list(range(G))
    inverse = list(np.argsort(order))  # Keras slot k takes ONNX block inverse[k]
    kernel = _blocks(W[direction].T, inverse, axis=1)
    recurrent = _blocks(R[direction].T, inverse, axis=1)
    if cell == "gru" and linear_before_reset not in (0, 1):
        raise ValueError(f"onnx_to_keras: linear_before_reset must be 0 or 1, got {linear_before_reset!r}")
    if B is None:
        bias = None
    else:
        B = np.asarray(B)
        if B.shape != (D, 2 * GH):
            raise ValueError(f"onnx_to_keras: expected B of shape {(D, 2 * GH)}, got {B.shape}")
        wb = _blocks(B[direction, :GH], inverse, 0)
        rb = _blocks(B[direction, GH:], inverse, 0)
        if cell == "gru" and linear_before_reset:
            bias = np.stack([wb, rb])
        else:
            bias = wb + rb
    return kernel, recurrent, bias


def onnx_to_torch(cell, W, R, B=None, *, direction=None, linear_before_reset=1, P=None, layer=0):
    """ONNX tensors -> torch.nn state_dict arrays (via Keras layout).  GRU needs linear_before_reset=1:
    torch.nn.GRU has no linear_before_reset=0 formulation."""
    if cell == "gru" and linear_before_reset != 1:
        raise ValueError("onnx_to_torch: torch.nn.GRU computes linear_before_reset=1; this ONNX GRU has "
                         f"linear_before_reset={linear_before_reset!r}")
    kernel, recurrent, bias = onnx_to_keras(cell, W, R, B, direction=direction,
                                            linear_before_reset=linear_before_reset, P=P)
    return keras_to_torch(cell, kernel, recurrent, bias, layer=layer, reverse=direction == 1)


def torch_to_onnx(cell, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """torch.nn layer arrays -> ONNX (W, R, B), one direction (GRU: linear_before_reset=1)."""
    return keras_to_onnx(cell, *torch_to_keras(cell, weight_ih, weight_hh, bias_ih, bias_hh))


# ------------------------------------------------------------------------------------- whole layers
_TORCH_CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN": "simple_rnn"}


def _numpy(t):
    return t.detach().cpu().numpy()


def from_torch(module, *, return_sequences=True, dtype=None):
    """A fastrnn.layers twin of a ``torch.nn.LSTM``, ``GRU`` or ``RNN`` (tanh or relu), same weights.

    Returns an LSTM/GRU(reset_after=True)/SimpleRNN layer with ``return_sequences=True`` (torch's
    ``output``), ``time_major=not batch_first``; a `Bidirectional` (merge_mode "concat", torch's layout of
    the two directions) for ``bidirectional=True``; a list of such layers, one per layer, for
    ``num_layers > 1`` (feed each one's output to the next, e.g. in a `Sequential`).  The layers are built
    for ``input_size`` features.  ``dropout`` between layers is a training-time option and is not kept;
    ``proj_size`` (LSTM projections) has no Keras counterpart and is refused."""
    from fastrnn import layers

    kind = type(module).__name__
    if kind not in _TORCH_CELLS or not hasattr(module, "weight_ih_l0"):
        raise TypeError(f"from_torch: expected a torch.nn.LSTM, GRU or RNN, got {kind}")
    cell = _TORCH_CELLS[kind]
    if getattr(module, "proj_size", 0):
        raise ValueError(f"from_torch: LSTM projections (proj_size={module.proj_size}) have no fastrnn layer")
    dtype = dtype or str(module.weight_ih_l0.dtype).removeprefix("torch.")
    H = module.hidden_size
    kwargs = {}
    if cell == "simple_rnn":
        kwargs["activation"] = module.nonlinearity
    if cell == "gru":
        kwargs["reset_after"] = True
    stack = []
    input_size = module.input_size
    for k in range(module.num_layers):
        def make(go_backwards=False):
            cls = {"lstm": layers.LSTM, "gru": layers.GRU, "simple_rnn": layers.SimpleRNN}[cell]
            return cls(H, return_sequences=return_sequences or k < module.num_layers - 1,
                       time_major=not module.batch_first, use_bias=module.bias, go_backwards=go_backwards,
                       dtype=dtype, **kwargs)

        layer = layers.Bidirectional(make()) if module.bidirectional else make()
        layer.build((None, None, input_size))
        weights = []
        for suffix in ("", "_reverse") if module.bidirectional else ("",):
            get = lambda name: getattr(module, f"{name}_l{k}{suffix}", None)  # noqa: E731
            kernel, recurrent, bias = torch_to_keras(
                cell, _numpy(get("weight_ih")), _numpy(get("weight_hh")),
                None if get("bias_ih") is None else _numpy(get("bias_ih")),
                None if get("bias_hh") is None else _numpy(get("bias_hh")))
            weights += [kernel, recurrent] + ([bias] if bias is not None else [])
        layer.set_weights(weights)
        stack.append(layer)
        input_size = H * (2 if module.bidirectional else 1)
    return stack[0] if len(stack) == 1 else stack


def _cell_of(layer):
    """(cell name, fastrnn cell object) of an LSTM/GRU/SimpleRNN layer."""
    from fastrnn import layers

    for cls, cell in ((layers.LSTM, "lstm"), (layers.GRU, "gru"), (layers.SimpleRNN, "simple_rnn")):
        if isinstance(layer, cls):
            return cell, layer.cell
    raise TypeError(f"to_torch: expected fastrnn.layers LSTM, GRU or SimpleRNN layers (or Bidirectional of "
                    f"one), got {type(layer).__name__}")


def to_torch(layers):
    """The torch.nn.LSTM/GRU/RNN equal to a fastrnn layer, a `Bidirectional` of one, or a list of them
    stacked (as `from_torch` returns): same weights, ``batch_first = not time_major``.

    Refused where torch.nn has no equivalent: GRU with reset_after=False, activations other than tanh
    (and relu for SimpleRNN) with sigmoid gates, go_backwards, layers that differ in cell or units."""
    import torch

    from fastrnn.layers import Bidirectional

    stack = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not stack:
        raise ValueError("to_torch: no layers given")
    cells, entries = [], []
    for layer in stack:
        bidirectional = isinstance(layer, Bidirectional)
        directions = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
        for d, sub in enumerate(directions):
            if not sub.built:
                raise ValueError(f"to_torch: layer {sub.name!r} is not built (call it or build it first)")
            if sub.go_backwards != (d == 1):
                raise ValueError(f"to_torch: layer {sub.name!r} has go_backwards={sub.go_backwards}; torch.nn "
                                 "runs the forward direction (and the reverse one only inside bidirectional)")
        cell, c = _cell_of(directions[0])
        act, ract = (a if isinstance(a, str) else getattr(a, "__name__", repr(a))
                     for a in (c.activation, getattr(c, "recurrent_activation", "sigmoid")))
        if cell == "gru" and not c.reset_after:
            raise ValueError("to_torch: torch.nn.GRU computes reset_after=True; this GRU has reset_after=False")
        if (cell != "simple_rnn" and (act, ract) != ("tanh", "sigmoid")) or (
                cell == "simple_rnn" and act not in ("tanh", "relu")):
            wanted = "tanh or relu" if cell == "simple_rnn" else "tanh and sigmoid"
            raise ValueError(f"to_torch: torch.nn computes {wanted} activations; layer {directions[0].name!r} "
                             f"has {act!r}/{ract!r}")
        cells.append((cell, c.units, act if cell == "simple_rnn" else None, c.use_bias, bidirectional,
                      directions[0].time_major))
        entries.append(directions)
    if len(set(cells)) != 1:
        raise ValueError(f"to_torch: the stacked layers differ (cell, units, activation, bias, bidirectional, "
                         f"time_major): {cells}")
    cell, H, act, use_bias, bidirectional, time_major = cells[0]
    input_size = entries[0][0].cell.kernel.shape[0]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple_rnn": torch.nn.RNN}[cell]
    kwargs = {"nonlinearity": act} if cell == "simple_rnn" else {}
    dtype = getattr(torch, np.dtype(entries[0][0].cell.kernel.dtype).name)
    module = cls(input_size, H, num_layers=len(stack), bias=use_bias, batch_first=not time_major,
                 bidirectional=bidirectional, dtype=dtype, **kwargs)
    state = {}
    for k, directions in enumerate(entries):
        for d, sub in enumerate(directions):
            bias = sub.cell.bias if use_bias else None
            state.update(keras_to_torch(cell, sub.cell.kernel, sub.cell.recurrent_kernel, bias, layer=k,
                                        reverse=d == 1))
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return module
