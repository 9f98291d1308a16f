"""Initializers by Keras name: distributions, seeds, and how the built-in cells use them."""
import numpy as np
import pytest

from fastrnn import layers as L
from fastrnn.layers import initializers


def test_glorot_uniform_limits_and_seed():
    w = initializers.get("glorot_uniform", seed=3)((300, 200))
    limit = np.sqrt(6 / (300 + 200))
    assert w.dtype == np.float32 and np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    np.testing.assert_array_equal(w, initializers.get("glorot_uniform", seed=3)((300, 200)))
    assert not np.array_equal(w, initializers.get("glorot_uniform", seed=4)((300, 200)))


@pytest.mark.parametrize("shape", [(34, 136), (136, 34), (17, 17)])
def test_orthogonal_is_orthogonal(shape):
    w = initializers.get("orthogonal", seed=0)(shape).astype(np.float64)
    small = min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-5)


@pytest.mark.parametrize("name,std", [("he_normal", np.sqrt(2 / 400)), ("lecun_normal", np.sqrt(1 / 400)),
                                      ("glorot_normal", np.sqrt(2 / 700))])
def test_variance_scaling_normals(name, std):
    w = initializers.get(name, seed=1)((400, 300)).astype(np.float64)
    assert abs(w.std() / std - 1) < 0.03
    assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-6  # truncated at two (pre-scaling) sigmas


def test_names_configs_and_errors():
    assert np.all(initializers.get("zeros")((3, 4)) == 0)
    assert np.all(initializers.get("Ones")((2,)) == 1)
    init = initializers.get({"class_name": "RandomUniform", "config": {"minval": 2.0, "maxval": 3.0, "seed": 0}})
    w = init((50,))
    assert w.min() >= 2 and w.max() <= 3
    assert initializers.serialize(init) == {"class_name": "RandomUniform",
                                            "config": {"minval": 2.0, "maxval": 3.0, "seed": 0}}
    with pytest.raises(ValueError, match="glorot_uniform"):
        initializers.get("glorot_uniformm")
    with pytest.raises(TypeError, match="name"):
        initializers.get(3.5)


def test_cells_use_their_initializers():
    x = np.zeros((2, 3, 5), np.float32)
    lstm = L.LSTM(4, seed=7)
    lstm(x)
    kernel, recurrent, bias = lstm.get_weights()
    np.testing.assert_allclose(recurrent.astype(np.float64) @ recurrent.T, np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(bias, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])  # unit_forget_bias
    again = L.LSTM(4, seed=7)
    again(x)
    for a, b in zip(lstm.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    plain = L.LSTM(4, unit_forget_bias=False, bias_initializer="ones")
    plain(x)
    np.testing.assert_array_equal(plain.get_weights()[2], np.ones(16))
    gru = L.GRU(3, kernel_initializer="zeros", reset_after=False)
    gru(x)
    assert np.all(gru.get_weights()[0] == 0) and gru.get_weights()[2].shape == (9,)

