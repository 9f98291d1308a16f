"""The threaded paths of the compiled engine (fastrnn/_kernels/_engine.pyx "threads", pool.h) against the
float64 reference: the batch split (B >= 2, forward and BPTT), the hidden-unit split (B == 1 forward,
and streaming), and the hoisted GEMMs split over the pool.  2 and 3 threads, so the parts are uneven
(B = 5 over 3 threads; H = 40 in 16-unit slices), with every option that changes the loop."""
import itertools
import time
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn import _dispatch, layers, reference
from fastrnn import functional as F
from fastrnn._native import engine
from fastrnn._spec import build_spec
from test_engine import VARIANT_IDS, VARIANTS, check_against_reference, make_case

OPTIONS = list(itertools.product(["none", "holes", "fully_masked_row"], [False, True], [False, True]))
# B == 1 (R of >= 32K multiply-adds, or >= 12K over >= 3M in the call) and B <= 4 split hidden units
# (B > 1 on the microkernel: float32 only), larger B split rows; (9, 1, 17, 120): the split for LSTM and
# GRU, one thread for SimpleRNN; (5, 1, 9, 184): large enough (G*H*H >= 32K) for every cell (LSTM and
# GRU on vector panels); (200, 1, 9, 64): 12-16K a step over a long call, for LSTM and GRU;
# (1, 1, 5, 34): too small to split;
# (4, 16, 9, 20) at 2 threads: 8 rows a part, the microkernel's 4 + 4 row blocks
SHAPES = [(9, 1, 17, 120), (5, 1, 9, 184), (200, 1, 9, 64), (1, 1, 5, 34), (6, 3, 17, 40), (5, 7, 9, 20), (4, 20, 9, 20),
          (4, 16, 9, 20)]


def expected_split(cell, extra, shape, dtype, dropout, threads):
    """The plan's rule, restated (fastrnn._dispatch.cpu_plan) for the inference call explain() describes."""
    T, B, I, H = shape
    units = not (cell == "gru" and not extra.get("reset_after", True))
    packable = dtype == np.float32 and T >= 2 and not (cell == "gru" and not extra.get("reset_after", True))
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    macs = G * H * H
    if units and ((B == 1 and (macs >= 32 * 1024 or (macs >= 12 * 1024 and T * macs >= 3 * 1024 * 1024)))
                  or (packable and 2 <= B <= 4)):
        return f"hidden-unit split over {threads} threads"
    return f"batch split over {threads} threads" if B >= 2 else "(1 thread)"


@pytest.fixture(params=[2, 3], ids=["2threads", "3threads"])
def threads(request):
    with fastrnn.threads(request.param):
        yield request.param


@pytest.fixture
def no_concat():
    """The plan without the concatenated product (an LSTM with a narrow input folds its projection into
    each step's product on AVX2: test_concatenated_product), for the tests of the other rules."""
    _dispatch.concat_product(False)
    yield
    _dispatch.concat_product(True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"t{t}-b{b}-h{h}" for t, b, _, h in SHAPES])
@pytest.mark.parametrize("mask,go_backwards,dropout", OPTIONS,
                         ids=[f"{m}-{'bw' if g else 'fw'}-{'drop' if d else 'nodrop'}" for m, g, d in OPTIONS])
def test_split_matches_reference(threads, shape, cell, extra, mask, go_backwards, dropout, dtype):
    """Outputs, states (inference and training forward) and every gradient, with the split the plan
    names for this shape."""
    T, B, I, H = shape
    rng = np.random.default_rng(zlib.crc32(repr((threads, shape, cell, extra, mask, go_backwards,
                                                 dropout)).encode()))
    args, kw = make_case(rng, cell, extra, T, B, I, H, mask=mask, init=True, dropout=dropout,
                         time_major=bool(rng.integers(2)), dtype=dtype)
    kw["go_backwards"] = go_backwards
    text = F.explain(cell, *args, **kw)
    assert expected_split(cell, extra, shape, dtype, dropout, threads) in text, text
    check_against_reference(cell, args, kw, np.dtype(dtype), rng)


def test_plans_follow_the_thread_count(no_concat):
    x1 = np.zeros((1, 4, 8), np.float32)
    x8 = np.zeros((4, 4, 8), np.float32)
    x40 = np.zeros((40, 4, 8), np.float32)
    W, R = np.zeros((8, 256), np.float32), np.zeros((64, 256), np.float32)
    W2, R2 = np.zeros((8, 512), np.float32), np.zeros((128, 512), np.float32)
    Ws, Rs = np.zeros((8, 128), np.float32), np.zeros((32, 128), np.float32)   # 4K multiply-adds a step
    with fastrnn.threads(1):
        for x in (x1, x8, x40):
            assert "(1 thread)" in F.explain("lstm", x, W, R)
    with fastrnn.threads(2):
        assert "hidden-unit split over 2 threads" in F.explain("lstm", x1, W2, R2)
        # too small a matvec to pay for a barrier a step (HIDDEN_SPLIT_MIN_MACS): one thread
        assert "(1 thread)" in F.explain("lstm", x1, Ws, Rs)
        assert "(1 thread)" in F.explain("lstm", x1, W, R)   # 16K a step, but a short call
        x300 = np.zeros((1, 300, 8), np.float32)
        assert "hidden-unit split over 2 threads" in F.explain("lstm", x300, W, R)   # 16K over 300 steps
        assert "packed-microkernel (hidden-unit split over 2 threads)" in F.explain("lstm", x8, W, R)
        assert "batch split over 2 threads" in F.explain("lstm", x40, W, R)
        assert "batch split over 2 threads" in F.explain("lstm", x8.astype(np.float64), W, R)
        assert "packed-microkernel (batch split over 2 threads)" in F.explain("lstm", x40[:16], W, R)
    from fastrnn._spec import build_spec

    with fastrnn.threads(2):  # training: B == 1 splits the BPTT's units too (R big enough), larger B rows
        assert _dispatch.cpu_plan(build_spec("lstm", x1, W2, R2)[0], training=True).backward_split == "hidden"
        assert _dispatch.cpu_plan(build_spec("lstm", x1, Ws, Rs)[0], training=True).backward_split == "serial"
        assert _dispatch.cpu_plan(build_spec("lstm", x1, W, R)[0], training=True).backward_split == "serial"
        assert _dispatch.cpu_plan(build_spec("lstm", x300, W, R)[0], training=True).backward_split == "hidden"
        assert _dispatch.cpu_plan(build_spec("lstm", x8, W, R)[0], training=True).backward_split == "batch"
    with fastrnn.threads(1):
        assert _dispatch.cpu_plan(build_spec("lstm", x1, W, R)[0], training=True).backward_split == "serial"
    gru_rb = dict(reset_after=False)
    with fastrnn.threads(2):  # two dependent products a step: no hidden split
        W3, R3 = np.zeros((8, 192), np.float32), np.zeros((64, 192), np.float32)
        assert "(1 thread)" in F.explain("gru", x1, W3, R3, **gru_rb)


def test_packed_plan_rules(no_concat):
    """Where the plan puts the per-step product on the packed microkernel (fastrnn._dispatch, PACK_*):
    forward at <= 32 rows a thread, or at any row count once G*H >= 512 columns or on AVX-512 (B == 1:
    on vector panels, from G*H >= 512); backward at 2 or more rows a thread; float32 with H <= 1024 only.
    Runs at each SIMD level this CPU has."""
    from fastrnn._spec import build_spec

    if engine.simd_level() < 1:
        pytest.skip("the packed microkernel needs AVX2/FMA")

    def plan(cell, B, H, dtype=np.float32, threads=2):
        G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
        x, W, R = np.zeros((B, 3, 4), dtype), np.zeros((4, G * H), dtype), np.zeros((H, G * H), dtype)
        b = np.zeros((2, G * H), dtype) if cell == "gru" else None
        return _dispatch.cpu_plan(build_spec(cell, x, W, R, b)[0], training=True, threads=threads)

    for level in range(1, engine.simd_level() + 1):
        engine.limit_simd(level)
        try:
            assert plan("lstm", 32, 64).forward_packed                          # 16 rows a thread
            assert plan("lstm", 64, 64).forward_packed                          # 32 rows
            assert plan("lstm", 66, 64).forward_packed == (level >= 2)          # 33 rows, G*H = 256
            assert plan("simple_rnn", 128, 256).forward_packed == (level >= 2)  # 64 rows, G*H = 256
            assert plan("simple_rnn", 64, 256, threads=1).forward_packed == (level >= 2)
            assert plan("lstm", 64, 64).backward_packed
        finally:
            engine.limit_simd(2)
    assert plan("lstm", 128, 128).forward_packed                    # G*H = 512
    assert plan("simple_rnn", 128, 512).forward_packed
    assert plan("gru", 64, 1024).forward_packed
    assert not plan("lstm", 64, 2048).forward_packed                # H > 1024
    assert not plan("lstm", 64, 2048).backward_packed
    assert not plan("lstm", 64, 512, np.float64).forward_packed
    assert plan("lstm", 200, 512, threads=1).forward_packed
    assert plan("lstm", 1, 128).forward_packed                      # B == 1: vector panels at G*H >= 512
    assert plan("lstm", 1, 128, threads=1).forward_packed
    assert not plan("gru", 1, 128).forward_packed                   # G*H = 384
    assert not plan("lstm", 1, 128).backward_packed                 # the B == 1 BPTT reads R's rows


def test_openblas_stays_on_one_thread():
    """One pool at a time: fastrnn's pool runs the parallel parts and OpenBLAS never starts its own."""
    x = np.random.default_rng(0).normal(size=(64, 20, 32)).astype(np.float32)
    W = np.ones((32, 256), np.float32) * 0.01
    R = np.ones((64, 256), np.float32) * 0.01
    for n in (2, 3, 1):
        with fastrnn.threads(n):
            out, states, backward = F.lstm_vjp(x, W, R)
            backward(np.ones_like(out))
            assert fastrnn.get_num_threads() == n
            assert engine.get_blas_threads() == 1



def test_openblas_pinned_again_after_threadpoolctl():
    """threadpoolctl's threadpool_limits(n, user_api="blas") (scikit-learn, the bench harness) sets every
    BLAS in the process, ours included: each engine entry pins OpenBLAS back to one thread, so a limit
    never puts OpenBLAS's pool inside ours (results unchanged)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = np.random.default_rng(1).normal(size=(16, 12, 24)).astype(np.float32)
    W = np.random.default_rng(2).normal(size=(24, 128)).astype(np.float32) * 0.1
    R = np.random.default_rng(3).normal(size=(32, 128)).astype(np.float32) * 0.1
    with fastrnn.threads(2):
        want, _ = F.lstm(x, W, R)
        with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
            limited = [i["num_threads"] for i in threadpoolctl.threadpool_info() if "scipy_openblas32" in i["filepath"]]
            got, _ = F.lstm(x, W, R)
            assert engine.get_blas_threads() == 1
            out, _, backward = F.lstm_vjp(x, W, R)
            backward(np.ones_like(out))
            assert engine.get_blas_threads() == 1
    assert limited in ([], [2]), limited   # where threadpoolctl lists our OpenBLAS, the limit did reach it
    np.testing.assert_array_equal(got, want)
    ref, _ = fastrnn.reference.lstm(x.astype(np.float64), W.astype(np.float64), R.astype(np.float64))
    np.testing.assert_allclose(got, ref, atol=1e-5)   # and right, against the float64 oracle
    time.sleep(0.2)   # the limit started OpenBLAS's worker, which spins ~2^28 cycles: not in the next tests

@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_gemm(threads, trans_a, trans_b, dtype):
    """gemm_into splits large products over the pool (by rows or by columns): same result as numpy
    and as the 1-thread call."""
    rng = np.random.default_rng(7)
    for M, N, K in [(1000, 48, 70), (33, 500, 300)]:  # split by rows, then by columns
        A = rng.normal(size=(K, M) if trans_a else (M, K)).astype(dtype)
        B = rng.normal(size=(N, K) if trans_b else (K, N)).astype(dtype)
        C0 = rng.normal(size=(M, N)).astype(dtype)
        want = (A.T if trans_a else A) @ (B.T if trans_b else B) + 0.5 * C0
        C = C0.copy()
        engine.gemm_into(A, B, C, trans_a, trans_b, 0.5)
        np.testing.assert_allclose(C, want, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-3)
        with fastrnn.threads(1):
            C1 = C0.copy()
            engine.gemm_into(A, B, C1, trans_a, trans_b, 0.5)
        np.testing.assert_allclose(C, C1, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_batch_parts_project_their_own_rows(threads, cell, dtype, no_concat):
    """The batch split of a batch-major forward computes each part's rows of xp = x @ W in the part's
    task (engine.forward, Job.proj): where fastrnn's microkernel projects (float32 at simd level 2) bit
    for bit the hoisted gemm_into's xp (each element sums its K in the same order), so outputs, states
    and gradients equal those of a workspace projected up front; on BLAS the order of a sum may depend on
    the block's rows (OpenBLAS's Haswell kernels, which Zen 3 runs: 1-2 ulp apart), so there within
    rounding.  B = 7 over 2 or 3 parts (uneven rows of <= 64: W read in place), B = 128 (parts that pack W)."""
    from fastrnn import _compiled
    from fastrnn._spec import build_spec

    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    rng = np.random.default_rng(threads)
    for B, T, I, H in [(7, 9, 17, 20), (128, 1, 5, 16), (128, 2, 24, 40)]:   # T = 1: gemm_into (one row a part)
        x = rng.standard_normal((B, T, I)).astype(dtype)
        W = (rng.standard_normal((I, G * H)) * 0.3).astype(dtype)
        R = (rng.standard_normal((H, G * H)) * 0.3).astype(dtype)
        b = (rng.standard_normal((2, G * H) if cell == "gru" else G * H) * 0.3).astype(dtype)
        spec, arrays = build_spec(cell, x, W, R, b)
        plan = _dispatch.cpu_plan(spec, training=False)
        assert plan.forward_split == "batch"
        got = {}
        for project in (True, False):
            ws = _compiled.Workspace(spec, arrays, training=False, project=project)
            engine.forward(ws, spec, plan)
            assert ws.projected
            got[project] = (ws.xp.copy(), ws.out.copy(), ws.hT.copy())
        for a, c in zip(got[True], got[False]):
            if dtype == np.float32 and engine.simd_level() >= 2:
                np.testing.assert_array_equal(a, c)
            else:
                np.testing.assert_allclose(a, c, rtol=0, atol=2e-6 if dtype == np.float32 else 1e-14)
        ref, _ = getattr(F, cell)(x.astype(np.float64), W, R, b, engine="reference")
        np.testing.assert_allclose(got[False][1].reshape(ref.shape), ref, atol=2e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("name,make", [("lstm", lambda: layers.LSTM(96)), ("gru", lambda: layers.GRU(112)),
                                       ("simple_rnn", lambda: layers.SimpleRNN(184, activation="relu"))],
                         ids=["lstm", "gru", "simple"])
def test_streaming_hidden_split(threads, name, make):
    """B == 1 streaming runs the hidden split with the input projection split too: equal to the whole
    sequence on 1 thread, over enough steps that both state buffers and the packing are exercised."""
    rng = np.random.default_rng(3)
    layer = make()
    x = rng.normal(size=(1, 12, 17)).astype(np.float32)
    layer(x)  # builds it
    kw = {"activation": "relu"} if name == "simple_rnn" else {}
    assert "hidden-unit split" in F.explain(name, x, layer.cell.kernel, layer.cell.recurrent_kernel, **kw)
    with fastrnn.threads(1):
        whole = layers.RNN(layer.cell, return_sequences=True)(x)
    stream = layer.stream(1)
    steps = np.stack([stream.step(x[:, t]) for t in range(12)], axis=1)
    np.testing.assert_allclose(steps, np.asarray(whole), atol=3e-6)
    stream.reset()
    again = np.stack([stream.step(x[:, t]) for t in range(12)], axis=1)
    np.testing.assert_array_equal(again, steps)


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("name,make", [("lstm", lambda: layers.LSTM(136)), ("gru", lambda: layers.GRU(200)),
                                       ("simple_rnn", lambda: layers.SimpleRNN(520, activation="relu")),
                                       ("lstm", lambda: layers.LSTM(40))],
                         ids=["lstm", "gru", "simple", "lstm-narrow"])
def test_streaming_on_vector_panels(nthreads, name, make):
    """A one-row stream (float32, AVX2) packs its weights into vector panels once, for its whole life
    (R when serial, each slice's R_k and W_k in the hidden split; LSTM(40) runs serial at every thread
    count, its last panel part padding): against the reference over the whole sequence and against the
    row-major stream (the packed toggle off), through both state buffers, a reset and a replay."""
    rng = np.random.default_rng(11)
    layer = make()
    x = rng.normal(size=(1, 12, 23)).astype(np.float32)
    layer(x)
    cell = layer.cell
    spec, _ = build_spec(name, x[:, :1], cell.kernel, cell.recurrent_kernel, cell.bias, **cell.sequence_kwargs())
    streams = {}
    with fastrnn.threads(nthreads):
        assert _dispatch.cpu_plan(spec, False, packs_kept=True).forward_packed == (engine.simd_level() >= 1)
        assert not _dispatch.cpu_plan(spec, False).forward_packed   # a T = 1 call does not pack
        for packed in (False, True):
            _dispatch.packed_gemm(packed)
            try:
                streams[packed] = layer.stream(1)
            finally:
                _dispatch.packed_gemm(True)
        steps = {p: np.stack([s.step(x[:, t]) for t in range(12)], axis=1) for p, s in streams.items()}
        streams[True].reset()
        again = np.stack([streams[True].step(x[:, t]) for t in range(12)], axis=1)
    w64 = [a.astype(np.float64) for a in (x, cell.kernel, cell.recurrent_kernel, cell.bias)]
    ref, _ = getattr(F, name)(*w64, engine="reference", **cell.sequence_kwargs())
    np.testing.assert_allclose(steps[True], ref, atol=3e-5)
    np.testing.assert_allclose(steps[True], steps[False], atol=1e-5)
    np.testing.assert_array_equal(again, steps[True])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hidden_split_buffers_are_whole_and_line_aligned(dtype):
    """The hidden split's per-slice buffers hold what their strides say and start on a cache line.
    (Under cdivision the alignment offset came out negative for a misaligned allocation, and the
    buffers were empty slices whose data pointer lay past the end of their memory.)"""
    from fastrnn._kernels._engine import _HSplitBuffers, _empty_aligned

    for n in (1, 3, 16, 1000, 1 << 20):
        for _ in range(4):   # fresh allocations, aligned or not
            a = _empty_aligned(n, dtype)
            assert a.size == n and a.dtype == dtype and a.ctypes.data % 64 == 0
    for B, H, G, nslices, panels in ((1, 512, 4, 2, True), (3, 34, 3, 3, True), (1, 200, 1, 2, False)):
        bufs = _HSplitBuffers(B, H, G, nslices, dtype, panels and dtype == np.float32)
        assert bufs.pk.size == bufs.pk_stride * nslices and bufs.vec.size == bufs.vec_stride * nslices
        assert bufs.pk.ctypes.data % 64 == 0 and bufs.vec.ctypes.data % 64 == 0


def test_packed_toggle_is_a_plan_input():
    x = np.zeros((4, 5, 8), np.float32)
    W, R = np.zeros((8, 64), np.float32), np.zeros((16, 64), np.float32)
    assert _dispatch.packed_gemm()
    with fastrnn.threads(1):
        assert "packed-microkernel" in F.explain("lstm", x, W, R) or engine.simd_level() == 0
        _dispatch.packed_gemm(False)
        try:
            assert "packed-microkernel" not in F.explain("lstm", x, W, R)
        finally:
            _dispatch.packed_gemm(True)


def test_results_do_not_depend_on_which_workers_turn_up():
    """Workers that do not check in in time (another pool spinning on their core, here torch's) are left
    out of a call (pool.h); the plan's partition stays, so results are bit-identical to a quiet run."""
    import threading

    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    cases = [make_case(rng, "lstm", {}, 30, B, 17, 96, mask="holes", init=True, dtype=np.float32)
             for B in (1, 3, 24)]
    with fastrnn.threads(2):
        quiet = [F.lstm(*args, **kw)[0] for args, kw in cases]
        stop = threading.Event()

        def busy():  # keeps torch's intra-op threads working and spinning meanwhile
            a = torch.randn(256, 256)
            while not stop.is_set():
                a @ a

        noise = threading.Thread(target=busy)
        noise.start()
        try:
            for _ in range(20):
                for (args, kw), want in zip(cases, quiet):
                    np.testing.assert_array_equal(F.lstm(*args, **kw)[0], want)
        finally:
            stop.set()
            noise.join()


def _forked_lstm(cases, queue):
    with fastrnn.threads(2):
        queue.put([F.lstm(*args, **kw)[0] for args, kw in cases])


def test_pool_works_in_a_forked_child():
    """A child forked after the pool started (torch DataLoader workers, multiprocessing's fork) has none
    of the parent's worker threads: the pool starts afresh there instead of waiting for them."""
    import multiprocessing

    rng = np.random.default_rng(12)
    cases = [make_case(rng, "lstm", {}, 20, B, 17, 96, mask="holes", init=True, dtype=np.float32)
             for B in (1, 6)]  # a team task (hidden split) and a parts task (batch split)
    with fastrnn.threads(2):
        want = [F.lstm(*args, **kw)[0] for args, kw in cases]  # the parent's pool is running now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_lstm, args=(cases, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _team_probe(threads, rounds, sleep_us=0, work_ns=1_000_000, seconds=2.0):
    """engine._pool_probe until a team of `threads` ran, for at most `seconds` (a worker that misses
    its check-in, is asleep, or is in a stall guard's solo period leaves the call to the caller alone;
    retried so the test does not depend on the OS's timing).  work_ns: the task's estimated time (below
    a wake-up: a small task, pool.h)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if engine._pool_probe(threads, rounds, sleep_us, work_ns) == threads:
            return True
    return False


def test_stall_guard_runs_alone_after_a_stalled_team_then_tries_again():
    """pool.h, "Stall guard": a team task whose member is late at every barrier (as if the OS had taken
    its core) makes the next calls run on the caller alone; after the solo period the team runs again,
    and clean team tasks wind the guard down."""
    with fastrnn.threads(2):
        for _ in range(200):   # clean team tasks wind down any solo period left from earlier tests (or
            _team_probe(2, 20)  # from a team the OS stalled just now, on a busy machine)
            if engine.pool_stats()["backoff_calls"] == 0:
                break
        assert engine.pool_stats()["backoff_calls"] == 0
        assert _team_probe(2, 8, sleep_us=300), "no team of 2 ran the stalled task"
        stats = engine.pool_stats()
        assert stats["backoff_calls"] >= 2
        assert engine._pool_probe(2, 4) == 1                 # alone now: the guard's solo period
        assert engine.pool_stats()["solo_calls"] == stats["solo_calls"] + 1
        for _ in range(50):   # the team is tried again, and clean runs wind the guard down (a busy
            assert _team_probe(2, 20)   # machine may stall one of them and double it first)
            if engine.pool_stats()["backoff_calls"] < stats["backoff_calls"]:
                break
        assert engine.pool_stats()["backoff_calls"] < stats["backoff_calls"]


def _adaptive_calls(calls, work_ns, busy_ns, team_ns=0):
    """(team runs, runs alone by the adaptive choice) of `calls` adaptive probes of one kind (work_ns),
    each 10 rounds of busy_ns work shared by the threads, plus team_ns more per thread in a team."""
    before = engine.pool_stats()["adaptive_solo_calls"]
    teams = sum(engine._pool_probe(2, 10, 0, work_ns, busy_ns, team_ns, adaptive=True) == 2 for _ in range(calls))
    return teams, engine.pool_stats()["adaptive_solo_calls"] - before


def test_adaptive_team_runs_alone_while_one_thread_is_faster_and_returns_when_the_team_wins():
    """pool.h, fr_pool_run_adaptive (the hidden split's calls): a kind of task whose team is slower than
    one thread runs mostly alone; once its team is faster again it runs as a team, alone only for the
    periodic solo call; kinds are kept apart (work_ns); switched off, it always asks for the team."""
    kind = 7_654_321   # ns: this test's own kinds of task (work_ns keys the pool's statistics)
    with fastrnn.threads(2):
        assert engine.adaptive_team()
        assert _team_probe(2, 4), "no team of 2 ran"
        # a team 30 us a round against 20 alone: at most a few team calls in 200
        teams, alone = _adaptive_calls(200, kind, busy_ns=20_000, team_ns=20_000)
        assert alone >= 120, (teams, alone)
        # another kind meanwhile: its own statistics, a team that wins (10 us a round against 40)
        teams, alone = _adaptive_calls(200, kind + 1, busy_ns=40_000)
        assert teams >= 120 and alone <= 40, (teams, alone)
        # the first kind, its team now faster: back to the team after at most one solo period
        teams, alone = _adaptive_calls(200, kind, busy_ns=40_000)
        assert teams >= 100, (teams, alone)
        before = engine.adaptive_team(False)
        try:
            assert before and not engine.adaptive_team()
            teams, alone = _adaptive_calls(50, kind + 2, busy_ns=20_000, team_ns=20_000)
            assert alone == 0, alone
        finally:
            engine.adaptive_team(True)


def test_small_task_runs_alone_while_workers_sleep_then_wakes_them_for_back_to_back_calls():
    """pool.h: a small team task (a streaming step) that finds every worker asleep runs on the caller at
    once, without a wake-up when the calls are far apart; back-to-back calls wake them, and a team runs
    again."""
    small = 1000   # ns: far below a wake-up (pool.c: under FR_POOL_CHECKIN_MIN_NS)
    with fastrnn.threads(2):
        for _ in range(200):   # the worker exists, and no stall-guard solo period is left (see above)
            _team_probe(2, 20)
            if engine.pool_stats()["backoff_calls"] == 0:
                break
        assert engine.pool_stats()["backoff_calls"] == 0
        for _ in range(20):   # the worker goes to sleep 1 ms after its last task (FR_POOL_SPIN_NS)
            time.sleep(0.02)
            before = engine.pool_stats()["asleep_calls"]
            assert engine._pool_probe(2, 4, work_ns=small) == 1
            if engine.pool_stats()["asleep_calls"] == before + 1:
                break
        else:
            pytest.fail("a small task never found the worker asleep")
        # it was not woken (the call came long after the last one): the next small call finds it asleep
        time.sleep(0.02)
        before = engine.pool_stats()["asleep_calls"]
        assert engine._pool_probe(2, 4, work_ns=small) == 1
        assert engine.pool_stats()["asleep_calls"] == before + 1
        # back to back: that call woke it, so a team of 2 runs the small task again soon
        assert _team_probe(2, 4, work_ns=small), "back-to-back small tasks never ran as a team again"


def _forked_small_tasks(queue):
    with fastrnn.threads(2):
        engine._pool_probe(2, 4)   # the child's own worker starts (a large task: it waits for it)
        queue.put(_team_probe(2, 4, work_ns=1000))


def test_small_tasks_run_as_a_team_in_a_forked_child():
    """The pool's count of sleeping workers starts afresh in a forked child too: a stale count of the
    parent's sleepers would send every small task of the child to the caller alone."""
    import multiprocessing

    with fastrnn.threads(2):
        _team_probe(2, 4)
    time.sleep(0.05)   # the parent's worker is asleep when the child is forked
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_small_tasks, args=(queue,))
    child.start()
    teamed = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert teamed, "back-to-back small tasks in the child never ran as a team"


@pytest.mark.parametrize("build", ["portable", "simd"])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("cell,extra", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("B,H", [(1, 184), (5, 40), (1, 17)], ids=["b1-hidden", "b5-batch", "b1-serial"])
def test_bias_gradient_on_every_path_and_build(build, nthreads, cell, extra, B, H):
    """The backward sums the bias gradient inside its loop (fr_colsum_add: the batch split's parts in
    part order, the hidden split's T rows after it), on the portable and the SIMD build of the sums:
    against the float64 reference, with holes in the mask (zero gate-gradient rows)."""
    T, I = 11, 9
    rng = np.random.default_rng(zlib.crc32(repr((build, nthreads, cell, extra, B, H)).encode()))
    G = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    two = cell == "gru" and extra.get("reset_after", True)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    W = (rng.standard_normal((I, G * H)) * 0.3).astype(np.float32)
    R = (rng.standard_normal((H, G * H)) * 0.5 / np.sqrt(H)).astype(np.float32)
    b = (rng.standard_normal((2, G * H) if two else (G * H,)) * 0.1).astype(np.float32)
    mask = rng.random((B, T)) > 0.25
    d = rng.standard_normal((B, T, H)).astype(np.float32)
    engine.force_scalar(build == "portable")
    try:
        with fastrnn.threads(nthreads):
            got = getattr(F, cell + "_vjp")(x, W, R, b, mask=mask, **extra)[2](d)["bias"]
    finally:
        engine.force_scalar(False)
    ref = getattr(reference, cell + "_vjp")(x.astype(np.float64), W, R, b, mask=mask, **extra)[2](
        d.astype(np.float64))["bias"]
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("threads_n", [1, 2])
def test_concatenated_product(threads_n):
    """An LSTM with a narrow input (I <= CONCAT_MAX_I, [W; R] within CONCAT_MAX_BYTES), B >= 2, on AVX2:
    each step's product is [x_t | h_d] @ [W; R] on the microkernel, no hoisted projection
    (plan.forward_concat; _engine.pyx "Concatenated product").  Not for GRU or SimpleRNN, wide inputs
    or one row.  Its outputs and states match the hoisted path's to float32 rounding and the float64
    reference, with masks, go_backwards and time_major; its training forward gives the inference
    forward's bits, and the gradients match the reference."""
    if engine.simd_level() < 1:
        pytest.skip("the concatenated product runs on the AVX2 build (simd level 1)")
    rng = np.random.default_rng(threads_n)
    engine.limit_simd(1)   # planned at level 1 only: an AVX-512 CPU runs the AVX2 build for the test
    try:
        _check_concatenated_product(threads_n, rng)
    finally:
        engine.limit_simd(2)


def _check_concatenated_product(threads_n, rng):
    with fastrnn.threads(threads_n):
        def plan(cell, B, I, H, G=4):
            x, W, R = (np.zeros((B, 5, I), np.float32), np.zeros((I, G * H), np.float32),
                       np.zeros((H, G * H), np.float32))
            return _dispatch.cpu_plan(build_spec(cell, x, W, R)[0], training=False)

        assert plan("lstm", 7, 17, 34).forward_concat
        assert "concatenated-projection" in F.explain("lstm", np.zeros((7, 5, 17), np.float32),
                                                      np.zeros((17, 136), np.float32), np.zeros((34, 136), np.float32))
        assert not plan("lstm", 1, 17, 34).forward_concat               # one row: vecmat
        assert not plan("lstm", 7, _dispatch.CONCAT_MAX_I + 1, 34).forward_concat
        assert not plan("lstm", 7, 64, 256).forward_concat              # [W; R] beyond CONCAT_MAX_BYTES
        assert not plan("gru", 7, 17, 34, G=3).forward_concat
        assert not plan("simple_rnn", 7, 17, 34, G=1).forward_concat
        for B, T, I, H, mask, tm in [(7, 9, 17, 34, "holes", False), (40, 6, 9, 20, "none", True),
                                     (3, 1, 5, 16, "fully_masked_row", False)]:
            args, kw = make_case(rng, "lstm", {}, T, B, I, H, mask=mask, init=True, time_major=tm,
                                 dtype=np.float32)
            kw["go_backwards"] = bool(B % 2)
            got, got_states = F.lstm(*args, **kw)
            out, states, backward = F.lstm_vjp(*args, **kw)
            for a, c in zip([got, *got_states], [out, *states]):
                np.testing.assert_array_equal(a, c)   # training forward: the same numbers
            _dispatch.concat_product(False)
            try:
                hoisted, hoisted_states = F.lstm(*args, **kw)
            finally:
                _dispatch.concat_product(True)
            for a, c in zip([got, *got_states], [hoisted, *hoisted_states]):
                np.testing.assert_allclose(a, c, rtol=0, atol=2e-6)
            check_against_reference("lstm", args, kw, np.dtype(np.float32), rng)
