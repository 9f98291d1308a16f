"""fastrnn as the engine under Keras 3 (torch backend): drop-in ``LSTM``, ``GRU`` and ``SimpleRNN`` layers,
and an opt-in switch that makes plain ``keras.layers.LSTM`` / ``keras.layers.GRU`` use fastrnn.

    import os; os.environ["KERAS_BACKEND"] = "torch"
    import keras, fastrnn.keras

    model = keras.Sequential([keras.Input((8, 8)), fastrnn.keras.LSTM(64), keras.layers.Dense(10)])
    model.compile("sgd", "sparse_categorical_crossentropy"); model.fit(x, y)     # fastrnn kernels, fwd + bwd
    model.save("m.keras"); keras.models.load_model("m.keras")                 # registered as fastrnn>LSTM

    with fastrnn.keras.enabled():          # or fastrnn.keras.enable() ... fastrnn.keras.disable()
        keras.layers.LSTM(64)(x)           # runs on fastrnn through Keras's backend hook

**Layers.**  ``fastrnn.keras.LSTM/GRU/SimpleRNN`` subclass ``keras.layers.LSTM/GRU/SimpleRNN`` with the same
constructor, config and weights (``set_weights`` / ``get_weights`` are interchangeable with the stock layers);
they override ``inner_loop`` only, so ``return_sequences``, ``return_state``, ``stateful`` bookkeeping and
dtype casts stay Keras's.  ``inner_loop`` calls ``fastrnn._torch_autograd.rnn`` (one torch.autograd.Function
over ``fastrnn.functional``'s compiled forward/backward) with the cell's variables (``variable.value``,
so gradients land on the Keras variables), the mask (left padding and holes), ``go_backwards``,
``zero_output_for_mask``, the initial states (gradients flow to them), GRU's ``reset_after`` both ways,
``use_bias=False`` and ``unroll`` (same result either way).

**Dropout.**  In training, with ``dropout`` / ``recurrent_dropout`` > 0, fastrnn uses ONE (batch, input)
mask on the inputs and ONE (batch, units) mask on the state entering the recurrent matmul, for the whole
sequence (variational dropout).  The masks are the ones Keras's RNN layer already drew for this call from the
cell's seed generator (``cell.get_dropout_mask`` / ``get_recurrent_dropout_mask``: ``keras.random.dropout`` on
ones).  With ``recurrent_dropout == 0`` this is exactly what the stock layers compute (the stock LSTM/GRU also
apply one input mask per sequence), and SimpleRNN matches stock in every case.  Stock LSTM/GRU with
``recurrent_dropout > 0`` instead draw one mask per gate (4 for LSTM, 3 for GRU, on inputs and state); fastrnn
uses the first of each list for all gates, so training then differs from stock in its random pattern (same
expectation, same rates).

**Where Keras's own loop runs instead** (the layer calls the stock ``inner_loop``, same results, no fastrnn):

- the Keras backend is not torch (``keras.backend.backend() != "torch"``, checked at every call): the bridge
  is a torch.autograd.Function, so JAX/TensorFlow keep their own loops;
- tensors not on the CPU (CUDA: Keras's cuDNN path is kept; "meta" tensors during symbolic shape inference),
  or inside ``torch.compile`` / ``torch.jit`` tracing (the bridge calls NumPy; Keras's loop traces cleanly);
- dtypes other than float32/float64 (mixed precision), or inputs and weights of different dtypes;
- an activation or recurrent activation fastrnn does not compile: fastrnn serves ``tanh``, ``sigmoid``,
  ``hard_sigmoid`` (Keras 3's ``relu6(x + 3) / 6``), ``relu``, ``linear`` (and ``None``) and ``softsign``
  given by name or as the keras.activations / keras.ops / torch function; any other callable falls back;
- a cell that is not the layer's stock cell class (e.g. a subclass overriding ``call``), or an empty sequence.

**Plain keras.layers (``enable``/``disable``/``enabled``).**  Keras's ``LSTM.inner_loop`` / ``GRU.inner_loop``
first call the backend hooks ``keras.src.backend.lstm(inputs, h, c, mask, kernel=..., ...)`` /
``keras.src.backend.gru(inputs, h, mask, ..., reset_after=...)`` (only when ``recurrent_dropout == 0``; input
dropout is already applied to ``inputs``) and use their result unless they raise ``NotImplementedError``.
``enable()`` replaces those two attributes of ``keras.src.backend`` (the module the layers read; the
``keras.src.backend.torch.rnn`` functions are re-exported there at import, so patching them would not take
effect) with fastrnn hooks; ``disable()`` puts the saved originals back.  A fastrnn hook hands every call it
cannot serve to the original hook (which serves cuDNN on CUDA and raises ``NotImplementedError`` where Keras's
loop must run): besides the cases above, that includes any call with a mask, since the hook is not told the
layer's ``zero_output_for_mask``.  ``SimpleRNN`` has no backend hook; use ``fastrnn.keras.SimpleRNN``.
"""
import contextlib
import os
import sys
import threading

if "keras" not in sys.modules:
    # fastrnn's kernels serve Keras through its torch backend: make it the default when nothing chose one
    # (Keras's own default, tensorflow, is usually not installed next to fastrnn)
    os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
from keras.src import tree  # noqa: E402

from fastrnn import _torch_autograd  # noqa: E402

__all__ = ["LSTM", "GRU", "SimpleRNN", "enable", "disable", "enabled", "is_enabled"]

_ACTIVATION_NAMES = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "softsign")
_ACTIVATIONS = None


def _activation_table():
    global _ACTIVATIONS
    if _ACTIVATIONS is None:
        import torch

        table = {}
        for name in _ACTIVATION_NAMES:
            candidates = [getattr(keras.activations, name, None), getattr(keras.ops, name, None),
                          getattr(torch, name, None)]
            if name != "linear":  # torch.nn.functional.linear is the affine map, not an activation
                candidates.append(getattr(torch.nn.functional, name, None))
            for fn in candidates:
                if fn is not None:
                    table[fn] = name
        table[torch.nn.functional.hardsigmoid] = "hard_sigmoid"  # relu6(x + 3) / 6, as Keras 3
        _ACTIVATIONS = table
    return _ACTIVATIONS


def _activation_name(fn):
    """The fastrnn name of a Keras activation, or None when fastrnn cannot run it."""
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn if fn in _ACTIVATION_NAMES else None
    try:
        return _activation_table().get(fn)
    except TypeError:  # unhashable callable
        return None


def _torch_ready(tensors):
    """True when every given tensor can go through fastrnn's torch bridge (torch backend, CPU, one float
    dtype, not tracing)."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    if torch.jit.is_tracing() or (hasattr(torch, "compiler") and torch.compiler.is_compiling()):
        return False
    dtype = None
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return False
        if dtype is None:
            dtype = t.dtype
        if t.dtype != dtype or dtype not in (torch.float32, torch.float64):
            return False
    return True


def _value(v):
    """A Keras variable's torch tensor (the Parameter itself, so gradients land on the variable)."""
    return v.value if isinstance(v, keras.Variable) else v


def _first(mask):
    if mask is None:
        return None
    return mask[0] if isinstance(mask, (list, tuple)) else mask


def _run(cell_name, x, kernel, recurrent_kernel, bias, states, *, mask, go_backwards, activation,
         recurrent_activation, zero_output_for_mask, reset_after, return_sequences, dropout_mask=None,
         recurrent_dropout_mask=None):
    """fastrnn over torch tensors; returns what Keras's ``inner_loop`` returns: (last_output, outputs,
    states), outputs (B, T, H) with return_sequences and (B, 1, H) otherwise."""
    h0 = states[0]
    c0 = states[1] if cell_name == "lstm" else None
    outputs, final = _torch_autograd.rnn(
        cell_name, x, kernel, recurrent_kernel, bias, h0, c0, mask=mask, go_backwards=bool(go_backwards),
        activation=activation, recurrent_activation=recurrent_activation,
        zero_output_for_mask=bool(zero_output_for_mask), reset_after=bool(reset_after),
        dropout_mask=dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask)
    last_output = outputs[:, -1]
    if not return_sequences:
        outputs = outputs[:, -1:]
    return last_output, outputs, list(final)


def _as_bool_mask(mask, batch, steps):
    import torch

    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        mask = keras.ops.convert_to_tensor(mask)
    if tuple(mask.shape) != (batch, steps) or mask.device.type != "cpu":
        raise NotImplementedError
    return mask if mask.dtype == torch.bool else mask != 0


# --------------------------------------------------------------------------------------------------------
# Layers


class _FastRNNMixin:
    """Overrides ``inner_loop`` with fastrnn; everything else is the stock Keras layer."""

    _fastrnn_cell = None        # "lstm" | "gru" | "simple_rnn"
    _fastrnn_cell_class = None  # the stock cell class fastrnn reproduces

    def _fastrnn_loop(self, sequences, initial_state, mask, training):
        cell = self.cell
        if type(cell) is not self._fastrnn_cell_class:
            return None
        activation = _activation_name(cell.activation)
        recurrent_activation = ("sigmoid" if self._fastrnn_cell == "simple_rnn"
                                else _activation_name(cell.recurrent_activation))
        if activation is None or recurrent_activation is None:
            return None
        states = list(initial_state) if tree.is_nested(initial_state) else [initial_state]
        if len(states) != (2 if self._fastrnn_cell == "lstm" else 1):
            return None
        kernel, recurrent_kernel = _value(cell.kernel), _value(cell.recurrent_kernel)
        bias = _value(cell.bias) if cell.bias is not None else None
        if not _torch_ready([sequences, kernel, recurrent_kernel, bias, *states]):
            return None
        if sequences.ndim != 3 or sequences.shape[1] == 0 or sequences.shape[0] == 0:
            return None
        try:
            mask = _as_bool_mask(_first(mask), sequences.shape[0], sequences.shape[1])
        except NotImplementedError:
            return None
        dropout_mask = recurrent_dropout_mask = None
        if training:
            # Masks RNN.call already drew for this call (cell.seed_generator, keras.random.dropout on ones);
            # with recurrent_dropout > 0 Keras's LSTM/GRU cells keep one per gate: fastrnn uses the first.
            if cell.dropout > 0:
                dropout_mask = _first(cell.get_dropout_mask(sequences[:, 0, :]))
            if cell.recurrent_dropout > 0:
                recurrent_dropout_mask = _first(cell.get_recurrent_dropout_mask(states[0]))
            if not _torch_ready([sequences, dropout_mask, recurrent_dropout_mask]):
                return None
        return _run(self._fastrnn_cell, sequences, kernel, recurrent_kernel, bias, states, mask=mask,
                    go_backwards=self.go_backwards, activation=activation,
                    recurrent_activation=recurrent_activation, zero_output_for_mask=self.zero_output_for_mask,
                    reset_after=getattr(cell, "reset_after", True), return_sequences=self.return_sequences,
                    dropout_mask=dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        out = self._fastrnn_loop(sequences, initial_state, mask, training)
        if out is None:  # not servable by fastrnn (see the module docstring): Keras's own loop
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        return out


@keras.saving.register_keras_serializable(package="fastrnn")
class LSTM(_FastRNNMixin, keras.layers.LSTM):
    """``keras.layers.LSTM`` running on fastrnn's kernels (torch backend, CPU), forward and gradients.

    Same constructor, config and weights as ``keras.layers.LSTM``.  Falls back to Keras's loop where fastrnn
    cannot serve (see ``fastrnn.keras``'s docstring); with ``recurrent_dropout > 0`` one mask per sequence is
    shared by the four gates (Keras draws one per gate)."""

    _fastrnn_cell = "lstm"
    _fastrnn_cell_class = keras.layers.LSTMCell


@keras.saving.register_keras_serializable(package="fastrnn")
class GRU(_FastRNNMixin, keras.layers.GRU):
    """``keras.layers.GRU`` running on fastrnn's kernels (torch backend, CPU), forward and gradients;
    ``reset_after`` True and False.

    Same constructor, config and weights as ``keras.layers.GRU``.  Falls back to Keras's loop where fastrnn
    cannot serve (see ``fastrnn.keras``'s docstring); with ``recurrent_dropout > 0`` one mask per sequence is
    shared by the three gates (Keras draws one per gate)."""

    _fastrnn_cell = "gru"
    _fastrnn_cell_class = keras.layers.GRUCell


@keras.saving.register_keras_serializable(package="fastrnn")
class SimpleRNN(_FastRNNMixin, keras.layers.SimpleRNN):
    """``keras.layers.SimpleRNN`` running on fastrnn's kernels (torch backend, CPU), forward and gradients.

    Same constructor, config and weights as ``keras.layers.SimpleRNN`` (dropout semantics identical to
    Keras's).  Falls back to Keras's loop where fastrnn cannot serve (see ``fastrnn.keras``'s docstring)."""

    _fastrnn_cell = "simple_rnn"
    _fastrnn_cell_class = keras.layers.SimpleRNNCell


# --------------------------------------------------------------------------------------------------------
# Backend hooks for plain keras.layers.LSTM / GRU


def _hook_target():
    from keras.src import backend as keras_backend  # the module whose `lstm`/`gru` the layers call

    return keras_backend


_lock = threading.Lock()
_originals = {}  # "lstm"/"gru" -> the hook that was installed before enable()


def _serve_hook(cell_name, inputs, states, mask, kernel, recurrent_kernel, bias, activation,
                recurrent_activation, return_sequences, go_backwards, reset_after=True, batch_first=True):
    if mask is not None or not batch_first:
        return None  # the hook is not told zero_output_for_mask: Keras's loop handles masks
    activation = _activation_name(activation)
    recurrent_activation = _activation_name(recurrent_activation)
    if activation is None or recurrent_activation is None:
        return None
    kernel, recurrent_kernel = _value(kernel), _value(recurrent_kernel)
    bias = _value(bias) if bias is not None else None
    states = [_value(s) for s in states]
    if not _torch_ready([inputs, kernel, recurrent_kernel, bias, *states]):
        return None
    if inputs.ndim != 3 or inputs.shape[0] == 0 or inputs.shape[1] == 0:
        return None
    return _run(cell_name, inputs, kernel, recurrent_kernel, bias, states, mask=None,
                go_backwards=go_backwards, activation=activation, recurrent_activation=recurrent_activation,
                zero_output_for_mask=False, reset_after=reset_after, return_sequences=return_sequences)


def _lstm_hook(inputs, initial_state_h, initial_state_c, mask, kernel, recurrent_kernel, bias, activation,
               recurrent_activation, return_sequences=False, go_backwards=False, unroll=False, batch_first=True,
               **kwargs):
    out = None
    if not kwargs:
        out = _serve_hook("lstm", inputs, [initial_state_h, initial_state_c], mask, kernel, recurrent_kernel,
                          bias, activation, recurrent_activation, return_sequences, go_backwards,
                          batch_first=batch_first)
    if out is not None:
        return out
    return _originals["lstm"](inputs, initial_state_h, initial_state_c, mask, kernel=kernel,
                              recurrent_kernel=recurrent_kernel, bias=bias, activation=activation,
                              recurrent_activation=recurrent_activation, return_sequences=return_sequences,
                              go_backwards=go_backwards, unroll=unroll, batch_first=batch_first, **kwargs)


def _gru_hook(inputs, initial_state, mask, kernel, recurrent_kernel, bias, activation, recurrent_activation,
              return_sequences=False, go_backwards=False, unroll=False, reset_after=True, **kwargs):
    out = None
    if not kwargs:
        out = _serve_hook("gru", inputs, [_first(initial_state)], mask, kernel, recurrent_kernel, bias,
                          activation, recurrent_activation, return_sequences, go_backwards,
                          reset_after=reset_after)
    if out is not None:
        return out
    return _originals["gru"](inputs, initial_state, mask, kernel=kernel, recurrent_kernel=recurrent_kernel,
                             bias=bias, activation=activation, recurrent_activation=recurrent_activation,
                             return_sequences=return_sequences, go_backwards=go_backwards, unroll=unroll,
                             reset_after=reset_after, **kwargs)


_HOOKS = {"lstm": _lstm_hook, "gru": _gru_hook}


def is_enabled():
    """Whether plain ``keras.layers.LSTM`` / ``GRU`` currently run on fastrnn (``enable()`` is in effect)."""
    return bool(_originals)


def enable():
    """Make plain ``keras.layers.LSTM`` and ``keras.layers.GRU`` run on fastrnn (torch backend, CPU, no
    mask, activations fastrnn compiles; anything else goes to Keras's original hook and loop).

    Replaces ``keras.src.backend.lstm`` / ``gru`` (the hooks the layers' ``inner_loop`` calls) until
    ``disable()``; calling it again is a no-op.  Process-wide: affects every Keras model."""
    target = _hook_target()
    with _lock:
        if _originals:
            return
        for name, hook in _HOOKS.items():
            _originals[name] = getattr(target, name)
            setattr(target, name, hook)


def disable():
    """Undo ``enable()``: put Keras's own ``lstm`` / ``gru`` backend hooks back (no-op when not enabled)."""
    target = _hook_target()
    with _lock:
        for name, original in _originals.items():
            if getattr(target, name) is _HOOKS[name]:
                setattr(target, name, original)
        _originals.clear()


@contextlib.contextmanager
def enabled():
    """``with fastrnn.keras.enabled(): ...`` runs plain keras.layers.LSTM/GRU on fastrnn inside the block and
    restores the previous state (enabled or not) on exit."""
    was_enabled = is_enabled()
    enable()
    try:
        yield
    finally:
        if not was_enabled:
            disable()
