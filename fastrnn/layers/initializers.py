"""Weight initializers by Keras name (glorot_uniform, orthogonal, zeros, ...), seeded.

`get(identifier)` accepts a name, a Keras-style config dict ({"class_name": ..., "config": {...}}), an
Initializer instance or a callable ``f(shape, dtype) -> array``.  Each Initializer draws from its own
NumPy Generator, so a seeded layer builds the same weights every time.  The distributions follow
Keras 3 (fan_in / fan_out of the last two dimensions, truncated normal within two standard deviations);
the random streams are NumPy's, so values differ from Keras's for the same seed.
"""
import math

import numpy as np


class Initializer:
    """Base: ``init(shape, dtype="float32") -> ndarray``."""

    def __init__(self, seed=None):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __call__(self, shape, dtype="float32"):
        return np.asarray(self.sample(tuple(int(s) for s in shape)), dtype=dtype)

    def sample(self, shape):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self):
        return {"seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


class Zeros(Initializer):
    def sample(self, shape):
        return np.zeros(shape)

    def get_config(self):
        return {}


class Ones(Zeros):
    def sample(self, shape):
        return np.ones(shape)


class Constant(Initializer):
    def __init__(self, value=0.0):
        super().__init__()
        self.value = value

    def sample(self, shape):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = minval, maxval

    def sample(self, shape):
        return self._rng.uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = mean, stddev

    def sample(self, shape):
        return self._rng.normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


def _unit_truncated_normal(rng, shape):
    """Unit normal draws, redrawn while outside two standard deviations (as Keras does)."""
    out = rng.normal(0.0, 1.0, shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.normal(0.0, 1.0, int(bad.sum()))
        bad = np.abs(out) > 2
    return out


class TruncatedNormal(RandomNormal):
    def sample(self, shape):
        return self.mean + self.stddev * _unit_truncated_normal(self._rng, shape)


class VarianceScaling(Initializer):
    """scale / fan (fan_in, fan_out or their mean) as the variance of a truncated normal or a uniform."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"VarianceScaling: mode must be fan_in, fan_out or fan_avg, got {mode!r}")
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError("VarianceScaling: distribution must be truncated_normal, untruncated_normal or "
                             f"uniform, got {distribution!r}")
        self.scale, self.mode, self.distribution = scale, mode, distribution

    def sample(self, shape):
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, fan)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return self._rng.uniform(-limit, limit, shape)
        if self.distribution == "untruncated_normal":
            return self._rng.normal(0.0, math.sqrt(variance), shape)
        # 0.8796... is the standard deviation of a unit normal truncated to [-2, 2]
        return math.sqrt(variance) / 0.87962566103423978 * _unit_truncated_normal(self._rng, shape)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution, "seed": self.seed}


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix from the QR decomposition of a normal draw, times `gain`."""

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = gain

    def sample(self, shape):
        if len(shape) < 2:
            raise ValueError(f"Orthogonal: expected a shape of rank >= 2, got {shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = self._rng.normal(size=(max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


def _scaling(scale, mode, distribution):
    return lambda seed=None: VarianceScaling(scale, mode, distribution, seed)


_NAMES = {
    "zeros": Zeros, "ones": Ones, "constant": Constant,
    "random_uniform": RandomUniform, "uniform": RandomUniform,
    "random_normal": RandomNormal, "normal": RandomNormal, "truncated_normal": TruncatedNormal,
    "orthogonal": Orthogonal, "variance_scaling": VarianceScaling,
    "glorot_uniform": _scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _scaling(1.0, "fan_avg", "truncated_normal"),
    "he_uniform": _scaling(2.0, "fan_in", "uniform"),
    "he_normal": _scaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": _scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _scaling(1.0, "fan_in", "truncated_normal"),
}
_CLASS_NAMES = {
    "Zeros": "zeros", "Ones": "ones", "Constant": "constant", "RandomUniform": "random_uniform",
    "RandomNormal": "random_normal", "TruncatedNormal": "truncated_normal", "Orthogonal": "orthogonal",
    "VarianceScaling": "variance_scaling", "GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal",
    "HeUniform": "he_uniform", "HeNormal": "he_normal", "LecunUniform": "lecun_uniform",
    "LecunNormal": "lecun_normal",
}


def get(identifier, seed=None):
    """An initializer from a name, a {"class_name", "config"} dict, an Initializer or a callable."""
    if isinstance(identifier, Initializer) or (callable(identifier) and not isinstance(identifier, (str, dict))):
        return identifier
    if isinstance(identifier, dict):
        name = _CLASS_NAMES.get(identifier.get("class_name"), identifier.get("class_name"))
        config = dict(identifier.get("config", {}))
        if name not in _NAMES:
            raise ValueError(f"initializer: unknown class_name {identifier.get('class_name')!r}")
        return _NAMES[name](**config)
    if isinstance(identifier, str):
        key = _CLASS_NAMES.get(identifier, identifier.lower())
        if key not in _NAMES:
            raise ValueError(f"initializer: expected one of {', '.join(sorted(_NAMES))}, got {identifier!r}")
        factory = _NAMES[key]
        if factory in (Zeros, Ones, Constant):
            return factory()
        return factory(seed=seed)
    raise TypeError(f"initializer: expected a name, a config dict or a callable, got {type(identifier).__name__}")


def serialize(init):
    """The name (for the stock ones made by name) or a {"class_name", "config"} dict."""
    if isinstance(init, str):
        return init
    if isinstance(init, Initializer):
        return {"class_name": type(init).__name__, "config": init.get_config()}
    return init
