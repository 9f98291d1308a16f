"""Guide section "Bidirectional RNNs": the summary of the guide's model, and the merge modes.

    python examples/07_bidirectional.py
"""
import numpy as np

from fastrnn.layers import Bidirectional, Dense, Input, LSTM, Sequential

model = Sequential()
model.add(Input(shape=(5, 10)))
model.add(Bidirectional(LSTM(64, return_sequences=True)))
model.add(Bidirectional(LSTM(32)))
model.add(Dense(10))
model.summary()

x = np.random.default_rng(0).random((3, 5, 10), dtype=np.float32)
print("output:", model(x).shape)

for merge_mode in ("concat", "sum", "mul", "ave", None):
    out = Bidirectional(LSTM(8, return_sequences=True), merge_mode=merge_mode)(x)
    shapes = [o.shape for o in out] if isinstance(out, (list, tuple)) else out.shape
    print(f"merge_mode={merge_mode!r}: {shapes}")
