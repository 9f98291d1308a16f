"""Driver of the compiled CPU engine: allocates a Workspace, runs the kernel loops, does the big GEMMs.

Per call:  xp := (x * dropout_mask) @ W   (one GEMM for all T steps, rows in x's own layout)
           _engine.forward: per step one GEMM/GEMV against R, fused gate math, masks, state chain
           backward (training only): _engine.backward does the dh/dc recursion, then
           dW := xd^T @ dG,  dx := (dG @ W^T) * dropout_mask,  dR := h_d^T @ dG_rec,  db := sum(dG)
All buffers are allocated here, before the loops; the kernels never allocate and hold no state.
"""
import numpy as np

from fastrnn._dispatch import cpu_plan
from fastrnn._native import engine
from fastrnn._spec import check_cotangents


class Workspace:
    """The arrays one call's kernels read and write (see fastrnn/_kernels/_engine.pyx for layouts)."""

    def __init__(self, spec, arrays, training):
        B, T, I, H, G = spec.B, spec.T, spec.I, spec.H, spec.G
        N, GH, dt = B * T, G * H, spec.dtype
        self.training = training
        x = arrays.x
        if arrays.dropout_mask is not None:
            dm = arrays.dropout_mask[None, :, :] if spec.time_major else arrays.dropout_mask[:, None, :]
            x = x * dm
        self.xd = np.ascontiguousarray(x).reshape(N, I)
        self.W = np.ascontiguousarray(arrays.kernel)
        self.R = np.ascontiguousarray(arrays.recurrent_kernel)
        self.bx = self.br = None
        if arrays.bias is not None:
            b = np.ascontiguousarray(arrays.bias)
            if spec.cell == "gru" and spec.reset_after:
                self.bx, self.br = b[0], b[1]
            else:
                self.bx = b
        states = arrays.initial_state
        self.h0 = np.ascontiguousarray(states[0]) if states else np.zeros((B, H), dt)
        self.c0 = None
        if spec.cell == "lstm":
            self.c0 = np.ascontiguousarray(states[1]) if states else np.zeros((B, H), dt)
        self.mask = None
        if arrays.mask is not None:
            self.mask = np.ascontiguousarray(arrays.mask, dtype=np.uint8)
        self.rdmask = None
        if arrays.recurrent_dropout_mask is not None:
            self.rdmask = np.ascontiguousarray(arrays.recurrent_dropout_mask)

        self.xp = np.empty((N, GH), dt)
        engine.gemm_into(self.xd, self.W, self.xp)
        self.out = np.empty((N, H), dt)
        self.hT = np.empty((B, H), dt)
        self.cT = np.empty((B, H), dt) if spec.cell == "lstm" else None
        seq = (N, H) if training else (2 * B, H)  # saved state chain, or a ping-pong pair
        one = (N, H) if training else (B, H)
        self.hp = np.empty(seq, dt)
        self.cp = np.empty(seq, dt) if spec.cell == "lstm" else None
        self.hd = np.empty(one, dt) if self.rdmask is not None else None
        self.aux = np.empty(one, dt) if spec.cell == "gru" else None
        self.rec = np.empty((B, GH), dt) if spec.cell == "gru" and spec.reset_after else None
        self.tmp = np.empty((B, 2 * H), dt) if spec.cell == "lstm" else None
        for name in ("dout", "dxp", "drec", "dh", "dc", "dht", "dhd", "dacc"):
            setattr(self, name, None)


def _states(spec, ws):
    return [ws.hT, ws.cT] if spec.cell == "lstm" else [ws.hT]


def _outputs(spec, ws):
    shape = (spec.T, spec.B, spec.H) if spec.time_major else (spec.B, spec.T, spec.H)
    return ws.out.reshape(shape)


def forward(spec, arrays):
    """Inference: (outputs, final_states)."""
    ws = Workspace(spec, arrays, training=False)
    engine.forward(ws, spec, cpu_plan(spec, training=False))
    return _outputs(spec, ws), _states(spec, ws)


def forward_vjp(spec, arrays):
    """Training forward: (outputs, final_states, backward) with backward(d_outputs, d_final_states)."""
    ws = Workspace(spec, arrays, training=True)
    plan = cpu_plan(spec, training=True)
    engine.forward(ws, spec, plan)
    outputs, states = _outputs(spec, ws), _states(spec, ws)

    def backward(d_outputs, d_final_states=None):
        return _backward(spec, arrays, ws, d_outputs, d_final_states, plan)

    return outputs, [s.copy() for s in states], backward


def _backward(spec, arrays, ws, d_outputs, d_final_states, plan):
    B, T, I, H, G = spec.B, spec.T, spec.I, spec.H, spec.G
    N, GH, dt = B * T, G * H, spec.dtype
    d_outputs, d_final_states = check_cotangents(spec, d_outputs, d_final_states)
    ws.dout = np.ascontiguousarray(d_outputs).reshape(N, H)
    ws.dh = np.zeros((B, H), dt)
    ws.dc = np.zeros((B, H), dt) if spec.cell == "lstm" else None
    for k, d in enumerate(d_final_states):
        if d is not None:
            (ws.dh if k == 0 else ws.dc)[...] = d
    ws.dxp = np.empty((N, GH), dt)
    ws.drec = np.empty((N, GH), dt) if spec.cell == "gru" and spec.reset_after else None
    ws.dht = np.empty((B, H), dt)
    ws.dhd = np.empty((B, H), dt)
    ws.dacc = np.empty((B, H), dt)
    engine.backward(ws, spec, plan)

    # the hoisted gradients: single GEMMs and reductions over all N = B*T rows
    dW = np.empty((I, GH), dt)
    engine.gemm_into(ws.xd, ws.dxp, dW, trans_a=True)
    dx = np.empty((N, I), dt)
    engine.gemm_into(ws.dxp, ws.W, dx, trans_b=True)
    dx = dx.reshape(arrays.x.shape)
    if arrays.dropout_mask is not None:
        dx *= arrays.dropout_mask[None, :, :] if spec.time_major else arrays.dropout_mask[:, None, :]
    hd = ws.hd if ws.hd is not None else ws.hp
    dR = np.empty((H, GH), dt)
    if spec.cell == "gru" and not spec.reset_after:
        engine.gemm_into(hd, ws.dxp[:, : 2 * H], dR[:, : 2 * H], trans_a=True)
        engine.gemm_into(ws.aux, ws.dxp[:, 2 * H:], dR[:, 2 * H:], trans_a=True)
    else:
        engine.gemm_into(hd, ws.drec if ws.drec is not None else ws.dxp, dR, trans_a=True)
    db = None
    if arrays.bias is not None:
        db = ws.dxp.sum(axis=0)
        if ws.drec is not None:
            db = np.stack([db, ws.drec.sum(axis=0)])
    d_init = [ws.dh, ws.dc] if spec.cell == "lstm" else [ws.dh]
    return {"x": dx, "kernel": dW, "recurrent_kernel": dR, "bias": db, "initial_state": d_init}
