"""Keras-style layers on fastrnn's kernels (NumPy arrays in and out).

Built-in cells (alone or stacked, inside `RNN` or as LSTM/GRU/SimpleRNN) run whole sequences on the
compiled kernels; user cells run in RNN's generic loop.  See fastrnn/layers/rnn.py for the semantics.
"""
from fastrnn.layers.base import Layer, get_mask, with_mask
from fastrnn.layers.bidirectional import Bidirectional
from fastrnn.layers.cells import GRUCell, LSTMCell, SimpleRNNCell, StackedRNNCells
from fastrnn.layers.core import BatchNormalization, Dense, Embedding, Masking
from fastrnn.layers.models import Input, InputLayer, Sequential
from fastrnn.layers.recurrent import GRU, LSTM, SimpleRNN
from fastrnn.layers.rnn import RNN
from fastrnn.layers import initializers

__all__ = ["Layer", "RNN", "Bidirectional", "LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell",
           "StackedRNNCells", "Dense", "Embedding", "Masking", "BatchNormalization", "Sequential", "Input",
           "InputLayer", "initializers", "get_mask", "with_mask"]
