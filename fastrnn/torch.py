"""torch.nn.LSTM / GRU / RNN twins that run on fastrnn's compiled kernels.

    import fastrnn.torch
    lstm = fastrnn.torch.LSTM(28, 64, num_layers=2, batch_first=True, bidirectional=True)
    lstm.load_state_dict(torch.nn.LSTM(28, 64, 2, batch_first=True, bidirectional=True).state_dict())
    output, (h_n, c_n) = lstm(x)                       # x (B, T, 28), or a PackedSequence
    output, (h_n, c_n) = lstm(x, lengths=lengths)      # padded input + 1-D lengths, no packing needed

The modules take torch.nn's constructor arguments, hold the same nn.Parameters (weight_ih_l0,
bias_hh_l1_reverse, ... in torch's layout and with torch's initialisation) and return what torch.nn
returns, so they load each other's state_dict, train under DistributedDataParallel and swap in with
`from_torch` / `to_torch`.  A call that can be differentiated runs each layer and direction as one
autograd node on the torch-layout parameters as they are (fastrnn._torch_autograd.rnn_torch_layout,
which converts them to fastrnn's Keras layout, fastrnn/_weights.py, in NumPy and hands the gradients
back in torch's); under torch.compile or a torch.func transform the parameters are converted with
differentiable torch ops and fastrnn._torch_autograd.rnn runs the custom ops instead.  Either way the
gradients reach the parameters, the input and hx through autograd; nothing here re-implements RNN math.

Inference (``torch.no_grad()``, ``torch.inference_mode()``, or nothing requiring grad; not traced):
the call runs fastrnn's inference forward on frozen Keras-layout copies of the parameters
(fastrnn.functional.prepare, whose packed layouts are kept between calls), made again whenever a
parameter changes in a way torch records (its version counter: optimizer steps, in-place ops,
load_state_dict; new storage: `.to()`, `.double()`, assigning ``.data``).  Writing a parameter's memory
past torch (through a NumPy view) is not seen until ``flatten_parameters()``.  The copies cost one more
copy of the weights (plus their packed layouts) per module that ran inference; they are not pickled.
Measured (2 cores, LSTM, no_grad, medians): T=50 B=1 H=512 9.99 -> 2.19 ms (torch.nn 5.68), T=1 B=1
H=8 0.35 -> 0.05 ms (bench/NOTES.md 39).

torch.compile: the kernels are torch custom ops (torch.ops.fastrnn.rnn_forward / rnn_backward), so
``torch.compile(lstm, fullgraph=True)`` traces the whole forward and backward, single- or multi-layer,
bidirectional, batch_first or not, with or without hx.  A PackedSequence or ``lengths=`` input compiles
with a graph break (the length checks read tensor values), so not under ``fullgraph=True``.
``torch.func.functional_call`` / ``grad`` / ``vjp`` / ``vmap`` work too (see fastrnn/_torch_autograd.py).

Variable lengths (PackedSequence or ``lengths=``) become a right-padded (B, T) mask, which the kernels
handle natively: a masked step keeps the state, so h_n is each sequence's state at its own last step and
padded outputs are zeros.  The reverse direction reads the padded sequence from the end (go_backwards):
its padding comes first and keeps the initial state, so it starts at each sequence's last valid step, as
torch's packed reverse direction does; the mask is indexed by real time, so flipping the outputs back
puts every step in place.

Not supported: ``proj_size > 0`` (LSTM projections) and tensors off the CPU (the GPU path is not built).
"""
import math
import numbers
import warnings
import weakref

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fastrnn import functional
from fastrnn._torch_autograd import inference_ok, rnn_prepared, rnn_torch_layout, torch_layout_ok
from fastrnn._torch_autograd import rnn as _rnn

__all__ = ["LSTM", "GRU", "RNN", "from_torch", "to_torch"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


class RNNShapeError(ValueError, RuntimeError):
    """A wrong input or hx shape (a RuntimeError too, as torch.nn raises)."""


class RNNDtypeError(TypeError, RuntimeError):
    """An input dtype the module cannot run (a RuntimeError too, as torch.nn raises)."""


def _gru_blocks(t, dim):
    """torch GRU gates [r, z, n] <-> Keras [z, r, h] (the same swap both ways) along `dim`."""
    r, z, n = t.chunk(3, dim)
    return torch.cat([z, r, n], dim)


class _RNNBase(nn.Module):
    _cell = None     # "lstm", "gru" or "simple_rnn"
    _gates = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, _activation="tanh"):
        super().__init__()
        name = type(self).__name__
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: {arg} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name}: {arg} must be greater than zero, got {value}")
        for arg, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: {arg} should be of type bool, got: {type(value).__name__}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout should be a number in range [0, 1] representing the probability "
                             f"of an element being zeroed, got {dropout!r}")
        if proj_size:
            raise ValueError(f"{name}: proj_size={proj_size} (LSTM projections) is not supported by fastrnn; "
                             "use torch.nn.LSTM for projected LSTMs")
        if dtype is not None and dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name}: fastrnn's kernels run float32 and float64, got dtype={dtype}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = 0
        self._activation = _activation
        factory = {"device": device, "dtype": dtype}
        gate_size = self._gates * hidden_size
        self._flat_weights_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self._directions
            for suffix in self._suffixes(layer):
                shapes = [("weight_ih", (gate_size, layer_input)), ("weight_hh", (gate_size, hidden_size))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                for kind, shape in shapes:
                    self.register_parameter(kind + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(kind + suffix)
        self.reset_parameters()

    @property
    def _directions(self):
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer):
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def reset_parameters(self):
        """torch.nn's initialisation: every parameter uniform(-1/sqrt(H), 1/sqrt(H)), in torch's order
        (so the same seed gives torch.nn's weights)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self):
        """Drops the inference calls' frozen weights (torch.nn's cuDNN weight compaction has no CPU
        counterpart): the next inference call converts the parameters afresh.  Needed only after writing
        the parameters' memory past torch's version counter (through a NumPy view, say)."""
        self.__dict__["_frozen"] = {}

    def __getstate__(self):
        state = self.__dict__.copy()   # pickle and deepcopy leave the frozen weights (a cache) behind
        state.pop("_frozen", None)
        return state

    def _frozen_weights(self, suffix):
        """fastrnn.functional.prepare's handle on one direction's parameters in the Keras layout, made
        again whenever a parameter changed: the key holds each parameter's identity (a weak reference),
        storage address and torch version counter, which every in-place torch op bumps (optimizer steps,
        load_state_dict, ``with torch.no_grad(): p.copy_(...)``); `.to()`, `.double()` and assigning
        ``.data`` make new storage."""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")
        params = [getattr(self, n + suffix) for n in names]
        key = tuple((p.data_ptr(), p._version, p.dtype, tuple(p.shape)) for p in params)
        cache = self.__dict__.setdefault("_frozen", {})
        hit = cache.get(suffix)
        if hit is not None and hit[1] == key and all(r() is p for r, p in zip(hit[0], params)):
            return hit[2]
        with torch.no_grad():
            kernel, recurrent, bias = (None if t is None else t.numpy()
                                       for t in self._keras_weights(suffix))
        prepared = functional.prepare(self._cell, kernel, recurrent, bias, activation=self._activation)
        cache[suffix] = ([weakref.ref(p) for p in params], key, prepared)
        return prepared

    @property
    def _flat_weights(self):
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self):
        return [[getattr(self, kind + suffix) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                 if hasattr(self, kind + suffix)]
                for layer in range(self.num_layers) for suffix in self._suffixes(layer)]

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self._activation != "tanh":
            s += ", nonlinearity='relu'"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    # -- weights: torch layout -> Keras layout, differentiably ------------------------------------------

    def _direction_parameters(self, suffix):
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer and direction (biases None without)."""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")
        params = [getattr(self, n + suffix) for n in names]
        return tuple(params) + (None, None) * (not self.bias)

    def _keras_weights(self, suffix):
        w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
        b_ih, b_hh = (getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix)) if self.bias \
            else (None, None)
        if self._cell == "gru":
            kernel, recurrent = _gru_blocks(w_ih, 0).t(), _gru_blocks(w_hh, 0).t()
            bias = None if b_ih is None else torch.stack([_gru_blocks(b_ih, 0), _gru_blocks(b_hh, 0)])
        else:
            kernel, recurrent = w_ih.t(), w_hh.t()
            bias = None if b_ih is None else b_ih + b_hh
        return kernel, recurrent, bias

    # -- forward -----------------------------------------------------------------------------------------

    def forward(self, input, hx=None, *, lengths=None):
        """torch.nn's forward: ``input`` (T, B, I) ((B, T, I) with batch_first), (T, I) unbatched, or a
        PackedSequence; ``hx`` (num_layers * num_directions, B, H) (a (h_0, c_0) pair for LSTM).
        ``lengths``: optional 1-D tensor of B sequence lengths for a padded batched input (an alternative
        to packing; padded output positions are zeros and h_n is each sequence's last valid state).
        Returns ``(output, h_n)``, or ``(output, (h_n, c_n))`` for LSTM; output is a PackedSequence when
        input is one."""
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError(f"{name}: pass either a PackedSequence or lengths=, not both")
            source = input
            input, lengths = pad_packed_sequence(source, batch_first=self.batch_first)
        elif not isinstance(input, torch.Tensor):
            raise TypeError(f"{name}: input must be a torch.Tensor or a PackedSequence, got {type(input).__name__}")
        self._check_input(input)
        batched = input.dim() == 3
        if not batched:
            if lengths is not None:
                raise ValueError(f"{name}: lengths= needs a batched 3-D input, got a 2-D (unbatched) input")
            input = input.unsqueeze(0 if self.batch_first else 1)
        time_axis, batch_axis = (1, 0) if self.batch_first else (0, 1)
        T, B = input.shape[time_axis], input.shape[batch_axis]
        h0, c0 = self._split_hx(hx, B, batched, input)
        mask = None if lengths is None else self._mask(lengths, B, T, input.device)

        layer_input = input
        h_n, c_n = [], []
        # no gradient can be asked (no_grad / inference_mode, or nothing requires grad) and nothing traces
        # the call: fastrnn's inference forward on frozen weights, not the custom ops' training forward
        inference = inference_ok(input, h0, c0, *self._flat_weights)
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                k = layer * self._directions + direction
                h0_k, c0_k = None if h0 is None else h0[k], None if c0 is None else c0[k]
                options = dict(mask=mask, go_backwards=direction == 1, time_major=not self.batch_first,
                               zero_output_for_mask=mask is not None)
                if inference:   # frozen weights, packed once (fastrnn.functional.prepare)
                    out, states = rnn_prepared(self._frozen_weights(suffix), layer_input, h0_k, c0_k, **options)
                elif torch_layout_ok(layer_input, h0_k, c0_k, *(params := self._direction_parameters(suffix))):
                    # plain eager autograd: torch's parameters in one node (no graph ops of our own)
                    out, states = rnn_torch_layout(self._cell, layer_input, *params, h0_k, c0_k,
                                                   activation=self._activation, **options)
                else:
                    kernel, recurrent, bias = self._keras_weights(suffix)
                    out, states = _rnn(self._cell, layer_input, kernel, recurrent, bias, h0_k, c0_k,
                                       activation=self._activation, **options)
                outputs.append(out.flip(time_axis) if direction == 1 else out)
                h_n.append(states[0])
                if self._cell == "lstm":
                    c_n.append(states[1])
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)

        output = layer_input
        # (one layer and direction: a view, not stack's copy and its backward node)
        h_n = h_n[0].unsqueeze(0) if len(h_n) == 1 else torch.stack(h_n)
        c_n = None if not c_n else c_n[0].unsqueeze(0) if len(c_n) == 1 else torch.stack(c_n)
        if not batched:
            output = output.squeeze(batch_axis)
            h_n = h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        if packed:
            output = self._repack(output, source)
        return output, ((h_n, c_n) if self._cell == "lstm" else h_n)

    def _check_input(self, x):
        name = type(self).__name__
        if x.dim() not in (2, 3):
            raise RNNShapeError(f"{name}: Expected input to be 2D or 3D, got {x.dim()}D instead")
        if x.shape[-1] != self.input_size:
            raise RNNShapeError(f"{name}: input.size(-1) must be equal to input_size. "
                                f"Expected {self.input_size}, got {x.shape[-1]}")
        weight = self.weight_ih_l0
        if not x.is_floating_point():
            raise RNNDtypeError(f"{name}: input must be a floating-point tensor ({weight.dtype}, the module's "
                                f"dtype), got {x.dtype}")
        if x.dtype != weight.dtype:
            raise RNNDtypeError(f"{name}: input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                                f"Convert input: input.to({weight.dtype}), or convert model: model.to({x.dtype})")
        if weight.dtype not in _FLOAT_DTYPES:
            raise RNNDtypeError(f"{name}: fastrnn's kernels run float32 and float64, the module is {weight.dtype}")
        for t, what in ((x, "input"), (weight, "the module's parameters")):
            if t.device.type != "cpu":
                raise ValueError(f"{name}: fastrnn runs CPU tensors; {what} on {t.device} "
                                 "(the GPU path is not built yet)")

    def _split_hx(self, hx, B, batched, x):
        """hx -> (h0, c0) of shape (L*D, B, H), or (None, None) for zeros."""
        name = type(self).__name__
        if hx is None:
            return None, None
        if self._cell == "lstm":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"{name}: hx must be a (h_0, c_0) tuple of tensors, got {type(hx).__name__}")
            states = list(hx)
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{name}: hx must be a tensor, got {type(hx).__name__}")
            states = [hx]
        expected = (self.num_layers * self._directions, B, self.hidden_size)
        for i, s in enumerate(states):
            label = ("h_0", "c_0")[i] if self._cell == "lstm" else "hx"
            if not isinstance(s, torch.Tensor):
                raise TypeError(f"{name}: {label} must be a tensor, got {type(s).__name__}")
            if not batched:
                if s.dim() != 2:
                    raise RNNShapeError(f"{name}: For unbatched 2-D input, {label} should also be 2-D but got "
                                        f"{s.dim()}-D tensor")
                s = s.unsqueeze(1)
            elif s.dim() != 3:
                raise RNNShapeError(f"{name}: For batched 3-D input, {label} should also be 3-D but got "
                                    f"{s.dim()}-D tensor")
            if tuple(s.shape) != expected:
                raise RNNShapeError(f"{name}: Expected {label} size {expected}, got {list(s.shape)}")
            if s.dtype != x.dtype:
                raise RNNDtypeError(f"{name}: {label} dtype ({s.dtype}) does not match input dtype ({x.dtype})")
            states[i] = s
        return states[0], (states[1] if self._cell == "lstm" else None)

    def _mask(self, lengths, B, T, device):
        name = type(self).__name__
        lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise RNNShapeError(f"{name}: lengths must be a 1-D tensor of {B} sequence lengths, got shape "
                                f"{tuple(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise RNNDtypeError(f"{name}: lengths must be an integer tensor, got {lengths.dtype}")
        if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
            raise ValueError(f"{name}: lengths must lie in [0, {T}] (the padded length), got "
                             f"{lengths.tolist()}")
        return torch.arange(T, device=lengths.device)[None, :] < lengths.to(torch.int64)[:, None]

    def _repack(self, output, source):
        """Padded output (original batch order) -> a PackedSequence with the input's batch_sizes and
        sort order."""
        batch_axis = 0 if self.batch_first else 1
        if source.sorted_indices is not None:
            output = output.index_select(batch_axis, source.sorted_indices)
        lengths = _packed_lengths(source.batch_sizes)
        data = pack_padded_sequence(output, lengths, batch_first=self.batch_first, enforce_sorted=True).data
        return PackedSequence(data, source.batch_sizes, source.sorted_indices, source.unsorted_indices)


def _packed_lengths(batch_sizes):
    """Sorted (decreasing) lengths from a PackedSequence's batch_sizes."""
    batch_sizes = batch_sizes.to(torch.int64)
    return (torch.arange(int(batch_sizes[0]))[:, None] < batch_sizes[None, :]).sum(1)


class LSTM(_RNNBase):
    """torch.nn.LSTM on fastrnn's kernels: ``LSTM(input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None)``;
    ``forward(input, hx=None, *, lengths=None) -> output, (h_n, c_n)``.  proj_size must be 0."""
    _cell, _gates = "lstm", 4

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)


class GRU(_RNNBase):
    """torch.nn.GRU on fastrnn's kernels (Keras GRU with reset_after=True): ``GRU(input_size, hidden_size,
    num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None,
    dtype=None)``; ``forward(input, hx=None, *, lengths=None) -> output, h_n``."""
    _cell, _gates = "gru", 3

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype)


class RNN(_RNNBase):
    """torch.nn.RNN (Elman, tanh or relu) on fastrnn's kernels: ``RNN(input_size, hidden_size,
    num_layers=1, nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0, bidirectional=False,
    device=None, dtype=None)``; ``forward(input, hx=None, *, lengths=None) -> output, h_n``."""
    _cell, _gates = "simple_rnn", 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, _activation=nonlinearity)

    @property
    def nonlinearity(self):
        return self._activation


# -- conversion between torch.nn and fastrnn.torch ---------------------------------------------------------

_TWINS = ((nn.LSTM, LSTM), (nn.GRU, GRU), (nn.RNN, RNN))


def _config(module):
    kw = dict(input_size=module.input_size, hidden_size=module.hidden_size, num_layers=module.num_layers,
              bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
              bidirectional=module.bidirectional)
    if isinstance(module, (nn.RNN, RNN)):
        kw["nonlinearity"] = module.nonlinearity
    first = module.weight_ih_l0
    return kw, {"device": first.device, "dtype": first.dtype}


def _convert(module, target):
    kw, factory = _config(module)
    with warnings.catch_warnings():  # the dropout warning was already given for `module`
        warnings.simplefilter("ignore", UserWarning)
        twin = target(**kw, **factory)
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin


def from_torch(module):
    """torch.nn.LSTM / GRU / RNN -> the fastrnn.torch twin with the same configuration, a copy of the
    weights, dtype, device and training mode.  Refuses proj_size > 0."""
    for source, target in _TWINS:
        if type(module) is source or (isinstance(module, source) and not isinstance(module, _RNNBase)):
            if getattr(module, "proj_size", 0):
                raise ValueError(f"from_torch: proj_size={module.proj_size} (LSTM projections) is not "
                                 "supported by fastrnn")
            return _convert(module, target)
    raise TypeError(f"from_torch: expected a torch.nn.LSTM, GRU or RNN, got {type(module).__name__}")


def to_torch(module):
    """fastrnn.torch LSTM / GRU / RNN -> the torch.nn module with the same configuration, a copy of the
    weights, dtype, device and training mode."""
    for target, source in _TWINS:
        if isinstance(module, source):
            return _convert(module, target)
    raise TypeError(f"to_torch: expected a fastrnn.torch LSTM, GRU or RNN, got {type(module).__name__}")
