"""Every script in examples/ runs (in a subprocess, as a user would run it) and prints the guide's numbers."""
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

#: script -> strings its output must contain (the guide's parameter counts and shapes)
EXPECTED = {
    "01_builtin_layers.py": ["Total params: 164,106", "Total params: 361,866", "(None, None, 64)", "64000",
                             "(None, 128)", "98816", "(None, None, 256)", "247296", "49280", "1290",
                             "Non-trainable params: 0", "output shape: (32, 10)"],
    "02_outputs_and_states.py": ["(4, 32)", "(4, 7, 32)", "output equals state_h: True",
                                 "last output equals state_h: True"],
    "03_encoder_decoder.py": ["Total params: 258,698", "64000", "128000", "33024", "650",
                              "[(None, 64), (None, 64), (None, 64)]", "(8, 10)"],
    "04_cells_vs_layers.py": ["params 760 vs 760", "params 600 vs 600", "params 190 vs 190", "same numbers: True"],
    "05_cross_batch_statefulness.py": ["equals one pass over the 30 steps: True",
                                       "first chunk again gives the first output again: True", "batch size 20"],
    "06_state_reuse.py": ["existing_state: [(20, 64), (20, 64)]", "third chunk: True"],
    "07_bidirectional.py": ["Total params: 80,266", "(None, 5, 128)", "38400", "(None, 64)", "41216",
                            "merge_mode=None: [(3, 5, 8), (3, 5, 8)]", "merge_mode='concat': (3, 5, 16)"],
    "08_digits_classifier.py": ["Predicted result is:", "target result is:", "Total params: 19,594",
                                "Non-trainable params: 128"],
    "10_train_digits_keras_and_torch.py": ["keras.layers.LSTM", "fastrnn.keras.LSTM", "torch.nn.LSTM",
                                           "fastrnn.torch.LSTM", "ms per epoch"],
    "11_nested_cell_fit.py": ["outputs: [(None, 10), (None, 20, 30)]", "params: 1229120", "epoch 1 loss"],
    "09_nested_cell.py": ["outputs: [(64, 10), (64, 20, 30)]", "params: 1229120",
                          "last output_1 equals input_1[:, -1] @ kernel_1: True",
                          "final state_1 equals the sum over steps: True"],
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py")) == sorted(EXPECTED)


TRAINING = "10_train_digits_keras_and_torch.py"  # checked by its own test below
NESTED_FIT = "11_nested_cell_fit.py"  # likewise, on less data than the guide's 10 batches of 50 steps


def run_example(script, *args):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    for text in EXPECTED[script]:
        assert text in proc.stdout, f"{script}: {text!r} not in its output:\n{proc.stdout}"
    return proc


@pytest.mark.parametrize("script", sorted(set(EXPECTED) - {TRAINING, NESTED_FIT}))
def test_example_runs(script):
    proc = run_example(script)
    assert "False" not in proc.stdout, f"{script}: a check printed False:\n{proc.stdout}"


def test_training_example_reaches_the_stock_accuracy():
    """fastrnn's drop-in LSTMs train to the stock layers' test accuracy from the same initial weights."""
    proc = run_example(TRAINING, "--epochs", "2")  # short in CI
    acc = {line.split()[0]: float(line.split()[-1]) for line in proc.stdout.splitlines() if "test accuracy" in line}
    assert abs(acc["keras.layers.LSTM"] - acc["fastrnn.keras.LSTM"]) <= 0.02, acc
    assert abs(acc["torch.nn.LSTM"] - acc["fastrnn.torch.LSTM"]) <= 0.02, acc


def test_nested_cell_model_fits_and_its_loss_goes_down():
    """The guide's NestedCell model (fastrnn.keras.RNN) trains with model.fit: the loss falls each epoch."""
    proc = run_example(NESTED_FIT, "--epochs", "3", "--batches", "2", "--timestep", "5")
    losses = [float(line.split()[-1]) for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0], proc.stdout
    assert "loss went down every epoch: True" in proc.stdout
