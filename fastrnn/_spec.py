"""One frozen description of an RNN call, validated once (oneDNN's "configuration object").

`build_spec` is the only place that looks at user arguments: ranks, shapes, dtypes, activation names,
masks and states.  Every error names what was expected and what came.  It returns the `Spec` (plain
numbers and flags, hashable) and the `Arrays` (the inputs converted to the compute dtype, never written
to: a conversion copies, an array that already fits is passed through read-only use).
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

CELLS = ("lstm", "gru", "simple_rnn")
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
N_STATES = {"lstm": 2, "gru": 1, "simple_rnn": 1}
# The names the compiled gate math knows (gates.h enum fr_act; tests check the reference knows the same).
ACTIVATION_CODES = {"tanh": 0, "sigmoid": 1, "hard_sigmoid": 2, "relu": 3, "linear": 4, "softsign": 5}
CELL_CODES = {"lstm": 0, "gru": 1, "simple_rnn": 2}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Spec:
    """A validated RNN problem: cell, sizes, dtype and options (no arrays)."""

    cell: str
    T: int
    B: int
    I: int
    H: int
    dtype: np.dtype
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    reset_after: bool = True
    go_backwards: bool = False
    time_major: bool = False
    zero_output_for_mask: bool = False
    has_bias: bool = True
    has_mask: bool = False
    has_dropout: bool = False
    has_recurrent_dropout: bool = False
    device: str = "cpu"

    @property
    def G(self):
        return GATES[self.cell]

    @property
    def n_states(self):
        return N_STATES[self.cell]

    @property
    def cell_code(self):
        return CELL_CODES[self.cell]

    @property
    def act_code(self):
        return ACTIVATION_CODES[self.activation]

    @property
    def ract_code(self):
        return ACTIVATION_CODES[self.recurrent_activation]

    @property
    def id(self):
        """Problem name shared by tests and benchmarks, e.g. 'lstm-t7-b3-i17-h34'."""
        return f"{self.cell}-t{self.T}-b{self.B}-i{self.I}-h{self.H}"


class Arrays(NamedTuple):
    """The inputs of one call, in the compute dtype.  x keeps its layout ((B,T,I) or (T,B,I))."""

    x: np.ndarray
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: Optional[np.ndarray]
    initial_state: Optional[list]
    mask: Optional[np.ndarray]  # (B, T) bool
    dropout_mask: Optional[np.ndarray]  # (B, I)
    recurrent_dropout_mask: Optional[np.ndarray]  # (B, H)


def _as_float_array(name, a, dtype=None):
    """`a` as an ndarray of a float dtype (or `dtype`); TypeError for anything else."""
    if not isinstance(a, np.ndarray):
        if hasattr(a, "__cuda_array_interface__"):
            raise TypeError(f"{name}: GPU arrays are not supported by the CPU engine yet; got {type(a).__name__}")
        try:
            a = np.asarray(a)
        except Exception as exc:  # noqa: BLE001 - anything numpy cannot read
            raise TypeError(f"{name}: expected an array of floats, got {type(a).__name__}") from exc
    if a.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    return a


def _check_shape(name, a, expected):
    if a.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {a.shape}")


def _check_activation(name, value):
    if callable(value) and not isinstance(value, str):
        raise TypeError(
            f"{name}: the compiled engine takes an activation by name ({', '.join(ACTIVATION_CODES)}); "
            f"got the callable {value!r} (Python callables run in the layer API's generic loop)"
        )
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected an activation name, one of {', '.join(ACTIVATION_CODES)}; "
                        f"got {type(value).__name__} {value!r}")
    if value not in ACTIVATION_CODES:
        raise ValueError(f"{name}: expected one of {', '.join(ACTIVATION_CODES)}, got {value!r}")
    return value


def build_spec(cell, x, kernel, recurrent_kernel, bias=None, *, initial_state=None, mask=None,
               go_backwards=False, time_major=False, activation="tanh", recurrent_activation="sigmoid",
               zero_output_for_mask=False, dropout_mask=None, recurrent_dropout_mask=None, reset_after=True):
    """Validate one call of `fastrnn.functional.<cell>`; return (Spec, Arrays).

    Shapes: x (B, T, I) or (T, B, I) with time_major; kernel (I, G*H); recurrent_kernel (H, G*H); bias
    (G*H,), or (2, 3H) for GRU with reset_after=True; initial_state a list of n_states (B, H) arrays (a
    single array is accepted when n_states == 1); mask (B, T) bool/0-1; dropout_mask (B, I);
    recurrent_dropout_mask (B, H).  The compute dtype is x's (float32 or float64); weights and masks
    are converted to it.
    """
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    G = GATES[cell]
    x = _as_float_array("x", x)
    if x.dtype.kind == "f" and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))  # byte-swapped data (e.g. read from a file): a native copy
    if x.dtype not in DTYPES:
        raise TypeError(f"x: expected dtype float32 or float64, got {x.dtype}")
    if x.ndim != 3:
        layout = "(T, B, features)" if time_major else "(batch, timesteps, features)"
        raise ValueError(f"x: expected a 3-D array {layout}, got shape {x.shape}")
    dtype = x.dtype
    T, B, I = (x.shape[0], x.shape[1], x.shape[2]) if time_major else (x.shape[1], x.shape[0], x.shape[2])

    recurrent_kernel = _as_float_array("recurrent_kernel", recurrent_kernel, dtype)
    if recurrent_kernel.ndim != 2 or recurrent_kernel.shape[1] != G * recurrent_kernel.shape[0]:
        raise ValueError(f"recurrent_kernel: expected shape (units, {G}*units) for {cell}, "
                         f"got {recurrent_kernel.shape}")
    H = recurrent_kernel.shape[0]
    if H == 0:
        raise ValueError("recurrent_kernel: expected at least one unit, got shape (0, 0)")
    if max(B * T, I, H) * G * H >= 2**31 or B * T * I >= 2**31:
        raise ValueError(f"x: the problem (B={B}, T={T}, I={I}, units={H}) has arrays of 2**31 elements or "
                         "more, beyond the 32-bit BLAS the engine uses; split the batch or the sequence")
    kernel = _as_float_array("kernel", kernel, dtype)
    if kernel.shape != (I, G * H):
        raise ValueError(f"kernel: expected shape {(I, G * H)} (features of x, {G}*units), got {kernel.shape}")

    if bias is not None:
        bias = _as_float_array("bias", bias, dtype)
        if cell == "gru" and reset_after:
            _check_shape("bias", bias, (2, G * H))
        else:
            _check_shape("bias", bias, (G * H,))

    n_states = N_STATES[cell]
    if initial_state is not None:
        if isinstance(initial_state, np.ndarray) and n_states == 1:
            initial_state = [initial_state]
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) != n_states:
            got = len(initial_state) if isinstance(initial_state, (list, tuple)) else type(initial_state).__name__
            raise ValueError(f"initial_state: expected a list of {n_states} arrays of shape ({B}, {H}) for "
                             f"{cell}, got {got}")
        states = []
        for k, s in enumerate(initial_state):
            s = _as_float_array(f"initial_state[{k}]", s, dtype)
            _check_shape(f"initial_state[{k}]", s, (B, H))
            states.append(s)
        initial_state = states

    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            if mask.dtype.kind not in "iu":
                raise TypeError(f"mask: expected a bool (or 0/1 integer) array, got dtype {mask.dtype}")
            mask = mask != 0
        _check_shape("mask", mask, (B, T))
    if dropout_mask is not None:
        dropout_mask = _as_float_array("dropout_mask", dropout_mask, dtype)
        _check_shape("dropout_mask", dropout_mask, (B, I))
    if recurrent_dropout_mask is not None:
        recurrent_dropout_mask = _as_float_array("recurrent_dropout_mask", recurrent_dropout_mask, dtype)
        _check_shape("recurrent_dropout_mask", recurrent_dropout_mask, (B, H))

    activation = _check_activation("activation", activation)
    recurrent_activation = _check_activation("recurrent_activation", recurrent_activation)
    spec = Spec(
        cell=cell, T=T, B=B, I=I, H=H, dtype=dtype, activation=activation,
        recurrent_activation=recurrent_activation, reset_after=bool(reset_after) if cell == "gru" else True,
        go_backwards=bool(go_backwards), time_major=bool(time_major),
        zero_output_for_mask=bool(zero_output_for_mask), has_bias=bias is not None,
        has_mask=mask is not None, has_dropout=dropout_mask is not None,
        has_recurrent_dropout=recurrent_dropout_mask is not None,
    )
    arrays = Arrays(x, kernel, recurrent_kernel, bias, initial_state, mask, dropout_mask, recurrent_dropout_mask)
    return spec, arrays


class Signature:
    """A call signature a SpecCache has validated: its Spec, the idle inference workspaces the compiled
    engine keeps for it (`idle`, fastrnn._compiled.forward's `reuse`), and fastrnn.functional's cached
    dispatch choice for it (`choice`: (the inputs it was made under, the Choice), or None)."""

    __slots__ = ("spec", "idle", "choice")

    def __init__(self, spec):
        self.spec, self.idle, self.choice = spec, [], None


class SpecCache:
    """build_spec's result for call signatures already validated, for a caller whose weights are fixed
    arrays (fastrnn.functional.prepare's copies, a built-in cell's read-only weights): a call whose x
    (and initial states, if any) are plain ndarrays of the weights' dtype, with no mask and no dropout
    masks, and whose x shape and options were validated before, skips build_spec's checks (about 7 us
    a call).  Anything else goes through build_spec, and is remembered when it is of that kind.
    A remembered signature is a `Signature`, which also keeps what a repeated call would otherwise make
    again: its inference workspaces and its plan."""

    MAX = 64   # signatures kept; a caller with ever new shapes starts over
    _KEY_OPTIONS = ("go_backwards", "time_major", "zero_output_for_mask", "activation", "recurrent_activation",
                    "reset_after")

    def __init__(self, cell, kernel, recurrent_kernel, bias):
        self.cell, self.kernel, self.recurrent_kernel, self.bias = cell, kernel, recurrent_kernel, bias
        self.dtype = kernel.dtype
        self.H = recurrent_kernel.shape[0]
        self._uniform = recurrent_kernel.dtype == self.dtype and (bias is None or bias.dtype == self.dtype)
        self._specs = {}

    def _states_ok(self, states, B):
        if states is None:
            return True
        if type(states) not in (list, tuple) or len(states) != N_STATES[self.cell]:
            return False
        return all(type(s) is np.ndarray and s.dtype == self.dtype and s.shape == (B, self.H) for s in states)

    def _plain_x(self, x):
        """Whether x is of the kind signatures are remembered for: a plain ndarray of the weights' dtype
        (over weights of one dtype)."""
        return self._uniform and type(x) is np.ndarray and x.dtype == self.dtype

    def remembered(self, x, flags):
        """The Signature of a call with no masks or dropout masks, x and `flags` (the values of
        _KEY_OPTIONS, in order), if it is remembered; else None.  With no initial states either, its
        arrays are plain_arrays(x)."""
        return self._specs.get((x.shape, *flags)) if self._plain_x(x) else None

    def plain_arrays(self, x):
        """The Arrays of a call `remembered` found."""
        return Arrays(x, self.kernel, self.recurrent_kernel, self.bias, None, None, None, None)

    def __call__(self, x, options):
        """(spec, arrays, signature) of the call `options` (fastrnn.functional's keyword arguments but
        engine) describes: spec and arrays as build_spec returns them, and the call's Signature (None: a
        call of a kind not remembered)."""
        no_masks = (options["mask"] is None and options["dropout_mask"] is None
                    and options["recurrent_dropout_mask"] is None)
        if no_masks:
            flags = tuple(map(options.get, self._KEY_OPTIONS))
            seen = self.remembered(x, flags)
            states = options["initial_state"]
            if seen is not None and self._states_ok(states, seen.spec.B):
                states = None if states is None else list(states)
                return seen.spec, Arrays(x, self.kernel, self.recurrent_kernel, self.bias, states, None, None, None), seen
        spec, arrays = build_spec(self.cell, x, self.kernel, self.recurrent_kernel, self.bias, **options)
        # remembered when x is what `remembered` looks up and build_spec took it as it is
        if no_masks and self._plain_x(x) and arrays.x is x:
            if len(self._specs) >= self.MAX:
                self._specs.clear()
            seen = self._specs[(x.shape, *flags)] = Signature(spec)
            return spec, arrays, seen
        return spec, arrays, None


def check_cotangents(spec, d_outputs, d_final_states):
    """Validate the arguments of a vjp's backward; return (d_outputs, [d_state or None, ...]) in the
    compute dtype.  d_outputs has the outputs' shape and layout; d_final_states is None or a list of
    n_states entries, each None or (B, H)."""
    out_shape = (spec.T, spec.B, spec.H) if spec.time_major else (spec.B, spec.T, spec.H)
    d_outputs = _as_float_array("d_outputs", d_outputs, spec.dtype)
    _check_shape("d_outputs", d_outputs, out_shape)
    if d_final_states is None:
        d_final_states = [None] * spec.n_states
    if not isinstance(d_final_states, (list, tuple)) or len(d_final_states) != spec.n_states:
        got = len(d_final_states) if isinstance(d_final_states, (list, tuple)) else type(d_final_states).__name__
        raise ValueError(f"d_final_states: expected a list of {spec.n_states} entries (None or shape "
                         f"{(spec.B, spec.H)}), got {got}")
    checked = []
    for k, d in enumerate(d_final_states):
        if d is not None:
            d = _as_float_array(f"d_final_states[{k}]", d, spec.dtype)
            _check_shape(f"d_final_states[{k}]", d, (spec.B, spec.H))
        checked.append(d)
    return d_outputs, checked
