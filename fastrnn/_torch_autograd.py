"""One torch.autograd.Function over fastrnn's forward/backward: the bridge every torch-based adapter uses
(fastrnn.torch's nn.Module twins, fastrnn.keras under the torch backend).

    outputs, h, c = rnn(cell, x, kernel, recurrent_kernel, bias, h0, c0, mask=..., go_backwards=..., ...)

Arrays are in fastrnn's canonical Keras layout (fastrnn/_weights.py); callers convert torch.nn's layout
once (see fastrnn._weights).  CPU tensors cross to NumPy without copies (`Tensor.numpy()` on contiguous
detached tensors) and fastrnn.functional.<cell>_vjp runs the compiled forward; its `backward` closure is
kept on ctx and returns every gradient in one call.  Nothing here re-implements RNN math.
"""
import numpy as np
import torch

from fastrnn import functional

from fastrnn._spec import N_STATES as _N_STATES


def _to_numpy(t, name):
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: fastrnn's torch bridge runs CPU tensors; got a tensor on {t.device} "
                         "(the GPU path is not built yet)")
    return t.detach().contiguous().numpy()


def _to_torch(a, like):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(like.dtype)


class RNNFunction(torch.autograd.Function):
    """forward(ctx, options, x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask,
    recurrent_dropout_mask) -> (outputs, h, c) with c an empty tensor for GRU/SimpleRNN.

    `options` is a tuple of (key, value) pairs for fastrnn.functional (cell, go_backwards, time_major,
    activation, recurrent_activation, zero_output_for_mask, reset_after).  mask and dropout masks are
    constants (no gradient).  Old-style (ctx in forward) on purpose: the vjp closure of the forward is
    kept on ctx, so backward never recomputes the forward; the price is that torch.func transforms
    (grad, vmap) do not accept it - plain autograd, DDP and gradcheck do."""

    @staticmethod
    def forward(ctx, options, x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask,
                recurrent_dropout_mask):
        opts = dict(options)
        cell = opts.pop("cell")
        if cell != "gru":
            opts.pop("reset_after", None)
        if cell == "simple_rnn":
            opts.pop("recurrent_activation", None)
        states = None
        if h0 is not None:
            states = [_to_numpy(h0, "h0")] + ([_to_numpy(c0, "c0")] if cell == "lstm" else [])
        vjp = getattr(functional, cell + "_vjp")
        out, final, backward = vjp(
            _to_numpy(x, "x"), _to_numpy(kernel, "kernel"), _to_numpy(recurrent_kernel, "recurrent_kernel"),
            _to_numpy(bias, "bias"), initial_state=states,
            mask=None if mask is None else _to_numpy(mask, "mask").astype(bool, copy=False),
            dropout_mask=_to_numpy(dropout_mask, "dropout_mask"),
            recurrent_dropout_mask=_to_numpy(recurrent_dropout_mask, "recurrent_dropout_mask"), **opts)
        ctx.backward_fn = backward
        # the backward reads these tensors' memory (zero-copy views): saving them lets torch's version
        # counters refuse a backward after an in-place change, instead of silently wrong gradients.
        # h0, c0 and bias are copied into the workspace by the forward, so a stateful caller may update
        # its state tensors in place before backward (Keras does).
        ctx.save_for_backward(x, kernel, recurrent_kernel, dropout_mask, recurrent_dropout_mask)
        ctx.cell = cell
        ctx.has_bias = bias is not None
        ctx.has_state = h0 is not None
        c = final[1] if cell == "lstm" else np.zeros((0,), out.dtype)
        return _to_torch(out, x), _to_torch(final[0], x), _to_torch(c, x)

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):
        ctx.saved_tensors  # noqa: B018 - raises if a saved input was modified in place since forward
        d_states = [None if d_h is None else _to_numpy(d_h, "d_h")]
        if ctx.cell == "lstm":
            d_states.append(None if d_c is None else _to_numpy(d_c, "d_c"))
        d_out_np = None if d_out is None else _to_numpy(d_out, "d_outputs")
        if d_out_np is None:
            raise RuntimeError("fastrnn: backward called without an output gradient")  # torch always passes one
        grads = ctx.backward_fn(d_out_np, d_states)
        like = d_out
        dh0 = dc0 = None
        if ctx.has_state:
            dh0 = _to_torch(grads["initial_state"][0], like)
            if ctx.cell == "lstm":
                dc0 = _to_torch(grads["initial_state"][1], like)
        return (None, _to_torch(grads["x"], like), _to_torch(grads["kernel"], like),
                _to_torch(grads["recurrent_kernel"], like),
                _to_torch(grads["bias"], like) if ctx.has_bias else None, dh0, dc0, None, None, None)


def rnn(cell, x, kernel, recurrent_kernel, bias=None, h0=None, c0=None, *, mask=None, go_backwards=False,
        time_major=False, activation="tanh", recurrent_activation="sigmoid", zero_output_for_mask=False,
        reset_after=True, dropout_mask=None, recurrent_dropout_mask=None):
    """Differentiable fastrnn RNN over torch tensors (Keras weight layout).

    Returns ``(outputs, final_states)``: outputs (B, T, H) (or (T, B, H) with time_major), final_states
    ``[h, c]`` for LSTM and ``[h]`` otherwise; gradients flow to x, the weights, bias, h0 and c0."""
    if cell not in _N_STATES:
        raise ValueError(f"cell: expected one of {tuple(_N_STATES)}, got {cell!r}")
    if cell == "lstm" and (h0 is None) != (c0 is None):
        raise ValueError("lstm: pass both h0 and c0, or neither")
    options = (("cell", cell), ("go_backwards", bool(go_backwards)), ("time_major", bool(time_major)),
               ("activation", activation), ("recurrent_activation", recurrent_activation),
               ("zero_output_for_mask", bool(zero_output_for_mask)), ("reset_after", bool(reset_after)))
    out, h, c = RNNFunction.apply(options, x, kernel, recurrent_kernel, bias, h0, c0, mask, dropout_mask,
                                  recurrent_dropout_mask)
    return out, ([h, c] if cell == "lstm" else [h])
