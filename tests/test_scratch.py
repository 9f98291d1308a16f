"""fastrnn/_scratch.py: big temporary buffers reused between calls, never shared by two calls in
flight; and the compiled calls that borrow them (inference xp, backward dxp/drec) stay exact."""
import threading

import numpy as np
import pytest

from fastrnn import _scratch
from fastrnn import functional as F
from fastrnn import reference

MiB = 1 << 20


@pytest.fixture(autouse=True)
def empty_pool():
    _scratch.clear()
    yield
    _scratch.clear()


def test_take_give_reuse_and_limits():
    a, ta = _scratch.take((256, 1024), np.float32)          # exactly 1 MiB: pooled
    b, tb = _scratch.take((256, 1024), np.float32)
    assert a.shape == (256, 1024) and a.dtype == np.float32 and ta is not None
    assert not np.shares_memory(a, b), "two buffers in flight must not overlap"
    _scratch.give(ta)
    c, tc = _scratch.take((_scratch.MIN_BYTES // 8 - 1,), np.float64)   # below MIN_BYTES: plain np.empty
    assert tc is None and _scratch.idle_bytes() == MiB
    e, te = _scratch.take((MiB // 2 - 1,), np.uint8)          # under half the idle 1 MiB: not that one
    assert te is not None and te is not ta and _scratch.idle_bytes() == MiB
    _scratch.give(te)
    _scratch.clear()
    _scratch.give(ta)
    d, td = _scratch.take((128, 1024), np.float64)           # fits the idle 1 MiB buffer: reused
    assert td is ta and np.shares_memory(d, a) and _scratch.idle_bytes() == 0
    for t in (tb, td):
        _scratch.give(t)
    big, tbig = _scratch.take((3 * MiB,), np.uint8)
    _scratch.give(tbig)
    assert _scratch.idle_bytes() == 2 * MiB + 3 * MiB        # all three kept (KEEP, MAX_IDLE_BYTES)
    _scratch.give(_scratch.take((2 * MiB,), np.uint8)[1])   # takes the 3 MiB one (best fit), gives it back
    assert _scratch.idle_bytes() == 2 * MiB + 3 * MiB
    huge, th = _scratch.take((_scratch.MAX_BYTES // 4 + 1,), np.float32)
    assert th is None                                        # above MAX_BYTES: not pooled
    _scratch.give(None)


def test_a_finalizer_may_give_back_while_the_pool_is_locked():
    """give_all (the training workspace's finalizer) never takes the pool's lock: the cyclic garbage
    collector may run it while this thread holds the lock inside take or give."""
    token = _scratch.take((2 * MiB,), np.uint8)[1]
    with _scratch._lock:
        _scratch.give_all([token, None])   # would deadlock if it waited for the lock
    assert _scratch.idle_bytes() == 2 * MiB
    again = _scratch.take((2 * MiB,), np.uint8)[1]
    assert again is token


def test_idle_limits_keep_the_largest(monkeypatch):
    monkeypatch.setattr(_scratch, "KEEP", 2)
    tokens = [_scratch.take((n * MiB,), np.uint8)[1] for n in (1, 3, 2)]
    _scratch.give_all(tokens)
    assert _scratch.idle_bytes() == 3 * MiB + 2 * MiB        # KEEP = 2: the two largest stay
    _scratch.clear()
    monkeypatch.setattr(_scratch, "KEEP", 8)
    monkeypatch.setattr(_scratch, "MAX_IDLE_BYTES", 4 * MiB)
    _scratch.give_all([_scratch.take((n * MiB,), np.uint8)[1] for n in (1, 3, 2)])
    assert _scratch.idle_bytes() == 3 * MiB                  # 3 + 2 would pass the byte limit: 2 and 1 go


def _problem(rng, cell, B=8, T=96, I=24, H=128):
    G = {"lstm": 4, "gru": 3}[cell]
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    W = (rng.standard_normal((I, G * H)) * 0.2).astype(np.float32)
    R = (rng.standard_normal((H, G * H)) * 0.2).astype(np.float32)
    b = (rng.standard_normal((2, G * H) if cell == "gru" else (G * H,)) * 0.1).astype(np.float32)
    return x, W, R, b


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_consecutive_calls_through_pooled_buffers_match_the_reference(cell):
    """xp of (B*T, G*H) = (768, 384 or 512) float32 is >= 1 MiB: the inference forward and the backward borrow
    pooled buffers; new inputs in the same buffers must give the reference's answers every time."""
    rng = np.random.default_rng(2)
    fn, vjp = getattr(F, cell), getattr(F, cell + "_vjp")
    for _ in range(3):
        x, W, R, b = _problem(rng, cell)
        out, states = fn(x, W, R, b)
        assert _scratch.idle_bytes() >= MiB, "the forward's xp should be back in the pool"
        ref, ref_states = getattr(reference, cell)(x.astype(np.float64), W, R, b)
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
        np.testing.assert_allclose(states[0], ref_states[0], rtol=0, atol=2e-5)
        d = rng.standard_normal(out.shape).astype(np.float32)
        _, _, backward = vjp(x, W, R, b)
        grads = backward(d)
        _, _, ref_backward = getattr(reference, cell + "_vjp")(x.astype(np.float64), W, R, b)
        ref_grads = ref_backward(d.astype(np.float64))
        for key in ("x", "kernel", "recurrent_kernel", "bias"):
            scale = np.abs(ref_grads[key]).max()
            np.testing.assert_allclose(grads[key], ref_grads[key], rtol=0, atol=1e-4 * scale, err_msg=key)


def test_concurrent_calls_never_share_a_buffer():
    """Python threads calling the compiled forward at once (the GIL is released in the loops) each get
    their own xp: every thread's results equal the same call made alone."""
    rng = np.random.default_rng(4)
    problems = [_problem(rng, "lstm") for _ in range(4)]
    alone = [F.lstm(*p)[0] for p in problems]
    for p, out in zip(problems, alone):
        ref, _ = reference.lstm(p[0].astype(np.float64), *p[1:])
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
    got = [[] for _ in problems]

    def work(i):
        for _ in range(5):
            got[i].append(F.lstm(*problems[i])[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in enumerate(got):
        assert len(outs) == 5
        for out in outs:
            np.testing.assert_array_equal(out, alone[i])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_buffers_return_to_the_pool_and_stale_contents_never_leak(cell):
    """forward_vjp borrows its saved sequences (gates, hp, cp, aux) from the pool and hands them back
    when its backward closure is collected.  Buffers full of NaN in the pool, a mask with holes and a
    fully masked row (steps that leave saved rows unwritten): the gradients still match the reference."""
    rng = np.random.default_rng(7)
    x, W, R, b = _problem(rng, cell, T=300)   # hp, cp, aux (2400, 128) float32: 1.2 MiB, pooled too
    B, T = x.shape[:2]
    mask = rng.random((B, T)) > 0.3
    mask[0] = False
    poison = []
    N, GH, H = B * T, R.shape[1], R.shape[0]
    for k in range(_scratch.KEEP):   # the sizes the call asks for (a buffer serves up to MAX_SLACK x less)
        raw, token = _scratch.take((N, GH if k % 2 else H), np.float32)
        raw[...] = np.nan
        poison.append(token)
    _scratch.give_all(poison)
    vjp = getattr(F, cell + "_vjp")
    _, _, ref_backward = getattr(reference, cell + "_vjp")(x.astype(np.float64), W, R, b, mask=mask)
    d = rng.standard_normal((B, T, R.shape[0])).astype(np.float32)
    ref_grads = ref_backward(d.astype(np.float64))
    for _ in range(2):
        idle = _scratch.idle_bytes()
        out, _, backward = vjp(x, W, R, b, mask=mask)
        assert _scratch.idle_bytes() < idle, "the training forward should borrow from the pool"
        grads = backward(d)
        for key in ("x", "kernel", "recurrent_kernel", "bias"):
            assert np.isfinite(grads[key]).all(), key
            scale = np.abs(ref_grads[key]).max()
            np.testing.assert_allclose(grads[key], ref_grads[key], rtol=0, atol=1e-4 * scale, err_msg=key)
        held = _scratch.idle_bytes()
        del backward
        assert _scratch.idle_bytes() > held, "collecting the closure should return its buffers"


def test_a_result_comes_back_only_when_every_view_is_gone():
    a = _scratch.take_result((300, 1024), np.float32, align=64)
    assert a.shape == (300, 1024) and a.flags.writeable and a.flags.c_contiguous
    assert a.__array_interface__["data"][0] % 64 == 0
    views = [a[7:9], a.T, a.reshape(-1)[::3], np.asarray(a)]
    del a
    gc_and_settle = _scratch.idle_bytes   # (settles the finalizers' returns)
    assert gc_and_settle() == 0
    views.pop()
    views.pop(0)
    assert gc_and_settle() == 0, "a view still alive must keep the buffer out of the pool"
    views.clear()
    assert gc_and_settle() >= 300 * 1024 * 4
    small = _scratch.take_result((3, 5), np.float64, align=64)   # below MIN_BYTES: not pooled, aligned
    assert small.__array_interface__["data"][0] % 64 == 0 and small.shape == (3, 5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_results_kept_by_the_caller_survive_later_calls(cell):
    """Outputs and gradients come from take_result: a later call never writes over the ones a caller
    still holds, and dropped ones are reused (each array's values are checked against a fresh copy)."""
    rng = np.random.default_rng(11)
    x, W, R, b = _problem(rng, cell, T=100)
    vjp = getattr(F, cell + "_vjp")
    kept = []
    for i in range(4):
        xi = x * (1 + 0.1 * i)
        out, _, backward = vjp(xi, W, R, b)
        grads = backward(np.ones_like(out))
        kept.append((out, grads["x"], grads["kernel"], grads["recurrent_kernel"]))
        kept.append(tuple(a.copy() for a in kept[-1]))
        if i == 1:
            del kept[:2]   # the first call's results dropped: their memory is reused from here on
    for held, copies in zip(kept[::2], kept[1::2]):
        for a, c in zip(held, copies):
            np.testing.assert_array_equal(a, c)
