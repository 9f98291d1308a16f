"""Guide section "Cross-batch statefulness": a stateful LSTM reads a long sequence in chunks, carrying its
states from one call to the next; reset_states() starts over.

    python examples/05_cross_batch_statefulness.py
"""
import numpy as np

from fastrnn.layers import LSTM

rng = np.random.default_rng(0)
paragraph1 = rng.random((20, 10, 50), dtype=np.float32)
paragraph2 = rng.random((20, 10, 50), dtype=np.float32)
paragraph3 = rng.random((20, 10, 50), dtype=np.float32)

lstm_layer = LSTM(64, stateful=True)
output = lstm_layer(paragraph1)
output = lstm_layer(paragraph2)
output = lstm_layer(paragraph3)
print("output after three chunks:", output.shape, "; states:", [s.shape for s in lstm_layer.states])

# the same as reading the whole sequence at once
whole = LSTM(64)
whole.build((None, None, 50))
whole.set_weights(lstm_layer.get_weights())
full = whole(np.concatenate([paragraph1, paragraph2, paragraph3], axis=1))
print("equals one pass over the 30 steps:", bool(np.allclose(output, full, atol=1e-5)))

# reset_states() resets the cached state to zeros (the original initial state)
lstm_layer.reset_states()
print("after reset_states(), max |h| =", float(np.abs(lstm_layer.states[0]).max()))
again = lstm_layer(paragraph1)
print("first chunk again gives the first output again:",
      bool(np.allclose(again, whole(paragraph1), atol=1e-5)))

try:
    lstm_layer(paragraph1[:5])
except ValueError as err:
    print("another batch size:", err)
