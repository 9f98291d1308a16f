"""Forward and backward of LSTM, GRU and SimpleRNN over explicit arrays: the one API that fastrnn's
layers and framework adapters call.

Weights are in the canonical Keras layout (see fastrnn/_weights.py):

=========  ===========  ================  =============================  =========
cell       kernel       recurrent_kernel  bias                           gates
=========  ===========  ================  =============================  =========
lstm       (I, 4H)      (H, 4H)           (4H,)                          i, f, c, o
gru        (I, 3H)      (H, 3H)           (2, 3H) reset_after / (3H,)    z, r, h
simple_rnn (I, H)       (H, H)            (H,)                           -
=========  ===========  ================  =============================  =========

Every function takes x (B, T, I) (or (T, B, I) with ``time_major=True``) and returns
``outputs, final_states``: outputs (B, T, H) (or (T, B, H)) holding every step in processing order
(reversed with ``go_backwards``, as Keras), final_states ``[h, c]`` for LSTM, ``[h]`` otherwise.

Options (Keras semantics): ``initial_state`` (list of (B, H)); ``mask`` (B, T) bool: a masked step keeps
the state and repeats the previous output (zeros before the first unmasked step, or always with
``zero_output_for_mask``); ``dropout_mask`` (B, I) multiplies x and ``recurrent_dropout_mask`` (B, H) the
state entering the recurrent matmul, at every step; ``activation``/``recurrent_activation`` by name
(tanh, sigmoid, hard_sigmoid, relu, linear, softsign).  ``engine`` is "auto", "compiled" or "reference".

The ``*_vjp`` variants also return ``backward(d_outputs, d_final_states=None)``, which returns a dict of
gradients: x, kernel, recurrent_kernel, bias (None without bias) and initial_state (a list).
Inputs are never modified.  `prepare(cell, kernel, recurrent_kernel, bias)` freezes a cell's weights for
repeated inference calls, packing the weights once instead of at every call.
"""
from fastrnn import _dispatch, reference
from fastrnn._spec import build_spec

__all__ = ["lstm", "gru", "simple_rnn", "lstm_vjp", "gru_vjp", "simple_rnn_vjp", "prepare", "explain"]


def _run(cell, vjp, engine, x, kernel, recurrent_kernel, bias, options, packs=None, specs=None):
    """One call.  packs (inference only): a cache of the packed layouts of kernel and recurrent_kernel,
    for a caller that guarantees the arrays do not change between its calls (a built-in cell's read-only
    weights, whose cache set_weights replaces; fastrnn/_prepared.py); None packs for this call alone.
    specs: a fastrnn._spec.SpecCache over the same weights, which validates the call instead; for a
    signature it remembers, the call's plan and workspace are kept too (a repeated prepared call's Python
    is then a few lookups: bench/NOTES.md 55)."""
    packs_kept = packs is not None and not vjp
    if specs is not None:
        spec, arrays, seen = specs(x, options)
    else:
        (spec, arrays), seen = build_spec(cell, x, kernel, recurrent_kernel, bias, **options), None
    choice = None if seen is None else _kept_choice(seen, engine, vjp, packs_kept)
    if choice is None:
        choice = _dispatch.select(spec, engine, training=vjp, packs_kept=packs_kept)
        if seen is not None:
            seen.choice = ((engine, vjp, packs_kept, _dispatch.plan_inputs()), choice)
    if choice.engine == "compiled":
        from fastrnn import _compiled

        if vjp:
            return _compiled.forward_vjp(spec, arrays, choice.plan)
        return _compiled.forward(spec, arrays, choice.plan, packs=packs, reuse=None if seen is None else seen.idle)
    return _reference_call(cell, vjp, arrays, options)


def _kept_choice(seen, engine, vjp, packs_kept):
    """A remembered signature's (fastrnn._spec.Signature) Choice for a call with these arguments of
    `_run`, while nothing the plan reads has changed since it was made (_dispatch.plan_inputs); None
    otherwise."""
    kept = seen.choice
    if kept is not None and kept[0] == (engine, vjp, packs_kept, _dispatch.plan_inputs()):
        return kept[1]
    return None


def _reference_call(cell, vjp, arrays, options):
    """The NumPy reference on validated `arrays` (build_spec's) with the call's `options`."""
    fn = getattr(reference, f"{cell}_vjp" if vjp else cell)
    options = dict(options)
    options.update(initial_state=arrays.initial_state, mask=arrays.mask, dropout_mask=arrays.dropout_mask,
                   recurrent_dropout_mask=arrays.recurrent_dropout_mask)
    if cell != "gru":
        options.pop("reset_after", None)
    if cell == "simple_rnn":
        options.pop("recurrent_activation", None)
    return fn(arrays.x, arrays.kernel, arrays.recurrent_kernel, arrays.bias, **options)


def _options(initial_state, mask, go_backwards, time_major, activation, recurrent_activation,
             zero_output_for_mask, dropout_mask, recurrent_dropout_mask, reset_after=True):
    return dict(initial_state=initial_state, mask=mask, go_backwards=go_backwards, time_major=time_major,
                activation=activation, recurrent_activation=recurrent_activation,
                zero_output_for_mask=zero_output_for_mask, dropout_mask=dropout_mask,
                recurrent_dropout_mask=recurrent_dropout_mask, reset_after=reset_after)


def lstm(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
         time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
         dropout_mask=None, recurrent_dropout_mask=None, engine="auto"):
    """LSTM over a sequence: ``outputs, [h, c]``.  See the module docstring for shapes and options."""
    opts = _options(initial_state, mask, go_backwards, time_major, activation, recurrent_activation,
                    zero_output_for_mask, dropout_mask, recurrent_dropout_mask)
    return _run("lstm", False, engine, x, kernel, recurrent_kernel, bias, opts)


def lstm_vjp(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
             time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
             dropout_mask=None, recurrent_dropout_mask=None, engine="auto"):
    """Like `lstm`, plus ``backward(d_outputs, d_final_states=None) -> grads`` (dict)."""
    opts = _options(initial_state, mask, go_backwards, time_major, activation, recurrent_activation,
                    zero_output_for_mask, dropout_mask, recurrent_dropout_mask)
    return _run("lstm", True, engine, x, kernel, recurrent_kernel, bias, opts)


def gru(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
        time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
        dropout_mask=None, recurrent_dropout_mask=None, reset_after=True, engine="auto"):
    """GRU over a sequence: ``outputs, [h]``; ``reset_after`` selects the bias layout (2, 3H) / (3H,)."""
    opts = _options(initial_state, mask, go_backwards, time_major, activation, recurrent_activation,
                    zero_output_for_mask, dropout_mask, recurrent_dropout_mask, reset_after)
    return _run("gru", False, engine, x, kernel, recurrent_kernel, bias, opts)


def gru_vjp(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
            time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
            dropout_mask=None, recurrent_dropout_mask=None, reset_after=True, engine="auto"):
    """Like `gru`, plus ``backward``."""
    opts = _options(initial_state, mask, go_backwards, time_major, activation, recurrent_activation,
                    zero_output_for_mask, dropout_mask, recurrent_dropout_mask, reset_after)
    return _run("gru", True, engine, x, kernel, recurrent_kernel, bias, opts)


def simple_rnn(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None, go_backwards=False,
               time_major=False, activation="tanh", zero_output_for_mask=False, dropout_mask=None,
               recurrent_dropout_mask=None, engine="auto"):
    """Fully connected RNN, h := act(x @ W + h @ R + b): ``outputs, [h]``."""
    opts = _options(initial_state, mask, go_backwards, time_major, activation, "sigmoid",
                    zero_output_for_mask, dropout_mask, recurrent_dropout_mask)
    return _run("simple_rnn", False, engine, x, kernel, recurrent_kernel, bias, opts)


def simple_rnn_vjp(x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None,
                   go_backwards=False, time_major=False, activation="tanh", zero_output_for_mask=False,
                   dropout_mask=None, recurrent_dropout_mask=None, engine="auto"):
    """Like `simple_rnn`, plus ``backward``."""
    opts = _options(initial_state, mask, go_backwards, time_major, activation, "sigmoid",
                    zero_output_for_mask, dropout_mask, recurrent_dropout_mask)
    return _run("simple_rnn", True, engine, x, kernel, recurrent_kernel, bias, opts)


def prepare(cell, kernel, recurrent_kernel, bias=None, *, activation="tanh", recurrent_activation="sigmoid",
            reset_after=True, engine="auto"):
    """Frozen copies of one cell's weights for repeated inference: returns a callable
    ``prepared(x, *, initial_state=None, mask=None, go_backwards=False, time_major=False, ...)`` ->
    ``outputs, final_states``, what ``<cell>(x, kernel, ...)`` returns (to float rounding: the plan may
    pack where a one-off call would not).  Each packed layout of the weights is made once, by
    the first call that needs it, instead of at every call (as an ONNX Runtime session prepacks its
    initializers).  Later writes to the arrays passed here are not seen.  See fastrnn/_prepared.py."""
    from fastrnn._prepared import Prepared

    return Prepared(cell, kernel, recurrent_kernel, bias, activation=activation,
                    recurrent_activation=recurrent_activation, reset_after=reset_after, engine=engine)


def explain(cell, x, kernel, recurrent_kernel, bias=None, engine="auto", **options):
    """Which kernel `fastrnn.functional.<cell>` would run for these arguments, and why."""
    spec, _ = build_spec(cell, x, kernel, recurrent_kernel, bias, **options)
    return _dispatch.explain(spec, engine)
