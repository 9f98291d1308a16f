"""The command line and the data shared by the one-shape training-call scripts (page_faults.py,
call_gaps.py): ``CELL T B I H [--threads N] [--calls C]``, and one functional training step on
fresh random float32 data."""
import argparse

import numpy as np

import fastrnn
from fastrnn import functional

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def parse_args(doc, calls):
    """The parsed command line (doc: the script's docstring; calls: the default --calls); sets fastrnn's
    thread count."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("cell", choices=sorted(GATES))
    ap.add_argument("sizes", nargs=4, type=int, metavar="T B I H")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=calls)
    args = ap.parse_args()
    fastrnn.set_num_threads(args.threads)
    return args


def training_step(cell, T, B, I, H):  # noqa: E741
    """A function running one `<cell>_vjp` call and its backward, returning the gradients."""
    G = GATES[cell]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I), dtype=np.float32)
    kernel = rng.standard_normal((I, G * H), dtype=np.float32) * 0.1
    recurrent = rng.standard_normal((H, G * H), dtype=np.float32) * 0.1
    bias = np.zeros((2, G * H) if cell == "gru" else (G * H,), np.float32)
    d_out = rng.standard_normal((B, T, H), dtype=np.float32)
    vjp = getattr(functional, cell + "_vjp")

    def step():
        _, _, backward = vjp(x, kernel, recurrent, bias)
        return backward(d_out)

    return step
