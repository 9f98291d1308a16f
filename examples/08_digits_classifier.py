"""Guide section "Using CuDNN kernels when available": the digit-rows model LSTM(64) + BatchNormalization +
Dense(10), each image read row by row, here on scikit-learn's 8x8 digits (8 steps of 8 pixels).

The guide trains with SGD (see examples/digits_lstm.py for training with fastrnn's gradients); to keep this
a fast forward-pass demo, only the last two layers are fitted, in closed form: BatchNormalization's moving
statistics from the LSTM features and the Dense layer by ridge regression on one-hot targets.

    python examples/08_digits_classifier.py
"""
import numpy as np
from sklearn.datasets import load_digits

from fastrnn.layers import BatchNormalization, Dense, Input, LSTM, Sequential

units, output_size = 64, 10
digits = load_digits()
x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8): 8 rows (time steps) of 8 pixels
y = digits.target
x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]

lstm, bn, dense = LSTM(units), BatchNormalization(), Dense(output_size)
model = Sequential([Input(shape=(None, 8)), lstm, bn, dense])

# fit BatchNormalization's moving statistics and the Dense layer (ridge regression) on the training set
features = lstm(x_train)
bn.set_weights([np.ones(units), np.zeros(units), features.mean(0), features.var(0)])
normalized = bn(features)
a = np.hstack([normalized, np.ones((len(normalized), 1), np.float32)])
solution = np.linalg.solve(a.T @ a + 1e-2 * np.eye(units + 1), a.T @ np.eye(output_size)[y_train])
dense.set_weights([solution[:-1], solution[-1]])

sample, sample_label = x_test[:1], y_test[0]
result = model.predict(sample).argmax(axis=1)
print(f"Predicted result is: {result[0]}, target result is: {sample_label}")
accuracy = float((model.predict(x_test, batch_size=64).argmax(axis=1) == y_test).mean())
print(f"test accuracy ({len(y_test)} digits): {accuracy:.3f}")
model.summary()
