"""fastrnn.reference: the pure-NumPy oracle.

A plain, written-for-clarity forward and hand-written backward (BPTT) of every cell and option that
the compiled kernels implement: LSTM, GRU (``reset_after`` True and False) and SimpleRNN, with
masks, ``go_backwards``, ``time_major``, initial states, ``zero_output_for_mask``, input and
recurrent dropout masks and activations by name. It is the test oracle (validated in
``tests/test_reference.py`` against torch.nn, Keras 3 and float64 finite differences), the
benchmark baseline and the fallback; the signatures are exactly those of ``fastrnn.functional``.

Modules:
    activations  activations by name and their derivatives written from the output
    cells        one time step of each cell, forward and backward
    loop         the time loop (layout, direction, masks, dropout) and BPTT
    functional   the public entry points re-exported here
"""
from . import activations, cells, loop
from .functional import gru, gru_vjp, lstm, lstm_vjp, simple_rnn, simple_rnn_vjp

__all__ = ["lstm", "gru", "simple_rnn", "lstm_vjp", "gru_vjp", "simple_rnn_vjp",
           "activations", "cells", "loop"]
