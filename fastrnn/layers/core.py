"""Core non-recurrent layers for the guide's models: Dense, Embedding, Masking, BatchNormalization.

Keras 3 semantics, NumPy in and out.  Weights, their names, order, shapes and trainability are
Keras's, so ``set_weights(keras_layer.get_weights())`` copies a Keras layer one to one:

==================  =====================================================  ==============================
layer               weights (in order)                                     mask emitted
==================  =====================================================  ==============================
Dense               kernel (in, units), bias (units,)                      the input's (passed through)
Embedding           embeddings (input_dim, output_dim)                     ``ids != 0`` with mask_zero
Masking             -                                                      ``any(x != mask_value, -1)``
BatchNormalization  gamma, beta (trainable), moving_mean, moving_variance  the input's (passed through)
==================  =====================================================  ==============================

A mask travels as ``_keras_mask`` on the output (an ndarray view, `fastrnn.layers.base.with_mask`), so
``lstm(embedding(ids))`` masks padded steps as in Keras; ``compute_mask(inputs, mask)`` gives the same
mask for `Sequential`.
"""
import numpy as np

from fastrnn.layers import initializers
from fastrnn.layers.base import Layer, get_mask, plain, with_mask

__all__ = ["Dense", "Embedding", "Masking", "BatchNormalization", "activations"]


# ------------------------------------------------------------------------------------------ activations
def _sigmoid(a):
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)


def _softmax(a, axis=-1):
    e = np.exp(a - np.max(a, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(a, axis=-1):
    shifted = a - np.max(a, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _gelu(a):  # Keras's default: approximate=False (the erf form)
    from math import erf, sqrt

    try:
        from scipy.special import erf as erf_array
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn, not with fastrnn
        erf_array = np.vectorize(erf, otypes=[a.dtype])
    return (0.5 * a * (1 + erf_array(a / sqrt(2)))).astype(a.dtype, copy=False)


def _elu(a):
    return np.where(a > 0, a, np.expm1(np.minimum(a, 0)))


def _selu(a):
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * np.where(a > 0, a, alpha * np.expm1(np.minimum(a, 0)))


#: Keras activation names -> elementwise (or last-axis, for the softmaxes) NumPy functions
ACTIVATIONS = {
    "linear": lambda a: a,
    "relu": lambda a: np.maximum(a, 0),
    "relu6": lambda a: np.clip(a, 0, 6),
    "leaky_relu": lambda a: np.where(a >= 0, a, 0.2 * a),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda a: np.clip(a / 6 + 0.5, 0, 1),
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "softplus": lambda a: np.logaddexp(a, 0),
    "softsign": lambda a: a / (1 + np.abs(a)),
    "silu": lambda a: a * _sigmoid(a),
    "swish": lambda a: a * _sigmoid(a),
    "gelu": _gelu,
    "elu": _elu,
    "selu": _selu,
    "exponential": np.exp,
}


class activations:  # namespace, as keras.activations
    """``activations.get(name_or_callable)`` -> ``f(ndarray) -> ndarray``; None means "linear"."""

    @staticmethod
    def get(identifier):
        if identifier is None:
            return ACTIVATIONS["linear"]
        if isinstance(identifier, str):
            try:
                return ACTIVATIONS[identifier]
            except KeyError:
                raise ValueError(f"unknown activation {identifier!r}; known activations: "
                                 f"{', '.join(sorted(ACTIVATIONS))}") from None
        if callable(identifier):
            return identifier
        raise TypeError(f"activation: expected a name, None or a callable, got {type(identifier).__name__}")

    @staticmethod
    def serialize(identifier):
        if identifier is None:
            return "linear"
        return identifier if isinstance(identifier, str) else getattr(identifier, "__name__", identifier)


def _float_input(layer, inputs, min_ndim=1):
    """inputs as a float array of the layer's dtype (ints and bools converted as Keras casts them)."""
    x = plain(np.asarray(inputs))
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{layer.name}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{layer.name}: expected an input of rank >= {min_ndim}, got shape {x.shape}")
    return x.astype(layer.dtype, copy=False)


def _input_shape_kwargs(kwargs):
    """Keep Keras's ``input_shape=`` (the shape without the batch) for Sequential; the base drops it."""
    shape = kwargs.pop("input_shape", None)
    return None if shape is None else tuple(shape)


# ------------------------------------------------------------------------------------------------ Dense
class Dense(Layer):
    """``activation(inputs @ kernel + bias)`` over the last axis of an input of any rank >= 2.

    Parameters
    ----------
    units : int
        Output features.
    activation : str, callable or None
        A Keras name ("relu", "tanh", "sigmoid", "softmax", ...); None or "linear" for none.
    use_bias : bool
    kernel_initializer, bias_initializer : str, dict or callable
        Initializers by Keras name (see `fastrnn.layers.initializers`).

    Weights: kernel (in_features, units), bias (units,).  Input (..., in_features) -> (..., units).
    A mask the input carries passes through to the output (Keras's Dense supports masking).
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, **kwargs):
        self._input_shape_arg = _input_shape_kwargs(kwargs)
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"Dense: units must be a positive integer, got {units!r}")
        for arg, value in (("kernel_regularizer", kernel_regularizer), ("bias_regularizer", bias_regularizer),
                           ("activity_regularizer", activity_regularizer),
                           ("kernel_constraint", kernel_constraint), ("bias_constraint", bias_constraint)):
            if value is not None:
                raise NotImplementedError(f"Dense: {arg} is not supported (fastrnn has no training loop)")
        self.units = int(units)
        self.activation = activation
        self._activation_fn = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(f"{self.name}: expected an input of rank >= 2 (batch, ..., features), "
                             f"got shape {input_shape}")
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the last axis (features) must be known to build, got {input_shape}")
        self.kernel = self.add_weight((input_shape[-1], self.units), self.kernel_initializer, "kernel")
        self.bias = self.add_weight((self.units,), self.bias_initializer, "bias") if self.use_bias else None
        self.built = True

    def call(self, inputs):
        mask = get_mask(inputs)
        x = _float_input(self, inputs, min_ndim=2)
        if x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"{self.name}: expected {self.kernel.shape[0]} input features (last axis), "
                             f"got shape {x.shape}")
        y = x @ self.kernel
        if self.bias is not None:
            y += self.bias
        return with_mask(np.asarray(self._activation_fn(y), dtype=self.dtype), mask)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=activations.serialize(self.activation),
                      use_bias=self.use_bias,
                      kernel_initializer=initializers.serialize(self.kernel_initializer),
                      bias_initializer=initializers.serialize(self.bias_initializer))
        return config


# -------------------------------------------------------------------------------------------- Embedding
class Embedding(Layer):
    """Integer ids (any shape) -> rows of ``embeddings`` (input_dim, output_dim): (..., output_dim).

    Parameters
    ----------
    input_dim : int
        Vocabulary size: ids must lie in ``[0, input_dim)`` (ValueError otherwise).
    output_dim : int
    embeddings_initializer : str, dict or callable
        Keras's default "uniform" (U(-0.05, 0.05)).
    mask_zero : bool
        The output carries ``_keras_mask = ids != 0`` (id 0 is padding), which RNN layers read.

    Float ids raise a TypeError (cast them yourself: a silent truncation hides bugs).
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 embeddings_constraint=None, mask_zero=False, weights=None, input_length=None, **kwargs):
        self._input_shape_arg = _input_shape_kwargs(kwargs)
        super().__init__(**kwargs)
        for arg, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"Embedding: {arg} must be a positive integer, got {value!r}")
        if embeddings_regularizer is not None or embeddings_constraint is not None:
            raise NotImplementedError("Embedding: regularizers and constraints are not supported")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = embeddings_initializer
        self.mask_zero = bool(mask_zero)
        if weights is not None:
            self.build(None)
            self.set_weights(weights if isinstance(weights, list) else [weights])

    def build(self, input_shape=None):
        if self.built:
            return
        self.embeddings = self.add_weight((self.input_dim, self.output_dim), self.embeddings_initializer,
                                          "embeddings")
        self.built = True

    def _ids(self, inputs):
        ids = plain(np.asarray(inputs))
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: expected integer ids, got dtype {ids.dtype} "
                            "(cast with .astype(int) if the values are whole numbers)")
        if ids.size and (ids.min() < 0 or ids.max() >= self.input_dim):
            bad = ids[(ids < 0) | (ids >= self.input_dim)]
            raise ValueError(f"{self.name}: ids must lie in [0, {self.input_dim}) (input_dim={self.input_dim}), "
                             f"got {bad.size} out of range, e.g. {bad.flat[0]}")
        return ids

    def call(self, inputs):
        ids = self._ids(inputs)
        return with_mask(self.embeddings[ids], ids != 0 if self.mask_zero else None)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return plain(np.asarray(inputs)) != 0

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                      embeddings_initializer=initializers.serialize(self.embeddings_initializer),
                      mask_zero=self.mask_zero)
        return config


# ---------------------------------------------------------------------------------------------- Masking
class Masking(Layer):
    """Mask the time steps whose features all equal `mask_value`.

    ``mask = any(x != mask_value, axis=-1)`` (B, T); the output is x with the masked steps zeroed, and
    carries the mask as ``_keras_mask`` for the RNN layers that follow.
    """

    def __init__(self, mask_value=0.0, **kwargs):
        self._input_shape_arg = _input_shape_kwargs(kwargs)
        super().__init__(**kwargs)
        self.mask_value = mask_value

    def _mask(self, x):
        return np.any(x != self.mask_value, axis=-1)

    def call(self, inputs):
        x = _float_input(self, inputs, min_ndim=2)
        mask = self._mask(x)
        return with_mask(np.where(mask[..., None], x, np.zeros((), x.dtype)), mask)

    def compute_mask(self, inputs, mask=None):
        return self._mask(plain(np.asarray(inputs)))

    def get_config(self):
        config = super().get_config()
        config.update(mask_value=self.mask_value)
        return config


# ----------------------------------------------------------------------------------- BatchNormalization
class BatchNormalization(Layer):
    """``gamma * (x - mean) / sqrt(var + epsilon) + beta`` per feature along `axis`.

    Inference (``training=False``, the default) uses the moving statistics.  ``training=True`` (with a
    trainable layer, as Keras) uses the batch's mean and biased variance over every axis but `axis`
    (only the unmasked positions when a (B, T) mask is given or carried), then updates
    ``moving = moving * momentum + batch * (1 - momentum)`` in place.

    Weights (Keras's order): gamma (if scale), beta (if center), moving_mean, moving_variance; the last
    two are non-trainable.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 synchronized=False, renorm=False, **kwargs):
        self._input_shape_arg = _input_shape_kwargs(kwargs)
        super().__init__(**kwargs)
        if any(v is not None for v in (beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint)):
            raise NotImplementedError("BatchNormalization: regularizers and constraints are not supported")
        if synchronized or renorm:
            raise NotImplementedError("BatchNormalization: synchronized and renorm are not supported")
        self.axis = int(axis)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer
        self.moving_mean_initializer = moving_mean_initializer
        self.moving_variance_initializer = moving_variance_initializer
        self.gamma = self.beta = None

    def _check_axis(self, ndim):
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"{self.name}: axis {self.axis} is out of bounds for an input of rank {ndim}")
        return self.axis % ndim

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        axis = self._check_axis(len(input_shape))
        if input_shape[axis] is None:
            raise ValueError(f"{self.name}: the normalized axis must be known to build, got {input_shape}")
        shape = (input_shape[axis],)
        if self.scale:
            self.gamma = self.add_weight(shape, self.gamma_initializer, "gamma")
        if self.center:
            self.beta = self.add_weight(shape, self.beta_initializer, "beta")
        self.moving_mean = self.add_weight(shape, self.moving_mean_initializer, "moving_mean", trainable=False)
        self.moving_variance = self.add_weight(shape, self.moving_variance_initializer, "moving_variance",
                                               trainable=False)
        self._ndim = len(input_shape)
        self.built = True

    def call(self, inputs, training=False, mask=None):
        carried = get_mask(inputs)
        mask = carried if mask is None else mask
        x = _float_input(self, inputs)
        axis = self._check_axis(x.ndim)
        features = self.moving_mean.shape[0]
        if x.shape[axis] != features:
            raise ValueError(f"{self.name}: expected {features} features on axis {self.axis}, got shape {x.shape}")
        bshape = [1] * x.ndim
        bshape[axis] = features
        if training and self.trainable:
            mean, variance = self._moments(x, axis, mask)
            m = self.momentum
            self.moving_mean[...] = self.moving_mean * m + mean.astype(self.dtype) * (1.0 - m)
            self.moving_variance[...] = self.moving_variance * m + variance.astype(self.dtype) * (1.0 - m)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        inv = 1.0 / np.sqrt(variance + self.epsilon)
        if self.gamma is not None:
            inv = inv * self.gamma
        y = (x - mean.reshape(bshape)) * inv.reshape(bshape)
        if self.beta is not None:
            y += self.beta.reshape(bshape)
        return with_mask(y.astype(self.dtype, copy=False), carried)

    def _moments(self, x, axis, mask):
        axes = tuple(a for a in range(x.ndim) if a != axis)
        if mask is None:
            return x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != x.ndim - 1:
            raise ValueError(f"{self.name}: the mask must have one dimension less than the inputs, "
                             f"got mask shape {mask.shape} for inputs {x.shape}")
        w = np.broadcast_to(mask[..., None], x.shape).astype(np.float64)
        count = w.sum(axis=axes) + 1e-7  # Keras's backend.epsilon()
        mean = (x * w).sum(axis=axes) / count
        centered = (x - np.expand_dims(mean, axes)) * w
        return mean, (centered * centered).sum(axis=axes) / count

    def compute_output_shape(self, input_shape):
        self._check_axis(len(input_shape))
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis, momentum=self.momentum, epsilon=self.epsilon, center=self.center,
                      scale=self.scale,
                      beta_initializer=initializers.serialize(self.beta_initializer),
                      gamma_initializer=initializers.serialize(self.gamma_initializer),
                      moving_mean_initializer=initializers.serialize(self.moving_mean_initializer),
                      moving_variance_initializer=initializers.serialize(self.moving_variance_initializer))
        return config
