"""Guide section "RNNs with list/dict inputs, or nested inputs": a user cell with nested inputs, outputs
and two states of different ranks, run by fastrnn.layers.RNN's generic loop (Keras 3 cannot build this
example; fastrnn can).

    python examples/09_nested_cell.py
"""
import numpy as np

from fastrnn.layers import Layer, RNN


class NestedCell(Layer):
    def __init__(self, unit_1, unit_2, unit_3, **kwargs):
        super().__init__(**kwargs)
        self.unit_1 = unit_1
        self.unit_2 = unit_2
        self.unit_3 = unit_3
        self.state_size = [(unit_1,), (unit_2, unit_3)]
        self.output_size = [(unit_1,), (unit_2, unit_3)]

    def build(self, input_shapes):
        # expect input_shape to contain 2 items, [(batch, i1), (batch, i2, i3)]
        i1 = input_shapes[0][1]
        i2 = input_shapes[1][1]
        i3 = input_shapes[1][2]
        self.kernel_1 = self.add_weight(shape=(i1, self.unit_1), initializer="uniform", name="kernel_1")
        self.kernel_2_3 = self.add_weight(shape=(i2, i3, self.unit_2, self.unit_3), initializer="uniform",
                                          name="kernel_2_3")

    def call(self, inputs, states):
        # inputs should be in [(batch, input_1), (batch, input_2, input_3)]
        # state should be in shape [(batch, unit_1), (batch, unit_2, unit_3)]
        input_1, input_2 = inputs
        s1, s2 = states

        output_1 = input_1 @ self.kernel_1
        output_2_3 = np.einsum("bij,ijkl->bkl", input_2, self.kernel_2_3, optimize=True)
        state_1 = s1 + output_1
        state_2_3 = s2 + output_2_3

        output = (output_1, output_2_3)
        new_states = (state_1, state_2_3)
        return output, new_states

    def get_config(self):
        return {"unit_1": self.unit_1, "unit_2": self.unit_2, "unit_3": self.unit_3}


unit_1, unit_2, unit_3 = 10, 20, 30
i1, i2, i3 = 32, 64, 32
batch_size = 64
timestep = 50

cell = NestedCell(unit_1, unit_2, unit_3)
rnn = RNN(cell)

rng = np.random.default_rng(0)
input_1_data = rng.random((batch_size, timestep, i1), dtype=np.float32)
input_2_data = rng.random((batch_size, timestep, i2, i3), dtype=np.float32)

outputs = rnn((input_1_data, input_2_data))
print("inputs:", input_1_data.shape, input_2_data.shape)
print("outputs:", [o.shape for o in outputs])
print("weights:", [w.shape for w in rnn.weights], "params:", rnn.count_params())

# each step's output_1 is input_1 @ kernel_1; the states accumulate them over the steps
print("last output_1 equals input_1[:, -1] @ kernel_1:",
      bool(np.allclose(outputs[0], input_1_data[:, -1] @ cell.kernel_1, rtol=1e-4, atol=1e-5)))
sequences, state_1, state_2_3 = RNN(cell, return_sequences=True, return_state=True)((input_1_data, input_2_data))
print("return_sequences=True, return_state=True: outputs", [o.shape for o in sequences],
      "states", state_1.shape, state_2_3.shape)
print("final state_1 equals the sum over steps:",
      bool(np.allclose(state_1, input_1_data.sum(axis=1) @ cell.kernel_1, rtol=1e-4, atol=1e-4)))
