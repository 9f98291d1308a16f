"""Guide section "RNN layers and RNN cells": RNN(LSTMCell(10)) computes what LSTM(10) computes.
(In fastrnn both run on the compiled kernels: the RNN wrapper recognises built-in cells.)

    python examples/04_cells_vs_layers.py
"""
import numpy as np

from fastrnn.layers import GRU, GRUCell, LSTM, LSTMCell, RNN, SimpleRNN, SimpleRNNCell

rng = np.random.default_rng(0)
x = rng.random((5, 12, 8), dtype=np.float32)

for layer_cls, cell_cls in ((LSTM, LSTMCell), (GRU, GRUCell), (SimpleRNN, SimpleRNNCell)):
    layer = layer_cls(10)
    wrapped = RNN(cell_cls(10))
    y_layer = layer(x)  # builds the weights
    wrapped.build(x.shape)
    wrapped.set_weights(layer.get_weights())
    y_wrapped = wrapped(x)
    diff = float(np.max(np.abs(y_layer - y_wrapped)))
    print(f"{layer_cls.__name__}(10) vs RNN({cell_cls.__name__}(10)): output {y_layer.shape}, "
          f"params {layer.count_params()} vs {wrapped.count_params()}, max |difference| = {diff:.1e}, "
          f"same numbers: {bool(np.allclose(y_layer, y_wrapped, atol=1e-6))}")
    print("   ", wrapped.explain(x))
