"""Guide section "RNN State Reuse": a stateful layer's `states` seed another layer through initial_state.

    python examples/06_state_reuse.py
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

existing_state = lstm_layer.states
print("existing_state:", [s.shape for s in existing_state])

new_lstm_layer = LSTM(64)
new_output = new_lstm_layer(paragraph3, initial_state=existing_state)
print("new_output:", new_output.shape)

# with the same weights, the new layer continues exactly where the stateful one stopped
new_lstm_layer.set_weights(lstm_layer.get_weights())
continued = new_lstm_layer(paragraph3, initial_state=existing_state)
print("same weights: equals the stateful layer's third chunk:",
      bool(np.allclose(continued, lstm_layer(paragraph3), atol=1e-6)))
