"""Activations by name, and their derivatives written in terms of the activation's OUTPUT.

Every activation used by the recurrent cells is elementwise and monotone, so its derivative can be
recovered from the output ``y = f(a)`` alone. The backward passes therefore keep only the gate
outputs, never the pre-activations. The compiled kernels mirror this table exactly:

=============  ==============================  ==================================
name           y = f(a)                        f'(a) written from y
=============  ==============================  ==================================
tanh           tanh(a)                         1 - y**2
sigmoid        1 / (1 + exp(-a))               y * (1 - y)
hard_sigmoid   clip(a / 6 + 1/2, 0, 1)         1/6 where 0 < y < 1, else 0
relu           max(a, 0)                       1 where y > 0, else 0
linear         a                               1
softsign       a / (1 + |a|)                   (1 - |y|)**2
=============  ==============================  ==================================

``hard_sigmoid`` is Keras 3's (``relu6(a + 3) / 6``), not Keras 2's ``0.2 * a + 0.5``.
At the kinks of relu and hard_sigmoid the derivative taken is 0 (the one-sided value of the flat
side), as in PyTorch.
"""
import numpy as np

__all__ = ["ACTIVATIONS", "get", "activate", "derivative_from_output"]


def _tanh(a):
    return np.tanh(a)


def _d_tanh(y):
    return 1 - y * y


def _sigmoid(a):
    # exp(-|a|) never overflows; both branches are the exact logistic function.
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def _d_sigmoid(y):
    return y * (1 - y)


def _hard_sigmoid(a):
    return np.clip(a / 6 + 0.5, 0, 1)


def _d_hard_sigmoid(y):
    return np.where((y > 0) & (y < 1), 1 / 6, 0).astype(y.dtype)


def _relu(a):
    return np.maximum(a, 0)


def _d_relu(y):
    return (y > 0).astype(y.dtype)


def _linear(a):
    return a.copy()


def _d_linear(y):
    return np.ones_like(y)


def _softsign(a):
    return a / (1 + np.abs(a))


def _d_softsign(y):
    s = 1 - np.abs(y)
    return s * s


#: name -> (function, derivative expressed from the function's output)
ACTIVATIONS = {
    "tanh": (_tanh, _d_tanh),
    "sigmoid": (_sigmoid, _d_sigmoid),
    "hard_sigmoid": (_hard_sigmoid, _d_hard_sigmoid),
    "relu": (_relu, _d_relu),
    "linear": (_linear, _d_linear),
    "softsign": (_softsign, _d_softsign),
}


def get(name):
    """Return ``(f, df_from_output)`` for an activation name.

    Raises
    ------
    ValueError
        If ``name`` is not one of ``ACTIVATIONS`` (the message lists the known names).
    """
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(k) for k in ACTIVATIONS)
        raise ValueError(f"unknown activation {name!r}; known activations: {known}") from None


def activate(name, a):
    """``f(a)`` for the activation called ``name``; same shape and dtype as ``a``."""
    return get(name)[0](a)


def derivative_from_output(name, y):
    """``f'(a)`` for the activation called ``name``, computed from its output ``y = f(a)``."""
    return get(name)[1](y)
