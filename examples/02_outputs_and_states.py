"""Guide section "Outputs and states": what return_sequences and return_state give.

    python examples/02_outputs_and_states.py
"""
import numpy as np

from fastrnn.layers import GRU, LSTM, SimpleRNN

rng = np.random.default_rng(0)
x = rng.random((4, 7, 16), dtype=np.float32)  # (batch_size, timesteps, features)
print("inputs:", x.shape)

# By default: the last step's output, (batch_size, units)
print("LSTM(32):                            ", LSTM(32)(x).shape)
# return_sequences=True: every step, (batch_size, timesteps, units)
print("LSTM(32, return_sequences=True):     ", LSTM(32, return_sequences=True)(x).shape)

# return_state=True: the output, then the final states (LSTM has two, h and c; GRU and SimpleRNN one)
output, state_h, state_c = LSTM(32, return_state=True)(x)
print("LSTM(32, return_state=True):          output", output.shape, "state_h", state_h.shape,
      "state_c", state_c.shape)
print("   output equals state_h:", bool(np.allclose(output, state_h)))
whole, state_h = GRU(32, return_sequences=True, return_state=True)(x)
print("GRU(32, return_sequences, return_state): sequence", whole.shape, "state_h", state_h.shape)
print("   last output equals state_h:", bool(np.allclose(whole[:, -1], state_h)))
output, state = SimpleRNN(32, return_state=True)(x)
print("SimpleRNN(32, return_state=True):     output", output.shape, "state", state.shape)
