"""The guide's digit-rows model on real data: each 8x8 scikit-learn digit is read row by row (T=8 steps of
8 pixels) by an LSTM(64), followed by Dense(10) + softmax.  Trained for a few epochs with plain SGD on
gradients from fastrnn.functional.lstm_vjp, then timed against the NumPy reference (same arrays).

    python examples/digits_lstm.py [--epochs 8]
"""
import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import fastrnn
from fastrnn import functional as F
from fastrnn import reference


def glorot_uniform(rng, shape):
    limit = np.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def orthogonal(rng, shape):
    q, r = np.linalg.qr(rng.normal(size=(shape[1], shape[0])))
    return (q * np.sign(np.diag(r))).T.astype(np.float32)


def init_params(rng, features=8, units=64, classes=10):
    """Keras defaults: glorot_uniform kernel, orthogonal recurrent kernel, zero bias but the forget gate's 1."""
    bias = np.zeros(4 * units, np.float32)
    bias[units:2 * units] = 1.0
    return {
        "kernel": glorot_uniform(rng, (features, 4 * units)),
        "recurrent_kernel": orthogonal(rng, (units, 4 * units)),
        "bias": bias,
        "dense_w": glorot_uniform(rng, (units, classes)),
        "dense_b": np.zeros(classes, np.float32),
    }


def loss_and_grads(p, x, y):
    """Softmax cross-entropy of Dense(LSTM(x)[-1]); gradients for every parameter."""
    outputs, (h, c), backward = F.lstm_vjp(x, p["kernel"], p["recurrent_kernel"], p["bias"])
    logits = h @ p["dense_w"] + p["dense_b"]
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    loss = -np.log(prob[np.arange(len(y)), y] + 1e-12).mean()
    dlogits = prob
    dlogits[np.arange(len(y)), y] -= 1
    dlogits /= len(y)
    dh = dlogits @ p["dense_w"].T
    grads = backward(np.zeros_like(outputs), [dh, None])
    return loss, {
        "kernel": grads["kernel"], "recurrent_kernel": grads["recurrent_kernel"], "bias": grads["bias"],
        "dense_w": h.T @ dlogits, "dense_b": dlogits.sum(axis=0),
    }


def accuracy(p, x, y):
    _, (h, _) = F.lstm(x, p["kernel"], p["recurrent_kernel"], p["bias"])
    return float(((h @ p["dense_w"] + p["dense_b"]).argmax(axis=1) == y).mean())


def median_time(fn, repeats=7):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()

    digits = load_digits()
    x_all = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8): batch, timesteps (rows), features
    y_all = digits.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x_all))
    train, test = order[:1400], order[1400:]
    p = init_params(rng)
    print(f"fastrnn {fastrnn.__version__}, {fastrnn.get_num_threads()} threads; digits: {len(train)} train, "
          f"{len(test)} test, sequences of 8 rows x 8 pixels")
    print(f"before training: test accuracy {accuracy(p, x_all[test], y_all[test]):.3f}")
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(train)
        losses = []
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss, grads = loss_and_grads(p, x_all[idx], y_all[idx])
            losses.append(loss)
            for k in p:
                p[k] -= args.lr * grads[k]
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, test accuracy "
              f"{accuracy(p, x_all[test], y_all[test]):.3f} ({time.perf_counter() - t0:.2f} s)")

    x = x_all[test]
    w = (p["kernel"], p["recurrent_kernel"], p["bias"])
    ours, _ = F.lstm(x, *w)
    theirs, _ = reference.lstm(x.astype(np.float64), *(a.astype(np.float64) for a in w))
    print(f"max |fastrnn - numpy float64 reference| on the test outputs: {np.abs(ours - theirs).max():.2e}")

    def grad_step(engine):
        o, s, bw = F.lstm_vjp(x, *w, engine=engine)
        bw(np.ones_like(o))

    for name, fn in [
        ("forward", lambda e: F.lstm(x, *w, engine=e)),
        ("forward+backward", grad_step),
    ]:
        fast, slow = median_time(lambda: fn("compiled")), median_time(lambda: fn("reference"), 3)
        print(f"{name:>17} on {len(x)} digits: fastrnn {fast * 1e3:7.2f} ms, numpy reference "
              f"{slow * 1e3:7.2f} ms ({slow / fast:.1f}x)")


if __name__ == "__main__":
    main()
