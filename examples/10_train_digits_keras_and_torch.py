"""The guide's digit-rows classifier trained with and without fastrnn, under Keras 3 and under PyTorch.

Model: LSTM(64) + BatchNormalization + Dense(10), SGD, sparse categorical cross-entropy, on scikit-learn's
8x8 digits read row by row (T=8, 8 features).  Each framework trains its stock LSTM and fastrnn's drop-in
twin from the same initial weights, one epoch of each in turn, and prints the time per epoch and the test
accuracy (the guide's "with and without the fast kernel" comparison).  BatchNormalization uses momentum
0.9 (Keras's default 0.99 needs many more steps before its moving statistics serve at test time).

    python examples/10_train_digits_keras_and_torch.py [--epochs 5] [--threads 1]
"""
import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402


def data():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[:1500]], y[order[:1500]], x[order[1500:]], y[order[1500:]]


def keras_models():
    import keras

    import fastrnn.keras as fk

    def build(lstm):
        return keras.Sequential([keras.Input((8, 8)), lstm, keras.layers.BatchNormalization(momentum=0.9),
                                 keras.layers.Dense(10)])

    keras.utils.set_random_seed(0)
    stock, ours = build(keras.layers.LSTM(64)), build(fk.LSTM(64))
    ours.set_weights(stock.get_weights())
    for m in (stock, ours):
        m.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    return {"keras.layers.LSTM": stock, "fastrnn.keras.LSTM": ours}


def run_keras(epochs, x, y, xt, yt):
    models = keras_models()
    times = {name: [] for name in models}
    for _ in range(epochs):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
            times[name].append(time.perf_counter() - t0)
    return {name: (np.median(times[name]), model.evaluate(xt, yt, verbose=0)[1]) for name, model in models.items()}


class TorchDigits:
    """LSTM(64) -> BatchNorm1d -> Linear(10) on the last output, in torch."""

    def __init__(self, lstm_cls):
        import torch

        self.lstm = lstm_cls(8, 64, batch_first=True)
        self.norm = torch.nn.BatchNorm1d(64, eps=1e-3, momentum=0.1)
        self.head = torch.nn.Linear(64, 10)
        self.modules = torch.nn.ModuleList([self.lstm, self.norm, self.head])

    def __call__(self, x):
        out, _ = self.lstm(x)
        return self.head(self.norm(out[:, -1]))


def run_torch(epochs, x, y, xt, yt):
    import torch

    import fastrnn.torch as ft

    torch.manual_seed(0)
    stock = TorchDigits(torch.nn.LSTM)
    ours = TorchDigits(ft.LSTM)
    ours.modules.load_state_dict(stock.modules.state_dict())
    models = {"torch.nn.LSTM": stock, "fastrnn.torch.LSTM": ours}
    optims = {name: torch.optim.SGD(m.modules.parameters(), lr=0.1) for name, m in models.items()}
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    times = {name: [] for name in models}
    for _ in range(epochs):
        for name, model in models.items():
            model.modules.train()
            t0 = time.perf_counter()
            for i in range(0, len(xs), 64):
                optims[name].zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xs[i:i + 64]), ys[i:i + 64])
                loss.backward()
                optims[name].step()
            times[name].append(time.perf_counter() - t0)
    result = {}
    for name, model in models.items():
        model.modules.eval()
        with torch.no_grad():
            acc = (model(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean()
        result[name] = (np.median(times[name]), float(acc))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and fastrnn (1 avoids two pools fighting on small machines)")
    args = parser.parse_args()
    import torch

    import fastrnn

    torch.set_num_threads(args.threads)
    fastrnn.set_num_threads(args.threads)
    x, y, xt, yt = data()
    print(f"digits: {len(x)} train, {len(xt)} test; {args.epochs} epochs, batch 64, SGD; {args.threads} thread(s)")
    for framework, run in (("Keras 3 (torch backend)", run_keras), ("PyTorch", run_torch)):
        print(framework)
        for name, (seconds, acc) in run(args.epochs, x, y, xt, yt).items():
            print(f"  {name:22s} {seconds * 1e3:8.1f} ms per epoch (median)   test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
