"""The torch bridge's fast paths (fastrnn/_torch_autograd.py, bench/NOTES.md 39), each against an oracle
that is not the path itself: engine.transpose_into against NumPy's transpose; tasks on torch's OpenMP team
(the pool's host runtime) against fastrnn's own workers, bit for bit, and the float64 reference; weight
gradients computed transposed against the plain ones; the eager autograd path against the custom ops
(torch.func.vjp takes those) and against torch.nn."""
import sys

import numpy as np
import pytest

from checks import assert_close

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from fastrnn import _compiled, _torch_autograd, reference  # noqa: E402
from fastrnn._native import engine  # noqa: E402
from fastrnn._spec import build_spec  # noqa: E402

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


@pytest.fixture(params=[0, 1, 2])
def simd(request):
    """The transpose's builds: 0 portable, 1 AVX2 8 x 8 blocks, 2 AVX-512 16 x 16 (skipped where the CPU
    lacks them)."""
    if engine.simd_level() < request.param:
        pytest.skip(f"simd_level() is {engine.simd_level()}")
    engine.limit_simd(request.param)
    yield request.param
    engine.limit_simd(2)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# (130, 520), (1030, 70), (16, 4100): past TRANSPOSE_SPLIT_MIN_BYTES in float32, so split over the pool
# (1030 rows: parts of whole 16-row strips and a short last one; 16 rows: one strip, no split)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (8, 8), (16, 16), (31, 33), (64, 17), (48, 80),
                                   (130, 520), (1030, 70), (16, 4100)])
def test_transpose_into_matches_numpy(shape, dtype, threads, simd):
    assert (130 * 520 * 4 >= engine.TRANSPOSE_SPLIT_MIN_BYTES and 1030 * 70 * 4 >= engine.TRANSPOSE_SPLIT_MIN_BYTES
            and 16 * 4100 * 4 >= engine.TRANSPOSE_SPLIT_MIN_BYTES)
    with fastrnn.threads(threads):
        _check_transpose(shape, dtype)


def _check_transpose(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    src = rng.standard_normal(shape).astype(dtype)
    dst = np.full(shape[::-1], np.nan, dtype)
    engine.transpose_into(src, dst)
    np.testing.assert_array_equal(dst, src.T)
    # rows further apart than their length, both sides (a column block of a wider array)
    wide = rng.standard_normal((shape[0], shape[1] + 7)).astype(dtype)
    out = np.full((shape[1], shape[0] + 5), 7.0, dtype)
    engine.transpose_into(wide[:, 3:3 + shape[1]], out[:, :shape[0]])
    np.testing.assert_array_equal(out[:, :shape[0]], wide[:, 3:3 + shape[1]].T)
    assert (out[:, shape[0]:] == 7.0).all()


def test_transpose_into_refuses_bad_arguments():
    a = np.zeros((3, 4), np.float32)
    for bad, match in (((a, np.zeros((3, 4), np.float32)), "transpose shape"),
                       ((a, np.zeros((4, 3), np.float64)), "one dtype"),
                       ((a.astype(np.int32), np.zeros((4, 3), np.int32)), "float32 or float64"),
                       ((np.zeros((3, 8), np.float32)[:, ::2], np.zeros((4, 3), np.float32)), "contiguous rows"),
                       ((np.zeros((4, 4), np.float32),) * 2, "overlap")):
        with pytest.raises(ValueError, match=match):
            engine.transpose_into(*bad)
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        engine.transpose_into(a, ro)


def _problem(cell, B, T, I, H, dtype, seed=0, reset_after=True):
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    k = (rng.standard_normal((I, G * H)) / np.sqrt(I)).astype(dtype)   # (a well-conditioned recurrence)
    r = (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype)
    b = (rng.standard_normal((2, G * H) if cell == "gru" and reset_after else (G * H,)) * 0.1).astype(dtype)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    return x, k, r, b


@pytest.mark.skipif(_torch_autograd._HOST is None, reason="torch runs on no OpenMP runtime here")
@pytest.mark.parametrize("shape", [(1, 40, 17, 128), (6, 12, 17, 34), (1, 30, 64, 512)],
                         ids=["b1-hidden-split", "batch-split", "b1-h512"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_tasks_on_torchs_openmp_team_give_the_same_bits(cell, shape):
    """The host runtime runs the same tasks (hidden split with its barriers, batch parts, the GEMMs'
    parts) on torch's threads: the same partition, so the same bits as fastrnn's own workers."""
    B, T, I, H = shape
    x, k, r, b = _problem(cell, B, T, I, H, np.float32)
    spec, arrays = build_spec(cell, x, k, r, b)
    d_out = np.random.default_rng(1).standard_normal((B, T, H)).astype(np.float32)
    results = {}
    with fastrnn.threads(2):
        for host in (False, True):
            before = engine.pool_use_host(host)
            try:
                out, states, residuals = _compiled.forward_residuals(spec, arrays)
                grads = _compiled.backward_from_residuals(spec, arrays, residuals, d_out)
            finally:
                engine.pool_use_host(before)
            results[host] = (out, states, grads)
    (o0, s0, g0), (o1, s1, g1) = results[False], results[True]
    np.testing.assert_array_equal(o1, o0)
    for a, e in zip(s1, s0):
        np.testing.assert_array_equal(a, e)
    for key in ("x", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_array_equal(g1[key], g0[key])
    ref_out, _ = getattr(reference, cell)(x.astype(np.float64), k.astype(np.float64), r.astype(np.float64),
                                         b.astype(np.float64))
    assert_close("outputs on torch's team", o1, ref_out, 2e-5)


def test_pool_use_host_is_per_thread_and_restores():
    assert engine.pool_use_host(True) is False
    assert engine.pool_use_host(False) is True
    import threading
    seen = []
    engine.pool_use_host(True)
    try:
        t = threading.Thread(target=lambda: seen.append(engine.pool_use_host(False)))
        t.start()
        t.join()
    finally:
        engine.pool_use_host(False)
    assert seen == [False]   # another thread's setting is its own


@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                              ("simple_rnn", True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# I == H, so a wrong orientation could not hide behind a shape error.  Both ways of computing them:
# 12 columns and 540 rows take the plain GEMM then a transpose, 18 rows of 64 the transposed GEMM
@pytest.mark.parametrize("B,T,n", [(3, 7, 12), (2, 9, 64), (9, 60, 64)])
def test_weight_gradients_computed_transposed(cell, reset_after, dtype, B, T, n):
    """backward_from_residuals(transposed=...) returns dW^T / dR^T: the float64 reference's gradients
    transposed, C-contiguous on a 64-byte line."""
    assert (7 * 3 <= _compiled.DIRECT_TRANSPOSED_MAX_ROWS < 9 * 60
            and 12 < _compiled.DIRECT_TRANSPOSED_MIN_COLS <= 64)
    x, k, r, b = _problem(cell, B, T, n, n, dtype, reset_after=reset_after)
    spec, arrays = build_spec(cell, x, k, r, b, reset_after=reset_after)
    d_out = np.random.default_rng(2).standard_normal((B, T, n)).astype(dtype)
    out, states, residuals = _compiled.forward_residuals(spec, arrays)
    plain = _compiled.backward_from_residuals(spec, arrays, residuals, d_out)
    # the plain gradients against the float64 NumPy reference first (an oracle that is not this code)
    f64 = [a.astype(np.float64) for a in (x, k, r, b)]
    extra = {"reset_after": reset_after} if cell == "gru" else {}
    _, _, ref_backward = getattr(reference, cell + "_vjp")(*f64, **extra)
    ref = ref_backward(d_out.astype(np.float64))
    for key in ("kernel", "recurrent_kernel"):
        assert_close(f"d{key} vs reference", plain[key], ref[key], 1e-4 if dtype == np.float32 else 1e-10)
    for flags in ((True, False), (False, True), (True, True)):
        got = _compiled.backward_from_residuals(spec, arrays, residuals, d_out, transposed=flags)
        for key, flag in zip(("kernel", "recurrent_kernel"), flags):
            expected = ref[key].T if flag else ref[key]
            assert got[key].shape == expected.shape and got[key].flags.c_contiguous
            if flag:
                assert got[key].__array_interface__["data"][0] % 64 == 0
            assert_close(f"d{key} transposed={flag} vs reference", got[key], expected,
                         1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_eager_path_matches_the_custom_ops_and_torch_nn(kind):
    """A plain backward runs the computations directly (_EagerRNNFunction); torch.func.vjp goes through the
    custom ops: both give torch.nn's gradients, and the parameters' gradients come contiguous."""
    cls, ref_cls = {"lstm": (ft.LSTM, torch.nn.LSTM), "gru": (ft.GRU, torch.nn.GRU),
                    "rnn": (ft.RNN, torch.nn.RNN)}[kind]
    torch.manual_seed(0)
    ref = ref_cls(17, 34, num_layers=2, batch_first=True, dtype=torch.float64)
    twin = cls(17, 34, num_layers=2, batch_first=True, dtype=torch.float64)
    twin.load_state_dict(ref.state_dict())
    x = torch.randn(3, 9, 17, dtype=torch.float64)
    cot = torch.randn(3, 9, 34, dtype=torch.float64)

    def grads_of(module):
        module.zero_grad()
        out, _ = module(x)
        (out * cot).sum().backward()
        return {n: p.grad for n, p in module.named_parameters()}

    eager, expected = grads_of(twin), grads_of(ref)
    params = dict(twin.named_parameters())
    _, vjp_fn = torch.func.vjp(lambda p: torch.func.functional_call(twin, p, (x,))[0], params)
    via_ops = vjp_fn(cot)[0]
    for name in expected:
        assert eager[name].is_contiguous(), name
        assert_close(f"{name} (eager)", eager[name].numpy(), expected[name].numpy(), 1e-10)
        assert_close(f"{name} (ops)", via_ops[name].detach().numpy(), expected[name].numpy(), 1e-10)


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 12, 17, 34), (1, 30, 64, 512), (5, 1, 9, 16)],
                         ids=["batch-split", "b1-h512", "t1"])
def test_a_transposed_kernel_is_read_in_place(shape, dtype, time_major):
    """A kernel that is a transposed view (torch's (G*H, I) memory: what the bridge passes) is not copied:
    the projection and dx read it with trans_b; outputs and every gradient match the C-ordered kernel's
    and the float64 reference."""
    B, T, I, H = shape
    x, k, r, b = _problem("lstm", B, T, I, H, dtype, seed=3)
    if time_major:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    kt = np.ascontiguousarray(k.T).T   # (I, 4H) values over (4H, I) memory
    d_out = np.random.default_rng(4).standard_normal(x.shape[:2] + (H,)).astype(dtype)
    results = []
    with fastrnn.threads(2):
        for kernel in (k, kt):
            spec, arrays = build_spec("lstm", x, kernel, r, b, time_major=time_major)
            ws = _compiled.Workspace(spec, arrays, training=True)
            assert ws.W_t == (kernel is kt) and (np.shares_memory(ws.W, kt) if kernel is kt else True)
            out, states, residuals = _compiled.forward_residuals(spec, arrays)
            results.append((out, states, _compiled.backward_from_residuals(spec, arrays, residuals, d_out)))
    (o0, s0, g0), (o1, s1, g1) = results
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert_close("outputs", o1, o0, tol)
    assert_close("h", s1[0], s0[0], tol)
    for key in ("x", "kernel", "recurrent_kernel", "bias"):
        assert_close(f"d{key}", g1[key], g0[key], tol)
    f64 = [a.astype(np.float64) for a in (x, k, r, b)]
    ref_out, _, ref_bwd = reference.lstm_vjp(*f64, time_major=time_major)
    assert_close("outputs vs reference", o1, ref_out, 2e-5 if dtype == np.float32 else 1e-10)
    assert_close("dx vs reference", g1["x"], ref_bwd(d_out.astype(np.float64))["x"],
                 1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("weight", ["weight_ih_l0", "weight_hh_l0"])
def test_eager_path_refuses_an_inplace_change_before_backward(weight):
    """The eager path saves the weights (and reads its own copy of the recurrent one, the kernel in
    place): torch's version check still fires."""
    twin = ft.LSTM(5, 6)
    out, _ = twin(torch.randn(4, 2, 5))
    with torch.no_grad():
        getattr(twin, weight).mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_eager_backward_reuses_the_forward_call_once(cell):
    """`rnn`'s eager path (Keras-layout weights: fastrnn.keras under torch) reads the forward's validated
    call (spec and NumPy views) in its backward instead of rebuilding it, and drops it: after the
    backward the graph holds no view of the residuals.  A retain_graph second backward rebuilds the call
    from the saved tensors and gives the same gradients, which match torch.nn's.  (fastrnn.torch's
    modules take the torch-layout node instead: tests/test_torch_layout.py.)"""
    torch.manual_seed(5)
    stock = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple_rnn": torch.nn.RNN}[cell](17, 34, batch_first=True)
    twin = ft.from_torch(stock)
    x = torch.randn(3, 7, 17)
    d_out = torch.randn(3, 7, 34)
    kernel, recurrent, bias = twin._keras_weights("_l0")   # torch's layout seen as Keras's (views, swaps)
    out, _ = _torch_autograd.rnn(cell, x, kernel, recurrent, bias)
    node = out.grad_fn
    assert type(node).__name__ == "_EagerRNNFunctionBackward" and node.call is not None
    first = torch.autograd.grad(out, list(twin.parameters()), d_out, retain_graph=True)
    assert node.call is None
    second = torch.autograd.grad(out, list(twin.parameters()), d_out)
    want = torch.autograd.grad(stock(x)[0], list(stock.parameters()), d_out)
    for a, b, w in zip(first, second, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-5)


def test_eager_path_refuses_an_inplace_change_of_x_before_backward():
    twin = ft.GRU(5, 6)
    x = torch.randn(4, 2, 5, requires_grad=True)
    xi = x * 1.0
    out, _ = twin(xi)
    with torch.no_grad():
        xi.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def _train_steps_in_child(queue):
    twin = ft.LSTM(17, 64, batch_first=True)
    x = torch.randn(4, 30, 17)
    for _ in range(3):
        out, _ = twin(x)
        out.sum().backward()
    queue.put(float(out.sum()))


@pytest.mark.skipif(_torch_autograd._HOST is None, reason="torch runs on no OpenMP runtime here")
def test_a_forked_child_trains_after_the_parent_used_torchs_team():
    """The parent's calls ran on torch's OpenMP team; a forked child (a DataLoader worker, say) forgets
    that team (its threads were not copied) and runs on fastrnn's own pool instead of waiting forever."""
    import multiprocessing

    with fastrnn.threads(2):
        _train_steps_in_child(multiprocessing.get_context("fork").SimpleQueue())   # the parent, on the team
        ctx = multiprocessing.get_context("fork")
        queue = ctx.SimpleQueue()
        child = ctx.Process(target=_train_steps_in_child, args=(queue,))
        child.start()
        child.join(60)
        alive = child.is_alive()
        if alive:
            child.kill()
    assert not alive, "the forked child hung"
    assert child.exitcode == 0 and np.isfinite(queue.get())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the runtime is looked up in /proc/self/maps")
def test_torchs_openmp_runtime_is_found_when_torch_uses_one():
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        assert _torch_autograd._HOST is None
        return
    assert _torch_autograd._HOST is not None and all(_torch_autograd._HOST)


def test_weight_copy_buffers_are_reused_only_when_nothing_refers_to_them():
    from fastrnn import _scratch

    _scratch.clear()     # (so the only idle buffer below is c's)
    shape = (600, 512)   # above _scratch.MIN_BYTES
    a = _torch_autograd._copy_buffer(shape, np.float32)
    view = a[10:20]
    del a
    b = _torch_autograd._copy_buffer(shape, np.float32)
    assert not np.shares_memory(b, view)            # a live view keeps its buffer out of reuse
    t = torch.from_numpy(b)
    del b
    c = _torch_autograd._copy_buffer(shape, np.float32)
    assert not np.shares_memory(c, t.numpy())       # so does a tensor made from it
    base = c.__array_interface__["data"][0]
    del c
    d = _torch_autograd._copy_buffer(shape, np.float32)
    assert d.__array_interface__["data"][0] == base  # a free one is reused
    small = _torch_autograd._copy_buffer((4, 4), np.float32)
    assert small.shape == (4, 4)
    for arr in (d, small):   # (transpose_into's whole-line stores)
        assert arr.flags.c_contiguous and arr.__array_interface__["data"][0] % 64 == 0
