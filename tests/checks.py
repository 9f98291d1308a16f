"""Assertion helpers and tolerance tables shared by the tests (no tests here).

Tolerances are per compute dtype, as absolute error on outputs/states and relative error (to the
largest magnitude of the expected array) on gradients.  float32 is compared to a float64 oracle, so the
tolerance covers float32 rounding and the SIMD activations (max abs error ~2e-7), accumulated over T.
"""
import numpy as np

TOL = {
    np.dtype(np.float64): {"out": 1e-10, "grad": 1e-10},
    np.dtype(np.float32): {"out": 2e-5, "grad": 1e-4},
}


def tol(dtype, kind):
    return TOL[np.dtype(dtype)][kind]


def assert_close(name, actual, expected, atol):
    """max |actual - expected| <= atol, with shapes equal; the message names the array and the error."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    if actual.size == 0:
        return
    err = np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
    assert err <= atol, f"{name}: max abs error {err:.3e} > {atol:.1e}"


def assert_grad_close(name, actual, expected, rtol):
    """max |actual - expected| <= rtol * max(1, max |expected|)."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    assert_close(name, actual, expected, rtol * scale)


def assert_grads_close(actual, expected, rtol):
    """Compare two gradient dicts of the functional API (x, kernel, recurrent_kernel, bias, initial_state)."""
    assert set(actual) == set(expected), f"gradient keys {sorted(actual)} != {sorted(expected)}"
    for key in ("x", "kernel", "recurrent_kernel", "bias"):
        if expected[key] is None:
            assert actual[key] is None, f"{key}: expected no gradient"
            continue
        assert_grad_close(f"d{key}", actual[key], expected[key], rtol)
    assert len(actual["initial_state"]) == len(expected["initial_state"])
    for k, (a, e) in enumerate(zip(actual["initial_state"], expected["initial_state"])):
        assert_grad_close(f"dinitial_state[{k}]", a, e, rtol)


def mask_pattern(kind, B, T, rng):
    """(B, T) bool masks: none, right-padded, left-padded, holes, a fully masked row."""
    if kind == "none":
        return None
    m = np.ones((B, T), dtype=bool)
    lengths = rng.integers(1, T + 1, size=B)
    if kind == "right":
        m = np.arange(T)[None, :] < lengths[:, None]
    elif kind == "left":
        m = np.arange(T)[None, :] >= (T - lengths)[:, None]
    elif kind == "holes":
        m = rng.random((B, T)) > 0.35
    elif kind == "fully_masked_row":
        m = rng.random((B, T)) > 0.35
        m[B // 2] = False
    else:
        raise ValueError(kind)
    return m


def numeric_grad(loss, a, eps=1e-6):
    """Central differences of the scalar ``loss()`` w.r.t. every entry of `a` (perturbed in place, restored)."""
    g = np.zeros_like(a)
    for k in np.ndindex(a.shape):
        saved = a[k]
        a[k] = saved + eps
        up = loss()
        a[k] = saved - eps
        down = loss()
        a[k] = saved
        g[k] = (up - down) / (2 * eps)
    return g
