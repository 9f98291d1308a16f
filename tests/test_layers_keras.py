"""fastrnn.layers against Keras 3 (the oracle): the same weights (copied with set_weights) give the same
outputs and states, float32 tolerance, for LSTM, GRU (reset_after both ways), SimpleRNN, RNN(cell),
stacked cells and Bidirectional, with every option the Keras guide uses: return_sequences / return_state,
go_backwards, activations, use_bias, masks of every pattern (from mask=, Embedding(mask_zero=True) and
Masking), initial_state, stateful chunks, dropout (reproducibility; not comparable to Keras's masks),
config round trips and parameter counts.

Sizes are awkward on purpose (features 17, units 34, T=1, B=1); data are fresh seeded random numbers and
the weights are redrawn (biases included) so that no weight is zero."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fastrnn import _dispatch  # noqa: E402
from fastrnn import functional as F  # noqa: E402
from fastrnn import layers as L  # noqa: E402

ATOL = 2e-5
I, H = 17, 34

# kind -> (Keras layer, fastrnn layer, Keras cell, fastrnn cell, extra constructor kwargs)
KINDS = {
    "lstm": (keras.layers.LSTM, L.LSTM, keras.layers.LSTMCell, L.LSTMCell, {}),
    "gru": (keras.layers.GRU, L.GRU, keras.layers.GRUCell, L.GRUCell, {"reset_after": True}),
    "gru_rb": (keras.layers.GRU, L.GRU, keras.layers.GRUCell, L.GRUCell, {"reset_after": False}),
    "simple_rnn": (keras.layers.SimpleRNN, L.SimpleRNN, keras.layers.SimpleRNNCell, L.SimpleRNNCell, {}),
}
# Keras's own get_weights/set_weights on the torch backend warn about NumPy 2's __array__(copy=)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

N_STATES = {"lstm": 2, "gru": 1, "gru_rb": 1, "simple_rnn": 1}


# ----------------------------------------------------------------------------------------- helpers
def data(B, T, feat=I, seed=0):
    return np.random.default_rng(seed).standard_normal((B, T, feat)).astype(np.float32)


def to_np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def flat(out):
    """Leaves of a (possibly nested) output, as NumPy arrays."""
    if isinstance(out, (list, tuple)):
        return [leaf for o in out for leaf in flat(o)]
    return [to_np(out) if not isinstance(out, np.ndarray) else np.asarray(out)]


def assert_same(ours, theirs, atol=ATOL, what="output"):
    """Same structure (leaf count), same shapes, max abs error <= atol * max(1, |expected|)."""
    a, b = flat(ours), flat(theirs)
    assert len(a) == len(b), f"{what}: {len(a)} arrays, Keras returns {len(b)}"
    for k, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, f"{what}[{k}]: shape {x.shape} != Keras {y.shape}"
        if x.size:
            scale = max(1.0, float(np.max(np.abs(y))))
            err = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
            assert err <= atol * scale, f"{what}[{k}]: max abs error {err:.3e} > {atol * scale:.1e}"


def randomize(layer, seed=1, scale=0.3):
    """Redraw every Keras weight (biases too) uniformly in [-scale, scale]."""
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(-scale, scale, w.shape).astype(np.float32) for w in layer.get_weights()])


def pair(kind, x, layer_kwargs=None, **kw):
    """(keras layer, fastrnn layer) of `kind` with the same options and weights, both built on x."""
    kcls, ocls, _, _, extra = KINDS[kind]
    kw = {**extra, **kw}
    k = kcls(H, **kw)
    k(x)
    randomize(k)
    o = ocls(H, **kw)
    o(x)
    o.set_weights(k.get_weights())
    return k, o


def masks(B=4, T=6):
    """Named (B, T) mask patterns."""
    right = np.ones((B, T), bool)
    right[0, 4:] = False
    right[2, 1:] = False
    left = right[:, ::-1].copy()
    holes = np.ones((B, T), bool)
    holes[0, [1, 3]] = False
    holes[1, 0] = False
    holes[3, [2, 4, 5]] = False
    full_row = np.ones((B, T), bool)
    full_row[1] = False
    full_row[3, :2] = False
    return {"right": right, "left": left, "holes": holes, "full_row": full_row}


# ------------------------------------------------------------------------------ flags and options
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("return_state", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
def test_return_flags_and_go_backwards(kind, return_sequences, return_state, go_backwards):
    x = data(3, 5, seed=11)
    k, o = pair(kind, x, return_sequences=return_sequences, return_state=return_state, go_backwards=go_backwards)
    out = o(x)
    ref = k(x)
    assert_same(out, ref)
    if return_state:
        assert len(out) == 1 + N_STATES[kind]
    # a second, different input through the same (already built) layers
    x2 = data(3, 5, seed=12)
    assert_same(o(x2), k(x2))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("B,T", [(1, 1), (1, 7), (5, 1)], ids=["b1t1", "b1t7", "b5t1"])
def test_awkward_sizes(kind, B, T):
    x = data(B, T, seed=B * 10 + T)
    k, o = pair(kind, x, return_sequences=True, return_state=True)
    assert_same(o(x), k(x))


OPTIONS = {
    "relu": {"activation": "relu"},
    "relu+hard_sigmoid": {"activation": "relu", "recurrent_activation": "hard_sigmoid"},
    "hard_sigmoid": {"recurrent_activation": "hard_sigmoid"},
    "no_bias": {"use_bias": False},
}


@pytest.mark.parametrize("kind,options", [
    (kind, name) for kind in KINDS for name, opts in OPTIONS.items()
    if not (kind == "simple_rnn" and "recurrent_activation" in opts)  # SimpleRNN has none
])
def test_activations_and_use_bias(kind, options):
    options = OPTIONS[options]
    x = data(3, 5, seed=21)
    k, o = pair(kind, x, return_sequences=True, return_state=True, **options)
    assert_same(o(x), k(x))
    assert [w.shape for w in o.get_weights()] == [w.shape for w in k.get_weights()]


# ------------------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("pattern", list(masks()))
@pytest.mark.parametrize("zero_output", [False, True], ids=["repeat", "zeros"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
def test_masks(kind, pattern, zero_output, go_backwards):
    m = masks()[pattern]
    x = data(*m.shape, seed=31)
    k, o = pair(kind, x, return_sequences=True, return_state=True, go_backwards=go_backwards,
                zero_output_for_mask=zero_output)
    assert_same(o(x, mask=m), k(x, mask=m))
    # the last output alone (return_sequences=False) on the same weights
    k2, o2 = pair(kind, x, return_state=True, go_backwards=go_backwards, zero_output_for_mask=zero_output)
    assert_same(o2(x, mask=m), k2(x, mask=m))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fully_masked_row_returns_initial_state(kind):
    m = masks()["full_row"]
    x = data(*m.shape, seed=32)
    k, o = pair(kind, x, return_state=True)
    init = [np.random.default_rng(5).standard_normal((4, H)).astype(np.float32) for _ in range(N_STATES[kind])]
    out = o(x, mask=m, initial_state=init)
    assert_same(out, k(x, mask=m, initial_state=init))
    for s, s0 in zip(out[1:], init):
        np.testing.assert_array_equal(s[1], s0[1])


def test_mask_from_embedding_flows_into_rnn():
    ids = np.random.default_rng(41).integers(1, 20, size=(4, 6))
    ids[0, 4:] = 0  # right padding
    ids[1, :3] = 0  # left padding
    ids[2, [1, 3]] = 0  # holes
    ids[3] = 0  # fully masked
    kemb, oemb = keras.layers.Embedding(20, I, mask_zero=True), L.Embedding(20, I, mask_zero=True)
    kemb(ids)
    oemb(ids)
    oemb.set_weights(kemb.get_weights())
    for kind in ("lstm", "gru_rb"):
        kx, ox = kemb(ids), oemb(ids)
        k, o = pair(kind, to_np(kx), return_sequences=True, return_state=True)
        assert_same(o(ox), k(kx))  # the mask travels with the embedded sequence
        assert_same(o(ox), k(to_np(kx), mask=ids != 0))
    # and into a Bidirectional RNN (masked outputs zeroed)
    kb = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True))
    ob = L.Bidirectional(L.GRU(H, return_sequences=True))
    kb(kemb(ids))
    randomize(kb)
    ob(oemb(ids))
    ob.set_weights(kb.get_weights())
    out = ob(oemb(ids))
    assert_same(out, kb(kemb(ids)))
    np.testing.assert_array_equal(np.asarray(out)[ids == 0], 0)


def test_mask_from_masking_flows_into_rnn():
    x = data(4, 6, seed=42)
    x[0, 4:] = 0.0
    x[1, :2] = 0.0
    x[2, 3] = 0.0
    x[3] = 0.0
    kmask, omask = keras.layers.Masking(0.0), L.Masking(0.0)
    for kind in ("lstm", "simple_rnn"):
        k, o = pair(kind, x, return_sequences=True, return_state=True)
        assert_same(o(omask(x)), k(kmask(x)))
        assert_same(o(omask(x)), k(x, mask=np.any(x != 0, axis=-1)))


# ----------------------------------------------------------------------------------- initial_state
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
def test_initial_state(kind, go_backwards):
    x = data(4, 6, seed=51)
    rng = np.random.default_rng(52)
    init = [rng.standard_normal((4, H)).astype(np.float32) for _ in range(N_STATES[kind])]
    k, o = pair(kind, x, return_sequences=True, return_state=True, go_backwards=go_backwards)
    m = masks()["holes"]
    assert_same(o(x, initial_state=init), k(x, initial_state=init))
    assert_same(o(x, initial_state=init, mask=m), k(x, initial_state=init, mask=m))
    if N_STATES[kind] == 1:  # one state may be given bare
        assert_same(o(x, initial_state=init[0]), k(x, initial_state=init))


def test_state_reuse_from_stateful_layer():
    """The guide's "RNN State Reuse": new_layer(x, initial_state=layer.states)."""
    chunks = [data(2, 4, seed=60 + s) for s in range(2)]
    k, o = pair("lstm", chunks[0], stateful=True)
    k.reset_states()  # pair() built both layers with a call
    o.reset_states()
    for c in chunks:
        assert_same(o(c), k(c))
    assert_same(list(o.states), [to_np(v.value) for v in k.states], what="states")
    x3 = data(2, 4, seed=63)
    k_new, o_new = pair("lstm", x3)
    assert_same(o_new(x3, initial_state=o.states), k_new(x3, initial_state=[to_np(v.value) for v in k.states]))


# ----------------------------------------------------------------------------------------- stateful
@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_stateful_chunks_and_resets(kind):
    B = 3
    chunks = [data(B, T, seed=70 + T) for T in (4, 1, 5)]
    k, o = pair(kind, chunks[0], stateful=True, return_sequences=True, return_state=True)
    k.reset_states()  # pair() built both layers with a call
    o.reset_states()
    assert all(np.all(s == 0) for s in o.states)
    for n, c in enumerate(chunks):
        assert_same(o(c), k(c), what=f"chunk {n}")
        assert_same(list(o.states), [to_np(v.value) for v in k.states], what=f"states after chunk {n}")

    # reset_states(): the next chunk equals a fresh start
    o.reset_states()
    k.reset_states()
    assert all(np.all(s == 0) for s in o.states)
    assert_same(o(chunks[0]), k(chunks[0]), what="after reset_states")

    # reset_states(rows=...): those rows start afresh, the others continue
    rows = [0, 2]
    o.reset_states(rows=rows)
    out = o(chunks[2])
    kept = k(chunks[2])  # Keras has no per-row reset: its rows 1 continue as ours do
    fresh_k, fresh_o = pair(kind, chunks[2][rows], return_sequences=True, return_state=True)
    fresh_o.set_weights(k.get_weights())
    fresh = fresh_o(chunks[2][rows])
    for a, f, c in zip(out, fresh, kept):
        assert_same(a[rows], f, what="reset rows")
        assert_same(a[[1]], to_np(c)[[1]], what="kept row")

    # another batch size: ValueError naming both
    with pytest.raises(ValueError, match=r"3.*2|2.*3"):
        o(data(2, 4, seed=79))


def test_stateful_reset_states_rows_bool_mask():
    x = data(3, 4, seed=80)
    _, o = pair("gru", x, stateful=True)
    o(x)
    before = [s.copy() for s in o.states]
    o.reset_states(rows=np.array([False, True, False]))
    np.testing.assert_array_equal(o.states[0][1], 0)
    np.testing.assert_array_equal(o.states[0][[0, 2]], before[0][[0, 2]])


# ------------------------------------------------------------------------------------ RNN(cell)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
def test_rnn_of_cell_equals_layer(kind, go_backwards):
    kcls, ocls, kcell, ocell, extra = KINDS[kind]
    m = masks()["holes"]
    x = data(*m.shape, seed=91)
    kr = keras.layers.RNN(kcell(H, **extra), return_sequences=True, return_state=True, go_backwards=go_backwards)
    kr(x)
    randomize(kr)
    orr = L.RNN(ocell(H, **extra), return_sequences=True, return_state=True, go_backwards=go_backwards)
    orr(x)
    orr.set_weights(kr.get_weights())
    layer = ocls(H, return_sequences=True, return_state=True, go_backwards=go_backwards, **extra)
    layer(x)
    layer.set_weights(kr.get_weights())
    assert _dispatch.rnn_layer_path(orr.cell, x)[0] == "fused"
    for mask in (None, m):
        ref = kr(x, mask=mask)
        assert_same(orr(x, mask=mask), ref)
        assert_same(layer(x, mask=mask), ref)


STACKS = {
    "lstm+gru": lambda mod: [mod.LSTMCell(H), mod.GRUCell(20)],
    "gru_rb+simple+lstm": lambda mod: [mod.GRUCell(9, reset_after=False), mod.SimpleRNNCell(H), mod.LSTMCell(5)],
    "simple+simple": lambda mod: [mod.SimpleRNNCell(H, activation="relu"), mod.SimpleRNNCell(H)],
}


def _stack_states(cells, B, seed):
    rng = np.random.default_rng(seed)
    out = []
    for c in cells:
        n = 2 if isinstance(c, L.LSTMCell) else 1
        s = [rng.standard_normal((B, c.units)).astype(np.float32) for _ in range(n)]
        out.append(s if n == 2 else s[0])
    return out


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("pattern", [None, "left", "holes", "full_row"])
def test_stacked_cells(stack, go_backwards, pattern):
    m = None if pattern is None else masks()[pattern]
    x = data(4, 6, seed=101)
    kr = keras.layers.RNN(STACKS[stack](keras.layers), return_sequences=True, return_state=True,
                          go_backwards=go_backwards)
    kr(x)
    randomize(kr, scale=0.4)
    ocells = STACKS[stack](L)
    orr = L.RNN(ocells, return_sequences=True, return_state=True, go_backwards=go_backwards)
    orr(x)
    assert isinstance(orr.cell, L.StackedRNNCells)
    assert [w.shape for w in orr.get_weights()] == [w.shape for w in kr.get_weights()]
    orr.set_weights(kr.get_weights())
    assert_same(orr(x, mask=m), kr(x, mask=m))
    init = _stack_states(ocells, 4, seed=102)
    assert_same(orr(x, mask=m, initial_state=init), kr(x, mask=m, initial_state=init))
    # the last output only
    kr.return_sequences = orr.return_sequences = False
    assert_same(orr(x, mask=m, initial_state=init), kr(x, mask=m, initial_state=init))


# ---------------------------------------------------------------------------------- Bidirectional
def bidi_pair(x, merge_mode, kind="lstm", backward=False, **kw):
    kcls, ocls, _, _, extra = KINDS[kind]
    kw = {**extra, **kw}
    if backward:  # explicit backward_layer, with another activation to tell them apart
        kb = keras.layers.Bidirectional(kcls(H, **kw), merge_mode=merge_mode,
                                        backward_layer=kcls(H, go_backwards=True, activation="relu", **kw))
        ob = L.Bidirectional(ocls(H, **kw), merge_mode=merge_mode,
                             backward_layer=ocls(H, go_backwards=True, activation="relu", **kw))
    else:
        kb = keras.layers.Bidirectional(kcls(H, **kw), merge_mode=merge_mode)
        ob = L.Bidirectional(ocls(H, **kw), merge_mode=merge_mode)
    kb(x)
    randomize(kb)
    ob(x)
    assert [w.shape for w in ob.get_weights()] == [w.shape for w in kb.get_weights()]
    ob.set_weights(kb.get_weights())
    return kb, ob


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul", None])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("return_state", [False, True], ids=["nostate", "state"])
def test_bidirectional_merge_modes(merge_mode, return_sequences, return_state):
    m = masks()["holes"]
    x = data(*m.shape, seed=111)
    kb, ob = bidi_pair(x, merge_mode, return_sequences=return_sequences, return_state=return_state)
    assert_same(ob(x), kb(x))
    assert_same(ob(x, mask=m), kb(x, mask=m))


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb", "simple_rnn"])
@pytest.mark.parametrize("pattern", ["right", "left", "full_row"])
def test_bidirectional_masks_zero_outputs(kind, pattern):
    m = masks()[pattern]
    x = data(*m.shape, seed=121)
    kb, ob = bidi_pair(x, "concat", kind=kind, return_sequences=True, return_state=True)
    out = ob(x, mask=m)
    assert_same(out, kb(x, mask=m))
    np.testing.assert_array_equal(np.asarray(out[0])[~m], 0)  # Keras zeroes masked outputs here


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("merge_mode", ["concat", None])
def test_bidirectional_initial_state_halves(kind, merge_mode):
    x = data(4, 6, seed=131)
    rng = np.random.default_rng(132)
    n = N_STATES[kind]
    init = [rng.standard_normal((4, H)).astype(np.float32) for _ in range(2 * n)]
    kb, ob = bidi_pair(x, merge_mode, kind=kind, return_sequences=True, return_state=True)
    m = masks()["left"]
    assert_same(ob(x, initial_state=init, mask=m), kb(x, initial_state=init, mask=m))


@pytest.mark.parametrize("merge_mode", ["concat", "ave", None])
def test_bidirectional_explicit_backward_layer(merge_mode):
    x = data(4, 6, seed=141)
    kb, ob = bidi_pair(x, merge_mode, kind="gru", backward=True, return_sequences=True, return_state=True)
    assert ob.backward_layer.activation == "relu" and ob.forward_layer.activation == "tanh"
    m = masks()["right"]
    assert_same(ob(x, mask=m), kb(x, mask=m))
    assert ob.count_params() == kb.count_params()


# ---------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("kind", list(KINDS))
def test_training_false_ignores_dropout(kind):
    x = data(3, 5, seed=151)
    k, o = pair(kind, x, return_sequences=True, return_state=True)
    _, ocls, _, _, extra = KINDS[kind]
    od = ocls(H, dropout=0.4, recurrent_dropout=0.3, seed=3, return_sequences=True, return_state=True, **extra)
    od(x)
    od.set_weights(k.get_weights())
    ref = k(x)
    assert_same(od(x), ref)
    assert_same(od(x, training=False), ref)
    # and Keras's own dropout layer agrees in inference
    kd = KINDS[kind][0](H, dropout=0.4, recurrent_dropout=0.3, seed=3, return_sequences=True, return_state=True,
                        **extra)
    kd(x)
    kd.set_weights(k.get_weights())
    assert_same(od(x), kd(x, training=False))


def _dropout_layer(kind, x, weights, seed=7, **kw):
    _, ocls, _, _, extra = KINDS[kind]
    layer = ocls(H, dropout=0.3, recurrent_dropout=0.25, seed=seed, return_sequences=True, return_state=True,
                 **extra, **kw)
    layer(x)
    layer.set_weights(weights)
    return layer


def _record_masks(cell):
    """Wrap cell.get_dropout_mask / get_recurrent_dropout_mask so the drawn masks are kept."""
    drawn = {}
    for name in ("get_dropout_mask", "get_recurrent_dropout_mask"):
        original = getattr(cell, name)

        def wrapper(arg, _original=original, _name=name):
            value = _original(arg)
            drawn[_name] = None if value is None else value.copy()
            return value

        setattr(cell, name, wrapper)
    return drawn


@pytest.mark.parametrize("kind", list(KINDS))
def test_dropout_seeded_reproducible_variational(kind):
    x = data(3, 5, seed=161)
    k, _ = pair(kind, x)
    weights = k.get_weights()
    a, b = _dropout_layer(kind, x, weights), _dropout_layer(kind, x, weights)
    out_a1, out_b1 = a(x, training=True), b(x, training=True)
    assert_same(out_a1, out_b1, atol=0)  # identically seeded layers: identical draws
    out_a2 = a(x, training=True)
    assert not np.allclose(out_a1[0], out_a2[0]), "a second training call must draw new masks"
    out_plain = a(x, training=False)
    assert not np.allclose(out_a1[0], out_plain[0]), "training=True must apply dropout"

    # variational: the layer equals the compiled functional call with the masks its cell drew
    drawn = _record_masks(a.cell)
    out = a(x, training=True)
    dm, rdm = drawn["get_dropout_mask"], drawn["get_recurrent_dropout_mask"]
    assert dm.shape == (3, I) and rdm.shape == (3, H)
    for drawn_mask, rate in ((dm, 0.3), (rdm, 0.25)):  # values 0 or 1 / (1 - rate)
        assert np.all(np.isclose(drawn_mask, 0) | np.isclose(drawn_mask, 1 / (1 - rate)))
    fn = {"lstm": F.lstm, "gru": F.gru, "gru_rb": F.gru, "simple_rnn": F.simple_rnn}[kind]
    kw = {"reset_after": KINDS[kind][4]["reset_after"]} if kind.startswith("gru") else {}
    ys, states = fn(x, a.cell.kernel, a.cell.recurrent_kernel, a.cell.bias, dropout_mask=dm,
                    recurrent_dropout_mask=rdm, engine="compiled", **kw)
    assert_same(list(out), [ys, *states])
    # ... and the cell's own step loop with the same masks reused at every step (one mask per sequence)
    a.cell._dropout_mask, a.cell._recurrent_dropout_mask = dm, rdm  # what get_*_mask returns until reset
    h = [np.zeros((3, H), np.float32) for _ in range(N_STATES[kind])]
    for t in range(x.shape[1]):
        y, h = a.cell._python_step(x[:, t], h, training=True)
        assert_same(out[0][:, t], y, what=f"step {t}")
    a.cell.reset_dropout_mask()
    a.cell.reset_recurrent_dropout_mask()


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_recurrent_dropout_stays_compiled(kind):
    x = data(2, 4, seed=171)
    k, _ = pair(kind, x)
    layer = _dropout_layer(kind, x, k.get_weights())
    assert _dispatch.rnn_layer_path(layer.cell, x)[0] == "fused"
    assert "compiled" in layer.explain(x)
    assert "Python loop" not in layer.explain(x)
    layer.engine = "compiled"  # raises rather than loop: must run
    layer(x, training=True)


# ------------------------------------------------------------------------- config, weights, params
@pytest.mark.parametrize("kind", list(KINDS))
def test_config_round_trip_weights_and_params(kind):
    x = data(3, 5, seed=181)
    k, o = pair(kind, x, return_sequences=True, go_backwards=True, activation="relu", use_bias=kind != "lstm",
                dropout=0.1, recurrent_dropout=0.2, seed=5)
    assert o.count_params() == k.count_params()
    assert [w.shape for w in o.weights] == [tuple(w.shape) for w in k.weights]
    assert len(o.get_weights()) == len(k.get_weights())
    config = o.get_config()
    for key in ("units", "activation", "return_sequences", "go_backwards", "use_bias", "dropout",
                "recurrent_dropout"):
        assert config[key] == k.get_config()[key], key
    clone = type(o).from_config(config)
    assert clone.get_config() == config
    clone(x)
    clone.set_weights(o.get_weights())
    assert_same(clone(x), o(x), atol=0)
    assert_same(clone(x), k(x))


def test_config_round_trip_rnn_stacked_and_bidirectional():
    x = data(3, 5, seed=191)
    kr = keras.layers.RNN([keras.layers.LSTMCell(H), keras.layers.GRUCell(7, reset_after=False)],
                          return_sequences=True)
    kr(x)
    orr = L.RNN([L.LSTMCell(H), L.GRUCell(7, reset_after=False)], return_sequences=True)
    orr(x)
    assert orr.count_params() == kr.count_params()
    clone = L.RNN.from_config(orr.get_config())
    assert clone.get_config() == orr.get_config()
    clone(x)
    clone.set_weights(orr.get_weights())
    assert_same(clone(x), orr(x), atol=0)

    kb, ob = bidi_pair(x, "sum", kind="gru_rb", return_sequences=True)
    assert ob.count_params() == kb.count_params()
    clone = L.Bidirectional.from_config(ob.get_config())
    assert clone.get_config() == ob.get_config()
    clone(x)
    clone.set_weights(ob.get_weights())
    assert_same(clone(x), kb(x))


def test_time_major_equals_batch_major():
    x = data(3, 5, seed=201)
    k, o = pair("lstm", x, return_sequences=True, return_state=True)
    tm = L.LSTM(H, return_sequences=True, return_state=True, time_major=True)
    tm(x.transpose(1, 0, 2))
    tm.set_weights(o.get_weights())
    out = tm(x.transpose(1, 0, 2))
    ref = k(x)
    assert_same([np.asarray(out[0]).transpose(1, 0, 2), *out[1:]], ref)


def test_stateful_stacked_cells_and_bidirectional():
    chunks = [data(4, 6, seed=210 + n) for n in range(3)]
    m = masks()["holes"]
    kr = keras.layers.RNN([keras.layers.LSTMCell(H), keras.layers.GRUCell(9)], stateful=True, return_state=True)
    kr(chunks[0])
    randomize(kr)
    for v in keras.tree.flatten(kr.states):  # Keras's reset_states() fails on nested (stacked) states
        v.assign(np.zeros(v.shape, np.float32))
    orr = L.RNN([L.LSTMCell(H), L.GRUCell(9)], stateful=True, return_state=True)
    orr(chunks[0])
    orr.set_weights(kr.get_weights())
    orr.reset_states()
    for n, c in enumerate(chunks):
        mask = m if n == 1 else None
        assert_same(orr(c, mask=mask), kr(c, mask=mask), what=f"stacked chunk {n}")

    kb = keras.layers.Bidirectional(keras.layers.LSTM(H, stateful=True, return_sequences=True))
    kb(chunks[0])
    randomize(kb)
    kb.reset_states()
    ob = L.Bidirectional(L.LSTM(H, stateful=True, return_sequences=True))
    ob(chunks[0])
    ob.set_weights(kb.get_weights())
    ob.reset_states()
    for n, c in enumerate(chunks):
        assert_same(ob(c), kb(c), what=f"bidirectional chunk {n}")
    assert len(ob.states) == 4


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_stateful_reset_states_to_values(kind):
    """fastrnn's reset_states(states) (Keras 3 resets to zeros only) equals a call with initial_state."""
    x = data(3, 5, seed=220)
    k, o = pair(kind, x, stateful=True, return_sequences=True, return_state=True)
    rng = np.random.default_rng(221)
    init = [rng.standard_normal((3, H)).astype(np.float32) for _ in range(N_STATES[kind])]
    o.reset_states(init)
    k_plain, _ = pair(kind, x, return_sequences=True, return_state=True)
    k_plain.set_weights(k.get_weights())
    assert_same(o(x), k_plain(x, initial_state=init))
    # an explicit initial_state on a stateful layer wins over the kept states, then is kept
    k.reset_states()
    assert_same(o(x, initial_state=init), k(x, initial_state=init))
    assert_same(o(x), k(x))


def _shapes(s):
    """compute_output_shape results with tuples and lists of shapes normalized to lists."""
    if isinstance(s, (list, tuple)) and all(d is None or isinstance(d, int) for d in s):
        return tuple(s)
    return [_shapes(v) for v in s]


@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("return_state", [False, True], ids=["nostate", "state"])
def test_compute_output_shape(return_sequences, return_state):
    kw = dict(return_sequences=return_sequences, return_state=return_state)
    shape = (None, 5, I)
    assert _shapes(L.LSTM(H, **kw).compute_output_shape(shape)) == \
        _shapes(keras.layers.LSTM(H, **kw).compute_output_shape(shape))
    for merge_mode in ("concat", "mul", None):
        ob = L.Bidirectional(L.GRU(H, **kw), merge_mode=merge_mode)
        kb = keras.layers.Bidirectional(keras.layers.GRU(H, **kw), merge_mode=merge_mode)
        assert _shapes(ob.compute_output_shape(shape)) == _shapes(kb.compute_output_shape(shape))


def test_compute_output_shape_stacked_return_state():
    shape = (None, 5, I)
    ours = L.RNN([L.LSTMCell(3), L.GRUCell(4)], return_state=True).compute_output_shape(shape)
    theirs = keras.layers.RNN([keras.layers.LSTMCell(3), keras.layers.GRUCell(4)],
                              return_state=True).compute_output_shape(shape)
    assert _shapes(ours) == _shapes(theirs)


@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
def test_stacked_cells_zero_output_for_mask(go_backwards):
    m = masks()["holes"]
    x = data(4, 6, seed=230)
    kr = keras.layers.RNN([keras.layers.LSTMCell(H), keras.layers.GRUCell(9)], return_sequences=True,
                          zero_output_for_mask=True, go_backwards=go_backwards)
    orr = L.RNN([L.LSTMCell(H), L.GRUCell(9)], return_sequences=True, zero_output_for_mask=True,
                go_backwards=go_backwards)
    kr(x)
    randomize(kr)
    orr(x)
    orr.set_weights(kr.get_weights())
    assert_same(orr(x, mask=m), kr(x, mask=m))


def test_bidirectional_weights_argument():
    x = data(4, 6, seed=240)
    kb = keras.layers.Bidirectional(keras.layers.GRU(H))
    kb(x)
    randomize(kb)
    ob = L.Bidirectional(L.GRU(H), weights=kb.get_weights())
    assert_same(ob(x), kb(x))


def test_dropout_stacked_cells_and_no_dropout_training():
    x = data(4, 6, seed=250)

    def stack():
        rnn = L.RNN([L.LSTMCell(5, dropout=0.3, recurrent_dropout=0.3, seed=1), L.GRUCell(4, dropout=0.2, seed=2)])
        rnn(x)
        return rnn

    a, b = stack(), stack()
    b.set_weights(a.get_weights())
    first = a(x, training=True)
    np.testing.assert_array_equal(first, b(x, training=True))
    assert not np.allclose(first, a(x, training=True))
    # without dropout rates, training=True is inference
    k, o = pair("lstm", x, return_sequences=True)
    assert_same(o(x, training=True), k(x, training=True))
