"""Bidirectional(layer): a forward and a backward copy of an RNN layer over the same sequence.

Keras semantics: both copies are rebuilt from `layer.get_config()` (fresh weights; names forward_* and
backward_*), the backward one with go_backwards flipped unless `backward_layer` is given; with
return_sequences the backward outputs are flipped back to input order and both copies output zeros at
masked steps (Keras forces zero_output_for_mask); `initial_state` is split in halves (forward first);
merge_mode "concat" (last axis), "sum", "ave", "mul" or None (a pair); return_state appends the forward
then the backward final states.  Weights: forward's, then backward's.
"""
import numpy as np

from fastrnn.layers.base import Layer, get_mask, plain, with_mask
from fastrnn.layers.rnn import RNN

MERGE_MODES = ("concat", "sum", "ave", "mul", None)


def _rebuild(layer, **changes):
    config = layer.get_config()
    config.update(changes)
    return type(layer).from_config(config)


class Bidirectional(Layer):
    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        if not isinstance(layer, RNN):
            raise ValueError(f"Bidirectional: expected an RNN layer (LSTM, GRU, SimpleRNN, RNN), got {layer!r}")
        if backward_layer is not None and not isinstance(backward_layer, RNN):
            raise ValueError(f"Bidirectional: backward_layer must be an RNN layer, got {backward_layer!r}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"Bidirectional: merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}")
        super().__init__(**kwargs)
        self.forward_layer = _rebuild(layer, name="forward_" + layer.name.removeprefix("forward_"))
        if backward_layer is None:
            self.backward_layer = _rebuild(layer, name="backward_" + layer.name.removeprefix("backward_"),
                                           go_backwards=not layer.go_backwards)
        else:
            self.backward_layer = backward_layer
        if self.forward_layer.go_backwards == self.backward_layer.go_backwards:
            raise ValueError("Bidirectional: the forward and backward layers need different go_backwards, got "
                             f"{self.forward_layer.go_backwards} for both")
        for attr in ("stateful", "return_sequences", "return_state"):
            a, b = getattr(self.forward_layer, attr), getattr(self.backward_layer, attr)
            if a != b:
                raise ValueError(f"Bidirectional: forward and backward layers differ in {attr}: {a} vs {b}")
        for sub in (self.forward_layer, self.backward_layer):
            sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self.return_sequences = self.forward_layer.return_sequences
        self.return_state = self.forward_layer.return_state
        self.stateful = self.forward_layer.stateful
        self._initial_weights = weights

    def _sublayers(self):
        return [self.forward_layer, self.backward_layer]

    def build(self, input_shape):
        for sub in self._sublayers():
            if not sub.built:
                sub.build(input_shape)
        self.built = True
        if self._initial_weights is not None:
            self.set_weights(self._initial_weights)
            self._initial_weights = None

    def stream(self, batch_size):
        raise ValueError(f"{self.name}: a Bidirectional layer cannot stream: its backward half needs the whole "
                         "sequence before the first output")

    def compute_output_shape(self, input_shape):
        fwd = self.forward_layer.compute_output_shape(input_shape)
        out, states = (fwd[0], fwd[1:]) if self.return_state else (fwd, [])
        if self.merge_mode == "concat":
            out = out[:-1] + (out[-1] * 2,)
        outs = [out, out] if self.merge_mode is None else [out]
        if self.return_state:
            return outs + list(states) * 2
        return outs if self.merge_mode is None else out

    def compute_mask(self, inputs, mask=None):
        out = mask if self.return_sequences else None
        if self.return_state:
            n = len(self.forward_layer.state_size) * 2
            return [out] * (2 if self.merge_mode is None else 1) + [None] * n
        return [out, out] if self.merge_mode is None else out

    def reset_states(self, states=None, rows=None):
        half = None if states is None else len(states) // 2
        self.forward_layer.reset_states(None if states is None else states[:half], rows)
        self.backward_layer.reset_states(None if states is None else states[half:], rows)

    @property
    def states(self):
        fwd, bwd = self.forward_layer.states, self.backward_layer.states
        return None if fwd is None else tuple(fwd) + tuple(bwd)

    def call(self, inputs, initial_state=None, mask=None, training=False):
        if mask is None:
            mask = get_mask(inputs)
        inputs = plain(inputs)
        fwd_state = bwd_state = None
        if initial_state is not None:
            initial_state = list(initial_state)
            half = len(initial_state) // 2
            fwd_state, bwd_state = initial_state[:half], initial_state[half:]
        y = self.forward_layer(inputs, initial_state=fwd_state, mask=mask, training=training)
        y_rev = self.backward_layer(inputs, initial_state=bwd_state, mask=mask, training=training)
        states = ()
        if self.return_state:
            states = tuple(y[1:]) + tuple(y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        y, y_rev = plain(y), plain(y_rev)
        if self.return_sequences:
            y_rev = y_rev[::-1] if self.forward_layer.time_major else y_rev[:, ::-1]
        if self.merge_mode == "concat":
            output = np.concatenate([y, y_rev], axis=-1)
        elif self.merge_mode == "sum":
            output = y + y_rev
        elif self.merge_mode == "ave":
            output = (y + y_rev) / 2
        elif self.merge_mode == "mul":
            output = y * y_rev
        else:
            output = (y, y_rev)
        if self.return_sequences and self.merge_mode is not None:
            output = with_mask(output, mask)
        if self.return_state:
            return (*output, *states) if self.merge_mode is None else (output, *states)
        return output

    def get_config(self):
        config = super().get_config()
        config["merge_mode"] = self.merge_mode
        config["layer"] = {"class_name": type(self.forward_layer).__name__, "config": self.forward_layer.get_config()}
        if self.backward_layer is not None:
            config["backward_layer"] = {"class_name": type(self.backward_layer).__name__,
                                        "config": self.backward_layer.get_config()}
        return config

    @classmethod
    def from_config(cls, config):
        from fastrnn import layers

        config = dict(config)
        spec = config.pop("layer")
        layer = getattr(layers, spec["class_name"]).from_config(spec["config"])
        back = config.pop("backward_layer", None)
        if back is not None:
            back = getattr(layers, back["class_name"]).from_config(back["config"])
        return cls(layer, backward_layer=back, **config)


