"""`RNN(cell)`: the sequence loop around any cell, with Keras's semantics.

Two paths, chosen by `fastrnn._dispatch.rnn_layer_path`:

* fused: the cell is a built-in cell (LSTMCell, GRUCell, SimpleRNNCell) or a StackedRNNCells of them,
  with named activations, and the input is one array.  Each cell's whole sequence runs in one call of
  the compiled kernels (`cell.run_sequence` -> fastrnn.functional): masks of any pattern, go_backwards,
  initial states and dropout stay in the kernels.  A stack runs cell after cell over whole sequences,
  which equals Keras's step-interleaved loop: a masked step of the stack is masked in every cell.
* loop: anything else (a user cell with `call(inputs, states)` and `state_size`, nested inputs, outputs
  and states as in the guide's NestedCell, Python callable activations): the step loop runs here, in
  Python, with Keras's mask rule applied to every leaf.

Keras semantics kept: outputs in processing order with go_backwards; a masked step keeps the states and
repeats the previous output (zeros before the first unmasked step, or always with
zero_output_for_mask); `return_state` appends the final states; `stateful=True` keeps the final states
for the next call (same batch size, or a ValueError naming both).  `unroll` is accepted for Keras
compatibility and changes nothing: there is no graph to unroll here, the compiled loop is already the
fast path.
"""
import inspect

import numpy as np

from fastrnn import _dispatch
from fastrnn.layers import tree
from fastrnn.layers.base import Layer, _shape_of, get_mask, plain, with_mask
from fastrnn.layers.cells import DropoutRNNCell, StackedRNNCells


class RNN(Layer):
    """Sequence layer around `cell` (a cell, or a list of cells -> StackedRNNCells).

    Call: ``layer(inputs, initial_state=None, mask=None, training=False)``; inputs (B, T, ...) (or
    (T, B, ...) with time_major), possibly nested; mask (B, T) bool, or the ``_keras_mask`` inputs carry.
    Returns outputs (B, units) or (B, T, units) with return_sequences, then the final states with
    return_state.  `engine`: "auto", "compiled" (raise rather than loop in Python) or "reference".
    """

    def __init__(self, cell, return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, zero_output_for_mask=False, time_major=False, engine="auto", **kwargs):
        if isinstance(cell, (list, tuple)):
            cell = StackedRNNCells(cell)
        if not hasattr(cell, "call") or not hasattr(cell, "state_size"):
            raise ValueError(f"RNN: the cell needs a call(inputs, states) method and a state_size attribute, "
                             f"got {cell!r}")
        if engine not in _dispatch.ENGINES:
            raise ValueError(f"engine: expected one of {_dispatch.ENGINES}, got {engine!r}")
        super().__init__(**kwargs)
        self.cell = cell
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.unroll = bool(unroll)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.time_major = bool(time_major)
        self.engine = engine
        self._states = None
        self._cell_takes_training = "training" in inspect.signature(cell.call).parameters

    # ------------------------------------------------------------ structure
    @property
    def state_size(self):
        """One entry per state array the layer returns (Keras: an int state_size becomes [it])."""
        size = self.cell.state_size
        return [size] if isinstance(size, int) else list(size)

    def _sublayers(self):
        return [self.cell] if isinstance(self.cell, Layer) else []

    def _time_axis(self):
        return 0 if self.time_major else 1

    def build(self, input_shape):
        axis = self._time_axis()

        def step_shape(shape):
            return tuple(s for k, s in enumerate(shape) if k != axis)

        if _is_shape(input_shape) and len(input_shape) < 3:
            raise ValueError(f"{self.name}: expected inputs of rank 3 (batch, timesteps, features), "
                             f"got shape {tuple(input_shape)}")
        step = _map_shapes(step_shape, input_shape)
        if isinstance(self.cell, Layer) and not self.cell.built:
            self.cell.build(step)
            self.cell.built = True
        elif not isinstance(self.cell, Layer) and hasattr(self.cell, "build"):
            self.cell.build(step)
        self.built = True

    def compute_output_shape(self, input_shape):
        """Keras's structure: the output shape (nested like the cell's output_size), then with return_state
        one shape per state entry (a list for a cell in a stack that has several states)."""
        first = _first_shape(input_shape)
        batch = first[1] if self.time_major else first[0]
        steps = first[0] if self.time_major else first[1]
        out = getattr(self.cell, "output_size", None)
        if out is None:
            out = self.state_size[0]

        def shaped(size):
            dims = (steps, *_dims(size)) if self.return_sequences else _dims(size)
            return (batch, *dims)

        if isinstance(out, (int, np.integer)) or _is_shape(out):
            output = shaped(out)
        else:
            output = [shaped(o) for o in out]
        if not self.return_state:
            return output
        states = []
        for size in self.state_size:
            if isinstance(size, (list, tuple)) and not _is_shape(size):
                states.append([(batch, *_dims(d)) for d in size])
            else:
                states.append((batch, *_dims(size)))
        return (output, *states)

    def compute_mask(self, inputs, mask=None):
        out = mask if self.return_sequences else None
        return [out] + [None] * len(tree.flatten(self.state_size)) if self.return_state else out

    # ------------------------------------------------------------ states
    def get_initial_state(self, batch_size):
        fn = getattr(self.cell, "get_initial_state", None)
        if fn is not None:
            state = fn(batch_size=batch_size)
            return list(state) if tree.is_nested(state) else [state]
        return [np.zeros((batch_size, *_dims(d)), self.dtype) for d in self.state_size]

    @property
    def states(self):
        """The stateful layer's current states (a list like initial_state), or None before the first call."""
        return self._states

    def reset_states(self, states=None, rows=None):
        """Reset the kept states to zeros, or to `states`; with `rows` (indices or a (B,) bool mask) only
        those batch rows change (streams that end at different times)."""
        if not self.stateful:
            raise AttributeError(f"{self.name}: reset_states() needs a stateful layer (stateful=True)")
        if self._states is None:
            if states is None:
                return
            self._states = tree.map_structure(lambda s: np.array(s, dtype=self.dtype), list(states))
            return
        new = self.get_initial_state(tree.flatten(self._states)[0].shape[0]) if states is None else list(states)
        if len(tree.flatten(new)) != len(tree.flatten(self._states)):
            raise ValueError(f"{self.name}: reset_states expected {len(tree.flatten(self._states))} state arrays, "
                             f"got {len(tree.flatten(new))}")
        for k, (cur, val) in enumerate(zip(tree.flatten(self._states), tree.flatten(new))):
            val = np.asarray(val, dtype=self.dtype)
            if val.shape != cur.shape:
                raise ValueError(f"{self.name}: reset_states state {k} expected shape {cur.shape}, got {val.shape}")
            if rows is None:
                cur[...] = val
            else:
                cur[rows] = val[rows]

    reset_state = reset_states

    # ------------------------------------------------------------ calling
    def __call__(self, inputs, *args, **kwargs):
        if not self.built:
            self.build(_shape_of(inputs))
        return self.call(inputs, *args, **kwargs)

    def call(self, inputs, initial_state=None, mask=None, training=False):
        if mask is None:
            mask = get_mask(tree.flatten(inputs)[0])
        inputs = tree.map_structure(lambda a: np.asarray(plain(a), dtype=self.dtype), inputs)
        first = tree.flatten(inputs)[0]
        if first.ndim < 3:
            raise ValueError(f"{self.name}: expected inputs of rank 3 (batch, timesteps, features), "
                             f"got shape {first.shape}")
        batch = first.shape[1] if self.time_major else first.shape[0]
        steps = first.shape[0] if self.time_major else first.shape[1]
        if steps == 0:
            raise ValueError(f"{self.name}: expected at least one time step, got inputs of shape {first.shape}")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (batch, steps):
                raise ValueError(f"{self.name}: mask: expected shape ({batch}, {steps}) (batch, timesteps), "
                                 f"got {mask.shape}")
            mask = mask.astype(bool, copy=False)
        initial_state = self._initial_state(initial_state, batch)

        path, _ = _dispatch.rnn_layer_path(self.cell, inputs, self.engine)
        try:
            if path == "fused":
                outputs, last, states = self._run_fused(inputs, initial_state, mask, training)
            else:
                outputs, last, states = self._run_loop(inputs, initial_state, mask, training)
        finally:
            _reset_dropout(self.cell)
        if self.stateful:
            self._states = tree.map_structure(np.copy, states)
        output = last
        if self.return_sequences:  # the output sequence carries the mask on, as in Keras
            output = with_mask(outputs, mask) if isinstance(outputs, np.ndarray) else outputs
        if self.return_state:
            return (output, *states)
        return output

    def stream(self, batch_size):
        """A `fastrnn.layers.stream.Stream` for step-by-step inference (built-in cells only)."""
        from fastrnn.layers.stream import Stream

        return Stream(self, batch_size)

    def explain(self, inputs):
        """Which path runs this layer for `inputs` and why faster ones do not."""
        path, reasons = _dispatch.rnn_layer_path(self.cell, inputs, self.engine)
        if path == "fused":
            engine = "the NumPy reference" if self.engine == "reference" else "the compiled kernels"
            return f"{self.name}: whole sequences on {engine} (fastrnn.functional), one call per cell."
        return f"{self.name}: generic Python loop over cell.call, because " + "; ".join(reasons) + "."

    def _initial_state(self, initial_state, batch):
        if initial_state is None:
            if self.stateful and self._states is not None:
                kept = tree.flatten(self._states)[0].shape[0]
                if kept != batch:
                    raise ValueError(f"{self.name}: a stateful RNN needs the same batch size on every call: "
                                     f"the kept states have batch size {kept}, the inputs {batch}")
                return self._states
            return self.get_initial_state(batch)
        states = list(initial_state) if tree.is_nested(initial_state) else [initial_state]
        expected = self.get_initial_state(batch)
        if len(tree.flatten(states)) != len(tree.flatten(expected)):
            raise ValueError(f"{self.name}: initial_state: expected {len(tree.flatten(expected))} arrays, got "
                             f"{len(tree.flatten(states))}")
        states = tree.pack_as(expected, [np.asarray(plain(s), dtype=self.dtype) for s in tree.flatten(states)])
        for k, (s, e) in enumerate(zip(tree.flatten(states), tree.flatten(expected))):
            if s.shape != e.shape:
                raise ValueError(f"{self.name}: initial_state[{k}]: expected shape {e.shape}, got {s.shape}")
        return states

    def _last(self, outputs):
        return outputs[-1] if self.time_major else outputs[:, -1]

    def _run_fused(self, x, initial_state, mask, training):
        """Built-in cells: whole sequences through the compiled kernels."""
        if isinstance(self.cell, StackedRNNCells):
            cells, per_cell = self.cell.cells, initial_state
        else:
            cells, per_cell = [self.cell], [initial_state]
        go_backwards = self.go_backwards
        if go_backwards and len(cells) > 1:  # reverse once; every cell then reads forwards
            x = x[::-1] if self.time_major else x[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
            go_backwards = False
        final = []
        for k, (cell, states) in enumerate(zip(cells, per_cell)):
            states = list(states) if tree.is_nested(states) else [states]
            x, new = cell.run_sequence(
                x, states, mask=mask, go_backwards=go_backwards, time_major=self.time_major,
                zero_output_for_mask=self.zero_output_for_mask if k == len(cells) - 1 else False,
                training=training, engine=self.engine)
            final.append(new if isinstance(cell.state_size, (list, tuple)) else new[0])
        states = final if isinstance(self.cell, StackedRNNCells) else final[0]
        states = states if isinstance(states, list) else [states]
        return x, self._last(x), states

    def _run_loop(self, inputs, initial_state, mask, training):
        """Any cell: the step loop in Python, Keras's mask rule on every leaf."""
        axis = self._time_axis()
        steps = tree.flatten(inputs)[0].shape[axis]
        kwargs = {"training": training} if self._cell_takes_training else {}
        states, prev_out, collected = initial_state, None, []
        for s in range(steps):
            t = steps - 1 - s if self.go_backwards else s
            x_t = tree.map_structure(lambda a: a[t] if self.time_major else a[:, t], inputs)
            out, new_states = self.cell.call(x_t, states, **kwargs)
            new_states = list(new_states) if tree.is_nested(new_states) else [new_states]
            if prev_out is None:
                prev_out = tree.map_structure(np.zeros_like, out)
            if mask is not None:
                m = mask[:, t]
                new_states = tree.pack_as(new_states, [
                    _where(m, n, o) for n, o in zip(tree.flatten(new_states), tree.flatten(states))])
                fallback = tree.map_structure(np.zeros_like, out) if self.zero_output_for_mask else prev_out
                out = tree.pack_as(out, [_where(m, n, o) for n, o in zip(tree.flatten(out), tree.flatten(fallback))])
            states, prev_out = new_states, out
            collected.append(out)
        if not collected:
            raise ValueError(f"{self.name}: the generic loop needs at least one time step")
        outputs = tree.map_structure(lambda *steps_: np.stack(steps_, axis=axis), *collected)
        return outputs, prev_out, list(states)

    def get_config(self):
        config = super().get_config()
        config.update(
            return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
            zero_output_for_mask=self.zero_output_for_mask, time_major=self.time_major, engine=self.engine)
        if type(self) is RNN:
            config["cell"] = {"class_name": type(self.cell).__name__, "config": self.cell.get_config()}
        return config

    @classmethod
    def from_config(cls, config):
        from fastrnn import layers

        config = dict(config)
        if cls is RNN:
            spec = config.pop("cell")
            cell_cls = getattr(layers, spec["class_name"])
            config["cell"] = cell_cls.from_config(spec["config"])
        return cls(**config)


def _dims(size):
    """A state or output size (an int, or a shape for multi-dimensional states) as a tuple of dims."""
    return (int(size),) if isinstance(size, (int, np.integer)) else tuple(size)


def _where(m, new, old):
    m = m.reshape(m.shape + (1,) * (np.ndim(new) - 1))
    return np.where(m, new, old)


def _reset_dropout(cell):
    if isinstance(cell, DropoutRNNCell):
        cell.reset_dropout_mask()
        cell.reset_recurrent_dropout_mask()
    elif isinstance(cell, StackedRNNCells):
        cell.reset_dropout_mask()


def _is_shape(x):
    return isinstance(x, tuple) and all(s is None or isinstance(s, (int, np.integer)) for s in x)


def _first_shape(shapes):
    """The first shape tuple in a nested structure of shapes."""
    while not _is_shape(shapes):
        shapes = shapes[sorted(shapes)[0]] if isinstance(shapes, dict) else shapes[0]
    return shapes


def _map_shapes(fn, shapes):
    if _is_shape(shapes):
        return fn(shapes)
    if isinstance(shapes, dict):
        return {k: _map_shapes(fn, v) for k, v in shapes.items()}
    return type(shapes)(_map_shapes(fn, s) for s in shapes)
