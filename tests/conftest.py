"""Fixtures shared by several test files (plain helpers live in checks.py and problems.py)."""
import pytest


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls into fastrnn's torch bridge (proof that fastrnn's kernels ran, not Keras's loop).
    Imports torch only for the tests that ask for it."""
    import fastrnn._torch_autograd as bridge

    count = {"n": 0}
    real = bridge.rnn

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(bridge, "rnn", counting)
    return count
