"""Driver of the compiled CPU engine: allocates a Workspace, runs the kernel loops, does the big GEMMs.

Per call:  xp := (x * dropout_mask) @ W   (one GEMM for all T steps, rows in x's own layout; engine.forward
                                          runs it, the batch split's parts each on their own rows)
           _engine.forward: per step one GEMM/GEMV against R, fused gate math, masks, state chain
           backward (training only): _engine.backward does the dh/dc recursion, then
           dW := xd^T @ dG,  dx := (dG @ W^T) * dropout_mask,  dR := h_d^T @ dG_rec,  db := sum(dG)
All buffers are allocated here, before the loops; the kernels never allocate and hold no state.  The
big buffers that never leave a call (the inference forward's xp, the backward's dxp and drec) come from
fastrnn/_scratch.py, which keeps them mapped between calls, and so do the results handed out (outputs,
dx, dW, dR, forward_residuals' residuals: `_scratch.take_result`, back in the pool once dropped).
`forward_vjp` keeps the forward's buffers in its backward closure; `forward_residuals` /
`backward_from_residuals` hand the same buffers out and back in as plain arrays (torch custom ops).
"""
import threading
import weakref

import numpy as np

from fastrnn import _scratch
from fastrnn._dispatch import cpu_plan
from fastrnn._native import engine
from fastrnn._spec import GATES, check_cotangents


def _zeros_result(shape, dtype):
    a = _scratch.take_result(shape, dtype)
    a.fill(0)
    return a


class Workspace:
    """The arrays one call's kernels read and write (see fastrnn/_kernels/_engine.pyx for layouts).

    `saved` (a backward without its forward, see `backward_from_residuals`): a dict of the residuals of
    `forward_residuals`; they take the place of the forward's buffers (xp, hp, cp, hd, aux, cT), no GEMM
    or forward loop runs, and the outputs/final-h buffers are not allocated (backward never reads them).
    `zeroed`: the saved sequences start as zeros instead of uninitialised memory (a masked step leaves
    some rows unwritten, e.g. GRU's aux), for residuals handed out of fastrnn, which must be deterministic.
    `scratch`: xp is borrowed from fastrnn/_scratch.py (for a call that ends with `release`).
    `project`: compute xp := xd @ W here; False leaves it to engine.forward (`projected` says which is
    done), whose batch split has each thread compute its own rows.
    `pooled` (training): the saved sequences (xp, hp, cp, hd, aux) are borrowed from fastrnn/_scratch.py
    and handed back when the workspace is collected (forward_vjp: with its backward closure), so a
    training loop does not fault in fresh zeroed pages for them at every call (bench/NOTES.md 36)."""

    # the backward's buffers (fastrnn/_kernels/_engine.pyx `backward`), set by _backward: none before
    # (class attributes, so a forward's workspace does not pay nine stores for them)
    dout = dxp = drec = dh = dc = dht = dhd = dacc = db = None
    _zeros = None   # rebind's zero initial states
    parked = False  # idle with its own xp (fastrnn._compiled._park)

    def __init__(self, spec, arrays, training, saved=None, zeroed=False, scratch=False, pooled=False,
                 project=True):
        B, T, I, H, G = spec.B, spec.T, spec.I, spec.H, spec.G
        N, GH, dt = B * T, G * H, spec.dtype
        self.training = training
        x = arrays.x
        if arrays.dropout_mask is not None:
            dm = arrays.dropout_mask[None, :, :] if spec.time_major else arrays.dropout_mask[:, None, :]
            x = x * dm
        self.xd = np.ascontiguousarray(x).reshape(N, I)
        # a kernel that is a transposed view ((G*H, I) memory seen as (I, G*H): torch's layout through
        # fastrnn/_torch_autograd.py, or any Fortran-ordered array) is read in place: W holds that
        # (G*H, I) memory and W_t says so; the projection and dx take it with trans_b (no copy)
        k = arrays.kernel
        self.W_t = k.ndim == 2 and not k.flags.c_contiguous and k.T.flags.c_contiguous
        self.W = k.T if self.W_t else np.ascontiguousarray(k)
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

        self.tmp = np.empty((B, 2 * H), dt) if spec.cell == "lstm" else None
        self._xp_token = None
        self.projected = saved is not None or project
        if saved is not None:
            self.xp, self.hp, self.cp, self.hd, self.aux = (saved[k] for k in ("gates", "hp", "cp", "hd", "aux"))
            self.cT = saved["c_last"]
            self.out = self.hT = self.rec = None  # written by the forward only; backward never reads them
            return
        # (the sequences of forward_residuals leave fastrnn as the caller's residuals: take_result)
        alloc = xp_alloc = _zeros_result if zeroed else _scratch.take_result
        if pooled and training and not zeroed:
            tokens = []

            def alloc(shape, dtype):
                a, token = _scratch.take(shape, dtype)
                tokens.append(token)
                return a

            xp_alloc = alloc
            weakref.finalize(self, _scratch.give_all, tokens)
        elif zeroed:
            xp_alloc = _scratch.take_result   # the GEMM writes every element
        # scratch (a one-shot inference call): xp comes from _scratch and goes back in `release`
        self.xp, self._xp_token = _scratch.take((N, GH), dt) if scratch else (xp_alloc((N, GH), dt), None)
        if project:
            engine.gemm_into(self.xd, self.W, self.xp, trans_b=self.W_t)
        self._take_results(spec)
        seq = (N, H) if training else (2 * B, H)  # saved state chain, or a ping-pong pair
        one = (N, H) if training else (B, H)
        self.hp = alloc(seq, dt)
        self.cp = alloc(seq, dt) if spec.cell == "lstm" else None
        self.hd = alloc(seq, dt) if self.rdmask is not None else None
        self.aux = alloc(one, dt) if spec.cell == "gru" else None
        self.rec = np.empty((B, GH), dt) if spec.cell == "gru" and spec.reset_after else None

    def release(self):
        """Hand the scratch xp back (inference, after the loop); the workspace must not run again before
        `rebind`."""
        _scratch.give(self._xp_token)
        self._xp_token = self.xp = None

    def rebind(self, spec, arrays):
        """Make a released inference workspace of `spec` (built with training=False, scratch=True,
        project=False) ready for another call of the same signature with no mask or dropout masks
        (fastrnn._spec.SpecCache's plain calls): that call's x and initial states, a scratch xp, and
        fresh results.  W, R, the biases and the internal buffers (the state slots, tmp, aux, rec) stay:
        the weights are the same arrays, and a forward writes those buffers before it reads them (step 0
        reads h0 and c0 themselves)."""
        B, T, H, dt, lstm = spec.B, spec.T, spec.H, spec.dtype, spec.cell == "lstm"
        self.xd = np.ascontiguousarray(arrays.x).reshape(B * T, spec.I)
        states = arrays.initial_state
        if states:
            self.h0 = np.ascontiguousarray(states[0])
            self.c0 = np.ascontiguousarray(states[1]) if lstm else None
        else:   # zeros the kernels only read: made once
            if self._zeros is None:
                self._zeros = np.zeros((B, H), dt)
            self.h0 = self.c0 = self._zeros
            if not lstm:
                self.c0 = None
        self.projected = False
        if self.xp is None:   # (an idle workspace may have kept its own: _park)
            self.xp, self._xp_token = _scratch.take((B * T, spec.G * H), dt)
        self._take_results(spec)

    def _take_results(self, spec):
        """Fresh arrays for what a forward hands out: out (N, H), hT and (LSTM) cT (B, H)."""
        B, H, dt = spec.B, spec.H, spec.dtype
        self.out = _scratch.take_result((B * spec.T, H), dt)
        self.hT = np.empty((B, H), dt)
        self.cT = np.empty((B, H), dt) if spec.cell == "lstm" else None

    def idle(self):
        """After a call: drop what the call's caller owns (its x and states, the results handed to it),
        so an idle workspace keeps none of them alive."""
        self.xd = self.h0 = self.c0 = self.out = self.hT = self.cT = None

    def __del__(self):
        if self.parked:   # (a collected idle workspace's xp leaves _park's budget)
            try:
                _unpark(self)
            except Exception:   # interpreter shutdown: the module may be gone
                pass


def _states(spec, ws):
    return [ws.hT, ws.cT] if spec.cell == "lstm" else [ws.hT]


def _outputs(spec, ws):
    shape = (spec.T, spec.B, spec.H) if spec.time_major else (spec.B, spec.T, spec.H)
    return ws.out.reshape(shape)


# Idle workspaces kept per signature (forward's `reuse`): two calls in flight at once find one each.  An
# idle workspace keeps its scratch xp too, up to IDLE_XP_MAX_BYTES, and all of them together up to
# IDLE_XP_TOTAL_BYTES: the scratch pool's take and give cost ~10 us a call cold (bench/NOTES.md 55).
REUSE_KEEP = 2
IDLE_XP_MAX_BYTES = 4 << 20
IDLE_XP_TOTAL_BYTES = 32 << 20
_idle_xp = [0]   # bytes of xp the idle workspaces hold, under _idle_xp_lock
_idle_xp_lock = threading.Lock()


def _park(ws):
    """Make a run workspace idle: keep its xp while the budget allows (else give it back), drop the
    call's arrays."""
    n = ws.xp.nbytes
    with _idle_xp_lock:
        keep = n <= IDLE_XP_MAX_BYTES and _idle_xp[0] + n <= IDLE_XP_TOTAL_BYTES
        if keep:
            _idle_xp[0] += n
    ws.parked = keep
    if not keep:
        ws.release()
    ws.idle()


def _unpark(ws):
    """An idle workspace taken for a call (or collected): its kept xp leaves the budget."""
    if ws.parked:
        ws.parked = False
        with _idle_xp_lock:
            _idle_xp[0] -= ws.xp.nbytes


def forward(spec, arrays, plan=None, packs=None, reuse=None):
    """Inference: (outputs, final_states).  plan: fastrnn._dispatch's CpuPlan (None: made here).
    packs: a dict caching the packed copies of arrays.recurrent_kernel and arrays.kernel, whose values
    must then be the same at every call with that dict (fastrnn/_prepared.py; see _engine.forward).
    reuse: a list of idle workspaces of this signature (fastrnn._spec.SpecCache; the call must have no
    mask or dropout masks): the call takes one (Workspace.rebind) or makes one, and leaves it there.
    Why: a workspace's dozen small arrays and attributes cost ~10-20 us of Python a call on a VM that
    runs it cold after the loop has evicted it (bench/NOTES.md 55), against a 0.4 ms lstm t100-b1 call.
    list.pop and append are atomic, so calls from several threads never share one."""
    ws = None
    if reuse:
        try:
            ws = reuse.pop()
        except IndexError:   # another thread took the last one
            pass
    if ws is None:
        ws = Workspace(spec, arrays, training=False, scratch=True, project=False)
    else:
        _unpark(ws)
        ws.rebind(spec, arrays)
    try:
        engine.forward(ws, spec, plan or cpu_plan(spec, training=False), packs)
    except BaseException:
        ws.release()
        raise
    result = _outputs(spec, ws), _states(spec, ws)
    if reuse is not None and len(reuse) < REUSE_KEEP:
        _park(ws)
        reuse.append(ws)
    else:
        ws.release()
    return result


def forward_vjp(spec, arrays, plan=None):
    """Training forward: (outputs, final_states, backward) with backward(d_outputs, d_final_states)."""
    ws = Workspace(spec, arrays, training=True, pooled=True, project=False)
    plan = plan or cpu_plan(spec, training=True)
    engine.forward(ws, spec, plan)
    outputs, states = _outputs(spec, ws), _states(spec, ws)

    def backward(d_outputs, d_final_states=None):
        return _backward(spec, arrays, ws, d_outputs, d_final_states, plan)

    return outputs, [s.copy() for s in states], backward


def residual_shapes(cell, B, T, H, has_recurrent_dropout):
    """{name: shape or None} of the residuals `forward_residuals` returns (None: the call has none).

    gates  (N, G*H)  post-activation gates;       hp (N, H)  the state h entering each step;
    cp     (N, H)    LSTM: c entering each step;  hd (N, H)  hp * recurrent_dropout_mask (with that mask);
    aux    (N, H)    GRU: the reset-gate product;  c_last (B, H)  LSTM: the final c (read by the last step).
    N = B*T rows in x's own layout (fastrnn/_kernels/_engine.pyx, "Rows"); dtype: the compute dtype.
    Plain sizes in, so shape-only callers (torch fake kernels) share this table."""
    N, lstm = B * T, cell == "lstm"
    return {"gates": (N, GATES[cell] * H), "hp": (N, H), "cp": (N, H) if lstm else None,
            "hd": (N, H) if has_recurrent_dropout else None, "aux": (N, H) if cell == "gru" else None,
            "c_last": (B, H) if lstm else None}


def forward_residuals(spec, arrays):
    """Training forward that returns what its backward reads as arrays instead of a closure:
    ``(outputs, final_states, residuals)``, residuals a dict shaped as `residual_shapes`.

    For callers that must keep state as plain tensors (torch.library custom ops, fastrnn/_torch_autograd):
    `backward_from_residuals` turns the residuals into gradients without running the forward again.  The
    residuals share no memory with the inputs, the outputs or the final states, and are deterministic
    (rows a masked step does not write are zeros)."""
    ws = Workspace(spec, arrays, training=True, zeroed=spec.has_mask, project=False)
    engine.forward(ws, spec, cpu_plan(spec, training=True))
    residuals = {"gates": ws.xp, "hp": ws.hp, "cp": ws.cp, "hd": ws.hd, "aux": ws.aux,
                 "c_last": None if ws.cT is None else ws.cT.copy()}
    return _outputs(spec, ws), _states(spec, ws), residuals


def backward_from_residuals(spec, arrays, residuals, d_outputs, d_final_states=None, transposed=(False, False)):
    """Gradients (the dict of `forward_vjp`'s backward) from the residuals of `forward_residuals`.

    `spec`/`arrays` describe the same call as the forward (build_spec); arrays.initial_state and
    arrays.bias are not read (the state chain is in the residuals), spec.has_bias alone says whether a
    bias gradient is returned.  The residuals are only read, so one forward may serve several backwards.
    transposed: (kernel, recurrent_kernel) flags; a True one's gradient comes as its transpose, (G*H, I)
    or (G*H, H) C-contiguous (torch's parameter layout; fastrnn/_torch_autograd.py)."""
    expected = residual_shapes(spec.cell, spec.B, spec.T, spec.H, spec.has_recurrent_dropout)
    saved = {}
    for name, shape in expected.items():
        a = residuals.get(name)
        if shape is None:
            saved[name] = None
            continue
        if not isinstance(a, np.ndarray):
            raise TypeError(f"residuals[{name!r}]: expected a NumPy array of shape {shape} for {spec.id}, "
                            f"got {type(a).__name__}")
        if a.shape != shape or a.dtype != spec.dtype:
            raise ValueError(f"residuals[{name!r}]: expected a {spec.dtype} array of shape {shape} for "
                             f"{spec.id}, got {a.dtype} {a.shape}")
        saved[name] = np.ascontiguousarray(a)
    ws = Workspace(spec, arrays, training=True, saved=saved)
    return _backward(spec, arrays, ws, d_outputs, d_final_states, cpu_plan(spec, training=True), transposed)


def _backward(spec, arrays, ws, d_outputs, d_final_states, plan, transposed=(False, False)):
    B, T, I, H, G = spec.B, spec.T, spec.I, spec.H, spec.G
    N, GH, dt = B * T, G * H, spec.dtype
    d_outputs, d_final_states = check_cotangents(spec, d_outputs, d_final_states)
    ws.dout = np.ascontiguousarray(d_outputs).reshape(N, H)
    ws.dh = np.zeros((B, H), dt)
    ws.dc = np.zeros((B, H), dt) if spec.cell == "lstm" else None
    for k, d in enumerate(d_final_states):
        if d is not None:
            (ws.dh if k == 0 else ws.dc)[...] = d
    ws.dht = np.empty((B, H), dt)
    ws.dhd = np.empty((B, H), dt)
    ws.dacc = np.empty((B, H), dt)
    ws.dxp, dxp_token = _scratch.take((N, GH), dt)   # scratch: nothing returned keeps a view of them
    ws.drec, drec_token = _scratch.take((N, GH), dt) if spec.cell == "gru" and spec.reset_after else (None, None)
    # the bias gradient, summed by the loop (row 1: drec's sums, GRU reset_after's recurrent bias)
    ws.db = np.empty((1 + (ws.drec is not None), GH), dt) if spec.has_bias else None
    # The hoisted gradients' outputs are taken here too, with the rest, so that their GEMMs then run back
    # to back: the pool's bookkeeping costs ~60-80 us a take run cold after a kernel has evicted it, and
    # ~5 us right after another take (bench/NOTES.md 56).
    kernel_grad = _WeightGradient(N, I, GH, dt, transposed[0])
    recurrent_grad = _WeightGradient(N, H, GH, dt, transposed[1])
    dx = _scratch.take_result((N, I), dt)
    try:
        return _hoisted_gradients(spec, arrays, ws, plan, kernel_grad, recurrent_grad, dx)
    finally:
        ws.dxp = ws.drec = None
        _scratch.give(dxp_token)
        _scratch.give(drec_token)
        kernel_grad.release()
        recurrent_grad.release()


# A transposed weight gradient (torch's layout, `transposed`) comes from the transposed GEMM dG^T @ A
# where that is faster than the plain product and a tiled transpose: few rows (the GEMM is short, the
# transpose a fixed cost per weight) and outputs of 64 columns or more (fewer fill one masked panel).
# One Zen 4, 2 threads, us (plain + transpose / transposed; N x K, G*H): 50 x 512, 2048: 1192 / 748;
# 100 x 128, 512: 138 / 120; 400 x 512, 2048: 4930 / 4585; 800: 8968 / 8901; 1000 x 64, 256: 158 / 210;
# 1600 x 256, 1024: 4762 / 5895; 50 x 17, 512: 13 / 27 (bench/NOTES.md 40).
DIRECT_TRANSPOSED_MAX_ROWS = 512
DIRECT_TRANSPOSED_MIN_COLS = 64


class _WeightGradient:
    """One weight gradient, dWeight (K, GH) = A^T @ G summed over N rows, its output taken when this is
    made and filled by `compute`.  transposed: the (GH, K) C-contiguous transpose instead, on a 64-byte
    line (transpose_into stores whole lines there), computed as the transposed GEMM or as the plain one
    into a scratch buffer then a tiled transpose; `release` gives that buffer back."""

    __slots__ = ("out", "plain", "token", "transposed")

    def __init__(self, N, K, GH, dt, transposed):
        self.transposed = transposed
        self.plain = self.token = None
        if not transposed:
            self.out = _scratch.take_result((K, GH), dt)
            return
        self.out = _scratch.take_result((GH, K), dt, align=64)
        if not (N <= DIRECT_TRANSPOSED_MAX_ROWS and K >= DIRECT_TRANSPOSED_MIN_COLS):
            self.plain, self.token = _scratch.take((K, GH), dt)

    def compute(self, products):
        """Fill the output from `products`: (A (N, K), G (N, w), c0) pairs filling columns c0..c0+w
        (several for GRU reset_after=False, whose candidate block reads aux); returns it."""
        out = self.out
        if self.transposed and self.plain is None:
            for A, G, c0 in products:
                engine.gemm_into(G, A, out[c0:c0 + G.shape[1]], trans_a=True)
            return out
        plain = self.plain if self.transposed else out
        for A, G, c0 in products:
            engine.gemm_into(A, G, plain[:, c0:c0 + G.shape[1]], trans_a=True)
        if self.transposed:
            engine.transpose_into(plain, out)
        return out

    def release(self):
        _scratch.give(self.token)
        self.plain = self.token = None


def _hoisted_gradients(spec, arrays, ws, plan, kernel_grad, recurrent_grad, dx):
    """The backward loop, then the hoisted gradients from its dxp/drec into what `_backward` took for them
    (the weights' _WeightGradient, plain or transposed, and dx (N, I)): the gradients dict."""
    H = spec.H
    engine.backward(ws, spec, plan)

    # the hoisted gradients: single GEMMs and reductions over all N = B*T rows
    dW = kernel_grad.compute([(ws.xd, ws.dxp, 0)])
    engine.gemm_into(ws.dxp, ws.W, dx, trans_b=not ws.W_t)
    dx = dx.reshape(arrays.x.shape)
    if arrays.dropout_mask is not None:
        dx *= arrays.dropout_mask[None, :, :] if spec.time_major else arrays.dropout_mask[:, None, :]
    hd = ws.hd if ws.hd is not None else ws.hp
    if spec.cell == "gru" and not spec.reset_after:
        products = [(hd, ws.dxp[:, : 2 * H], 0), (ws.aux, ws.dxp[:, 2 * H:], 2 * H)]
    else:
        products = [(hd, ws.drec if ws.drec is not None else ws.dxp, 0)]
    dR = recurrent_grad.compute(products)
    db = None
    if spec.has_bias:
        db = ws.db if ws.drec is not None else ws.db[0]
    d_init = [ws.dh, ws.dc] if spec.cell == "lstm" else [ws.dh]
    return {"x": dx, "kernel": dW, "recurrent_kernel": dR, "bias": db, "initial_state": d_init}
