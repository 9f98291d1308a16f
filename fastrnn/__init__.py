"""fastrnn: LSTM, GRU and SimpleRNN on compiled kernels (Cython time loops, BLAS, SIMD gate math).

    import fastrnn
    outputs, (h, c) = fastrnn.functional.lstm(x, kernel, recurrent_kernel, bias)

Re-exports only; see fastrnn.functional (the engine API), fastrnn.layers (Keras-style
layers), fastrnn.reference (the NumPy oracle) and fastrnn.set_num_threads.
"""
from fastrnn._native import engine as _engine  # loads the BLAS, then the extension (clear ImportError)
from fastrnn._threads import get_num_threads, set_num_threads, threads
from fastrnn import functional, layers, reference
from fastrnn._dispatch import explain_layer as explain
from fastrnn._weights import from_torch, to_torch

__version__ = "0.1.0"
__all__ = ["functional", "layers", "reference", "explain", "from_torch", "to_torch", "set_num_threads",
           "get_num_threads", "threads", "__version__"]

