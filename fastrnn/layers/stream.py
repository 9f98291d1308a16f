"""Streaming inference: one time step per call, for real-time use.

    stream = layer.stream(batch_size)      # a built LSTM / GRU / SimpleRNN / RNN of built-in cells
    y_t = stream.step(x_t)                 # (B, I) -> (B, H); the state is carried
    ys = stream.step_many(x_chunk)         # (B, t, I) -> (B, t, H), one compiled loop over the chunk
    stream.states; stream.reset(rows=None)

Everything is prepared in `__init__`: one T=1 workspace and one compiled StepKernel per cell
(fastrnn._kernels._engine), so a step is one vector-matrix product for the input, one for the state and
the fused gate math, with no allocation but the returned copy of the output.  A float32 one-row
stream packs the weights once (fastrnn._dispatch.cpu_plan(packs_kept=True)), so the stream compares each
cell's weights version before a step and packs again after `set_weights` (a built cell's weight arrays
are read-only between set_weights calls, so nothing else changes them).
"""
import numpy as np

from fastrnn import _compiled
from fastrnn._dispatch import cpu_plan
from fastrnn._native import engine
from fastrnn._spec import build_spec
from fastrnn.layers.cells import DropoutRNNCell, StackedRNNCells


class Stream:
    """Step-by-step inference over a built RNN layer of built-in cells (see the module docstring)."""

    def __init__(self, layer, batch_size):
        if not layer.built:
            raise ValueError(f"{layer.name}: stream() needs a built layer (call it once or build it first)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"{layer.name}: stream() expected a batch size >= 1, got {batch_size!r}")
        if layer.go_backwards:
            raise ValueError(f"{layer.name}: a stream reads time forwards; the layer has go_backwards=True")
        cells = layer.cell.cells if isinstance(layer.cell, StackedRNNCells) else [layer.cell]
        for cell in cells:
            if not isinstance(cell, DropoutRNNCell) or not cell.compiled_activations:
                raise ValueError(f"{layer.name}: stream() runs built-in cells with named activations on the "
                                 f"compiled kernels; {getattr(cell, 'name', cell)!r} is not one")
        self.layer = layer
        self.batch_size = int(batch_size)
        self.dtype = np.dtype(layer.dtype)
        self._cells = cells
        self._kernels = []
        for cell in cells:
            I = cell.kernel.shape[0]
            states = [np.zeros((self.batch_size, cell.units), self.dtype) for _ in range(2 if cell.kind == "lstm" else 1)]
            opts = cell.sequence_kwargs()
            spec, arrays = build_spec(cell.kind, np.zeros((self.batch_size, 1, I), self.dtype), cell.kernel,
                                      cell.recurrent_kernel, cell.bias, initial_state=states, **opts)
            ws = _compiled.Workspace(spec, arrays, training=False)
            plan = cpu_plan(spec, training=False, packs_kept=True)
            W = np.ascontiguousarray(ws.W.T) if ws.W_t else ws.W   # (the step kernel reads (I, G*H))
            self._kernels.append(engine.StepKernel(ws, spec, W, plan))
        self._in_shape = (self.batch_size, cells[0].kernel.shape[0])
        self._versions = [cell._weights_version for cell in cells]   # of the weights the kernels packed
        self._cell0 = cells[0]

    def _repack_changed(self):
        """Pack again the kernels whose cell's weights changed (set_weights) since they were packed."""
        for i, (cell, kernel) in enumerate(zip(self._cells, self._kernels)):
            if cell._weights_version != self._versions[i]:
                kernel.repack()
                self._versions[i] = cell._weights_version

    def _input(self, x):
        if type(x) is not np.ndarray or x.dtype != self.dtype or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.shape != self._in_shape:
            raise ValueError(f"{self.layer.name}: step() expected an input of shape {self._in_shape} (batch, "
                             f"features), got {x.shape}")
        return x

    def step(self, x):
        """One time step for every row: x (B, I) -> output (B, H) (a new array)."""
        if len(self._kernels) == 1:   # the fast path: checks, step and copy in one compiled call
            if self._cell0._weights_version != self._versions[0]:
                self._repack_changed()
            out = self._kernels[0].step_copy(x)
            if out is not None:
                return out
        self._repack_changed()
        x = self._input(x)
        for kernel in self._kernels:
            kernel.step(x)
            x = kernel.current()[0]
        return x.copy()

    def step_many(self, x):
        """t steps at once: x (B, t, I) -> outputs (B, t, H); the states end after the last step."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 3 or (x.shape[0], x.shape[2]) != self._in_shape:
            raise ValueError(f"{self.layer.name}: step_many() expected an input of shape ({self._in_shape[0]}, t, "
                             f"{self._in_shape[1]}), got {x.shape}")
        for cell, kernel in zip(self._cells, self._kernels):
            h, c = kernel.current()
            x, final = cell.run_sequence(x, [h] if c is None else [h, c], mask=None, go_backwards=False,
                                         time_major=False, zero_output_for_mask=False, training=False,
                                         engine="compiled")
            h[...] = final[0]
            if c is not None:
                c[...] = final[1]
        return x

    @property
    def states(self):
        """Copies of the current states, per cell: [h, c] for LSTM, [h] otherwise (a list of those for a
        stack)."""
        per_cell = []
        for kernel in self._kernels:
            h, c = kernel.current()
            per_cell.append([h.copy()] if c is None else [h.copy(), c.copy()])
        return per_cell[0] if len(per_cell) == 1 else per_cell

    def reset(self, rows=None):
        """Zero the states of all rows, or of `rows` (indices or a (B,) bool mask) only."""
        for kernel in self._kernels:
            for s in kernel.current():
                if s is not None:
                    s[slice(None) if rows is None else rows] = 0
