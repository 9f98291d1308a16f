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


@pytest.fixture(params=["avx2", "avx512"])
def packed_build(request):
    """Runs the test once per build of the packed recurrent products this CPU can run (simd_level 1:
    gates_avx2.c, 2: gemm_avx512.c), capping the level for its duration; skips the others."""
    from fastrnn._native import engine

    want = {"avx2": 1, "avx512": 2}[request.param]
    if engine.simd_level() < want:
        pytest.skip(f"this CPU cannot run the {request.param} build (simd_level() is {engine.simd_level()})")
    engine.limit_simd(want)
    assert engine.simd_level() == want
    yield request.param
    engine.limit_simd(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch.nn's reference on one thread for a module's tests (use with ``pytestmark``): its OpenMP pool
    stalls when the cores are shared (tiny sizes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
