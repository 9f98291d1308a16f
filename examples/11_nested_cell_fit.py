"""Guide section "RNNs with list/dict inputs, or nested inputs", trained: the guide's NestedCell (nested
inputs, nested outputs, two states of different ranks) in a Keras 3 model through fastrnn.keras.RNN, fit on
random data with Adam and MSE (Keras 3's own keras.layers.RNN cannot build this model: see fastrnn.keras.RNN).

    python examples/11_nested_cell_fit.py [--epochs 1] [--batches 10] [--timestep 50]
"""
import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras import ops  # noqa: E402

import fastrnn.keras  # noqa: E402


@keras.saving.register_keras_serializable(package="fastrnn_examples")
class NestedCell(keras.layers.Layer):
    """The guide's cell in Keras 3: keras.ops instead of tf, state and output sizes as shape lists."""

    def __init__(self, unit_1, unit_2, unit_3, **kwargs):
        super().__init__(**kwargs)
        self.unit_1 = unit_1
        self.unit_2 = unit_2
        self.unit_3 = unit_3
        self.state_size = [[unit_1], [unit_2, unit_3]]
        self.output_size = [[unit_1], [unit_2, unit_3]]

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

        output_1 = ops.matmul(input_1, self.kernel_1)
        output_2_3 = ops.einsum("bij,ijkl->bkl", input_2, self.kernel_2_3)
        state_1 = s1 + output_1
        state_2_3 = s2 + output_2_3

        output = (output_1, output_2_3)
        new_states = (state_1, state_2_3)
        return output, new_states

    def get_config(self):
        return {**super().get_config(), "unit_1": self.unit_1, "unit_2": self.unit_2, "unit_3": self.unit_3}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batches", type=int, default=10, help="num_batches of random data")
    parser.add_argument("--timestep", type=int, default=50)
    args = parser.parse_args()

    unit_1, unit_2, unit_3 = 10, 20, 30
    i1, i2, i3 = 32, 64, 32
    batch_size = 64
    num_batches = args.batches
    timestep = args.timestep

    keras.utils.set_random_seed(0)
    cell = NestedCell(unit_1, unit_2, unit_3)
    rnn = fastrnn.keras.RNN(cell)

    input_1 = keras.Input((None, i1))
    input_2 = keras.Input((None, i2, i3))

    outputs = rnn((input_1, input_2))

    model = keras.models.Model([input_1, input_2], outputs)

    # Keras 3 wants one metrics list per output of a multi-output model (the guide: metrics="accuracy")
    model.compile(optimizer="adam", loss="mse", metrics=[["accuracy"], ["accuracy"]])
    print("outputs:", [tuple(o.shape) for o in model.outputs])
    print("params:", model.count_params())

    # random data, as the guide (there is no good dataset for this model)
    rng = np.random.default_rng(0)
    input_1_data = rng.random((batch_size * num_batches, timestep, i1), dtype=np.float32)
    input_2_data = rng.random((batch_size * num_batches, timestep, i2, i3), dtype=np.float32)
    target_1_data = rng.random((batch_size * num_batches, unit_1), dtype=np.float32)
    target_2_data = rng.random((batch_size * num_batches, unit_2, unit_3), dtype=np.float32)
    input_data = [input_1_data, input_2_data]
    target_data = [target_1_data, target_2_data]

    history = model.fit(input_data, target_data, batch_size=batch_size, epochs=args.epochs, verbose=0)
    losses = history.history["loss"]
    for epoch, loss in enumerate(losses, 1):
        print(f"epoch {epoch} loss {loss:.6f}")
    if len(losses) > 1:
        print("loss went down every epoch:", all(b < a for a, b in zip(losses, losses[1:])))


if __name__ == "__main__":
    main()
