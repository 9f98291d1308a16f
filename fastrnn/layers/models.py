"""Sequential: a stack of layers, each feeding the next (Keras 3's `keras.Sequential`, NumPy in and out).

    model = Sequential([Embedding(1000, 64), LSTM(128), Dense(10)])
    model.build((None, None))           # or Input(shape=(None,)) first, or input_shape= on the first layer
    model.summary()                     # Total params: 164,106
    y = model(ids)                      # or model.predict(ids, batch_size=32)

Masks flow as in Keras: after each layer, ``layer.compute_mask(inputs, mask)`` gives the mask handed to
the next one, as its ``mask=`` keyword when its ``call`` takes one, else as the ``_keras_mask`` its input
carries.  ``training=`` reaches every layer whose ``call`` takes it.
"""
import inspect

import numpy as np

from fastrnn.layers.base import Layer, get_mask, plain, with_mask

__all__ = ["Sequential", "Input", "InputLayer"]


class InputLayer(Layer):
    """A placeholder that fixes a Sequential model's input shape (without the batch axis).

    Use it (or `Input`) as the first entry of a Sequential model; it has no weights and passes its
    input through.
    """

    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, input_shape=None, **kwargs):
        shape = shape if shape is not None else input_shape
        if shape is None:
            raise ValueError("InputLayer: give the input shape without the batch axis, e.g. shape=(None, 8)")
        if isinstance(shape, (int, np.integer)) or shape is None:
            shape = (shape,)
        super().__init__(name=name, dtype=dtype or "float32", **kwargs)
        self.shape = tuple(None if s is None else int(s) for s in shape)
        self.batch_size = batch_size
        self.built = True

    @property
    def batch_shape(self):
        return (self.batch_size,) + self.shape

    def call(self, inputs):
        return inputs

    def get_config(self):
        return {"shape": self.shape, "batch_size": self.batch_size, "dtype": self.dtype, "name": self.name}


def Input(shape=None, batch_size=None, dtype=None, name=None):
    """Keras's ``keras.Input(shape=...)`` for Sequential's first entry: an `InputLayer`.

    `shape` excludes the batch axis; None marks an unknown size (e.g. ``shape=(None, 8)`` for
    sequences of any length with 8 features).
    """
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name)


def _call_keywords(layer):
    """Which of ``mask`` and ``training`` the layer's ``call`` accepts (**kwargs accepts both)."""
    try:
        params = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset({"mask", "training"})
    return frozenset(k for k in ("mask", "training") if k in params)


def _format_shape(shape):
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return "[" + ", ".join(_format_shape(s) for s in shape) + "]"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {_format_shape(v)}" for k, v in shape.items()) + "}"
    if isinstance(shape, tuple) and any(isinstance(s, (tuple, list, dict)) for s in shape):
        return "(" + ", ".join(_format_shape(s) for s in shape) + ")"
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _is_nested(x):
    """A structure of several inputs (as the guide's NestedCell takes), not one array-like."""
    if isinstance(x, dict):
        return True
    return isinstance(x, (list, tuple)) and any(isinstance(v, (np.ndarray, list, tuple, dict)) for v in x)


def _normalize_shape(shape):
    """A tuple for one output; a list for several (Keras 3's RNN gives a tuple ``(output, *states)``)."""
    if isinstance(shape, dict):
        return {k: _normalize_shape(v) for k, v in shape.items()}
    shape = tuple(shape)
    if all(s is None or isinstance(s, (int, np.integer)) for s in shape):
        return tuple(None if s is None else int(s) for s in shape)
    return [_normalize_shape(s) for s in shape]


def _is_shape(shape):
    return isinstance(shape, tuple) and all(s is None or isinstance(s, (int, np.integer)) for s in shape)


def _resolve_class(name, custom_objects=None):
    if custom_objects and name in custom_objects:
        return custom_objects[name]
    from fastrnn.layers import core

    local = {"Sequential": Sequential, "InputLayer": InputLayer, "Dense": core.Dense,
             "Embedding": core.Embedding, "Masking": core.Masking,
             "BatchNormalization": core.BatchNormalization}
    if name in local:
        return local[name]
    import fastrnn.layers as layers

    cls = getattr(layers, name, None)
    if isinstance(cls, type) and issubclass(cls, Layer):
        return cls
    raise ValueError(f"Sequential.from_config: unknown layer class {name!r} "
                     "(pass custom_objects={name: cls} for your own layers)")


class Sequential(Layer):
    """A linear stack of layers.

    Parameters
    ----------
    layers : list of Layer, optional
        In order; the first may be an `Input`/`InputLayer` fixing the input shape (or give the first
        layer ``input_shape=``, or call `build`, or just call the model).
    name : str, optional
        Default "sequential", "sequential_1", ...

    Calling ``model(x, training=False)`` runs every layer on the previous one's output and mask and
    returns the last output (carrying the last mask as ``_keras_mask``, as in Keras).  Weights are the
    layers' weights in order (`weights`, `get_weights`, `set_weights`, `count_params`).
    """

    def __init__(self, layers=None, name=None, trainable=True, input_shape=None, **kwargs):
        super().__init__(name=name, trainable=trainable, **kwargs)
        self._layers = []
        self._input_layer = None
        self._build_shape = None        # the input shape, batch axis included (None for the batch)
        self._output_shapes = []        # per layer, once built
        self._keywords = {}             # id(layer) -> frozenset of call keywords
        if input_shape is not None:     # the R guide's keras_model_sequential(input_shape = ...)
            self._input_layer = InputLayer(shape=input_shape)
            self._build_shape = self._input_layer.batch_shape
        for layer in layers or []:
            self.add(layer)

    # -------------------------------------------------------------------------------------- structure
    @property
    def layers(self):
        """The layers, without the input placeholder."""
        return list(self._layers)

    def _sublayers(self):
        return self._layers

    def add(self, layer):
        """Append `layer` (an `Input`/`InputLayer` only as the first entry)."""
        if isinstance(layer, InputLayer):
            if self._layers or self._input_layer is not None:
                raise ValueError(f"{self.name}: an Input can only be the first entry of a Sequential model")
            self._input_layer = layer
            self._build_shape = layer.batch_shape
            return
        if not isinstance(layer, Layer) and not (hasattr(layer, "call") and callable(layer)):
            raise TypeError(f"{self.name}: add() expects a Layer, got {type(layer).__name__}")
        if any(existing is layer for existing in self._layers):
            raise ValueError(f"{self.name}: layer {layer.name!r} is in the model already")
        if not self._layers and self._build_shape is None:
            shape = getattr(layer, "_input_shape_arg", None)
            if shape is None:  # the RNN layers keep Keras's input_shape= as `input_shape`
                shape = getattr(layer, "input_shape", None)
            if isinstance(shape, (tuple, list)):
                self._build_shape = (None,) + tuple(shape)
        self._layers.append(layer)
        self._keywords[id(layer)] = _call_keywords(layer)
        if self._build_shape is not None:
            self.build(self._build_shape)

    def pop(self):
        """Remove and return the last layer."""
        if not self._layers:
            raise ValueError(f"{self.name}: there is no layer to pop")
        layer = self._layers.pop()
        self._keywords.pop(id(layer), None)
        self._output_shapes = self._output_shapes[:len(self._layers)]
        return layer

    # ---------------------------------------------------------------------------------------- building
    def build(self, input_shape=None):
        """Build every layer in turn from `input_shape` (batch axis included, None where unknown)."""
        if input_shape is None:
            input_shape = self._build_shape
        if input_shape is None:
            raise ValueError(f"{self.name}: build() needs an input shape (batch axis included), "
                             "e.g. (None, None) for sequences of ids")
        input_shape = tuple(input_shape)
        self._build_shape = input_shape
        shape, shapes = input_shape, []
        for k, layer in enumerate(self._layers):
            if not _is_shape(shape):
                raise ValueError(f"{self.name}: layer {self._layers[k - 1].name!r} has several outputs "
                                 f"({_format_shape(shape)}); only the last layer of a Sequential model may")
            if not layer.built:
                layer.build(shape)
                layer.built = True
            shape = _normalize_shape(layer.compute_output_shape(shape))
            shapes.append(shape)
        self._output_shapes = shapes
        self.built = True

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._layers:
            shape = layer.compute_output_shape(shape)
        return shape

    # ----------------------------------------------------------------------------------------- calling
    def __call__(self, inputs, training=False, mask=None):
        if (not self.built or len(self._output_shapes) != len(self._layers)) and not _is_nested(inputs):
            self.build(self._build_shape or (None,) + np.shape(inputs)[1:])
        return self.call(inputs, training=training, mask=mask)

    def call(self, inputs, training=False, mask=None):
        x = inputs
        if not _is_nested(x):
            if mask is None:
                mask = get_mask(x)
            x = plain(np.asarray(x))
        n = len(self._layers)
        for k, layer in enumerate(self._layers):
            if isinstance(x, list) and k:
                raise ValueError(f"{self.name}: layer {self._layers[k - 1].name!r} returned {len(x)} outputs; "
                                 "only the last layer of a Sequential model may return several")
            keywords = self._keywords.get(id(layer))
            if keywords is None:
                keywords = self._keywords[id(layer)] = _call_keywords(layer)
            kwargs = {}
            if "training" in keywords:
                kwargs["training"] = training
            if "mask" in keywords:
                kwargs["mask"] = mask
                layer_input = x
            else:
                layer_input = with_mask(x, mask) if isinstance(x, np.ndarray) else x
            out = layer(layer_input, **kwargs)
            mask = self._next_mask(layer, x, mask, out)
            x = [plain(o) for o in out] if isinstance(out, (list, tuple)) else plain(out)
            if k == n - 1 and isinstance(out, tuple):
                x = tuple(x)
        if not self.built and all(layer.built for layer in self._layers):
            self.built = True  # nested inputs: the layers built themselves
        if isinstance(x, np.ndarray):
            return with_mask(x, mask)
        return x

    @staticmethod
    def _next_mask(layer, inputs, mask, out):
        """The mask `layer` emits: its compute_mask, dropped if it cannot be a mask of `out`."""
        new = layer.compute_mask(inputs, mask)
        if new is None:
            new = get_mask(out)
        if new is None or isinstance(out, (list, tuple, dict)):
            return None
        new = np.asarray(new, dtype=bool)
        if new.shape != np.shape(out)[:new.ndim] or new.ndim >= np.ndim(out):
            return None  # e.g. a (B, T) mask after a layer that returns (B, units)
        return new

    def predict(self, x, batch_size=None):
        """The model's output on `x` in inference mode, as plain arrays; `batch_size` rows at a time
        (None: all at once).  Keras's default is 32: give it to run stateful models chunk by chunk."""
        x = plain(np.asarray(x)) if not isinstance(x, (list, tuple, dict)) else x
        if batch_size is None or not isinstance(x, np.ndarray) or len(x) <= batch_size:
            return self._plain_out(self(x, training=False))
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        parts = [self._plain_out(self(x[i:i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
        if isinstance(parts[0], list):
            return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
        return np.concatenate(parts)

    @staticmethod
    def _plain_out(out):
        if isinstance(out, (list, tuple)):
            return [plain(np.asarray(o)) if isinstance(o, np.ndarray) else o for o in out]
        return plain(out)

    # -------------------------------------------------------------------------------------- reporting
    def count_params(self):
        if not self.built:
            raise ValueError(f"{self.name}: count_params() needs a built model: call it, build(input_shape) "
                             "it, or start it with Input(shape=...)")
        return super().count_params()

    def summary(self, print_fn=print, line_length=None):
        """Print Keras's table: layer name (type), output shape, parameter count; then the totals."""
        if not self.built and self._build_shape is not None:
            self.build(self._build_shape)
        rows = []
        for k, layer in enumerate(self._layers):
            shape = self._output_shapes[k] if k < len(self._output_shapes) else None
            params = str(sum(int(w.size) for w in layer.weights)) if layer.built else "0 (unbuilt)"
            rows.append((f"{layer.name} ({type(layer).__name__})", _format_shape(shape), params))
        headers = ("Layer (type)", "Output Shape", "Param #")
        widths = [max([len(headers[c])] + [len(r[c]) for r in rows]) + 4 for c in range(3)]
        widths[0] = max(widths[0], 33)
        widths[1] = max(widths[1], 30)
        widths[2] = max(widths[2], 12)
        total_width = sum(widths) + 1
        if line_length is not None:
            total_width = max(total_width, line_length)

        def line(cells):
            return " " + "".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        print_fn(f'Model: "{self.name}"')
        print_fn("_" * total_width)
        print_fn(line(headers))
        print_fn("=" * total_width)
        for k, row in enumerate(rows):
            print_fn(line(row))
            print_fn(("_" if k < len(rows) - 1 else "=") * total_width)
        if not rows:
            print_fn("=" * total_width)
        trainable = sum(int(w.size) for layer in self._layers if layer.built for w in layer.trainable_weights) \
            if self.trainable else 0
        total = sum(int(w.size) for layer in self._layers if layer.built for w in layer.weights)
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")
        print_fn("_" * total_width)

    # ----------------------------------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        layers = []
        if self._input_layer is not None:
            layers.append({"class_name": "InputLayer", "config": self._input_layer.get_config()})
        layers += [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self._layers]
        config.update(layers=layers, build_input_shape=self._build_shape)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer_configs = config.pop("layers", [])
        build_shape = config.pop("build_input_shape", None)
        model = cls(**config)
        for entry in layer_configs:
            layer_cls = _resolve_class(entry["class_name"], custom_objects)
            if layer_cls is Sequential:
                model.add(Sequential.from_config(entry["config"], custom_objects))
            else:
                model.add(layer_cls.from_config(entry["config"]))
        if build_shape is not None and not model.built:
            model.build(tuple(build_shape))
        return model
