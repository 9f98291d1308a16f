"""fastrnn's forward/backward as two torch custom ops: the bridge every torch-based adapter uses
(fastrnn.torch's nn.Module twins, fastrnn.keras under the torch backend).

    outputs, states = rnn(cell, x, kernel, recurrent_kernel, bias, h0, c0, mask=..., go_backwards=..., ...)

Arrays are in fastrnn's canonical Keras layout (fastrnn/_weights.py); callers convert torch.nn's layout
once.  Two ops, built with ``torch.library.custom_op`` (namespace ``fastrnn``):

``torch.ops.fastrnn.rnn_forward``
    the compiled training forward (fastrnn._compiled.forward_residuals).  Returns outputs, h, c AND the
    residuals its backward reads (post-activation gates, state sequences; fastrnn._compiled.residual_shapes)
    as tensors, so no state hides in a Python closure.
``torch.ops.fastrnn.rnn_backward``
    the compiled BPTT from those residuals and the cotangents (fastrnn._compiled.backward_from_residuals):
    every gradient in one call; the forward never runs again.

Both have ``register_fake`` kernels (shapes and dtypes only) and a per-example ``register_vmap`` rule;
rnn_forward's ``register_autograd`` formula calls rnn_backward.  What works:

- ``torch.compile(..., fullgraph=True)`` (inductor or aot_eager): `rnn` calls the op itself, which stays
  one opaque node in the forward graph and rnn_backward one in the backward graph;
- ``torch.func.grad`` / ``vjp`` / ``jacrev`` and plain autograd, DDP, ``torch.autograd.gradcheck``: in eager
  mode `rnn` goes through `_RNNFunction`, an autograd.Function with the same setup_context/backward,
  because torch.func refuses the Function that register_autograd generates (pytorch/pytorch#168393);
- ``torch.func.vmap``: correct but not batched into one kernel call (the ops run once per vmapped index);
- not supported: second derivatives (a clear RuntimeError), tensors off the CPU (a ValueError).

fastrnn.torch's modules, in plain eager autograd, run `rnn_torch_layout` instead: torch.nn's parameters
in, one autograd node per layer and direction (`_TorchLayoutFunction`, the same computations).

A call of which no gradient can be asked (`inference_ok`: grad mode off or nothing requiring grad, no
torch.func transform or torch.compile trace active, plain tensors) skips the ops: `rnn` runs
fastrnn.functional's inference forward (no residuals written), and `rnn_prepared` the same on a
fastrnn.functional.prepare handle (fastrnn.torch's modules keep one per direction).

Contracts: CPU tensors cross to NumPy without copies (a transposed view, torch's (G*H, I) weights seen
in the Keras layout: the kernel is read in place with trans_b, the recurrent kernel copied by the tiled
`engine.transpose_into`, which its many packed layouts read); x, the weights, the masks and the residuals are saved
with ``ctx.save_for_backward``, so an in-place change before backward raises torch's "modified by an
inplace operation" error instead of giving wrong gradients; h0, c0 and bias are not saved (the forward
copies them into its state chain), so a stateful caller may update them in place before backward (Keras
does); mask and dropout masks are constants (no gradient).  Nothing here re-implements RNN math.
"""
import functools
from dataclasses import replace
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from fastrnn import _compiled, _scratch, functional
from fastrnn._native import engine
from fastrnn._spec import GATES as _GATES
from fastrnn._spec import N_STATES as _N_STATES
from fastrnn._spec import _check_activation, build_spec


def _torch_openmp():
    """(GOMP_parallel, omp_get_thread_num, omp_get_num_threads) addresses of the OpenMP runtime torch's
    parallel ops run on, or None (another parallel backend, or no runtime found already loaded).

    Why: after each parallel op torch's OpenMP threads spin for a while on their cores, and fastrnn's
    own worker then waits for its core at every barrier: on two cores a training step through
    fastrnn.torch ran 1.5-3x slower than its kernels alone.  Its kernels run on torch's team instead
    (fastrnn/_kernels/pool.h, "Host runtime"; bench/NOTES.md 39).  Only a runtime already in the
    process is taken (RTLD_NOLOAD), torch's own lib folder first, then what /proc/self/maps lists."""
    import ctypes
    import glob
    import os

    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    names = ("libgomp", "libiomp5", "libomp")
    candidates = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "lib*omp*")))
    try:
        with open("/proc/self/maps") as maps:
            candidates += sorted({line.split()[-1] for line in maps if "omp" in line and "/" in line})
    except OSError:
        pass
    for path in candidates:
        if not os.path.basename(path).startswith(names):
            continue
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            fns = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                   for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")]
        except (OSError, AttributeError):
            continue
        if all(fns):
            return tuple(fns)
    return None


_HOST = _torch_openmp()
if _HOST is not None:
    engine.pool_set_host(*_HOST)


class _on_torch_threads:
    """Within: this thread's fastrnn tasks run on torch's OpenMP team (when one was found)."""

    def __enter__(self):
        self.before = engine.pool_use_host(True)

    def __exit__(self, *exc):
        engine.pool_use_host(self.before)


# the residual tensors of rnn_forward, in output order after (outputs, h, c); absent ones are (0,)-shaped
_RESIDUALS = ("gates", "hp", "cp", "hd", "aux", "c_last")
_FLOAT_DTYPES = (torch.float32, torch.float64)


def _to_numpy(t, name, in_place=False):
    """t's values as a NumPy array: its memory where contiguous, else a copy; a transposed view (torch's
    (G*H, I) weights seen as Keras's (I, G*H)) comes as a C-contiguous copy, or with `in_place` as the
    transposed NumPy view of its memory (the kernel: fastrnn._compiled.Workspace reads it so)."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise ValueError(f"{name}: fastrnn's torch bridge runs CPU tensors; got a tensor on {t.device} "
                         "(the GPU path is not built yet)")
    # the strided view of t's memory, its layout read on the NumPy side: a microsecond or two, where
    # torch's is_contiguous / t() checks cost 6-7 us a transposed weight (a dozen conversions a step)
    a = t.detach().numpy()
    if a.flags.c_contiguous:
        return a
    if a.ndim == 2 and a.flags.f_contiguous:
        if in_place:
            return a
        # a transposed view (torch's (G*H, I) weights seen as Keras's (I, G*H)): our tiled transpose,
        # 4-10x faster than torch's strided .contiguous() (bench/NOTES.md 39)
        out = _copy_buffer(a.shape, a.dtype)
        with _on_torch_threads():   # (a large one splits over the pool: torch's team, not our workers)
            engine.transpose_into(a.T, out)
        return out
    return np.ascontiguousarray(a)


def _copy_buffer(shape, dtype):
    """An uninitialised C-contiguous array for a weight copy, starting on a 64-byte line (transpose_into's
    16 x 16 blocks store whole lines only there: (512, 2048) 2 threads, 16-byte offset 250 vs 165 us,
    bench/NOTES.md 40), from fastrnn._scratch.take_result: a training step's copies die with its graph
    and their memory goes back to the pool, so a loop does not fault in fresh zeroed pages at every step
    (perf: clear_page 5-8% of a T50 B1 H512 step; bench/NOTES.md 42)."""
    return _scratch.take_result(shape, dtype, align=64)


def _is_transposed(t):
    """A 2-D view whose transpose is contiguous (and which is not contiguous itself)."""
    return t is not None and t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()


def _to_torch(a, dtype):
    """A NumPy result as a tensor sharing its memory (fresh arrays of the engine: nothing else holds them)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if t.dtype == dtype else t.to(dtype)   # (.to costs a microsecond even when it returns t)


def _spec(cell, x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask, recurrent_dropout_mask,
          go_backwards, time_major, activation, recurrent_activation, zero_output_for_mask, reset_after):
    """(Spec, Arrays) of one call, validated by fastrnn._spec.build_spec (the same errors as functional)."""
    states, mask_np = _states_and_mask(cell, h0, c0, mask)
    return build_spec(
        cell, _to_numpy(x, "x"), _to_numpy(kernel, "kernel", in_place=True),
        _to_numpy(recurrent_kernel, "recurrent_kernel"),
        _to_numpy(bias, "bias"), initial_state=states, mask=mask_np, go_backwards=go_backwards,
        time_major=time_major, activation=activation,
        recurrent_activation=recurrent_activation,
        zero_output_for_mask=zero_output_for_mask, dropout_mask=_to_numpy(dropout_mask, "dropout_mask"),
        recurrent_dropout_mask=_to_numpy(recurrent_dropout_mask, "recurrent_dropout_mask"),
        reset_after=reset_after)


def _states_and_mask(cell, h0, c0, mask):
    """The initial states as a list of arrays (None without h0) and the mask as a bool array (or None)."""
    states = None
    if h0 is not None:
        states = [_to_numpy(h0, "h0")] + ([_to_numpy(c0, "c0")] if cell == "lstm" else [])
    return states, None if mask is None else _to_numpy(mask, "mask").astype(bool, copy=False)


def _sizes(cell, x, recurrent_kernel, time_major):
    """(B, T, H, G) from the shapes alone (fake kernels: no data; build_spec validates the real call)."""
    B, T = (x.shape[1], x.shape[0]) if time_major else (x.shape[0], x.shape[1])
    return B, T, recurrent_kernel.shape[0], _GATES[cell]


# ---------------------------------------------------------------------------------------------------
# forward op

@torch.library.custom_op("fastrnn::rnn_forward", mutates_args=(), device_types="cpu")
def rnn_forward(x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Optional[Tensor],
                h0: Optional[Tensor], c0: Optional[Tensor], mask: Optional[Tensor],
                dropout_mask: Optional[Tensor], recurrent_dropout_mask: Optional[Tensor], cell: str,
                go_backwards: bool, time_major: bool, activation: str, recurrent_activation: str,
                zero_output_for_mask: bool, reset_after: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training forward: ``(outputs, h, c, gates, hp, cp, hd, aux, c_last)``, all in x's dtype.

    outputs (B, T, H) ((T, B, H) with time_major); h (B, H); c (B, H) for LSTM, else (0,); then the
    residuals for rnn_backward (fastrnn._compiled.residual_shapes; an absent one is (0,)).  Shapes of
    the inputs as fastrnn.functional (Keras layout); h0 (and c0 for LSTM) or neither."""
    return _forward_impl(x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask, recurrent_dropout_mask,
                         cell, go_backwards, time_major, activation, recurrent_activation, zero_output_for_mask,
                         reset_after)


def _forward_impl(x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask, recurrent_dropout_mask, cell,
                  go_backwards, time_major, activation, recurrent_activation, zero_output_for_mask, reset_after,
                  keep_copies=False):
    """rnn_forward's computation (called by the op, and directly by `_EagerRNNFunction`).  keep_copies:
    one more output, the Keras-layout copy this call made of recurrent_kernel where it came as a
    transposed view (torch's layout), else (0,)-shaped: the backward reads it instead of transposing
    again.  (A transposed kernel needs none: it is read in place, torch's memory as it is, by the
    projection and the input gradient; fastrnn._compiled.Workspace.)"""
    return _forward_call(x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask, recurrent_dropout_mask,
                         cell, go_backwards, time_major, activation, recurrent_activation, zero_output_for_mask,
                         reset_after, keep_copies)[0]


def _forward_call(x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask, recurrent_dropout_mask, cell,
                  go_backwards, time_major, activation, recurrent_activation, zero_output_for_mask, reset_after,
                  keep_copies):
    """`_forward_impl` and what its backward would rebuild from the saved tensors: ``(outputs, (spec,
    arrays, residuals))``, the validated call as NumPy views and the residuals as arrays (the memory of
    the residual outputs)."""
    spec, arrays = _spec(cell, x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask,
                         recurrent_dropout_mask, go_backwards, time_major, activation, recurrent_activation,
                         zero_output_for_mask, reset_after)
    with _on_torch_threads():
        out, final, residuals = _compiled.forward_residuals(spec, arrays)
    dt = x.dtype
    c = _to_torch(final[1], dt) if cell == "lstm" else x.new_empty((0,))
    res = [x.new_empty((0,)) if residuals[k] is None else _to_torch(residuals[k], dt) for k in _RESIDUALS]
    if keep_copies:
        res.append(_to_torch(arrays.recurrent_kernel, dt) if _is_transposed(recurrent_kernel)
                   else x.new_empty((0,)))
    return (_to_torch(out, dt), _to_torch(final[0], dt), c, *res), (spec, arrays, residuals)


@rnn_forward.register_fake
def _rnn_forward_fake(x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask, recurrent_dropout_mask,
                      cell, go_backwards, time_major, activation, recurrent_activation, zero_output_for_mask,
                      reset_after):
    B, T, H, G = _sizes(cell, x, recurrent_kernel, time_major)
    out = x.new_empty((T, B, H) if time_major else (B, T, H))
    c = x.new_empty((B, H) if cell == "lstm" else (0,))
    shapes = _compiled.residual_shapes(cell, B, T, H, recurrent_dropout_mask is not None)
    res = [x.new_empty((0,) if shapes[k] is None else shapes[k]) for k in _RESIDUALS]
    return (out, x.new_empty((B, H)), c, *res)


# ---------------------------------------------------------------------------------------------------
# backward op

@torch.library.custom_op("fastrnn::rnn_backward", mutates_args=(), device_types="cpu")
def rnn_backward(x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, mask: Optional[Tensor],
                 dropout_mask: Optional[Tensor], recurrent_dropout_mask: Optional[Tensor], gates: Tensor,
                 hp: Tensor, cp: Tensor, hd: Tensor, aux: Tensor, c_last: Tensor, d_outputs: Optional[Tensor],
                 d_h: Optional[Tensor], d_c: Optional[Tensor], cell: str, go_backwards: bool, time_major: bool,
                 activation: str, recurrent_activation: str, zero_output_for_mask: bool, reset_after: bool,
                 has_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """BPTT from rnn_forward's residuals: ``(d_x, d_kernel, d_recurrent_kernel, d_bias, d_h0, d_c0)``.

    x, the weights, the masks and the options are those of the forward; gates..c_last its residuals;
    d_outputs (outputs' shape), d_h, d_c (B, H) the cotangents, None meaning zeros.  d_bias has the
    bias's shape ((0,) when has_bias is False); d_h0 (B, H); d_c0 (B, H) for LSTM, else (0,)."""
    return _backward_impl(x, kernel, recurrent_kernel, mask, dropout_mask, recurrent_dropout_mask, gates, hp, cp,
                          hd, aux, c_last, d_outputs, d_h, d_c, cell, go_backwards, time_major, activation,
                          recurrent_activation, zero_output_for_mask, reset_after, has_bias)


def _backward_impl(x, kernel, recurrent_kernel, mask, dropout_mask, recurrent_dropout_mask, gates, hp, cp, hd,
                   aux, c_last, d_outputs, d_h, d_c, cell, go_backwards, time_major, activation,
                   recurrent_activation, zero_output_for_mask, reset_after, has_bias, transposed=(False, False),
                   call=None):
    """rnn_backward's computation.  transposed (`_EagerRNNFunction`, for weights that came as transposed
    views: torch's (G*H, I) layout seen as Keras's): d_kernel / d_recurrent_kernel come as transposed
    views of contiguous dW^T, so autograd hands torch's parameters contiguous gradients without torch's
    strided copy (the ops keep contiguous results, as their fake kernels say).  call (`_EagerRNNFunction`):
    the forward's ``(spec, arrays, residuals)`` (`_forward_call`), the same views of the same tensors,
    instead of validating and converting them again (~50 us a call)."""
    if call is None:
        spec, arrays = _spec(cell, x, kernel, recurrent_kernel, None, None, None, mask, dropout_mask,
                             recurrent_dropout_mask, go_backwards, time_major, activation, recurrent_activation,
                             zero_output_for_mask, reset_after)
        residuals = {k: _to_numpy(t, k) for k, t in zip(_RESIDUALS, (gates, hp, cp, hd, aux, c_last))}
    else:
        spec, arrays, residuals = call
        # the backward reads neither the bias nor the initial states (the state chain is in the residuals)
        arrays = arrays._replace(bias=None, initial_state=None)
    if spec.has_bias != has_bias:   # the bias itself is not needed: only whether to return d_bias
        spec = replace(spec, has_bias=has_bias)   # (dataclasses.replace: ~10 us warm, ~40 cold in a step)
    d_out, d_states = _cotangents(spec, d_outputs, d_h, d_c)
    with _on_torch_threads():
        grads = _compiled.backward_from_residuals(spec, arrays, residuals, d_out, d_states, transposed=transposed)
    dt = x.dtype
    db = _to_torch(grads["bias"], dt) if has_bias else x.new_empty((0,))
    d_init = grads["initial_state"]
    dc0 = _to_torch(d_init[1], dt) if cell == "lstm" else x.new_empty((0,))
    dk, dr = (_to_torch(grads[k], dt) for k in ("kernel", "recurrent_kernel"))
    dk, dr = dk.t() if transposed[0] else dk, dr.t() if transposed[1] else dr
    return _to_torch(grads["x"], dt), dk, dr, db, _to_torch(d_init[0], dt), dc0


def _cotangents(spec, d_outputs, d_h, d_c):
    """The backward's cotangents as arrays: (d_outputs, [d_h] or [d_h, d_c] for LSTM); a None d_outputs
    (the outputs got no gradient) is zeros, a None state cotangent stays None (zeros to the engine)."""
    if d_outputs is None:
        d_out = np.zeros((spec.T, spec.B, spec.H) if spec.time_major else (spec.B, spec.T, spec.H), spec.dtype)
    else:
        d_out = _to_numpy(d_outputs, "d_outputs")
    return d_out, [_to_numpy(d_h, "d_h")] + ([_to_numpy(d_c, "d_c")] if spec.cell == "lstm" else [])


@rnn_backward.register_fake
def _rnn_backward_fake(x, kernel, recurrent_kernel, mask, dropout_mask, recurrent_dropout_mask, gates, hp, cp,
                       hd, aux, c_last, d_outputs, d_h, d_c, cell, go_backwards, time_major, activation,
                       recurrent_activation, zero_output_for_mask, reset_after, has_bias):
    B, T, H, G = _sizes(cell, x, recurrent_kernel, time_major)
    if not has_bias:
        db = (0,)
    else:
        db = (2, G * H) if cell == "gru" and reset_after else (G * H,)
    return (x.new_empty(x.shape), x.new_empty(kernel.shape), x.new_empty(recurrent_kernel.shape),
            x.new_empty(db), x.new_empty((B, H)), x.new_empty((B, H) if cell == "lstm" else (0,)))


# ---------------------------------------------------------------------------------------------------
# autograd: rnn_forward's derivative is rnn_backward

class _RNNBackwardFunction(torch.autograd.Function):
    """rnn_backward as an autograd.Function whose own derivative is a clear error: under
    torch.func.grad (and create_graph=True) the cotangents require grad, and an op without a derivative
    would refuse to run at all; this runs it and refuses only an actual second derivative."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return rnn_backward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_SECOND_DERIVATIVE)


_NO_SECOND_DERIVATIVE = ("fastrnn: second derivatives (double backward) are not supported: the compiled "
                         "backward has no derivative of its own")


class _FirstDerivativeOnly(torch.autograd.Function):
    """Views of `tensors` whose derivative is a clear error: a backward run with create_graph=True hands
    out its gradients through this, tied to inputs that require grad, so a second derivative through
    them raises instead of silently taking them for constants."""

    @staticmethod
    def forward(ctx, *tensors):
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_SECOND_DERIVATIVE)


def _setup_context(ctx, inputs, output):
    # inputs: the 9 tensors (x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask,
    # recurrent_dropout_mask), then the 7 options (cell, go_backwards, ..., reset_after)
    x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask, recurrent_dropout_mask = inputs[:9]
    ctx.options = inputs[9:]
    ctx.has_bias, ctx.has_state = bias is not None, h0 is not None
    residuals = output[3:]   # (and, from _EagerRNNFunction, the recurrent kernel's Keras-layout copy after them)
    # x, the weights and the masks are read again by the backward (x's memory, zero-copy): saving them lets
    # torch's version counters refuse a backward after an in-place change.  h0, c0 and bias are not read
    # (the state chain is in the residuals), so a stateful caller may update them in place (Keras does).
    ctx.save_for_backward(x, kernel, recurrent_kernel, mask, dropout_mask, recurrent_dropout_mask, *residuals)
    ctx.mark_non_differentiable(*residuals)
    # gradients of unused outputs arrive as None, not zero tensors: rnn_backward reads None as zeros,
    # and the residuals' (never used) gradients are not allocated
    ctx.set_materialize_grads(False)


def _backward(ctx, d_out, d_h, d_c, *_residual_grads):
    x, kernel, recurrent_kernel, mask, dropout_mask, recurrent_dropout_mask, *residuals = ctx.saved_tensors
    residuals, copies = residuals[:len(_RESIDUALS)], residuals[len(_RESIDUALS):]
    cell = ctx.options[0]
    if cell != "lstm":
        d_c = None  # c is an empty placeholder for GRU / SimpleRNN
    # torch.compile traces rnn_backward as an op; torch.func and create_graph=True need the Function
    # wrapper (which refuses a second derivative); a plain eager backward calls the computation itself
    if torch.compiler.is_compiling():
        run = rnn_backward
    elif copies and not torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active():
        # `_EagerRNNFunction`'s forward call as arrays (views of the tensors just unpacked, which checked
        # their versions); dropped here, so it does not hold the residuals' memory past this backward (a
        # retain_graph second backward rebuilds it from the saved tensors)
        call, ctx.call = ctx.call, None
        transposed = (_is_transposed(kernel), _is_transposed(recurrent_kernel))
        # the forward's Keras-layout copy of a transposed recurrent kernel (the same values: saved tensors
        # refuse a backward after an in-place change of the original); the kernel is read in place
        if transposed[1]:
            recurrent_kernel = copies[0]
        run = functools.partial(_backward_impl, transposed=transposed, call=call)
    else:
        run = _RNNBackwardFunction.apply
    dx, dk, dr, db, dh0, dc0 = run(x, kernel, recurrent_kernel, mask, dropout_mask, recurrent_dropout_mask,
                                   *residuals, d_out, d_h, d_c, *ctx.options, ctx.has_bias)
    return (dx, dk, dr, db if ctx.has_bias else None, dh0 if ctx.has_state else None,
            dc0 if ctx.has_state and cell == "lstm" else None, None, None, None) + (None,) * len(ctx.options)


rnn_forward.register_autograd(_backward, setup_context=_setup_context)


class _RNNFunction(torch.autograd.Function):
    """rnn_forward with the same autograd formula, as a new-style autograd.Function: torch.func.grad /
    vjp / vmap refuse the autograd.Function that register_autograd generates (it has no setup_context
    staticmethod; pytorch/pytorch#168393), so `rnn` goes through this class in eager mode."""

    generate_vmap_rule = True  # vmaps forward/backward, i.e. the ops' own vmap rules below

    @staticmethod
    def forward(*args):
        return rnn_forward(*args)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


class _EagerRNNFunction(torch.autograd.Function):
    """The same forward and backward, calling their computations directly instead of through the custom
    ops' dispatch (~0.2 ms a call each way), for plain eager autograd (`rnn` takes it when neither
    torch.compile nor a torch.func transform is active).  Its forward also returns the Keras-layout
    copy it made of a transposed recurrent kernel, which its backward reads instead of transposing
    again (a transposed kernel is read in place), and that backward returns the weights' gradients in
    their inputs' layout (`_backward_impl`).
    Old-style (ctx in forward): torch.func never sees it, and apply skips the new style's binding of
    default arguments (inspect.signature at every call), 20-40 us of a ~100 us tiny call (NOTES 39)."""

    @staticmethod
    def forward(ctx, *args):
        output, ctx.call = _forward_call(*args, keep_copies=True)
        _setup_context(ctx, args, output)
        return output

    backward = staticmethod(_backward)


# ---------------------------------------------------------------------------------------------------
# torch.nn's parameter layout in one autograd node (fastrnn.torch's modules, plain eager autograd)

def _gate_order(a):
    """GRU's gate blocks along axis 0, torch's [r, z, n] <-> Keras's [z, r, h] (its own inverse), in
    place: `a` is an array this module owns (a copy or an engine result)."""
    H = a.shape[0] // 3
    first = a[:H].copy()
    a[:H] = a[H:2 * H]
    a[H:2 * H] = first
    return a


def _keras_arrays(cell, w_ih, w_hh, b_ih, b_hh):
    """(kernel, recurrent_kernel, bias) in the Keras layout (fastrnn/_weights.py) from torch.nn's
    parameters as NumPy arrays: w_ih (G*H, I), w_hh (G*H, H), b_ih and b_hh (G*H,) or None.

    kernel: the transposed view of (G*H, I) memory, which the kernels read in place
    (fastrnn._compiled.Workspace); w_ih itself, except for GRU, whose blocks are reordered to Keras's
    [z, r, h] in a copy.  recurrent_kernel: a (H, G*H) copy by the tiled transpose (its packed layouts
    read R), GRU's blocks each transposed to their Keras place.  bias: b_ih + b_hh, or for GRU the
    (2, 3H) rows [input, recurrent] in Keras's order (reset_after: b_hh stays inside r * (...))."""
    GH, H = w_hh.shape
    recurrent = _copy_buffer((H, GH), w_hh.dtype)
    if cell != "gru":
        engine.transpose_into(w_hh, recurrent)
        bias = None if b_ih is None else b_ih + b_hh
        return w_ih.T, recurrent, bias
    kernel_t = _copy_buffer(w_ih.shape, w_ih.dtype)
    for keras, torch_ in ((0, H), (H, 0), (2 * H, 2 * H)):   # Keras's z, r, h <- torch's rows of z, r, n
        kernel_t[keras:keras + H] = w_ih[torch_:torch_ + H]
        engine.transpose_into(w_hh[torch_:torch_ + H], recurrent[:, keras:keras + H])
    bias = None if b_ih is None else np.stack([_gate_order(b_ih.copy()), _gate_order(b_hh.copy())])
    return kernel_t.T, recurrent, bias


def _torch_layout_call(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, go_backwards, time_major, activation,
                       zero_output_for_mask):
    """(Spec, Arrays) of one call in torch.nn's layout (`_keras_arrays`), validated by build_spec."""
    kernel, recurrent, bias = _keras_arrays(cell, *(None if t is None else t.detach().numpy()
                                                    for t in (w_ih, w_hh, b_ih, b_hh)))
    states, mask_np = _states_and_mask(cell, h0, c0, mask)
    return build_spec(cell, _to_numpy(x, "x"), kernel, recurrent, bias, initial_state=states, mask=mask_np,
                      go_backwards=go_backwards, time_major=time_major, activation=activation,
                      zero_output_for_mask=zero_output_for_mask, reset_after=True)


class _TorchLayoutFunction(torch.autograd.Function):
    """fastrnn.torch's one-layer, one-direction call as ONE autograd node: torch.nn's parameters (w_ih,
    w_hh, b_ih, b_hh) go in as they are and their gradients come out in their layout, so the graph has
    no transposes, bias sum or GRU gate reordering of its own (`_keras_arrays` does them in NumPy).

    Why: each of those torch ops and its backward node costs 5-60 us a call, far more once the kernels
    have evicted the interpreter, and with the ten outputs of the custom-op formula (the residuals, for
    torch.compile) fastrnn.torch's fixed cost per training call was ~0.6 ms, above torch.nn's own
    (bench/NOTES.md 46).  The residuals stay inside: saved tensors (freed by the backward, as torch
    frees any) plus the forward's validated call on ctx, which the first backward reads and drops (a
    retain_graph second backward rebuilds it from the saved tensors).  Saved too, for torch's version
    check: x and the two weights (the bias and the initial states are not read again).  Old-style (ctx
    in forward), as `_EagerRNNFunction`: torch.func never sees it (`torch_layout_ok`)."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, cell, go_backwards, time_major, activation,
                zero_output_for_mask):
        with _on_torch_threads():   # (the transposes too: a large one splits over the pool)
            spec, arrays = _torch_layout_call(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, go_backwards,
                                              time_major, activation, zero_output_for_mask)
            out, final, residuals = _compiled.forward_residuals(spec, arrays)
        dt = x.dtype
        kept = [None if residuals[k] is None else torch.from_numpy(residuals[k]) for k in _RESIDUALS]
        ctx.save_for_backward(x, w_ih, w_hh, mask, *kept)
        ctx.call = spec, arrays._replace(bias=None, initial_state=None), residuals
        ctx.has_bias, ctx.has_state = b_ih is not None, h0 is not None
        ctx.options = cell, go_backwards, time_major, activation, zero_output_for_mask
        ctx.set_materialize_grads(False)
        c = _to_torch(final[1], dt) if cell == "lstm" else x.new_empty((0,))
        return _to_torch(out, dt), _to_torch(final[0], dt), c

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        x, w_ih, w_hh, mask, *kept = ctx.saved_tensors   # (checks the versions)
        spec, arrays, residuals = ctx.call or (None, None, None)
        ctx.call = None   # (so the graph holds no view of the residuals past this backward)
        if spec is None:   # a retain_graph second backward
            with _on_torch_threads():
                spec, arrays = _torch_layout_call(ctx.options[0], x, w_ih, w_hh, None, None, None, None, mask,
                                                  *ctx.options[1:])
            residuals = {k: None if t is None else t.numpy() for k, t in zip(_RESIDUALS, kept)}
        cell = spec.cell
        d_out, d_states = _cotangents(spec, d_out, d_h, d_c)
        if ctx.has_bias != spec.has_bias:
            spec = replace(spec, has_bias=ctx.has_bias)
        with _on_torch_threads():
            grads = _compiled.backward_from_residuals(spec, arrays, residuals, d_out, d_states,
                                                      transposed=(True, True))
        dw_ih, dw_hh = grads["kernel"], grads["recurrent_kernel"]   # (G*H, I), (G*H, H): torch's layout
        db_ih = db_hh = None
        if cell == "gru":
            _gate_order(dw_ih)
            _gate_order(dw_hh)
            if ctx.has_bias:   # (2, 3H): the input and the recurrent bias's rows
                db_ih, db_hh = (_gate_order(row.copy()) for row in grads["bias"])
        elif ctx.has_bias:
            db_ih, db_hh = grads["bias"], grads["bias"].copy()   # (b_ih + b_hh: one gradient each)
        dt = x.dtype
        d_init = grads["initial_state"]
        dh0 = dc0 = None
        if ctx.has_state:
            dh0 = _to_torch(d_init[0], dt)
            dc0 = _to_torch(d_init[1], dt) if cell == "lstm" else None
        out = [_to_torch(grads["x"], dt), _to_torch(dw_ih, dt), _to_torch(dw_hh, dt),
               None if db_ih is None else _to_torch(db_ih, dt), None if db_hh is None else _to_torch(db_hh, dt),
               dh0, dc0]
        if torch.is_grad_enabled():   # create_graph=True: a second derivative must raise, not read zeros
            present = [k for k, g in enumerate(out) if g is not None]
            tied = _FirstDerivativeOnly.apply(x, w_ih, w_hh, *(out[k] for k in present))[3:]
            for k, g in zip(present, tied):
                out[k] = g
        return tuple(out) + (None,) * 6


def torch_layout_ok(x, *tensors):
    """True when `rnn_torch_layout` can take a call on x and these tensors (None skipped): plain eager
    autograd (no torch.compile trace or torch.func transform: those need the custom ops, see `rnn`),
    every tensor a plain torch.Tensor or nn.Parameter on the CPU in x's dtype (float32 or float64)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    dt = x.dtype
    if dt not in _FLOAT_DTYPES:
        return False
    for t in (x,) + tensors:
        if t is not None and (type(t) not in _PLAIN_TENSORS or t.dtype != dt or not t.is_cpu):
            return False
    return True


def rnn_torch_layout(cell, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, mask=None,
                     go_backwards=False, time_major=False, activation="tanh", zero_output_for_mask=False):
    """`rnn` on torch.nn's parameters, as one autograd node (`_TorchLayoutFunction`), for callers that
    checked `torch_layout_ok` (fastrnn.torch's modules; GRU is reset_after=True, torch.nn's).

    w_ih (G*H, I), w_hh (G*H, H), b_ih and b_hh (G*H,) (both or neither) in torch.nn's gate order; x,
    h0, c0, mask as `rnn`'s.  Returns ``(outputs, final_states)`` as `rnn` does; gradients reach x,
    the four parameters, h0 and c0."""
    out, h, c = _TorchLayoutFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, c0, mask, cell, bool(go_backwards),
                                           bool(time_major), _check_activation("activation", activation),
                                           bool(zero_output_for_mask))
    return out, ([h, c] if cell == "lstm" else [h])


# ---------------------------------------------------------------------------------------------------
# vmap: a per-example loop (correct for any in_dims; one kernel call per vmapped index)

def _vmap_loop(op):
    """A vmap rule that calls `op` once per index of the vmapped dimension and stacks the results on
    dim 0: correct for any in_dims (None: the argument is shared), not faster than a Python loop."""
    def rule(info, in_dims, *args):
        results = [op(*[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)])
                   for i in range(info.batch_size)]
        outs = tuple(torch.stack(column) for column in zip(*results))
        return outs, (0,) * len(outs)
    return rule


rnn_forward.register_vmap(_vmap_loop(rnn_forward))
rnn_backward.register_vmap(_vmap_loop(rnn_backward))


# ---------------------------------------------------------------------------------------------------
# the public entry point

def rnn(cell, x, kernel, recurrent_kernel, bias=None, h0=None, c0=None, *, mask=None, go_backwards=False,
        time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
        reset_after=True, dropout_mask=None, recurrent_dropout_mask=None):
    """Differentiable fastrnn RNN over torch tensors (Keras weight layout).

    x (B, T, I) ((T, B, I) with time_major), kernel (I, G*H), recurrent_kernel (H, G*H), bias (G*H,) or
    (2, 3H) for GRU reset_after, h0/c0 (B, H) (c0 for LSTM only, both or neither), mask (B, T) bool or
    0/1, dropout_mask (B, I), recurrent_dropout_mask (B, H).  Weights, states and dropout masks are cast
    to x's dtype (float32 or float64) differentiably.  Returns ``(outputs, final_states)``: outputs
    (B, T, H) (or (T, B, H)), final_states ``[h, c]`` for LSTM and ``[h]`` otherwise; gradients flow to
    x, the weights, bias, h0 and c0 (mask and dropout masks are constants).  Works under torch.compile
    (fullgraph) and torch.func transforms."""
    if cell not in _N_STATES:
        raise ValueError(f"cell: expected one of {tuple(_N_STATES)}, got {cell!r}")
    if cell == "lstm" and (h0 is None) != (c0 is None):
        raise ValueError("lstm: pass both h0 and c0, or neither")
    if cell != "lstm" and c0 is not None:
        raise ValueError(f"{cell}: c0 is for LSTM only; pass h0 alone")
    named = (("x", x), ("kernel", kernel), ("recurrent_kernel", recurrent_kernel), ("bias", bias), ("h0", h0),
             ("c0", c0), ("mask", mask), ("dropout_mask", dropout_mask),
             ("recurrent_dropout_mask", recurrent_dropout_mask))
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name}: fastrnn's torch bridge runs CPU tensors; got a tensor on {t.device} "
                             "(the GPU path is not built yet)")
    activation = _check_activation("activation", activation)
    if cell == "simple_rnn":
        recurrent_activation = "sigmoid"  # SimpleRNN has none; the op's schema wants a name
    recurrent_activation = _check_activation("recurrent_activation", recurrent_activation)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x: expected dtype float32 or float64, got {x.dtype}")
    dt = x.dtype
    for name, t in named[1:6]:
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    # differentiable casts (no-ops when the dtype already fits), so gradients come back in each input's dtype
    kernel, recurrent_kernel = kernel.to(dt), recurrent_kernel.to(dt)
    bias, h0, c0 = (None if t is None else t.to(dt) for t in (bias, h0, c0))
    if mask is not None:
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"mask: expected a bool (or 0/1 integer) tensor, got {mask.dtype}")
        mask = mask.detach().to(torch.bool)
    # dropout masks are constants: detached, so no gradient is asked for them
    dropout_mask, recurrent_dropout_mask = (None if t is None else t.detach().to(dt)
                                            for t in (dropout_mask, recurrent_dropout_mask))
    if inference_ok(x, kernel, recurrent_kernel, bias, h0, c0):
        options = dict(go_backwards=go_backwards, time_major=time_major, activation=activation,
                       recurrent_activation=recurrent_activation, zero_output_for_mask=zero_output_for_mask,
                       reset_after=reset_after)
        arrays = {k: _to_numpy(t, k) for k, t in (("kernel", kernel), ("recurrent_kernel", recurrent_kernel),
                                                  ("bias", bias))}
        return _inference(cell, x, h0, c0, mask, dropout_mask, recurrent_dropout_mask, options,
                          lambda x_np, **per_call: functional._run(
                              cell, False, "auto", x_np, arrays["kernel"], arrays["recurrent_kernel"],
                              arrays["bias"], dict(options, **per_call)))
    # torch.compile traces the op itself (its register_autograd formula); torch.func transforms go through
    # the equivalent autograd.Function, which they accept; plain eager autograd skips the ops' dispatch
    if torch.compiler.is_compiling():
        run = rnn_forward
    elif torch._C._are_functorch_transforms_active():
        run = _RNNFunction.apply
    else:
        run = _EagerRNNFunction.apply
    out, h, c, *_ = run(x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask, recurrent_dropout_mask,
                        cell, bool(go_backwards), bool(time_major), activation, recurrent_activation,
                        bool(zero_output_for_mask), bool(reset_after))
    return out, ([h, c] if cell == "lstm" else [h])


# ---------------------------------------------------------------------------------------------------
# inference: no gradient can be asked, so no residuals, no custom op

def inference_ok(*tensors):
    """True when a call on these tensors (None skipped) can run fastrnn's inference forward instead of the
    custom ops: no gradient can be asked of it (grad mode off, or no tensor requires grad), nothing traces
    it (torch.compile, torch.func transforms) and every tensor is a plain torch.Tensor or nn.Parameter
    (FakeTensor, FunctionalTensor and other subclasses go through the ops, which know them).

    Why: the ops' forward is the training forward, which writes every step's gates and states for a
    backward that never comes, and a custom op's dispatch costs ~0.1 ms a call."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN_TENSORS or (grad and t.requires_grad):
            return False
    return True


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _inference(cell, x, h0, c0, mask, dropout_mask, recurrent_dropout_mask, options, call):
    """Run ``call(x_np, initial_state=, mask=, dropout_mask=, recurrent_dropout_mask=, go_backwards=,
    time_major=, zero_output_for_mask=)`` (a fastrnn.functional-style forward on NumPy arrays) on torch
    tensors: ``(outputs, final_states)`` as tensors of x's dtype, as `rnn` returns."""
    states, mask_np = _states_and_mask(cell, h0, c0, mask)
    with _on_torch_threads():
        out, final = call(_to_numpy(x, "x"), initial_state=states, mask=mask_np,
                          dropout_mask=_to_numpy(dropout_mask, "dropout_mask"),
                          recurrent_dropout_mask=_to_numpy(recurrent_dropout_mask, "recurrent_dropout_mask"),
                          go_backwards=options["go_backwards"], time_major=options["time_major"],
                          zero_output_for_mask=options["zero_output_for_mask"])
    dt = x.dtype
    return _to_torch(out, dt), [_to_torch(s, dt) for s in final]


def rnn_prepared(prepared, x, h0=None, c0=None, *, mask=None, go_backwards=False, time_major=False,
                 zero_output_for_mask=False):
    """`rnn`'s inference forward on a fastrnn.functional.prepare handle (frozen Keras-layout weights, their
    packed layouts kept between calls) over torch tensors: ``(outputs, final_states)`` as `rnn` returns,
    without autograd.  For callers that checked `inference_ok` and keep `prepared` in step with their
    parameters (fastrnn.torch's modules).  x, h0, c0 in the weights' dtype; mask (B, T) bool."""
    options = dict(go_backwards=bool(go_backwards), time_major=bool(time_major),
                   zero_output_for_mask=bool(zero_output_for_mask))
    return _inference(prepared.cell, x, h0, c0, mask, None, None, options, prepared)
