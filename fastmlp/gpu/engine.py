"""The GPU engine: M networks trained at once by the CUDA kernels and cuBLAS strided-batched GEMMs, under the
contract of fastmlp.engine.

Shape legend: M networks, S of them in the leading *slots* a call works on, B minibatch, R rows of a
chunk, N samples, D input dim, H hidden width, L hidden layers, C = 2 classes, P the longest training subset.

The engine keeps every network's parameters in the reference layout, one dense array per layer,
W_l (M, fan_in, fan_out) and b_l (M, fan_out), so that each layer of every network is one strided-batched cuBLAS
GEMM. One training step of the S live networks is

    gather_rows                           (S, B, D) minibatches, one per network, from the epoch's order
    L+1 x [GEMM (alpha = c_l), bias_relu]  forward; the last GEMM gives raw logits
    softmax_xent                          loss, dlogits, -lr dlogits, output-bias update
    L x [GEMM da = c dz W^T, GEMM W += c a^T (-lr dz) (beta = 1), relu_backward], GEMM W_0 += c x^T (-lr dz_0)

5 L + 4 launches, and no weight gradient is ever stored: the SGD update is the GEMM's beta = 1 accumulation of
the per-network-scaled gradient. An epoch is `epoch_begin`, `permutation`, the steps, the stop check (the
forward pass over each network's training subset, chunked, and `evaluate`), and `epoch_end`; with graphs on
(the default), the second run of an epoch of the same shape and every later one is one CUDA graph launch.
Networks that stop are masked at once and compacted out of the leading slots once a quarter of the slots is
idle, so finished networks stop costing compute.

CuPy is imported lazily: importing this module never needs it, and fastmlp.backend says in one line when the
backend is not usable.
"""
import contextlib
import os
import time
import warnings

import numpy as np

from .. import reference
from ..constants import N_CLASSES
from ..engine import EngineBase, check_engine_args, check_positive
from ..errors import UsageError
from ..tasks import _check_sample_range
from .cublas import handle
from .data import generate
from .device import KERNELS, cupy_module, kernel, on_device
from .launch import (REPORT, SHARED_WORDS, bias_relu, epoch_begin, epoch_end, evaluate, gather_rows, init_values,
                     permutation, relu_backward, softmax_xent, subtract_f0)

EVAL_BYTES = 512 << 20             # activations of one stop-check / evaluation chunk of every network
EVAL_ROWS_MAX = 4096
REPACK_AT = 0.75                   # compact the slots when at most this share of them is still training
MAX_NETWORKS = 65535               # grid.y of the per-network kernels


def graphs_default():
    """CUDA graphs on unless FASTMLP_GPU_GRAPHS=0."""
    return os.environ.get("FASTMLP_GPU_GRAPHS", "1") != "0"



class GpuEngine(EngineBase):
    """Train M = len(lrs) networks on one dataset x (N, D), y (N,) in {0, 1} on the GPU; the interface and the
    semantics of the CPU engine, fastmlp.cpu_engine.Engine (same initial weights, same minibatch orders, same stop
    rule).

    x, y may be NumPy or CuPy arrays; the dataset is copied to the device once. ``graphs`` (default: on unless
    FASTMLP_GPU_GRAPHS=0) replays each epoch as a CUDA graph; ``tf32`` lets cuBLAS use TF32 tensor cores for the
    float32 GEMMs. ``threads`` is accepted for the common signature and ignored.
    """

    def __init__(self, x, y, hidden_width, depth, batch_size, lrs, seeds, subsets=None, param="standard",
                 dtype=np.float32, sigma_w2=2.0, sigma_b2=0.0, threads=None, init=reference.DEFAULT_INIT,
                 init_scale=1.0, loss="xent", stop="zero-error", target_loss=None, f0="keep", *, graphs=None,
                 tf32=False):
        lrs, seeds, self.dtype, subsets = check_engine_args(
            tuple(x.shape), tuple(y.shape), hidden_width, depth, batch_size, lrs, seeds, subsets, param, dtype,
            sigma_w2, sigma_b2, init, init_scale, loss, stop, target_loss, f0)
        cp = cupy_module()
        N, D = x.shape
        H, L, B, M = int(hidden_width), int(depth), int(batch_size), len(lrs)
        if M > MAX_NETWORKS:
            raise UsageError(f"the GPU engine trains at most {MAX_NETWORKS} networks at once (got {M}); "
                             "split the grid into several engine calls")
        if N >= 2**31:
            raise UsageError(f"the GPU engine takes at most 2**31 - 1 training samples (got {N})")
        self.N, self.D, self.H, self.L, self.B, self.M = N, D, H, L, B, M
        self.param, self.lrs, self.seeds = param, lrs, seeds
        self.threads = 1
        self.tf32 = bool(tf32) and self.dtype == np.float32
        self.graphs = graphs_default() if graphs is None else bool(graphs)
        self.graph_error = None          # why graph capture was given up, if it was
        self.graph_launches = 0          # epochs run as one graph launch
        self.n_train = np.array([len(s) for s in subsets])

        self._init_training(loss, stop, target_loss)
        self.f0 = f0

        P = int(self.n_train.max())
        self.P = P
        dt = self.dtype
        c, s = reference.layer_scales(D, H, L, param, sigma_w2, sigma_b2)
        self._c, self._s = [dt.type(v) for v in c], [dt.type(v) for v in s]
        self._slot = np.arange(M)                    # network held by each slot
        self._active = np.zeros(M, bool)             # device `active` flag of each slot, as the host knows it
        self._S = M                                  # leading slots that may still train
        self._graphs, self._warm = {}, set()
        self._eval = None

        sub = np.zeros((M, P), np.int32)
        for m, idx in enumerate(subsets):
            sub[m, :len(idx)] = idx
        with on_device() as dev:
            self._dev = dev
            self._blas = handle(dev, self.tf32)
            self._X = cp.ascontiguousarray(cp.asarray(x, dtype=dt))                  # (N, D)
            self._Y = cp.ascontiguousarray(cp.asarray(y, dtype=cp.int8))             # (N,)
            def i32(v):
                return cp.asarray(np.asarray(v, np.int32))

            # reference.init_params, drawn on the device from each network's seed: W_l (M, fan_in, fan_out),
            # b_l (M, fan_out)
            seeds_d = cp.asarray(seeds.astype(np.uint32))
            self._W, self._b = [], []
            for l, ((fan_in, fan_out), (w_part, b_part)) in enumerate(zip(reference.layer_sizes(D, H, L),
                                                                          reference.init_draws(D, H, L, param, init))):
                self._W.append(cp.empty((M, fan_in, fan_out), dtype=dt))
                self._b.append(cp.zeros((M, fan_out), dtype=dt))
                init_values(self._W[l], seeds_d, l, w_part, init_scale)
                if b_part is not None:
                    init_values(self._b[l], seeds_d, l, b_part, init_scale)

            self._st = {                                             # per-slot state, permuted by _repack
                "sub": cp.asarray(sub), "n": i32(self.n_train), "seeds": seeds_d,
                "lrs": cp.asarray(lrs.astype(dt)), "epochs": i32(np.zeros(M)), "active": i32(np.zeros(M)),
                "stopped": i32(np.zeros(M)), "converged": i32(np.zeros(M)), "diverged": i32(np.zeros(M)),
                "trained": i32(np.zeros(M)), "steps": i32(np.zeros(M)),
                "train_loss": cp.full(M, np.nan), "train_error": cp.full(M, np.nan), "loss_sum": cp.zeros(M),
                "eloss": cp.zeros(M), "err": cp.zeros(M, dtype=cp.int64),
            }
            self._n_slot = self.n_train.copy()                       # host copy of st["n"]
            self._order = cp.zeros((M, P), dtype=cp.int32)           # the epoch's minibatch order of each slot
            self._scratch = cp.zeros((M, P), dtype=cp.uint32) if 2 * P > SHARED_WORDS else None
            self._report = cp.zeros((M, len(REPORT)), dtype=cp.float64)
            self._xb = cp.zeros(M * B * D, dtype=dt)                 # (M, B, D) minibatch inputs
            self._act = cp.zeros((L, M, B, H), dtype=dt)             # hidden activations of the minibatch
            self._zc = cp.zeros(M * B * N_CLASSES, dtype=dt)         # raw logits
            self._dlog = cp.zeros(M * B * N_CLASSES, dtype=dt)       # dloss/dlogits
            self._dlog_s = cp.zeros(M * B * N_CLASSES, dtype=dt)     # -lr dloss/dlogits
            self._dz = [cp.zeros(M * B * H, dtype=dt) for _ in range(2)]   # ping-pong: da, then dz in place
            self._dzs = cp.zeros(M * B * H, dtype=dt)                # -lr dz of the layer below
            self._ones = i32(np.ones(M))
            self._zeros = i32(np.zeros(M))
            # f0 = "subtract": the initial weights (per slot, permuted with the rest) and the raw initial logits of
            # every training row, F0 (M, N, C), that subtract_f0 takes off every step's and check's logits
            self._initial = None
            if f0 == "subtract":
                self._initial = ([W.copy() for W in self._W], [b.copy() for b in self._b])
                self._F0 = cp.zeros((M, N, N_CLASSES), dtype=dt)
                R, _, ea, ez, _ = self._eval_buffers()
                acts = [ea[l % 2] for l in range(L)]
                for start in range(0, N, R):
                    r = min(R, N - start)
                    self._forward(M, self._X[start:start + r], 0, r, acts, ez)
                    self._F0[:, start:start + r] = ez[:M * r * N_CLASSES].reshape(M, r, N_CLASSES)

    # ------------------------------------------------------------------------------------------ parameters
    def set_params(self, params):
        """Replace every network's parameters (reference layout: [(W (M, fan_in, fan_out), b (M, fan_out))]).  With
        f0 = "subtract" the initial function subtracted stays the one of the engine's own initialization."""
        if len(params) != self.L + 1:
            raise ValueError(f"need {self.L + 1} layers of parameters, got {len(params)}")
        with on_device():
            for l, (W, b) in enumerate(params):
                for dev, host in ((self._W[l], W), (self._b[l], b)):
                    host = np.asarray(host)
                    if host.shape != dev.shape:
                        raise ValueError(f"layer {l}: need shape {dev.shape}, got {host.shape}")
                    dev.set(np.ascontiguousarray(host[self._slot], dtype=self.dtype))

    def params(self):
        """Every network's parameters in the reference layout, as float64 NumPy copies."""
        with on_device():
            return [(self._by_network(W.get()).astype(np.float64), self._by_network(b.get()).astype(np.float64))
                    for W, b in zip(self._W, self._b)]

    def _by_network(self, a):
        """Rows of a per-slot host array reordered by network."""
        out = np.empty_like(a)
        out[self._slot] = a
        return out

    # ------------------------------------------------------------------------------------------- training
    def compile(self):
        """Compile (or load from CuPy's cache) every kernel for this dtype; returns the seconds it took."""
        t0 = time.perf_counter()
        with on_device():
            for names in KERNELS.values():
                for name in names:
                    kernel(name, self.dtype)
        return time.perf_counter() - t0

    def fit(self, max_epochs=2000, progress=None):
        """Train until every network has stopped (converged, diverged or hit max_epochs); returns the results.

        Same stop rule and records as the CPU engine's fit; ``progress(epoch, n_active, n_networks)`` is
        called after every epoch."""
        check_positive("--max-epochs", max_epochs)
        with on_device():
            for epoch in range(int(max_epochs)):
                if self._set_active(~self.stopped) == 0:
                    break
                self._epoch(check=True, max_epochs=int(max_epochs))
                if progress is not None:
                    progress(epoch + 1, int((~self.stopped).sum()), self.M)
        return self.results()

    def train_epochs(self, n_epochs):
        """Train every non-diverged network for n_epochs more epochs, ignoring the stop rule (benchmarks)."""
        with on_device():
            for _ in range(n_epochs):
                if self._set_active(~self.diverged) == 0:
                    return
                self._epoch(check=False, max_epochs=0)

    def _set_active(self, want):
        """Activate the networks `want` (M,) bool on the device; compact the slots if many are idle; returns how
        many train."""
        want_slot = want[self._slot]
        if want_slot[self._S:].any():      # a network compacted out earlier trains again (train_epochs after fit)
            self._S = self.M
        if not np.array_equal(want_slot, self._active):
            self._st["active"].set(want_slot.astype(np.int32))
            self._active = want_slot.copy()
        n = int(want_slot.sum())
        if 0 < n <= REPACK_AT * self._S:
            self._repack()
        return n

    def _repack(self):
        """Move the training networks to the leading slots (stable order), so that batched calls skip the rest."""
        cp = cupy_module()
        head = np.flatnonzero(self._active[:self._S])
        rest = np.setdiff1d(np.arange(self.M), head)          # idle slots, then the ones already beyond S
        order = np.concatenate([head, rest])
        perm = cp.asarray(order)
        per_slot = self._W + self._b + list(self._st.values())
        if self._initial is not None:
            per_slot += self._initial[0] + self._initial[1] + [self._F0]
        for arr in per_slot:
            arr[...] = arr[perm]                                 # in place: captured pointers stay valid
        self._slot = self._slot[order]
        self._active = self._active[order]
        self._n_slot = self._n_slot[order]
        self._S = len(head)
        if len(self._graphs) > 16:                             # graphs of other S stay valid, but hold memory
            self._graphs.clear()

    def _epoch(self, check, max_epochs):
        S, B = self._S, self.B
        live = self._active[:S]
        steps = int(-(-self._n_slot[:S][live].max() // B))
        n_check = int(self._n_slot[:S][live].max()) if check else 0
        key = (S, steps, n_check, bool(check), max_epochs if check else 0)
        trained = live.copy()

        def body():
            epoch_begin(self._st, S)
            st = self._st
            permutation(self._order, self._scratch, st["sub"], st["n"], st["seeds"], st["epochs"], st["trained"], S)
            for s in range(steps):
                self._step(S, s)
            if check:
                self._check(S, n_check)
            epoch_end(self._report, st, check, max_epochs, S, self.target_loss if self.stop == "loss" else None)

        self._run(key, body)
        rep = self._report[:S].get()                            # one transfer per epoch; waits for the epoch
        nets = self._slot[:S]
        self.epochs[nets] = rep[:, 0].astype(np.int64)
        self.converged[nets] = rep[:, 1] != 0
        self.diverged[nets] = rep[:, 2] != 0
        self.stopped[nets] = rep[:, 3] != 0
        self.train_loss[nets] = rep[:, 4]
        self.train_error[nets] = rep[:, 5]
        now = ~(self.stopped[nets] if check else self.diverged[nets])
        self._active[:S] = np.where(trained, now, self._active[:S])

    def _run(self, key, body):
        """Run an epoch body: eagerly the first time a shape is seen (it loads every kernel and lets cuBLAS pick
        its algorithms), as one CUDA graph launch after that."""
        if not self.graphs:
            body()
            return
        graph = self._graphs.get(key)
        if graph is None:
            if key not in self._warm:
                self._warm.add(key)
                body()
                return
            graph = self._capture(body)
            if graph is None:
                body()
                return
            self._graphs[key] = graph
        graph.launch(self._dev.stream)
        self.graph_launches += 1

    def _capture(self, body):
        """body's launches as a CUDA graph, or None (graphs switched off, with a warning) if capture fails."""
        stream = self._dev.stream
        try:
            stream.begin_capture()
        except Exception as e:
            return self._no_graphs(e)
        try:
            body()
        except Exception as e:
            with contextlib.suppress(Exception):
                stream.end_capture()
            return self._no_graphs(e)
        try:
            return stream.end_capture()
        except Exception as e:
            return self._no_graphs(e)

    def _no_graphs(self, error):
        self.graphs = False
        self.graph_error = f"{type(error).__name__}: {error}"
        warnings.warn(f"fastmlp: CUDA graph capture failed ({self.graph_error}); launching kernels one by one",
                      RuntimeWarning, stacklevel=3)
        return None

    def _forward(self, S, x, x_stride, R, acts, zc, weights=None):
        """Hidden activations acts[l] (S, R, H) and raw logits zc (S, R, C) = c_L a_L @ W_L of inputs x (S, R, D)
        (x_stride = 0: the same R inputs for every network); weights: (W, b) lists, the current ones if None."""
        D, H, L = self.D, self.H, self.L
        Ws, bs = weights or (self._W, self._b)
        a, a_stride, K = x, x_stride, D
        for l in range(L):
            out = acts[l]
            self._blas.gemm(S, R, H, K, a, a_stride, False, Ws[l], K * H, False, out, R * H, self._c[l], 0.0)
            bias_relu(out, bs[l], self._s[l], True, S, R)
            a, a_stride, K = out, R * H, H
        self._blas.gemm(S, R, N_CLASSES, K, a, a_stride, False, Ws[L], K * N_CLASSES, False, zc,
                        R * N_CLASSES, self._c[L], 0.0)

    def _less_initial(self, S, x, R, acts, zc, start, idx, n):
        """With f0 = "subtract": zc (S, R, C), the raw logits of rows start.. of inputs x (R, D) shared by every
        network (idx, n: as for evaluate), less the initial network's (computed here into the spare buffer)."""
        if self._initial is None:
            return
        z0 = self._eval_buffers()[4]
        self._forward(S, x, 0, R, acts, z0, self._initial)
        subtract_f0(zc, z0, self._initial[1][self.L], self._s[self.L], idx, n, 0, start, R, S, R * N_CLASSES, start)

    def _step(self, S, s):
        """One SGD step of the S leading networks: minibatch rows s*B .. s*B+B-1 of each one's epoch order."""
        D, H, L, B, C = self.D, self.H, self.L, self.B, N_CLASSES
        st, W, b, c = self._st, self._W, self._b, self._c
        start = s * B
        gather_rows(self._xb, self._X, self._order, st["n"], st["trained"], st["diverged"], self.P, start, B, S)
        acts = [self._act[l] for l in range(L)]
        self._forward(S, self._xb, B * D, B, acts, self._zc)
        if self._initial is not None:
            subtract_f0(self._zc, self._F0, self._initial[1][L], self._s[L], self._order, st["n"], self.P, start, B,
                        S, self.N * C)
        softmax_xent(self._dlog, self._dlog_s, b[L], st["loss_sum"], st["steps"], st["diverged"], self._act,
                     self._zc, self._Y, self._order, st["n"], st["trained"], st["lrs"], self._s[L], self.P, start,
                     S, B, self.loss_kind)
        dz, dzs, F = self._dlog, self._dlog_s, C
        for l in range(L, 0, -1):
            da = self._dz[(L - l) % 2]
            a = acts[l - 1]                                                           # (S, B, H) input of layer l
            self._blas.gemm(S, B, H, F, dz, B * F, False, W[l], H * F, True, da, B * H, c[l], 0.0)   # da = c dz W^T
            self._blas.gemm(S, H, F, B, a, B * H, True, dzs, B * F, False, W[l], H * F, c[l], 1.0)   # W += c a^T dzs
            relu_backward(da, self._dzs, b[l - 1], a, st["lrs"], st["n"], st["trained"], st["diverged"],
                          self._s[l - 1], start, S, B)
            dz, dzs, F = da, self._dzs, H
        self._blas.gemm(S, D, H, B, self._xb, B * D, True, dzs, B * H, False, W[0], D * H, c[0], 1.0)

    def _eval_buffers(self):
        """Buffers of one evaluation chunk of every network: rows per chunk, inputs, 2 x hidden, logits, and the
        initial network's logits (f0 = "subtract" only)."""
        if self._eval is None:
            cp = cupy_module()
            M, D, H = self.M, self.D, self.H
            per_row = M * (D + 2 * H + N_CLASSES) * self.dtype.itemsize
            R = int(max(1, min(EVAL_ROWS_MAX, EVAL_BYTES // per_row)))
            self._eval = (R, cp.zeros(M * R * D, dtype=self.dtype),
                          [cp.zeros(M * R * H, dtype=self.dtype) for _ in range(2)],
                          cp.zeros(M * R * N_CLASSES, dtype=self.dtype),
                          cp.zeros(M * R * N_CLASSES, dtype=self.dtype) if self.f0 == "subtract" else None)
        return self._eval

    def _check(self, S, n_check):
        """The stop check: every training network over its whole training subset, in chunks."""
        R, xe, ea, ez, _ = self._eval_buffers()
        st = self._st
        acts = [ea[l % 2] for l in range(self.L)]
        for start in range(0, n_check, R):
            r = min(R, n_check - start)
            gather_rows(xe, self._X, st["sub"], st["n"], st["trained"], st["diverged"], self.P, start, r, S)
            self._forward(S, xe, r * self.D, r, acts, ez)
            if self._initial is not None:
                subtract_f0(ez, self._F0, self._initial[1][self.L], self._s[self.L], st["sub"], st["n"], self.P,
                            start, r, S, self.N * N_CLASSES)
            evaluate(st["err"], st["eloss"], ez, self._b[self.L], self._s[self.L], self._Y, st["sub"], st["n"],
                     st["trained"], st["diverged"], self.P, start, r, S, self.loss_kind)

    # ----------------------------------------------------------------------------------------- evaluation
    def _device_xy(self, x, y):
        cp = cupy_module()
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"need inputs of shape (n, {self.D}); got {x.shape}")
        if y is not None and tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"need labels of shape ({x.shape[0]},); got {y.shape}")
        x = cp.ascontiguousarray(cp.asarray(x, dtype=self.dtype))
        return x, None if y is None else cp.ascontiguousarray(cp.asarray(y, dtype=cp.int8))

    def _evaluate_into(self, x, y, err, loss):
        """err (M,) += error counts, loss (M,) += summed losses of every slot on device arrays x (n, D), y (n,)."""
        cp = cupy_module()
        n, M = x.shape[0], self.M
        R, _, ea, ez, _ = self._eval_buffers()
        idx = cp.arange(n, dtype=cp.int32)
        n_rows = cp.full(M, n, dtype=cp.int32)
        acts = [ea[l % 2] for l in range(self.L)]
        for start in range(0, n, R):
            r = min(R, n - start)
            self._forward(M, x[start:start + r], 0, r, acts, ez)
            self._less_initial(M, x[start:start + r], r, acts, ez, start, idx, n_rows)
            evaluate(err, loss, ez, self._b[self.L], self._s[self.L], y, idx, n_rows, self._ones, self._zeros, 0,
                     start, r, M, self.loss_kind)

    def evaluate(self, x, y):
        """Error counts (M,) and summed losses (M,) of every network on x (n, D), y (n,): host NumPy arrays."""
        cp = cupy_module()
        with on_device():
            x, y = self._device_xy(x, y)
            err = cp.zeros(self.M, dtype=cp.int64)
            loss = cp.zeros(self.M, dtype=cp.float64)
            self._evaluate_into(x, y, err, loss)
            return self._by_network(err.get()), self._by_network(loss.get())

    def logits(self, x):
        """Logits (M, n, C) of every network on x (n, D), as a host NumPy array of the engine's dtype (less the
        initial ones with f0 = "subtract")."""
        cp = cupy_module()
        with on_device():
            x, _ = self._device_xy(x, None)
            n, M = x.shape[0], self.M
            R, _, ea, ez, _ = self._eval_buffers()
            out = np.zeros((M, n, N_CLASSES), self.dtype)
            acts = [ea[l % 2] for l in range(self.L)]
            idx = cp.arange(n, dtype=cp.int32)
            n_rows = cp.full(M, n, dtype=cp.int32)
            for start in range(0, n, R):
                r = min(R, n - start)
                self._forward(M, x[start:start + r], 0, r, acts, ez)
                self._less_initial(M, x[start:start + r], r, acts, ez, start, idx, n_rows)
                bias_relu(ez, self._b[self.L], self._s[self.L], False, M, r)
                out[:, start:start + r] = ez[:M * r * N_CLASSES].get().reshape(M, r, N_CLASSES)
            return self._by_network(out)

    def test_metrics(self, chunks):
        """Error rate (M,) and mean loss (M,) over an iterable of (x, y) chunks (host or device arrays)."""
        cp = cupy_module()
        with on_device():
            err = cp.zeros(self.M, dtype=cp.int64)
            loss = cp.zeros(self.M, dtype=cp.float64)
            n = 0
            for x, y in chunks:
                x, y = self._device_xy(x, y)
                self._evaluate_into(x, y, err, loss)
                n += int(x.shape[0])
            return self._by_network(err.get()) / max(n, 1), self._by_network(loss.get()) / max(n, 1)

    def task_metrics(self, spec, seed, split, n, chunk=8192):
        """Error rate (M,) and mean loss (M,) on n samples of a task's split, generated on the GPU in chunks."""
        _check_sample_range(seed, split, 0, n)
        return self.test_metrics(generate(spec, seed, split, start, min(chunk, n - start))
                                 for start in range(0, n, chunk))

    # ----------------------------------------------------------------------------------------- reporting
    def launches_per_step(self):
        """Kernel and GEMM launches of one training step: gather, L+1 x (GEMM + bias_relu) less the output's
        bias_relu, softmax_xent, L x (2 GEMMs + relu_backward), the first layer's update GEMM; with f0 =
        "subtract", subtract_f0."""
        return 5 * self.L + 4 + (self._initial is not None)
