"""LSTM, GRU and SimpleRNN layers: `RNN` around the matching built-in cell, with Keras's constructor.

They add nothing to the computation (`RNN` already sends built-in cells to the compiled kernels); they
exist for Keras's API: one constructor with the cell's and the RNN's arguments, the cell's attributes
as properties, and a flat `get_config()`.
"""
from fastrnn.layers.cells import GRUCell, LSTMCell, SimpleRNNCell, _drop_keras_only
from fastrnn.layers.rnn import RNN

_RNN_ARGS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll", "zero_output_for_mask",
             "time_major", "engine")
_BASE_ARGS = ("name", "dtype", "trainable")


class _CellLayer(RNN):
    cell_class = None

    def __init__(self, units, *, return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, zero_output_for_mask=False, time_major=False, engine="auto", name=None,
                 dtype="float32", trainable=True, input_shape=None, **cell_kwargs):
        cell_kwargs = _drop_keras_only(type(self).__name__, cell_kwargs)
        cell = self.cell_class(units, dtype=dtype, name=f"{name or self._default_stem()}_cell", **cell_kwargs)
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         zero_output_for_mask=zero_output_for_mask, time_major=time_major, engine=engine,
                         name=name, dtype=dtype, trainable=trainable)
        self.input_shape = input_shape

    @classmethod
    def _default_stem(cls):
        from fastrnn.layers.base import _snake

        return _snake(cls.__name__)

    def __getattr__(self, item):
        # units, activation, kernel, recurrent_kernel, bias, dropout, ...: the cell's
        if item.startswith("_") or "cell" not in self.__dict__:
            raise AttributeError(item)
        return getattr(self.__dict__["cell"], item)

    def get_config(self):
        config = self.cell.get_config()
        for key in _BASE_ARGS:
            config.pop(key, None)
        base = RNN.get_config(self)
        config.update({k: base[k] for k in _RNN_ARGS + _BASE_ARGS})
        return config


class LSTM(_CellLayer):
    """Long Short-Term Memory layer (Keras's arguments; see LSTMCell and RNN)."""

    cell_class = LSTMCell


class GRU(_CellLayer):
    """Gated Recurrent Unit layer; reset_after=True (default) is the torch / cuDNN formulation."""

    cell_class = GRUCell


class SimpleRNN(_CellLayer):
    """Fully connected RNN layer: h = activation(x @ W + h @ R + b)."""

    cell_class = SimpleRNNCell
