"""Engines compared by the benchmark suite, behind one small interface.

Every engine turns (problem, data, mode) into a pair ``(run, to_result)``:

* ``run()`` is the timed call: batch-major float32 ``x`` (B, T, I) in, the engine's raw result out.
  Forward mode is inference; training mode is forward + backward producing all gradients
  (x, kernel, recurrent_kernel, bias, initial_state) from ``d_outputs``.
* ``to_result(raw)`` (untimed) converts the raw result into a common form for checking:
  ``{"outputs": (B, T, H), "states": [h, (c)], "grads": {name: array or [arrays]}}`` with the
  gradients in the Keras layout.

Peers are optional: ``Engine.unavailable(mode)`` returns a reason string when the engine cannot run.
Weight conversions (DESIGN.md section 2):
  torch  LSTM  weight_ih = kernel.T, weight_hh = recurrent.T, bias_ih = bias, bias_hh = 0
  torch  GRU   gate order r,z,n: swap the z and r column blocks, transpose; bias_ih/hh = bias[0]/bias[1] swapped
  torch  RNN   weight_ih = kernel.T, weight_hh = recurrent.T
  ONNX   LSTM  gate order i,o,f,c; GRU z,r,h with linear_before_reset=1; ORT is time-major (T, B, I)
  jax    Keras layout as is (pure-JAX cells in ``make_jax_rnn``; lax.scan over time-major projections)
"""
from __future__ import annotations

import importlib

import numpy as np

MODES = ("forward", "training")


# --------------------------------------------------------------------------- helpers
def _try_import(name):
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, or a broken build raising something else
        return None, f"{name} not importable: {type(exc).__name__}: {exc}"


def as_list(states):
    """final states / initial-state grads as a list of arrays (accepts an array, list or tuple)."""
    if states is None:
        return []
    if isinstance(states, (list, tuple)):
        return [np.asarray(s) for s in states]
    return [np.asarray(states)]


def swap_zr(a, H, axis=-1):
    """Swap the first two H-wide gate blocks along ``axis`` (Keras z,r,h <-> torch r,z,n)."""
    a = np.asarray(a)
    idx = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
    return np.take(a, idx, axis=axis)


def _torch_cls(cell):
    import torch

    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple_rnn": torch.nn.RNN}[cell]


def keras_to_torch(cell, H, w):
    """Keras-layout weights -> dict of torch parameter arrays (weight_ih, weight_hh, bias_ih, bias_hh)."""
    k, r, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    if cell == "gru":
        if b.ndim != 2:
            raise ValueError("torch GRU equals Keras GRU with reset_after=True only (bias (2, 3H))")
        return {
            "weight_ih": swap_zr(k, H).T, "weight_hh": swap_zr(r, H).T,
            "bias_ih": swap_zr(b[0], H), "bias_hh": swap_zr(b[1], H),
        }
    return {"weight_ih": k.T, "weight_hh": r.T, "bias_ih": b, "bias_hh": np.zeros_like(b)}


def torch_grads_to_keras(cell, H, g):
    """torch parameter grads (weight_ih, weight_hh, bias_ih, bias_hh) -> Keras-layout grads."""
    if cell == "gru":
        return {
            "kernel": swap_zr(g["weight_ih"].T, H), "recurrent_kernel": swap_zr(g["weight_hh"].T, H),
            "bias": np.stack([swap_zr(g["bias_ih"], H), swap_zr(g["bias_hh"], H)]),
        }
    # bias_ih and bias_hh receive the same gradient; the Keras bias is their sum's single copy.
    return {"kernel": g["weight_ih"].T, "recurrent_kernel": g["weight_hh"].T, "bias": g["bias_ih"]}


def make_torch_module(problem, w, dtype=None, classes=None):
    """A one-layer batch_first torch.nn module (or, with `classes` {cell: class}, a twin such as
    fastrnn.torch's) holding the problem's Keras-layout weights."""
    import torch

    dtype = dtype or torch.float32
    cls = classes[problem.cell] if classes else _torch_cls(problem.cell)
    m = cls(problem.I, problem.H, batch_first=True)
    m = m.to(dtype)
    tw = keras_to_torch(problem.cell, problem.H, w)
    with torch.no_grad():
        for name, arr in tw.items():
            getattr(m, name + "_l0").copy_(torch.from_numpy(np.ascontiguousarray(arr)))
    return m


# --------------------------------------------------------------------------- engines
class Engine:
    name = "?"
    modes = MODES
    is_peer = True

    def unavailable(self, mode):
        """None when this engine can run ``mode``, else the reason it cannot."""
        if mode not in self.modes:
            return f"{self.name} does not implement {mode} mode"
        return None

    def prepare(self, problem, data, mode):
        raise NotImplementedError


class _FunctionalEngine(Engine):
    """fastrnn.functional or fastrnn.reference: same signatures."""

    module_name = "?"
    use_prepared = True   # forward: time `module.prepare(...)`'s handle where the module has one

    def _module(self):
        return _try_import(self.module_name)

    def unavailable(self, mode):
        reason = super().unavailable(mode)
        if reason:
            return reason
        mod, reason = self._module()
        if mod is None:
            return reason
        suffix = "_vjp" if mode == "training" else ""
        missing = [c + suffix for c in ("lstm", "gru", "simple_rnn") if not hasattr(mod, c + suffix)]
        if missing:
            return f"{self.module_name} lacks {', '.join(missing)}"
        return None

    def prepare(self, problem, data, mode, dtype=np.float32):
        mod, reason = self._module()
        if mod is None:
            raise RuntimeError(reason)
        cell = problem.cell
        x = data["x"].astype(dtype, copy=False)
        k = data["kernel"].astype(dtype, copy=False)
        r = data["recurrent_kernel"].astype(dtype, copy=False)
        b = data["bias"].astype(dtype, copy=False)
        if mode == "forward":
            fn = getattr(mod, cell)
            prepared = mod.prepare(cell, k, r, b) if hasattr(mod, "prepare") else None

            def run():
                # weights prepared once, as ONNX Runtime's session prepacks its initializers; the
                # class switch times the per-call functional API instead (bench/ab_switch.py prepared)
                if prepared is not None and self.use_prepared:
                    return prepared(x)
                return fn(x, k, r, b)

            def to_result(raw):
                out, states = raw
                return {"outputs": np.asarray(out), "states": as_list(states)}

            return run, to_result

        fn = getattr(mod, cell + "_vjp")
        h0 = [s.astype(dtype, copy=False) for s in data["initial_state"]]
        d_out = data["d_outputs"].astype(dtype, copy=False)

        def run():
            out, states, backward = fn(x, k, r, b, initial_state=h0)
            return out, states, backward(d_out)

        def to_result(raw):
            out, states, grads = raw
            g = {key: (as_list(v) if key == "initial_state" else np.asarray(v))
                 for key, v in grads.items() if v is not None}
            return {"outputs": np.asarray(out), "states": as_list(states), "grads": g}

        return run, to_result


class FastrnnEngine(_FunctionalEngine):
    name = "fastrnn"
    module_name = "fastrnn.functional"
    is_peer = False


class ReferenceEngine(_FunctionalEngine):
    name = "reference"
    module_name = "fastrnn.reference"


class TorchEngine(Engine):
    name = "torch"

    def module_classes(self):
        """{cell: module class}; None: torch.nn's."""
        return None

    def unavailable(self, mode):
        reason = super().unavailable(mode)
        if reason:
            return reason
        return _try_import("torch")[1]

    def prepare(self, problem, data, mode, dtype=None):
        import torch

        dtype = dtype or torch.float32
        np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
        cell, H = problem.cell, problem.H
        m = make_torch_module(problem, data, dtype, self.module_classes())
        x = np.array(data["x"], dtype=np_dtype)  # writable copy: torch warns on read-only arrays
        is_lstm = cell == "lstm"

        def states_of(st):
            return [s[0] for s in st] if is_lstm else [st[0]]

        if mode == "forward":
            m.eval()

            def run():
                with torch.inference_mode():
                    return m(torch.from_numpy(x))

            def to_result(raw):
                out, st = raw
                return {"outputs": out.numpy(), "states": [s.numpy() for s in states_of(st)]}

            return run, to_result

        m.train()
        names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        params = [getattr(m, n + "_l0") for n in names]
        h0_np = [np.array(s, dtype=np_dtype)[None] for s in data["initial_state"]]
        d_out = torch.from_numpy(np.array(data["d_outputs"], dtype=np_dtype))

        def run():
            xt = torch.from_numpy(x).requires_grad_()
            h0 = [torch.from_numpy(s).requires_grad_() for s in h0_np]
            out, st = m(xt, tuple(h0) if is_lstm else h0[0])
            grads = torch.autograd.grad(out, [xt, *params, *h0], d_out)
            return out.detach(), st, grads

        def to_result(raw):
            out, st, grads = raw
            gx, gp, gh = grads[0], grads[1:5], grads[5:]
            g = torch_grads_to_keras(cell, H, {n: t.numpy() for n, t in zip(names, gp)})
            g["x"] = gx.numpy()
            g["initial_state"] = [t[0].numpy() for t in gh]
            return {"outputs": out.numpy(), "states": [s.detach().numpy() for s in states_of(st)],
                    "grads": g}

        return run, to_result


class FastrnnTorchEngine(TorchEngine):
    """fastrnn.torch's drop-in modules timed exactly as torch.nn's (the torch engine's calls: inference
    under torch.inference_mode, training through torch.autograd.grad): what a PyTorch user gets from
    swapping the module.  Not a peer: fastrnn's own kernels under torch's autograd."""

    name = "fastrnn.torch"
    is_peer = False

    def module_classes(self):
        import fastrnn.torch as ft

        return {"lstm": ft.LSTM, "gru": ft.GRU, "simple_rnn": ft.RNN}

    def unavailable(self, mode):
        return super().unavailable(mode) or _try_import("fastrnn.torch")[1]


def build_onnx_model(problem, w):
    """A one-node ONNX model (LSTM / GRU / RNN) with the weights as initializers; X is (T, B, I)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cell, H, I = problem.cell, problem.H, problem.I  # noqa: E741
    k, r, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    attrs = {"hidden_size": H}
    if cell == "lstm":
        # Keras i,f,c,o -> ONNX i,o,f,c
        perm = np.r_[0:H, 3 * H:4 * H, H:2 * H, 2 * H:3 * H]
        W, R = k[:, perm].T, r[:, perm].T
        B = np.concatenate([b[perm], np.zeros_like(b)])
        op, outs = "LSTM", ["Y", "Y_h", "Y_c"]
    elif cell == "gru":
        W, R = k.T, r.T
        B = np.concatenate([b[0], b[1]])
        attrs["linear_before_reset"] = 1
        op, outs = "GRU", ["Y", "Y_h"]
    else:
        W, R = k.T, r.T
        B = np.concatenate([b, np.zeros_like(b)])
        op, outs = "RNN", ["Y", "Y_h"]
    inits = [numpy_helper.from_array(np.ascontiguousarray(a[None], dtype=np.float32), name)
             for a, name in ((W, "W"), (R, "R"), (B, "B"))]
    node = helper.make_node(op, ["X", "W", "R", "B"], outs, **attrs)
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])
    ys = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["T", 1, "N", H] if n == "Y" else [1, "N", H])
          for n in outs]
    graph = helper.make_graph([node], f"fastrnn_bench_{problem.id}", [X], ys, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    modes = ("forward",)
    threads = 2

    def unavailable(self, mode):
        reason = super().unavailable(mode)
        if reason:
            return reason
        for mod in ("onnxruntime", "onnx"):
            reason = _try_import(mod)[1]
            if reason:
                return reason + " (onnx is needed to build the model)" if mod == "onnx" else reason
        return None

    def prepare(self, problem, data, mode):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        sess = ort.InferenceSession(build_onnx_model(problem, data), so, providers=["CPUExecutionProvider"])
        x = data["x"]
        names = ["Y", "Y_h"] + (["Y_c"] if problem.cell == "lstm" else [])

        def run():
            # ORT's recurrent ops are time-major: the transpose in and out is part of the cost.
            y = sess.run(names, {"X": np.ascontiguousarray(x.transpose(1, 0, 2))})
            return y[0][:, 0].transpose(1, 0, 2), y[1:]

        def to_result(raw):
            out, st = raw
            return {"outputs": out, "states": [s[0] for s in st]}

        return run, to_result


# --------------------------------------------------------------------------- jax (lax.scan under jit)
def _jax_cell_fns(cell, jnp, jax):
    """(project, step): ``project(x, k, b)`` hoists the input projection of all steps into one matmul
    (time-major result (T, B, G*H)); ``step(r, b1, carry, xp_t) -> (carry, h)`` is one recurrent step."""
    sig = jax.nn.sigmoid

    def project(x, k, b):
        # (B, T, I) @ (I, G*H) -> (T, B, G*H): one GEMM over all steps, bias folded in
        return jnp.einsum("bti,ig->tbg", x, k) + b

    if cell == "lstm":  # Keras gate order i, f, c, o
        def step(r, b1, carry, xp):
            h, c = carry
            z = xp + h @ r
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = sig(f) * c + sig(i) * jnp.tanh(g)
            h = sig(o) * jnp.tanh(c)
            return (h, c), h
    elif cell == "gru":  # Keras z, r, h; reset_after=True: the reset gate multiplies (h R_h + b1_h)
        def step(r, b1, carry, xp):
            (h,) = carry
            hp = h @ r + b1
            xz, xr, xh = jnp.split(xp, 3, axis=-1)
            hz, hr, hh = jnp.split(hp, 3, axis=-1)
            zg = sig(xz + hz)
            rg = sig(xr + hr)
            cand = jnp.tanh(xh + rg * hh)
            h = zg * h + (1.0 - zg) * cand
            return (h,), h
    else:
        def step(r, b1, carry, xp):
            (h,) = carry
            h = jnp.tanh(xp + h @ r)
            return (h,), h
    return project, step


def make_jax_rnn(cell):
    """Pure-JAX Keras-semantics RNN ``f(x, kernel, recurrent_kernel, bias, initial_state) -> (outputs, states)``
    written as a ``jax.lax.scan`` over time with the input projection hoisted; outputs (B, T, H)."""
    import jax
    import jax.numpy as jnp

    project, step = _jax_cell_fns(cell, jnp, jax)

    def f(x, k, r, b, h0):
        if cell == "gru":
            b0, b1 = b[0], b[1]
        else:
            b0, b1 = b, None
        xp = project(x, k, b0)
        carry, ys = jax.lax.scan(lambda c, xt: step(r, b1, c, xt), tuple(h0), xp)
        return jnp.swapaxes(ys, 0, 1), list(carry)

    return f


class JaxEngine(Engine):
    """JAX/XLA on the CPU: ``jax.lax.scan`` under ``jax.jit``, training with ``jax.vjp``.

    The jit is compiled (and run once) in ``prepare``; the timed call dispatches the compiled function on
    arrays already on the device and waits with ``block_until_ready()``.  Threads: XLA's CPU thread pool is
    sized once, when the backend starts, from the process's CPU affinity mask (jax 0.10: the
    ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` XLA_FLAGS no longer change it,
    measured).  ``cases.apply_threads`` therefore starts the backend under a temporary affinity mask of
    ``threads`` CPUs when it is not started yet; ``threads_note`` records what happened.
    """

    name = "jax"
    threads_note = "xla default (not set by the bench)"

    def unavailable(self, mode):
        reason = super().unavailable(mode)
        if reason:
            return reason
        return _try_import("jax")[1]

    @classmethod
    def set_threads(cls, n):
        """Start the XLA CPU backend with a pool of ``n`` threads when possible; returns the note recorded."""
        import os

        import jax

        try:
            from jax._src import xla_bridge

            started = bool(getattr(xla_bridge, "_backends", {}))
        except Exception:
            started = None
        try:
            full = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            full = None
        if started or full is None:
            n_cpu = len(full) if full else os.cpu_count()
            cls.threads_note = (f"xla default: pool of {n_cpu} threads (backend already started or no "
                                f"affinity control; --threads {n} not applied)")
            return cls.threads_note
        if n >= len(full):
            jax.devices("cpu")
            cls.threads_note = f"xla pool of {len(full)} threads (all CPUs of the affinity mask)"
            return cls.threads_note
        # sched_setaffinity(0) applies to this thread; XLA sizes its pool from the mask and the pool's
        # threads inherit it (they stay on these CPUs); the caller's mask is restored right after.
        os.sched_setaffinity(0, full[:n])
        try:
            jax.devices("cpu")
        finally:
            os.sched_setaffinity(0, full)
        cls.threads_note = f"xla pool of {n} threads, pinned to CPUs {full[:n]} (affinity at backend start)"
        return cls.threads_note

    def prepare(self, problem, data, mode):
        import jax
        import jax.numpy as jnp

        cell = problem.cell
        f = make_jax_rnn(cell)
        dev = jax.devices("cpu")[0]
        put = lambda a: jax.device_put(np.asarray(a, dtype=np.float32), dev)  # noqa: E731
        x, k, r, b = (put(data[n]) for n in ("x", "kernel", "recurrent_kernel", "bias"))
        h0 = [put(s) for s in data["initial_state"]]

        if mode == "forward":
            fwd = jax.jit(f)
            jax.block_until_ready(fwd(x, k, r, b, h0))  # compile + one call, outside the timed run

            def run():
                return jax.block_until_ready(fwd(x, k, r, b, h0))

            def to_result(raw):
                out, states = raw
                return {"outputs": np.asarray(out), "states": [np.asarray(s) for s in states]}

            return run, to_result

        d_out = put(data["d_outputs"])

        @jax.jit
        def train(x, k, r, b, h0, d_out):
            out, vjp, states = jax.vjp(lambda *a: f(*a), x, k, r, b, h0, has_aux=True)
            gx, gk, gr, gb, gh0 = vjp(d_out)
            return out, states, {"x": gx, "kernel": gk, "recurrent_kernel": gr, "bias": gb,
                                 "initial_state": gh0}

        jax.block_until_ready(train(x, k, r, b, h0, d_out))

        def run():
            return jax.block_until_ready(train(x, k, r, b, h0, d_out))

        def to_result(raw):
            out, states, grads = raw
            g = {key: ([np.asarray(a) for a in v] if key == "initial_state" else np.asarray(v))
                 for key, v in grads.items()}
            return {"outputs": np.asarray(out), "states": [np.asarray(s) for s in states], "grads": g}

        return run, to_result


ENGINES = {e.name: e for e in (FastrnnEngine(), FastrnnTorchEngine(), TorchEngine(), OnnxRuntimeEngine(),
                                JaxEngine(), ReferenceEngine())}
