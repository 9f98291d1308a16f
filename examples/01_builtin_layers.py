"""Guide section "Built-in RNN layers: a simple example" (and the first model of "Outputs and states"):
two Sequential models over integer sequences, their summaries and a forward pass.

    python examples/01_builtin_layers.py
"""
import numpy as np

from fastrnn.layers import Dense, Embedding, GRU, LSTM, Sequential, SimpleRNN

rng = np.random.default_rng(0)
ids = rng.integers(0, 1000, size=(32, 20))  # 32 sequences of 20 word ids

# Embedding(1000 -> 64), LSTM with 128 units, Dense with 10 units
model = Sequential()
model.add(Embedding(input_dim=1000, output_dim=64))
model.add(LSTM(128))
model.add(Dense(10))
model.build((None, None))  # batch and sequence length unknown
model.summary()
print("output shape:", model(ids).shape)
print()

# GRU(256, return_sequences=True) -> (batch, timesteps, 256); SimpleRNN(128) -> (batch, 128)
model = Sequential()
model.add(Embedding(input_dim=1000, output_dim=64))
model.add(GRU(256, return_sequences=True))
model.add(SimpleRNN(128))
model.add(Dense(10))
model.build((None, None))
model.summary()
print("output shape:", model(ids).shape)
