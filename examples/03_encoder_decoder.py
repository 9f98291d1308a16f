"""Guide section "Outputs and states", encoder-decoder: the encoder LSTM's final states become the decoder
LSTM's initial_state.  (fastrnn has no functional Model; the layers are called in order, which is what the
guide's graph computes.)

    python examples/03_encoder_decoder.py
"""
import numpy as np

from fastrnn.layers import Dense, Embedding, LSTM

encoder_vocab = 1000
decoder_vocab = 2000

encoder_embedding = Embedding(input_dim=encoder_vocab, output_dim=64)
encoder = LSTM(64, return_state=True, name="encoder")
decoder_embedding = Embedding(input_dim=decoder_vocab, output_dim=64)
decoder = LSTM(64, name="decoder")
dense = Dense(10)

rng = np.random.default_rng(0)
encoder_input = rng.integers(0, encoder_vocab, size=(8, 12))  # 8 sentences of 12 ids
decoder_input = rng.integers(0, decoder_vocab, size=(8, 9))

encoder_embedded = encoder_embedding(encoder_input)
output, state_h, state_c = encoder(encoder_embedded)  # return states in addition to output
encoder_state = [state_h, state_c]

decoder_embedded = decoder_embedding(decoder_input)
decoder_output = decoder(decoder_embedded, initial_state=encoder_state)  # the 2 states as initial state
output = dense(decoder_output)

# the guide's summary: output shapes with None for the batch and the sequence length, parameter counts
shapes = {encoder_embedding: encoder_embedding.compute_output_shape((None, None)),
          decoder_embedding: decoder_embedding.compute_output_shape((None, None))}
shapes[encoder] = encoder.compute_output_shape(shapes[encoder_embedding])
shapes[decoder] = decoder.compute_output_shape(shapes[decoder_embedding])
shapes[dense] = dense.compute_output_shape(shapes[decoder])
print(f" {'Layer (type)':<26}{'Output Shape':<40}Param #")
for layer, shape in shapes.items():
    name = f"{layer.name} ({type(layer).__name__})"
    shape = list(shape) if isinstance(shape[0], tuple) else shape  # several outputs: a list, as Keras prints
    print(f" {name:<26}{str(shape):<40}{layer.count_params()}")
total = sum(layer.count_params() for layer in shapes)
print(f"Total params: {total:,}")
print(f"Trainable params: {sum(w.size for layer in shapes for w in layer.trainable_weights):,}")
print("decoder output for 8 sentence pairs:", output.shape)
