"""fastrnn as the engine under Keras 3 (torch backend): drop-in ``LSTM``, ``GRU`` and ``SimpleRNN`` layers, an
``RNN`` layer for any cell (nested inputs, outputs and states included), and an opt-in switch that makes plain
``keras.layers.LSTM`` / ``keras.layers.GRU`` use fastrnn.

    import os; os.environ["KERAS_BACKEND"] = "torch"
    import keras, fastrnn.keras

    model = keras.Sequential([keras.Input((8, 8)), fastrnn.keras.LSTM(64), keras.layers.Dense(10)])
    model.compile("sgd", "sparse_categorical_crossentropy"); model.fit(x, y)     # fastrnn kernels, fwd + bwd
    model.save("m.keras"); keras.models.load_model("m.keras")                 # registered as fastrnn>LSTM

    with fastrnn.keras.enabled():          # or fastrnn.keras.enable() ... fastrnn.keras.disable()
        keras.layers.LSTM(64)(x)           # runs on fastrnn through Keras's backend hook

    outputs = fastrnn.keras.RNN(NestedCell(10, 20, 30))((input_1, input_2))   # the guide's nested cell

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
loop must run; Keras 3.15's torch hooks raise it for every mask).  ``SimpleRNN`` has no backend hook; use
``fastrnn.keras.SimpleRNN``.

**Masks through the hook.**  ``RNN.call`` uses the hook's ``(last_output, outputs, states)`` as they are:
``outputs`` with return_sequences, else ``last_output``, and ``states`` -- no mask post-processing.  So the
hook must return what Keras's loop returns for the layer, and that depends on the layer's
``zero_output_for_mask`` (Bidirectional sets it to return_sequences; LSTM/GRU default False), which the
hook is not given: at a masked step Keras's loop keeps the states and outputs the previous output (zeros
before the first unmasked step) when it is False, zeros when True.  The two agree, and fastrnn serves the
call (exactly Keras's loop, outputs and gradients), when in processing order (reversed time with
``go_backwards``):

- ``return_sequences=False``: every row's last processed step is unmasked, or the row is fully masked
  (left padding and holes forwards; right padding and holes with go_backwards; no mask at all);
- ``return_sequences=True``: every row is a run of masked steps then a run of unmasked steps (left
  padding forwards, right padding with go_backwards; fully masked and unmasked rows included).

Any other masked call (e.g. right padding forwards with return_sequences=False, holes with
return_sequences=True) goes to Keras's loop, which alone knows the flag.  (TensorFlow's cuDNN hook, which
these hooks mimic, answers right-padded masks only, with zeros at masked steps of ``outputs`` and the last
state as ``last_output``: it does not match Keras's loop when zero_output_for_mask is False.)  The check
reads the mask's values (one small reduction per call; CPU tensors, no tracing).  The mask must be
(batch, timesteps) on the CPU; anything else falls back.

**Any cell, nested structures (``RNN``).**  ``fastrnn.keras.RNN(cell)`` is ``keras.layers.RNN`` for cells
Keras 3's own RNN layer cannot run: nested inputs / outputs and multi-dimensional states (the guide's
NestedCell; see ``RNN``'s docstring for why Keras 3 fails).  Stock cells on one input run on fastrnn's kernels.
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

__all__ = ["LSTM", "GRU", "SimpleRNN", "RNN", "enable", "disable", "enabled", "is_enabled"]

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
# RNN: any Keras cell, nested inputs / outputs / states


_STOCK_CELLS = {keras.layers.LSTMCell: "lstm", keras.layers.GRUCell: "gru",
                keras.layers.SimpleRNNCell: "simple_rnn"}


def _is_shape(entry):
    """A state size entry that is one multi-dimensional state: a non-empty list/tuple of positive ints."""
    return (isinstance(entry, (list, tuple)) and len(entry) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in entry))


def _state_shape(entry):
    """(features...) of one state from its state_size entry: an int n -> (n,), a shape [d1, d2, ...] -> it."""
    if isinstance(entry, int) and not isinstance(entry, bool) and entry > 0:
        return (entry,)
    if _is_shape(entry):
        return tuple(entry)
    raise ValueError(f"RNN: a state size must be a positive int or a list/tuple of positive ints (one "
                     f"multi-dimensional state), got {entry!r}; a cell whose states are nested further "
                     f"must define get_initial_state(batch_size)")


def _time_mask(mask):
    """The (B, T) step mask of a possibly nested mask argument: Keras uses one mask for every input, the
    first one given (``RNN.compute_mask``: "time step masks must be the same for each input")."""
    for m in tree.flatten(mask):
        if m is not None:
            return m
    return None


def _with_batch(tensor, batch, dtype=None):
    """A KerasTensor of tensor's shape with the batch dimension replaced (dtype: tensor's by default)."""
    dtype = keras.backend.standardize_dtype(tensor.dtype) if dtype is None else dtype
    return keras.KerasTensor((batch,) + tuple(tensor.shape[1:]), dtype=dtype)


@keras.saving.register_keras_serializable(package="fastrnn")
class RNN(_FastRNNMixin, keras.layers.RNN):
    """``keras.layers.RNN`` for any Keras cell, including cells with nested inputs, outputs and states of any
    rank (the guide's NestedCell), which Keras 3's own RNN layer cannot run.

    ``RNN(cell, return_sequences=False, return_state=False, go_backwards=False, stateful=False,
    unroll=False, zero_output_for_mask=False, **layer_kwargs)``; a list of cells is stacked
    (``keras.layers.StackedRNNCells``), as in Keras.

    **Call**: ``layer(sequences, initial_state=None, mask=None, training=False)``.

    - ``sequences``: a tensor (B, T, ...) or any ``keras.tree`` structure (tuple, list, dict) of tensors
      (B, T, ...) sharing B and T; the cell's ``call(inputs, states)`` receives the same structure with
      the time axis removed, and its ``build`` the matching structure of step shapes ((B, ...) each).
    - ``mask``: (B, T) bool, or a structure of them (one per input, as Keras collects them from the
      inputs' ``_keras_mask``): the first non-None one is used for every input.  A masked step keeps the
      previous states and repeats the previous output (zeros before the first unmasked step), or outputs
      zeros with ``zero_output_for_mask=True`` -- Keras's rule, for every tensor of the nested structures.
    - ``initial_state``: a list with one entry per state (the cell's order); default: the cell's
      ``get_initial_state(batch_size)`` if it has one, else zeros of (B, *shape) per ``state_size`` entry.

    **state_size**: an int (one state (B, n)), or a list/tuple with one entry per state, each an int n
    ((B, n)) or a list/tuple of ints [d1, d2, ...] ((B, d1, d2, ...): Keras 2's ``tf.TensorShape``, e.g.
    the guide's ``[[unit_1], [unit_2, unit_3]]``).  A flat list of ints is several vector states, as in
    Keras.  ``output_size`` is not needed: output shapes are traced from one step of the cell.

    **Returns**: the last output (the cell's output structure, each (B, ...)), or with
    ``return_sequences`` every step's output ((B, T, ...) each, in processing order: reversed time with
    ``go_backwards``, as Keras); with ``return_state`` a tuple ``(output, *final_states)``.

    **Engine**: with one of Keras's stock cells (exactly ``LSTMCell``, ``GRUCell``, ``SimpleRNNCell``) and a
    single input tensor, the sequence runs on fastrnn's compiled kernels through the same path as
    ``fastrnn.keras.LSTM/GRU/SimpleRNN`` (``fastrnn._torch_autograd.rnn``, with its fallbacks listed in the
    module docstring).  Every other cell runs a Python loop over the time steps calling the cell and
    ``keras.ops`` (``where`` for the mask, ``stack`` for the sequences), differentiable under the torch
    backend (the one tested; other backends need a time dimension known when the loop runs); it
    calls the cell once per step and nothing else (Keras's torch loop calls it once more up front);
    ``unroll`` is kept in the config for Keras compatibility and changes nothing (the loop is unrolled
    in Python either way).

    **Why not keras.layers.RNN** (Keras 3.15): its backend loop (``keras.src.backend.rnn``) handles nested
    structures, but the layer around it takes the inputs as one tensor and sizes as ints: ``build`` builds
    the cell with ``(shape[0],) + shape[2:]`` of the *tuple of shapes* (the guide's ``build`` then gets
    ``((B, T, i1),)`` and raises IndexError); ``call`` reads ``sequences.shape[1]`` and slices
    ``sequences[:, 0, :]`` (AttributeError on a tuple); ``get_initial_state`` makes ``zeros((B, d))`` per
    state_size entry (TypeError for a shape list); ``compute_output_shape`` raises "output_size must be an
    integer" (so no functional model), and reads a list entry of state_size as several vector states
    (``[[4, 5]]`` gives (B, 4), (B, 5) instead of one (B, 4, 5)).  This class overrides exactly those.

    ``stateful=True`` needs a static batch size, as in Keras; ``reset_state()`` zeroes every state
    variable (nested too).  Serializable: ``get_config`` is Keras's (the cell is serialized with it; a
    custom cell must be registered with ``keras.saving.register_keras_serializable``), registered as
    ``fastrnn>RNN``.
    """

    def __init__(self, cell, return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, zero_output_for_mask=False, **kwargs):
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         zero_output_for_mask=zero_output_for_mask, **kwargs)
        if getattr(self.cell, "get_initial_state", None) is None:
            for entry in self.state_size:  # fail at construction, not at the first call
                _state_shape(entry)
        # fastrnn's kernels serve the stock cells exactly (not subclasses, which may override call)
        self._fastrnn_cell = _STOCK_CELLS.get(type(self.cell))
        self._fastrnn_cell_class = type(self.cell) if self._fastrnn_cell else None
        self._output_count = 1  # tensors in one step's output structure: set by every call / trace

    # ---------------------------------------------------------------- structure
    @staticmethod
    def _input_shapes(sequences_shape):
        shapes = []
        tree.map_shape_structure(lambda s: shapes.append(tuple(s)), sequences_shape)
        for s in shapes:
            if len(s) < 3:
                raise ValueError(f"RNN: every input must have shape (batch, timesteps, features...), got an "
                                 f"input of shape {s} in {sequences_shape}")
        for axis, what in ((0, "batch size"), (1, "number of timesteps")):
            known = {s[axis] for s in shapes if s[axis] is not None}
            if len(known) > 1:
                raise ValueError(f"RNN: all inputs must share the {what}, got shapes {shapes}")
        return shapes

    def build(self, sequences_shape, initial_state_shape=None):
        shapes = self._input_shapes(sequences_shape)
        step_shape = tree.map_shape_structure(lambda s: (s[0],) + tuple(s[2:]), sequences_shape)
        if isinstance(self.cell, keras.layers.Layer) and not self.cell.built:
            self.cell.build(step_shape)
            self.cell.built = True
        if self.stateful:
            if self.states is not None:
                self.reset_state()
            else:
                batch = shapes[0][0]
                if batch is None:
                    raise ValueError(f"RNN: stateful=True needs a static batch size (pass batch_size= to "
                                     f"keras.Input), got input shapes {shapes}")
                self._create_state_variables(batch)
                self._expected_batch_size = batch

    def get_initial_state(self, batch_size):
        """The cell's ``get_initial_state(batch_size=...)`` as a list, else zeros (batch_size, *shape) in the
        cell's compute dtype, one per ``state_size`` entry."""
        fn = getattr(self.cell, "get_initial_state", None)
        if fn is not None:
            states = fn(batch_size=batch_size)
            return list(states) if tree.is_nested(states) else [states]
        dtype = getattr(self.cell, "compute_dtype", self.compute_dtype)
        return [keras.ops.zeros((batch_size,) + _state_shape(entry), dtype=dtype) for entry in self.state_size]

    def reset_state(self):
        if self.states is not None:
            for v in tree.flatten(self.states):
                v.assign(keras.ops.zeros_like(v.value))

    def compute_output_spec(self, sequences, initial_state=None, mask=None, training=False):
        flat = tree.flatten(sequences)
        batch, steps = flat[0].shape[0], flat[0].shape[1]
        step = tree.map_structure(lambda t: keras.KerasTensor((t.shape[0],) + tuple(t.shape[2:]), t.dtype),
                                  sequences)
        if initial_state is None:
            # shapes from one concrete state (batch 1), then the symbolic batch size
            states = tree.map_structure(lambda s: _with_batch(s, batch), self.get_initial_state(1))
        else:
            states = list(initial_state) if tree.is_nested(initial_state) else [initial_state]
        from keras.src import backend as keras_backend

        output, new_states = keras_backend.compute_output_spec(
            lambda x, s: self._cell_step(x, s, training), step, states)
        self._output_count = len(tree.flatten(output))
        dtype = self.compute_dtype
        if self.return_sequences:
            output = tree.map_structure(
                lambda o: keras.KerasTensor((batch, steps) + tuple(o.shape[1:]), dtype), output)
        else:
            output = tree.map_structure(lambda o: _with_batch(o, batch, dtype), output)
        if self.return_state:
            new_states = tree.map_structure(lambda s: _with_batch(s, batch, dtype), new_states)
            return (output, *new_states)
        return output

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        def spec(shape):
            return keras.KerasTensor(shape, self.compute_dtype)

        initial = None if initial_state_shape is None else tree.map_shape_structure(spec, initial_state_shape)
        out = self.compute_output_spec(tree.map_shape_structure(spec, sequences_shape), initial)
        return tree.map_structure(lambda t: tuple(t.shape), out)

    def compute_mask(self, sequences, mask):
        mask = _time_mask(mask)
        output_mask = mask if self.return_sequences else None
        output_masks = [output_mask] * self._output_count
        if self.return_state:
            # Keras zips tree.flatten(outputs) with this flat list: output tensors first, then the states (no
            # mask); flatten(state_size) has at least one entry per state tensor and zip drops the excess
            return output_masks + [None] * len(tree.flatten(self.state_size))
        return output_masks[0] if self._output_count == 1 else output_masks

    # ---------------------------------------------------------------- call
    def _cell_step(self, inputs, states, training):
        kwargs = {}
        if isinstance(self.cell, keras.layers.Layer) and self.cell._call_has_training_arg:
            kwargs["training"] = training
        output, new_states = self.cell(inputs, states, **kwargs)
        return output, (list(new_states) if tree.is_nested(new_states) else [new_states])

    def call(self, sequences, initial_state=None, mask=None, training=False):
        flat = tree.flatten(sequences)
        steps = flat[0].shape[1]
        if self.unroll and steps is None:
            raise ValueError("RNN: cannot unroll a RNN whose time dimension is undefined")
        if initial_state is None:
            if self.stateful:
                initial_state = self.states
            else:
                initial_state = self.get_initial_state(batch_size=keras.ops.shape(flat[0])[0])
        if self.stateful:
            batch = flat[0].shape[0]
            if self._expected_batch_size is not None and batch is not None and batch != self._expected_batch_size:
                raise ValueError(f"RNN: stateful layer built for batch size {self._expected_batch_size}, "
                                 f"got inputs of batch size {batch}")
        initial_state = list(initial_state) if tree.is_nested(initial_state) else [initial_state]
        expected = len(self.state_size)
        if len(initial_state) != expected:
            raise ValueError(f"RNN: the cell has {expected} state(s), got initial_state with "
                             f"{len(initial_state)} entries")
        dtype = getattr(self.cell, "compute_dtype", self.compute_dtype)
        initial_state = tree.map_structure(lambda s: keras.ops.convert_to_tensor(s, dtype=dtype), initial_state)
        if not tree.is_nested(sequences):
            # as Keras: draw the dropout masks of a DropoutRNNCell once per call, before the loop
            self._maybe_config_dropout_masks(self.cell, sequences[:, 0, :], initial_state)
        last_output, outputs, states = self.inner_loop(sequences=sequences, initial_state=initial_state,
                                                       mask=_time_mask(mask), training=training)
        self._maybe_reset_dropout_masks(self.cell)
        cast = lambda x: keras.ops.cast(x, self.compute_dtype)  # noqa: E731
        last_output, outputs = tree.map_structure(cast, last_output), tree.map_structure(cast, outputs)
        states = tree.map_structure(cast, states)
        if self.stateful:
            for variable, state in zip(tree.flatten(self.states), tree.flatten(states)):
                variable.assign(state)
        output = outputs if self.return_sequences else last_output
        if self.return_state:
            return (output, *states)
        return output

    def inner_loop(self, sequences, initial_state, mask, training=False):
        """``(last_output, outputs, states)`` as Keras's ``RNN.inner_loop``: outputs (B, T, ...) per output
        tensor with return_sequences, else (B, 1, ...); fastrnn's kernels for a stock cell on one input."""
        if self._fastrnn_cell is not None and not tree.is_nested(sequences):
            out = self._fastrnn_loop(sequences, initial_state, mask, training)
            if out is not None:
                return out
        return self._generic_loop(sequences, initial_state, mask, training)

    def _generic_loop(self, sequences, initial_state, mask, training):
        ops = keras.ops
        flat_inputs = tree.flatten(sequences)
        steps = flat_inputs[0].shape[1]
        if not steps:
            raise ValueError(f"RNN: the sequences need at least one timestep, got shapes "
                             f"{[tuple(x.shape) for x in flat_inputs]}")
        flat_states = tree.flatten(initial_state)
        if self.stateful and keras.backend.backend() == "torch":
            # the state variables are assigned in place after the loop: keep them out of the autograd graph
            flat_states = [ops.copy(s) for s in flat_states]
        if mask is not None:
            mask = ops.cast(mask, "bool")
            if tuple(mask.shape) != (flat_inputs[0].shape[0], steps):
                raise ValueError(f"RNN: the mask must have shape (batch, timesteps) = "
                                 f"{(flat_inputs[0].shape[0], steps)}, got {tuple(mask.shape)}")

        def where(keep, new, old):  # keep (B,) broadcast over new's feature axes
            return ops.where(ops.reshape(keep, (-1,) + (1,) * (len(new.shape) - 1)), new, old)

        output_structure, previous, collected = None, None, []
        for t in (range(steps - 1, -1, -1) if self.go_backwards else range(steps)):
            step_inputs = tree.pack_sequence_as(sequences, [x[:, t] for x in flat_inputs])
            output, new_states = self._cell_step(step_inputs, tree.pack_sequence_as(initial_state, flat_states),
                                                 training)
            flat_output, flat_new = tree.flatten(output), tree.flatten(new_states)
            if len(flat_new) != len(flat_states):
                raise ValueError(f"RNN: the cell returned {len(flat_new)} state tensor(s), its initial "
                                 f"states have {len(flat_states)}")
            if mask is not None:
                keep = mask[:, t]
                if previous is None or self.zero_output_for_mask:
                    previous = [ops.zeros_like(o) for o in flat_output]
                flat_output = [where(keep, o, p) for o, p in zip(flat_output, previous)]
                flat_new = [where(keep, s, p) for s, p in zip(flat_new, flat_states)]
            output_structure, previous, flat_states = output, flat_output, flat_new
            if self.return_sequences:
                collected.append(flat_output)
        self._output_count = len(previous)
        last_output = tree.pack_sequence_as(output_structure, previous)
        if self.return_sequences:
            outputs = tree.pack_sequence_as(
                output_structure, [ops.stack([c[k] for c in collected], axis=1) for k in range(len(previous))])
        else:
            outputs = tree.map_structure(lambda o: ops.expand_dims(o, 1), last_output)
        return last_output, outputs, tree.pack_sequence_as(initial_state, flat_states)


# --------------------------------------------------------------------------------------------------------
# Backend hooks for plain keras.layers.LSTM / GRU


def _hook_target():
    from keras.src import backend as keras_backend  # the module whose `lstm`/`gru` the layers call

    return keras_backend


_lock = threading.Lock()
_originals = {}  # "lstm"/"gru" -> the hook that was installed before enable()


def _mask_independent_of_zero_output(mask, return_sequences, go_backwards):
    """True when Keras's loop gives the same result for this (B, T) bool mask whatever the layer's
    ``zero_output_for_mask`` (which the backend hook is not told).

    Keras's loop (``keras.src.backend.torch.rnn``) outputs, at a masked step, the previous step's output
    (``zero_output_for_mask=False``; zeros before the first unmasked step) or zeros (True); states ignore
    the flag.  ``RNN.call`` returns the hook's ``outputs`` with return_sequences, else its
    ``last_output`` -- the output of the last processed step -- without post-processing.  So, in
    processing order (reversed time with go_backwards):

    - return_sequences=False: the flag matters only for a row whose last processed step is masked after
      an unmasked one (carried output vs zeros); served when every row ends unmasked or is fully masked;
    - return_sequences=True: the flag matters at every masked step that follows an unmasked one; served
      when every row is masked steps then unmasked steps (left padding forwards, right padding with
      go_backwards; fully masked and unmasked rows included).
    """
    m = mask.flip(1) if go_backwards else mask
    if not return_sequences:
        return bool((m[:, -1] | ~m.any(dim=1)).all())
    return bool((m[:, 1:] >= m[:, :-1]).all())  # no unmasked -> masked transition in any row


def _serve_hook(cell_name, inputs, states, mask, kernel, recurrent_kernel, bias, activation,
                recurrent_activation, return_sequences, go_backwards, reset_after=True, batch_first=True):
    if not batch_first:
        return None
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
    if mask is not None:
        try:
            mask = _as_bool_mask(mask, inputs.shape[0], inputs.shape[1])
        except NotImplementedError:
            return None
        if not _mask_independent_of_zero_output(mask, return_sequences, go_backwards):
            return None  # the answer depends on zero_output_for_mask, which the hook is not given
    # zero_output_for_mask=False: with a served mask both values give the same result
    return _run(cell_name, inputs, kernel, recurrent_kernel, bias, states, mask=mask,
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
    """Make plain ``keras.layers.LSTM`` and ``keras.layers.GRU`` run on fastrnn (torch backend, CPU,
    activations fastrnn compiles, no mask or a mask whose result does not depend on the layer's
    ``zero_output_for_mask`` -- see "Masks through the hook" in the module docstring; anything else goes to
    Keras's original hook and loop).

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
