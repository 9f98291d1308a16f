"""Built-in RNN cells (one time step): LSTMCell, GRUCell, SimpleRNNCell, and StackedRNNCells.

A cell owns its weights in the Keras layout (kernel, recurrent_kernel, bias; see fastrnn/_weights.py)
and does one step in `call(inputs, states, training)`.  Inside `fastrnn.layers.RNN` a built-in cell (or a
stack of them) never runs step by step: the RNN hands the whole sequence to the compiled kernels
(`fastrnn.functional`), which is what makes `RNN(LSTMCell(n))` exactly as fast as `LSTM(n)` here (Keras
needs the layer class for its fused path; we don't).  Activations are Keras names; a Python callable is
accepted too and runs in NumPy (the RNN then uses its generic loop, and `explain()` says so).

Dropout (Keras 3 semantics): with ``training=True`` and a rate > 0 a cell draws one (B, I) input mask and
one (B, H) recurrent mask per sequence, values 0 or 1/(1-rate), from its own seeded generator, and
reuses them at every step until `reset_dropout_mask()` (the RNN resets them after each call).
"""
import numpy as np

from fastrnn import functional
from fastrnn._spec import ACTIVATION_CODES, SpecCache
from fastrnn.layers import initializers
from fastrnn.layers.base import Layer
from fastrnn.layers import tree


def _activation(name, value):
    """A Keras activation identifier as a compiled name (str) or a Python callable; None means linear."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        if value not in ACTIVATION_CODES:
            raise ValueError(f"{name}: expected one of {', '.join(ACTIVATION_CODES)} or a callable, got {value!r}")
        return value
    if callable(value):
        return value
    raise TypeError(f"{name}: expected an activation name or a callable, got {type(value).__name__}")


def _apply(activation, x):
    """NumPy activation for the per-step path (names through the reference's table)."""
    if callable(activation):
        return np.asarray(activation(x), dtype=x.dtype)
    from fastrnn.reference import activations

    return activations.activate(activation, x).astype(x.dtype, copy=False)


def _serialize_activation(value):
    """Names stay names; a Python callable stays itself (from_config takes it back unchanged)."""
    return value


# Keras constructor arguments that only matter to a training framework: accepted when None (their
# default), refused otherwise, because fastrnn.layers run forward passes only (training goes through the
# framework adapters).  `use_cudnn` and `implementation` pick Keras kernels: accepted and ignored.
_TRAINING_ONLY = ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "activity_regularizer",
                  "kernel_constraint", "recurrent_constraint", "bias_constraint")
_IGNORED = ("use_cudnn", "implementation")


def _drop_keras_only(owner, kwargs):
    for key in _TRAINING_ONLY:
        if kwargs.pop(key, None) is not None:
            raise ValueError(f"{owner}: {key} applies to training, which fastrnn.layers do not do; train "
                             "through a framework adapter (fastrnn.torch / fastrnn.keras), or pass None")
    for key in _IGNORED:
        kwargs.pop(key, None)
    return kwargs


class DropoutRNNCell(Layer):
    """Shared machinery of the built-in cells: weights, dropout masks, config."""

    kind = None  # "lstm", "gru", "simple_rnn"
    gates = 1

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, seed=None, **kwargs):
        super().__init__(**_drop_keras_only(type(self).__name__, kwargs))
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"{type(self).__name__}: units must be a positive int, got {units!r}")
        for rate_name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= float(rate) < 1.0:
                raise ValueError(f"{type(self).__name__}: {rate_name} must be in [0, 1), got {rate!r}")
        self.units = int(units)
        self.activation = _activation("activation", activation)
        self.recurrent_activation = _activation("recurrent_activation", recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.dropout = min(1.0, max(0.0, float(dropout)))
        self.recurrent_dropout = min(1.0, max(0.0, float(recurrent_dropout)))
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._dropout_mask = None
        self._recurrent_dropout_mask = None
        # packed copies of the weights for inference calls (fastrnn/_kernels/_engine.pyx `forward`,
        # packs), valid for the weights' version they were made at: set_weights starts a new cache
        self._packs, self._packs_version = {}, None
        self._specs = None   # fastrnn._spec.SpecCache over the weights (made by build)

    # ------------------------------------------------------------ shapes and weights
    @property
    def state_size(self):
        return self.units

    @property
    def output_size(self):
        return self.units

    def _bias_shape(self):
        return (self.gates * self.units,)

    def _bias_initializer(self):
        return self.bias_initializer

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"{self.name}: the last dimension of the inputs must be known, got {input_shape}")
        seed = None if self.seed is None else int(self.seed)
        G, H = self.gates, self.units
        self.add_weight((input_dim, G * H), initializers.get(self.kernel_initializer, seed), "kernel")
        self.add_weight((H, G * H), initializers.get(self.recurrent_initializer, None if seed is None else seed + 1),
                        "recurrent_kernel")
        if self.use_bias:
            self.add_weight(self._bias_shape(), self._bias_initializer(), "bias")
        for w in self._weights.values():
            # changed through set_weights only (as a Keras variable through assign), so the packed
            # copies of an inference call stay right until the version set_weights bumps changes
            w.flags.writeable = False
        self._specs = SpecCache(self.kind, self.kernel, self.recurrent_kernel, self.bias)
        self.built = True

    @property
    def kernel(self):
        return self._weights["kernel"]

    @property
    def recurrent_kernel(self):
        return self._weights["recurrent_kernel"]

    @property
    def bias(self):
        return self._weights.get("bias")

    def get_initial_state(self, batch_size=None):
        sizes = self.state_size if isinstance(self.state_size, list) else [self.state_size]
        return [np.zeros((batch_size, s), self.dtype) for s in sizes]

    # ------------------------------------------------------------ dropout
    def _draw(self, rate, shape):
        keep = self._rng.random(shape) >= rate
        return (keep / (1.0 - rate)).astype(self.dtype)

    def get_dropout_mask(self, inputs):
        """(B, I) mask for the inputs, drawn once per sequence (None when dropout == 0)."""
        if self.dropout == 0:
            return None
        if self._dropout_mask is None or self._dropout_mask.shape != inputs.shape:
            self._dropout_mask = self._draw(self.dropout, inputs.shape)
        return self._dropout_mask

    def get_recurrent_dropout_mask(self, state):
        """(B, H) mask for the state entering the recurrent matmul (None when recurrent_dropout == 0)."""
        if self.recurrent_dropout == 0:
            return None
        if self._recurrent_dropout_mask is None or self._recurrent_dropout_mask.shape != state.shape:
            self._recurrent_dropout_mask = self._draw(self.recurrent_dropout, state.shape)
        return self._recurrent_dropout_mask

    def reset_dropout_mask(self):
        self._dropout_mask = None

    def reset_recurrent_dropout_mask(self):
        self._recurrent_dropout_mask = None

    # ------------------------------------------------------------ the fused path
    @property
    def compiled_activations(self):
        """True when both activations are names the compiled gate math knows."""
        return isinstance(self.activation, str) and isinstance(self.recurrent_activation, str)

    def sequence_kwargs(self):
        """Keyword arguments of fastrnn.functional.<kind> for this cell's options."""
        kw = {"activation": self.activation}
        if self.kind != "simple_rnn":
            kw["recurrent_activation"] = self.recurrent_activation
        return kw

    def run_sequence(self, x, initial_state, *, mask, go_backwards, time_major, zero_output_for_mask,
                     training, engine):
        """The whole sequence through fastrnn.functional: (outputs, final_states)."""
        kw = self.sequence_kwargs()
        dropout_mask = recurrent_dropout_mask = None
        if training:   # dropout multiplies x and h, not the weights: the packed copies serve here too
            first = x[0] if time_major else x[:, 0]
            dropout_mask = self.get_dropout_mask(first)
            recurrent_dropout_mask = self.get_recurrent_dropout_mask(initial_state[0])
        if self._packs_version != self._weights_version:
            self._packs, self._packs_version = {}, self._weights_version
        options = functional._options(initial_state, mask, go_backwards, time_major, kw["activation"],
                                      kw.get("recurrent_activation", "sigmoid"), zero_output_for_mask, dropout_mask,
                                      recurrent_dropout_mask, kw.get("reset_after", True))
        # the cell's own read-only weights: their packed layouts are made by the first call and reused
        return functional._run(self.kind, False, engine, x, self.kernel, self.recurrent_kernel, self.bias, options,
                               packs=self._packs, specs=self._specs)

    # ------------------------------------------------------------ one step
    def call(self, inputs, states, training=False):
        """One step: (output (B, H), new_states).  `states` is a list ([h] or [h, c]) or one array."""
        states = list(states) if tree.is_nested(states) else [states]
        inputs = np.asarray(inputs, dtype=self.dtype)
        if self.compiled_activations:
            outputs, new_states = self.run_sequence(
                inputs[:, None, :], [np.asarray(s, self.dtype) for s in states], mask=None, go_backwards=False,
                time_major=False, zero_output_for_mask=False, training=training, engine="auto")
            return outputs[:, 0], new_states
        return self._python_step(inputs, states, training)

    def _python_step(self, inputs, states, training):  # pragma: no cover - per cell
        raise NotImplementedError

    def _dropped(self, inputs, h, training):
        if training:
            dm, rdm = self.get_dropout_mask(inputs), self.get_recurrent_dropout_mask(h)
            inputs = inputs * dm if dm is not None else inputs
            h = h * rdm if rdm is not None else h
        return inputs, h

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, activation=_serialize_activation(self.activation),
            recurrent_activation=_serialize_activation(self.recurrent_activation), use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            recurrent_initializer=initializers.serialize(self.recurrent_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            dropout=self.dropout, recurrent_dropout=self.recurrent_dropout, seed=self.seed,
        )
        return config


class LSTMCell(DropoutRNNCell):
    """LSTM step: i, f, o = ract(.), c~ = act(.), c = f*c + i*c~, h = o*act(c); states [h, c]."""

    kind, gates = "lstm", 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0, recurrent_dropout=0.0,
                 seed=None, **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, dropout, recurrent_dropout, seed, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    @property
    def state_size(self):
        return [self.units, self.units]

    def _bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        init, H = initializers.get(self.bias_initializer), self.units

        def unit_forget(shape, dtype="float32"):  # Keras: the forget gate's bias starts at one
            return np.concatenate([init((H,), dtype), np.ones(H, dtype), init((2 * H,), dtype)])

        return unit_forget

    def _python_step(self, inputs, states, training):
        h, c = states
        x, hd = self._dropped(inputs, h, training)
        z = x @ self.kernel + hd @ self.recurrent_kernel + (self.bias if self.use_bias else 0)
        H = self.units
        i, f = _apply(self.recurrent_activation, z[:, :H]), _apply(self.recurrent_activation, z[:, H:2 * H])
        cand, o = _apply(self.activation, z[:, 2 * H:3 * H]), _apply(self.recurrent_activation, z[:, 3 * H:])
        c = f * c + i * cand
        h = o * _apply(self.activation, c)
        return h, [h, c]

    def get_config(self):
        config = super().get_config()
        config["unit_forget_bias"] = self.unit_forget_bias
        return config


class GRUCell(DropoutRNNCell):
    """GRU step (gates z, r, h; h = z*h_prev + (1-z)*h~); reset_after=True is torch/cuDNN's variant."""

    kind, gates = "gru", 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, reset_after=True, seed=None,
                 **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, dropout, recurrent_dropout, seed, **kwargs)
        self.reset_after = bool(reset_after)

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def sequence_kwargs(self):
        kw = super().sequence_kwargs()
        kw["reset_after"] = self.reset_after
        return kw

    def _python_step(self, inputs, states, training):
        (h,) = states
        x, hd = self._dropped(inputs, h, training)
        H, W, R = self.units, self.kernel, self.recurrent_kernel
        b = self.bias if self.use_bias else np.zeros(self._bias_shape(), self.dtype)
        bx, br = (b[0], b[1]) if self.reset_after else (b, np.zeros_like(b))
        xz = x @ W + bx
        rec = hd @ R[:, :2 * H] + br[:2 * H]
        z = _apply(self.recurrent_activation, xz[:, :H] + rec[:, :H])
        r = _apply(self.recurrent_activation, xz[:, H:2 * H] + rec[:, H:])
        if self.reset_after:
            cand = _apply(self.activation, xz[:, 2 * H:] + r * (hd @ R[:, 2 * H:] + br[2 * H:]))
        else:
            cand = _apply(self.activation, xz[:, 2 * H:] + (r * hd) @ R[:, 2 * H:])
        h = z * h + (1 - z) * cand
        return h, [h]

    def get_config(self):
        config = super().get_config()
        config["reset_after"] = self.reset_after
        return config


class SimpleRNNCell(DropoutRNNCell):
    """Fully connected step: h = act(x @ W + h_prev @ R + b)."""

    kind, gates = "simple_rnn", 1

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", dropout=0.0,
                 recurrent_dropout=0.0, seed=None, **kwargs):
        super().__init__(units, activation, "sigmoid", use_bias, kernel_initializer, recurrent_initializer,
                         bias_initializer, dropout, recurrent_dropout, seed, **kwargs)

    @property
    def compiled_activations(self):
        return isinstance(self.activation, str)

    def _python_step(self, inputs, states, training):
        (h,) = states
        x, hd = self._dropped(inputs, h, training)
        h = _apply(self.activation, x @ self.kernel + hd @ self.recurrent_kernel + (self.bias if self.use_bias else 0))
        return h, [h]

    def get_config(self):
        config = super().get_config()
        config.pop("recurrent_activation")
        return config


class StackedRNNCells(Layer):
    """Cells applied in order at every step; states are one entry per cell (Keras's layout)."""

    def __init__(self, cells, **kwargs):
        super().__init__(**kwargs)
        for cell in cells:
            if not hasattr(cell, "call") or not hasattr(cell, "state_size"):
                raise ValueError(f"StackedRNNCells: every cell needs call() and state_size, got {cell!r}")
        self.cells = list(cells)

    @property
    def state_size(self):
        return [c.state_size for c in self.cells]

    @property
    def output_size(self):
        last = self.cells[-1]
        if getattr(last, "output_size", None) is not None:
            return last.output_size
        return last.state_size[0] if isinstance(last.state_size, (list, tuple)) else last.state_size

    def _sublayers(self):
        return [c for c in self.cells if isinstance(c, Layer)]

    def build(self, input_shape):
        for cell in self.cells:
            if isinstance(cell, Layer) and not cell.built:
                cell.build(input_shape)
                cell.built = True
            out = getattr(cell, "output_size", None)
            if out is None:
                out = cell.state_size[0] if isinstance(cell.state_size, (list, tuple)) else cell.state_size
            input_shape = (input_shape[0], out)
        self.built = True

    def get_initial_state(self, batch_size=None):
        states = []
        for cell in self.cells:
            fn = getattr(cell, "get_initial_state", None)
            if fn is not None:
                s = fn(batch_size=batch_size)
                states.append(s if isinstance(cell.state_size, (list, tuple)) else s[0])
            elif isinstance(cell.state_size, int):
                states.append(np.zeros((batch_size, cell.state_size), self.dtype))
            else:
                states.append([np.zeros((batch_size, d), self.dtype) for d in cell.state_size])
        return states

    def call(self, inputs, states, training=False):
        new_states = []
        for cell, s in zip(self.cells, states):
            is_list = tree.is_nested(s)
            s = list(s) if is_list else [s]
            inputs, s = cell.call(inputs, s, training=training) if isinstance(cell, DropoutRNNCell) \
                else cell.call(inputs, s)
            s = list(s) if tree.is_nested(s) else [s]
            new_states.append(s if is_list or len(s) > 1 else s[0])
        return inputs, new_states

    def reset_dropout_mask(self):
        for c in self.cells:
            if isinstance(c, DropoutRNNCell):
                c.reset_dropout_mask()
                c.reset_recurrent_dropout_mask()

    def get_config(self):
        config = super().get_config()
        config["cells"] = [{"class_name": type(c).__name__, "config": c.get_config()} for c in self.cells]
        return config

    @classmethod
    def from_config(cls, config):
        from fastrnn import layers

        config = dict(config)
        cells = [getattr(layers, c["class_name"]).from_config(c["config"]) for c in config.pop("cells")]
        return cls(cells, **config)
