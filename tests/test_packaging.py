"""Packaging contracts: a missing extension is one clear ImportError; the package re-exports its API."""
import shutil
import subprocess
import sys
from pathlib import Path

import fastrnn


def test_missing_extension_gives_a_clear_import_error(tmp_path):
    src = Path(fastrnn.__file__).parent
    shutil.copytree(src, tmp_path / "fastrnn", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    proc = subprocess.run([sys.executable, "-c", "import fastrnn"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastrnn's compiled CPU engine could not be loaded"), last
    assert "pip install" in last


def test_public_api():
    for name in ("functional", "layers", "reference", "explain", "from_torch", "to_torch", "set_num_threads",
                 "get_num_threads", "threads", "__version__"):
        assert hasattr(fastrnn, name), name
    for name in ("lstm", "gru", "simple_rnn", "lstm_vjp", "gru_vjp", "simple_rnn_vjp", "explain"):
        assert callable(getattr(fastrnn.functional, name)), name
        if name != "explain":
            assert callable(getattr(fastrnn.reference, name)), name


def test_explain_names_the_kernel():
    import numpy as np

    x = np.zeros((1, 3, 2), np.float32)
    text = fastrnn.functional.explain("gru", x, np.zeros((2, 12)), np.zeros((4, 12)), reset_after=True)
    assert "compiled gru/reset_after/float32/simd-vecmat" in text
    text = fastrnn.functional.explain("lstm", x, np.zeros((2, 16)), np.zeros((4, 16)), engine="reference")
    assert "numpy reference" in text and "engine='reference'" in text


def test_top_level_explain():
    import numpy as np
    import pytest

    x = np.zeros((2, 3, 4), np.float32)
    text = fastrnn.explain(fastrnn.layers.Bidirectional(fastrnn.layers.LSTM(3)), x)
    assert text.count("compiled kernels") == 2 and "forward_lstm" in text and "backward_lstm" in text
    text = fastrnn.explain(fastrnn.layers.GRU(3, activation=lambda v: np.tanh(v)), x)
    assert "generic Python loop" in text and "callable activation" in text
    with pytest.raises(TypeError, match="RNN layer"):
        fastrnn.explain(fastrnn.layers.Dense(3), x)
