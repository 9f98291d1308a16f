"""Frozen weights for repeated inference calls: `fastrnn.functional.prepare` (ONNX Runtime's session).

Why.  The compiled forward streams R through a packed copy (vector panels for one row, the hidden
split's per-thread slices, the microkernel's 16-column panels), and the input projection streams W's
panels (AVX-512), and a plain functional call packs them again every time, because nothing tells it that
the caller's arrays did not change since the last call.
At one row a call's pack is a read of all of R, from DRAM when the call before left it in nobody's
cache: lstm t50-b1-h512 spends 10-11% of a one-thread call there (bench/NOTES.md 37a).  A Prepared
copies the weights once, so each layout is packed by the first call that needs it and kept
(bench/NOTES.md 38).

Contract.  The copies are private and read-only: writes to the caller's arrays after `prepare` do not
reach it (build a new one, as one builds a new ORT session).  A call returns what
`fastrnn.functional.<cell>` returns on the same values, to float rounding: its plan is made knowing the
packs are kept (`fastrnn._dispatch.cpu_plan(packs_kept=True)`), so a one-row call takes R's vector
panels at any width and a T = 1 call packs too, where the per-call function would not pack; where the
two plans agree the bits are the same.  Calls from several threads at once are safe: packs are made
outside the cache and added whole (two first calls may both pack; either result is right).
"""
import numpy as np

from fastrnn import _dispatch, functional
from fastrnn._spec import CELLS, SpecCache, _as_float_array, build_spec


def _compiled():
    """fastrnn._compiled, imported on first use (it needs the compiled extension, which a reference-only
    Prepared does not)."""
    global _COMPILED
    if _COMPILED is None:
        from fastrnn import _compiled as module

        _COMPILED = module
    return _COMPILED


_COMPILED = None


def _frozen(name, a, dtype=None):
    """A private, C-contiguous, read-only copy of the float array `a` (in `dtype` if given; None stays
    None)."""
    if a is None:
        return None
    a = _as_float_array(name, a)
    if a.dtype.char not in "fd":   # (float16, longdouble: the engine computes float32 / float64 only)
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {a.dtype}")
    a = np.array(a, dtype=dtype or a.dtype.newbyteorder("="), order="C", copy=True)
    a.flags.writeable = False
    return a


class Prepared:
    """One cell's weights, frozen for repeated inference: ``outputs, states = prepared(x, ...)``.

    Made by `fastrnn.functional.prepare(cell, kernel, recurrent_kernel, bias, ...)`; shapes and cell
    options as `fastrnn.functional.<cell>` (kernel (I, G*H), recurrent_kernel (H, G*H), bias (G*H,) or
    (2, 3H) for GRU reset_after).  Per call: x (B, T, I), or (T, B, I) with time_major, and the
    per-call options initial_state, mask, go_backwards, time_major, zero_output_for_mask,
    dropout_mask, recurrent_dropout_mask.  The compute dtype is x's, as in the functional API; calls in
    the weights' own dtype convert nothing.  Inference only: the gradients of frozen weights are
    `fastrnn.functional.<cell>_vjp`'s business."""

    def __init__(self, cell, kernel, recurrent_kernel, bias=None, *, activation="tanh",
                 recurrent_activation="sigmoid", reset_after=True, engine="auto"):
        if cell not in CELLS:
            raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
        self.cell = cell
        self.kernel = _frozen("kernel", kernel)
        # one dtype for all (the kernel's), so a call in it converts none of them
        self.recurrent_kernel = _frozen("recurrent_kernel", recurrent_kernel, self.kernel.dtype)
        self.bias = _frozen("bias", bias, self.kernel.dtype)
        if self.kernel.ndim != 2:
            raise ValueError(f"kernel: expected a 2-D array (features, gates*units), got shape {self.kernel.shape}")
        # the options `fastrnn.functional.<cell>` takes; the others must stay at their defaults
        if cell == "simple_rnn" and recurrent_activation != "sigmoid":
            raise TypeError(f"recurrent_activation: simple_rnn has no recurrent activation, got "
                            f"{recurrent_activation!r}")
        if cell != "gru" and reset_after is not True:
            raise TypeError(f"reset_after: only gru takes it, got reset_after={reset_after!r} for {cell}")
        self._options = dict(activation=activation, recurrent_activation=recurrent_activation,
                             reset_after=reset_after)
        self.engine = engine
        # SpecCache._KEY_OPTIONS' values after the per-call flags: the cell's options
        self._cell_flags = (activation, recurrent_activation, reset_after)
        self._packs = {}   # layout key -> packed copy of R or W (fastrnn/_kernels/_engine.pyx `forward`)
        self._specs = SpecCache(cell, self.kernel, self.recurrent_kernel, self.bias)
        # validate everything now (shapes, names, engine), on a one-step probe of the weights' dtype
        probe = np.zeros((1, 1, self.kernel.shape[0]), self.kernel.dtype)
        _dispatch.select(build_spec(cell, probe, self.kernel, self.recurrent_kernel, self.bias, **self._options)[0],
                         engine)

    @property
    def units(self):
        return self.recurrent_kernel.shape[0]

    @property
    def packed_layouts(self):
        """The layouts of R (and W) packed so far (the keys of the cache), for tests and curiosity."""
        return sorted(self._packs)

    def __call__(self, x, *, initial_state=None, mask=None, go_backwards=False, time_major=False,
                 zero_output_for_mask=False, dropout_mask=None, recurrent_dropout_mask=None):
        """``outputs, final_states`` of `fastrnn.functional.<cell>` on the frozen weights."""
        if initial_state is None and mask is None and dropout_mask is None and recurrent_dropout_mask is None:
            # a signature seen before, x its only array: straight to the compiled forward on the kept
            # plan and workspace (this Python runs cold after the loop, ~2 us a function call here)
            seen = self._specs.remembered(x, (go_backwards, time_major, zero_output_for_mask, *self._cell_flags))
            if seen is not None:
                choice = functional._kept_choice(seen, self.engine, False, True)
                if choice is not None and choice.engine == "compiled":
                    return _compiled().forward(seen.spec, self._specs.plain_arrays(x), choice.plan,
                                               packs=self._packs, reuse=seen.idle)
        options = dict(self._options, initial_state=initial_state, mask=mask, go_backwards=go_backwards,
                       time_major=time_major, zero_output_for_mask=zero_output_for_mask, dropout_mask=dropout_mask,
                       recurrent_dropout_mask=recurrent_dropout_mask)
        # a signature seen before skips build_spec's checks (SpecCache); a call in another dtype converts
        # the frozen weights afresh (same values, so a cached layout of that dtype stays right)
        return functional._run(self.cell, False, self.engine, x, self.kernel, self.recurrent_kernel, self.bias,
                               options, packs=self._packs, specs=self._specs)

    def __repr__(self):
        I, GH = self.kernel.shape
        return (f"<fastrnn Prepared {self.cell} I={I} units={self.units} {self.kernel.dtype} "
                f"engine={self.engine!r} packed={len(self._packs)}>")
