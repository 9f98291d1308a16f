"""The Layer base class of fastrnn's Keras-style API (NumPy arrays in and out).

A Layer owns named weights (NumPy arrays), builds them on first call from the input shape, and follows
Keras's contracts: ``weights`` / ``get_weights()`` / ``set_weights()`` in creation order,
``count_params()``, ``get_config()`` / ``from_config()``.  Masks travel as in Keras: a layer that makes a
mask (Embedding(mask_zero=True), Masking) returns its output with a ``_keras_mask`` attribute (an ndarray
view, `with_mask`), and RNN layers read it when no ``mask=`` is given.
"""
import re

import numpy as np

from fastrnn.layers import initializers

_name_counters = {}


def _snake(name):
    """Keras's default name stem: LSTM -> lstm, SimpleRNN -> simple_rnn, GRUCell -> gru_cell."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def unique_name(base):
    """Keras-style default names: lstm, lstm_1, lstm_2, ..."""
    n = _name_counters.get(base, 0)
    _name_counters[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


class MaskedArray(np.ndarray):
    """An ndarray view carrying the Keras mask of the sequence it holds (``_keras_mask``, (B, T) bool).
    Arrays computed from it do not inherit the mask."""

    _keras_mask = None

    def __array_finalize__(self, obj):
        self._keras_mask = None


def with_mask(array, mask):
    """`array` as a view that carries `mask` (None: the plain array)."""
    if mask is None:
        return array
    out = np.asarray(array).view(MaskedArray)
    out._keras_mask = np.asarray(mask, dtype=bool)
    return out


def get_mask(array):
    """The ``_keras_mask`` an array carries, or None."""
    return getattr(array, "_keras_mask", None)


def plain(array):
    """The array without a mask-carrying subclass (what users get back)."""
    return array.view(np.ndarray) if isinstance(array, MaskedArray) else array


class Layer:
    """Base class: weights, build-on-first-call, config.

    Subclasses implement ``build(input_shape)`` (creating weights with `add_weight`) and
    ``call(inputs, ...)``; `__call__` builds, then calls.
    """

    def __init__(self, name=None, dtype="float32", trainable=True, **kwargs):
        kwargs.pop("input_shape", None)
        kwargs.pop("input_dim", None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword arguments {sorted(kwargs)}")
        self.name = name or unique_name(_snake(type(self).__name__))
        self.dtype = np.dtype(dtype).name
        self.trainable = trainable
        self.built = False
        self._weights = {}
        self._trainable = {}
        self._weights_version = 0   # bumped by set_weights (_weights_changed): streams repack on a change

    # ---------------------------------------------------------------- weights
    def add_weight(self, shape, initializer="zeros", name=None, trainable=True, dtype=None):
        """Create, register and return a weight array of `shape`."""
        name = name or f"weight_{len(self._weights)}"
        if name in self._weights:
            raise ValueError(f"{self.name}: a weight named {name!r} exists already")
        value = initializers.get(initializer)(tuple(shape), dtype or self.dtype)
        self._weights[name] = np.ascontiguousarray(value)
        self._trainable[name] = trainable
        return self._weights[name]

    def _sublayers(self):
        """Layers whose weights this layer owns (after its own), in order."""
        return []

    @property
    def weights(self):
        """Every weight array, own then sublayers', in creation order (Keras's order)."""
        own = list(self._weights.values())
        return own + [w for layer in self._sublayers() for w in layer.weights]

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        own = [w for k, w in self._weights.items() if self._trainable[k]]
        return own + [w for layer in self._sublayers() for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self):
        trainable_ids = {id(w) for w in self.trainable_weights}
        return [w for w in self.weights if id(w) not in trainable_ids]

    def _weight_slots(self):
        """(owner, name) for every weight, in the order of `weights`."""
        own = [(self, k) for k in self._weights]
        return own + [slot for layer in self._sublayers() for slot in layer._weight_slots()]

    def get_weights(self):
        """Copies of the weights, in order."""
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        """Replace the weights (same count, shapes) with copies of `weights` (converted to the dtype)."""
        slots = self._weight_slots()
        weights = list(weights)
        if len(weights) != len(slots):
            raise ValueError(f"{self.name}: set_weights expected {len(slots)} arrays "
                             f"({', '.join(k for _, k in slots)}), got {len(weights)}")
        checked = []
        for (owner, key), value in zip(slots, weights):  # check everything before writing anything
            value = np.asarray(value)
            current = owner._weights[key]
            if value.shape != current.shape:
                raise ValueError(f"{self.name}: weight {key!r} expected shape {current.shape}, got {value.shape}")
            checked.append((current, value))
        for current, value in checked:
            locked = not current.flags.writeable   # a cell's weights are read-only between set_weights
            current.flags.writeable = True
            current[...] = value  # in place: views held by cells stay valid
            current.flags.writeable = not locked
        self._weights_changed()

    def _weights_changed(self):
        """Hook: cached packings of the weights are stale (a Stream compares `_weights_version`)."""
        self._weights_version += 1
        for layer in self._sublayers():
            layer._weights_changed()

    def count_params(self):
        """Total number of weight elements."""
        if not self.built:
            raise ValueError(f"{self.name}: count_params() needs a built layer (call it or build it first)")
        return int(sum(w.size for w in self.weights))

    # ---------------------------------------------------------------- calling
    def build(self, input_shape):
        self.built = True

    def __call__(self, inputs, *args, **kwargs):
        if not self.built:
            self.build(_shape_of(inputs))
            self.built = True
        return self.call(inputs, *args, **kwargs)

    def call(self, inputs, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        """The mask of this layer's output given its input mask (default: passed through)."""
        return mask

    # ---------------------------------------------------------------- config
    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


def _shape_of(x):
    """Shape, or a nested structure of shapes for nested inputs."""
    if isinstance(x, dict):
        return {k: _shape_of(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_shape_of(v) for v in x)
    return tuple(np.shape(x))


